/**
 * `kith restore --phrase-file F --via ADDRESS` (docs/backup.md, "Recovery"):
 * this node, back from its phrase and one friend's address.
 *
 *  1. refuses a home that has an identity or a database (nothing is overwritten);
 *  2. makes the database, then the identity from the phrase's seed;
 *  3. starts the node, dials the friend at ADDRESS (its gate knows my peer id:
 *     I am its friend) and asks for my recovery record;
 *  4. opens it (my signature, my recovery key), then asks every other friend
 *     the record says hosts for me, and keeps the newest record that opens:
 *     one host handing back an old record can't roll me back if another
 *     answers;
 *  5. writes the friend book (revoked friends stay revoked), the backup index
 *     (blobs, hosts, snapshots and what each needs) and the record's seq, so
 *     the next record pushed is newer than any a host holds, and the name;
 *  6. stops the node: `kith start` runs it, and `kith backup list|restore` work.
 */
import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'
import { KithError, asKithError } from '../../errors.ts'
import { ensureHome, homePaths, pathExists } from '../../peer/home.ts'
import { openHomeDatabase } from '../../peer/database.ts'
import { createIdentity } from '../../peer/identity.ts'
import { phraseToSeed } from '../../peer/phrase.ts'
import { Daemon } from '../daemon.ts'
import { deriveBackupKey } from './keys.ts'
import { backupClient } from './protocol.ts'
import { openRecovery, type OpenedRecovery } from './recovery.ts'

/** how long the friend at --via gets to answer, and each other host */
const VIA_TIMEOUT_MS = 30_000
const OTHERS_TIMEOUT_MS = 10_000

export interface RecoverHomeOptions {
  home: string
  /** the phrase file's text */
  phrase: string
  /** a friend's multiaddr ending in /p2p/PEER */
  via: string
  passphrase?: string
  listen?: string[]
  /** what is happening, for a person */
  onStep?: (text: string) => void
}

export interface RecoverHomeResult {
  peerId: string
  name: string
  /** the record used: its seq, when it was made, and which host gave it */
  record: { seq: number, created: number, from: string, bytes: number }
  friends: number
  snapshots: number
  blobs: number
}

function viaPeer (via: string): { ma: ReturnType<typeof multiaddr>, peer: string } {
  let ma
  try {
    ma = multiaddr(via)
  } catch (err) {
    throw new KithError('USAGE', `--via wants a friend's address like /ip4/203.0.113.7/tcp/4001/p2p/12D3Koo...; ${JSON.stringify(via.slice(0, 200))} is not one (${(err as Error).message})`)
  }
  const peer = ma.getComponents().findLast(c => c.name === 'p2p')?.value
  if (peer == null) throw new KithError('USAGE', `--via must end in /p2p/PEERID, the friend's peer id (their \`kith status\` shows their addresses); got ${via}`)
  try {
    peerIdFromString(peer)
  } catch {
    throw new KithError('USAGE', `--via names ${JSON.stringify(peer)}, which is not a peer id`)
  }
  return { ma, peer }
}

export async function recoverHome (opts: RecoverHomeOptions): Promise<RecoverHomeResult> {
  const step = opts.onStep ?? (() => {})
  const seed = phraseToSeed(opts.phrase)
  const { ma, peer: via } = viaPeer(opts.via)
  const paths = homePaths(opts.home)
  if (await pathExists(paths.identity) || await pathExists(paths.db)) {
    throw new KithError('HOME_NOT_EMPTY', `${opts.home} already holds a node (${await pathExists(paths.identity) ? paths.identity : paths.db}); kith restore makes a new home and never writes over one: give another --home (if an earlier restore was interrupted, remove that folder first)`)
  }
  await ensureHome(paths.root)
  // the database before the key: a home with a key and no database is refused at start (DATABASE_MISSING)
  await (await openHomeDatabase(paths)).close()
  const identity = await createIdentity(paths.identity, opts.passphrase, seed)
  const owner = identity.peerId.toString()
  step(`identity ${owner} made from the phrase`)
  const start = { home: opts.home, ...(opts.passphrase != null ? { passphrase: opts.passphrase } : {}), ...(opts.listen != null ? { listen: opts.listen } : {}) }

  const daemon = await Daemon.start(start)
  let result: RecoverHomeResult
  try {
    const key = deriveBackupKey(seed, 'recovery')
    const client = (peer: string): ReturnType<typeof backupClient> => backupClient({ libp2p: daemon.libp2p, bandwidth: daemon.engine.bandwidth, peer, identity })
    step(`asking ${via} for the recovery record`)
    let bytes: Uint8Array | null
    try {
      await daemon.libp2p.dial(ma, { signal: AbortSignal.timeout(VIA_TIMEOUT_MS) })
      bytes = await client(via).getRecord(AbortSignal.timeout(VIA_TIMEOUT_MS))
    } catch (err) {
      const e = asKithError(err)
      if (e.code === 'BACKUP_NOT_GRANTED' || e.code === 'NOT_A_FRIEND') {
        throw new KithError('RECOVERY_NOT_FOUND', `the node at ${opts.via} does not host backups for ${owner}: check the phrase is this node's, and ask a friend who granted you backup (${e.message})`, { cause: err })
      }
      throw new KithError('FRIEND_OFFLINE', `can't get the recovery record from ${opts.via}: ${e.message}; check the address and that the friend's node is running`, { cause: err })
    }
    if (bytes == null) {
      throw new KithError('RECOVERY_NOT_FOUND', `the node at ${opts.via} keeps no recovery record for ${owner}: nobody has hosted a backup for this phrase there. Check the phrase, or try another friend`)
    }
    let best: OpenedRecovery & { from: string, bytes: number } = { ...openRecovery(bytes, { owner, key }), from: via, bytes: bytes.length }

    // every other host the record names may hold a newer record: the newest that opens wins
    const others = best.content.friends.filter(f => f.state === 'active' && f.grantsFromThem.includes('backup') && f.peerId !== via)
    if (others.length > 0) step(`asking ${others.length} other host${others.length === 1 ? '' : 's'} for a newer record`)
    const answers = await Promise.allSettled(others.map(async f => {
      await daemon.libp2p.peerStore.merge(peerIdFromString(f.peerId), { multiaddrs: f.addrs.flatMap(a => { try { return [multiaddr(a)] } catch { return [] } }) })
      const record = await client(f.peerId).getRecord(AbortSignal.timeout(OTHERS_TIMEOUT_MS))
      return record == null ? null : { ...openRecovery(record, { owner, key, after: best.seq }), from: f.peerId, bytes: record.length }
    }))
    for (const a of answers) if (a.status === 'fulfilled' && a.value != null && a.value.seq > best.seq) best = a.value

    const { content } = best
    step(`record ${best.seq} from ${best.from}: ${content.friends.length} friends, ${content.snapshots.length} snapshots; writing them`)
    for (const f of content.friends) {
      await daemon.friends.befriend({ peerId: f.peerId, publicKey: f.publicKey, label: f.label, grantsToThem: f.grantsToThem, grantsFromThem: f.grantsFromThem, addrs: f.addrs, via: f.via })
      if (f.state === 'revoked') await daemon.friends.revoke(f.peerId)
    }
    const index = daemon.backup.index
    const kinds = new Map(content.blobs.map(([id, r]) => [id, r.kind]))
    for (const [id, r] of content.blobs) await index.putBlob(id, r)
    for (const s of content.snapshots) {
      await index.addNeeds(s.record.seq, s.needs.flatMap(id => { const kind = kinds.get(id); return kind != null ? [[id, kind] as [string, typeof kind]] : [] }))
      await index.putSnapshot(s.record)
    }
    await daemon.care.book.setRecoverySeq(best.seq)
    await daemon.setDisplayName(content.name)
    result = {
      peerId: owner,
      name: content.name,
      record: { seq: best.seq, created: content.created, from: best.from, bytes: best.bytes },
      friends: content.friends.length,
      snapshots: content.snapshots.length,
      blobs: content.blobs.length
    }
  } finally {
    await daemon.stop()
  }
  return result
}
