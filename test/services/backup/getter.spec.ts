import { randomBytes } from 'node:crypto'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import nacl from 'tweetnacl'
import { privateKeyFromRaw } from '@libp2p/crypto/keys'
import { openDatabase, sublevel, type Database } from '../../../src/peer/database.ts'
import { createNode, type KithLibp2p } from '../../../src/peer/node.ts'
import { connectionGater } from '../../../src/trust/gate.ts'
import { FriendBook } from '../../../src/trust/friends.ts'
import { transferEngine, type TransferEngine } from '../../../src/services/engine/index.ts'
import { BackupHost } from '../../../src/services/backup/host.ts'
import { backupClient, type BackupClient } from '../../../src/services/backup/protocol.ts'
import { sealBlob } from '../../../src/services/backup/blob.ts'
import { ByteBudget } from '../../../src/services/backup/budget.ts'
import { FileCache } from '../../../src/services/backup/file-cache.ts'
import { BlobGetter, type Want } from '../../../src/services/backup/getter.ts'
import { runBackup } from '../../../src/services/backup/run.ts'
import { deriveBackupKeys } from '../../../src/services/backup/keys.ts'
import { LevelOwnerIndex, type BlobRecord } from '../../../src/services/backup/owner-index.ts'
import type { BackupParts } from '../../../src/services/backup/parts.ts'
import { BandwidthScheduler } from '../../../src/transfer/scheduler/index.ts'
import { KithError } from '../../../src/errors.ts'
import { tempDir } from '../../helpers/chunks.ts'

/**
 * A restore's data blobs fetched back (getter.ts) from two real hosts in
 * this process (real libp2p nodes, LevelDB homes, the engine's chunk store
 * and BackupHost), by an owner with real keys and index: many blobs a
 * request, both hosts at once, a blob one host lost taken from the other,
 * no more bodies read than the budget holds, and a blob nobody has named;
 * and a run to the same two hosts, whose index must record each blob at the
 * size the hosts hold (run.ts read it from a buffer given back: 0e0b6ca).
 */

const KiB = 1024
const MiB = 1024 * KiB

interface Host { node: KithLibp2p, db: Database, engine: TransferEngine, backup: BackupHost, dir: { cleanup: () => Promise<void> } }

describe('restore getter: data blobs back from two hosts', () => {
  const bandwidth = new BandwidthScheduler()
  const { secretKey, publicKey } = nacl.sign.keyPair()
  let owner: KithLibp2p
  let ownerDb: Database
  let ownerDir: { dir: string, cleanup: () => Promise<void> }
  let hosts: Host[]
  let parts: BackupParts
  /** get-many requests each host was sent */
  const requests = new Map<string, number>()
  const plaintexts = new Map<string, Buffer>()

  /** `count` data blobs of `size` random bytes, sealed and put (one put-many a host) on the hosts `on` picks for each; the index says each is on both. */
  async function blobs (count: number, size: number, on: (first: string) => Host[]): Promise<Want[]> {
    const made = Array.from({ length: count }, () => {
      const plaintext = randomBytes(size)
      const sealed = sealBlob(parts.keys, parts.owner, 'data', plaintext)
      plaintexts.set(sealed.id, plaintext)
      // the host the getter asks first: each blob starts at one of its hosts, rotated by its id
      const first = hosts[Number.parseInt(sealed.id.slice(0, 8), 16) % hosts.length]!.node.peerId.toString()
      return { ...sealed, on: on(first) }
    })
    for (const host of hosts) {
      const mine = made.filter(b => b.on.includes(host)).map(b => ({ id: b.sealedId, sealed: b.sealed }))
      if (mine.length > 0) expect((await parts.host(host.node.peerId.toString()).putMany(mine)).status).toEqual(mine.map(() => 'go'))
    }
    return await Promise.all(made.map(async ({ id, sealedId, sealed }) => {
      const record: BlobRecord = { kind: 'data', sealedId, size: sealed.length, root: '', hosts: hosts.map(h => h.node.peerId.toString()) }
      await parts.index.putBlob(id, record)
      return { id, record }
    }))
  }

  const both = (): Host[] => hosts
  const nowhere = (): Host[] => []

  async function * inGroups (wants: Want[], size = 5): AsyncGenerator<Want[]> {
    for (let i = 0; i < wants.length; i += size) yield wants.slice(i, i + size)
  }

  beforeAll(async () => {
    owner = await createNode({ privateKey: privateKeyFromRaw(secretKey), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
    await owner.start()
    ownerDir = await tempDir('kith-getter-owner-')
    ownerDb = await openDatabase(join(ownerDir.dir, 'db'))
    hosts = await Promise.all([0, 1].map(async () => {
      const dir = await tempDir('kith-getter-host-')
      const db = await openDatabase(join(dir.dir, 'db'))
      const friends = new FriendBook(sublevel(db, 'friends'))
      await friends.load()
      const node = await createNode({ privateKey: privateKeyFromRaw(nacl.sign.keyPair().secretKey), listen: ['/ip4/127.0.0.1/tcp/0'], gater: connectionGater(friends) })
      await node.start()
      const engine = transferEngine()({ db, home: dir.dir, libp2p: node, friends })
      await engine.start()
      const backup = await BackupHost.start({ db, home: dir.dir, libp2p: node, friends, engine, graceMs: 0 })
      engine.afterStart()
      await friends.befriend({ peerId: owner.peerId.toString(), publicKey: Buffer.from(publicKey).toString('base64'), label: 'owner', grantsToThem: ['backup'], grantsFromThem: [], addrs: [], via: 'test' })
      await owner.peerStore.merge(node.peerId, { multiaddrs: node.getMultiaddrs() })
      return { node, db, engine, backup, dir }
    }))
    const clients = new Map<string, BackupClient>(hosts.map(h => [h.node.peerId.toString(), backupClient({ libp2p: owner, bandwidth, peer: h.node.peerId })]))
    parts = {
      owner: owner.peerId.toString(),
      secretKey,
      publicKey,
      keys: deriveBackupKeys(secretKey.subarray(0, 32)),
      index: LevelOwnerIndex.open(ownerDb),
      files: new FileCache(ownerDb),
      // the real client, its get-many requests counted
      host: peer => {
        const client = clients.get(peer)!
        return { ...client, getEach: async (...args) => { requests.set(peer, (requests.get(peer) ?? 0) + 1); await client.getEach(...args) } }
      }
    }
  })

  afterAll(async () => {
    await owner?.stop()
    await ownerDb?.close()
    await ownerDir?.cleanup()
    for (const h of hosts ?? []) {
      await h.engine.beforeStop()
      await h.backup.stop()
      await h.engine.stop()
      await h.node.stop()
      await h.db.close()
      await h.dir.cleanup()
    }
    bandwidth.close()
  })

  it('takes every blob once, many a request from both hosts at once, and one a host lost from the other', async () => {
    const wants = await blobs(24, 256 * KiB, both)
    // one the host asked first never had
    wants.push(...await blobs(1, 300 * KiB, first => hosts.filter(h => h.node.peerId.toString() !== first)))
    requests.clear()
    const written = new Map<string, number>()
    const getter = new BlobGetter<Want>({
      parts,
      budget: new ByteBudget(8 * MiB),
      write: async (want, plaintext) => {
        expect(Buffer.compare(plaintext, plaintexts.get(want.id)!)).toBe(0)
        written.set(want.id, (written.get(want.id) ?? 0) + 1)
      }
    })
    await getter.run(inGroups(wants))
    expect([...written.keys()].sort()).toEqual(wants.map(w => w.id).sort())
    expect([...written.values()].every(n => n === 1)).toBe(true)
    // 6.3 MiB in requests of up to 4 MiB, one out per host at a time: a few per host, not one a blob; both hosts served
    expect(requests.size).toBe(2)
    const sent = [...requests.values()].reduce((a, b) => a + b, 0)
    expect(sent).toBeLessThanOrEqual(6)
    expect(sent).toBeGreaterThanOrEqual(3)
  })

  it('reads no more bodies than its budget lets be written at once', async () => {
    const wants = await blobs(12, 400 * KiB, both)
    let writing = 0
    let most = 0
    const getter = new BlobGetter<Want>({
      parts,
      budget: new ByteBudget(MiB),
      write: async want => {
        writing += want.record.size
        most = Math.max(most, writing)
        // a slow writer: several turns of the event loop, while both hosts' bodies keep coming
        for (let i = 0; i < 20; i++) await new Promise(resolve => setImmediate(resolve))
        writing -= want.record.size
      }
    })
    await getter.run(inGroups(wants, 12))
    expect(most).toBeGreaterThan(0)
    expect(most).toBeLessThanOrEqual(MiB)
  })

  it('fails a blob no host gives back with BLOB_MISSING naming each, once nothing is being written', async () => {
    const wants = [...await blobs(1, 100 * KiB, both), ...await blobs(1, 100 * KiB, nowhere), ...await blobs(1, 100 * KiB, both)]
    let writing = 0
    const getter = new BlobGetter<Want>({
      parts,
      budget: new ByteBudget(MiB),
      write: async () => {
        writing++
        await new Promise(resolve => setImmediate(resolve))
        writing--
      }
    })
    const err = await getter.run(inGroups(wants)).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(KithError)
    expect((err as KithError).code).toBe('BLOB_MISSING')
    for (const h of hosts) expect((err as KithError).message).toContain(h.node.peerId.toString())
    expect(writing).toBe(0)
  })

  it('a run to both hosts indexes each blob at the size they hold, however their confirmations and the index writes interleave', async () => {
    // each index write waits a moment, so a second host's confirmation of a blob queues its write behind the first's,
    // while the first's send ends the blob and gives its sealed buffer back (a pool over its max frees it: 0e0b6ca)
    const tree = join(ownerDir.dir, 'run-tree')
    await mkdir(tree)
    for (let i = 0; i < 64; i++) await writeFile(join(tree, `f${i}`), randomBytes(200 * KiB + i))
    const putBlobs = parts.index.putBlobs
    parts.index.putBlobs = async records => { await sleep(10); await putBlobs.call(parts.index, records) }
    try {
      const hostIds = hosts.map(h => h.node.peerId.toString())
      const { snapshot } = await runBackup(parts, { paths: [tree], hosts: hostIds, replicas: 2, label: null })
      const ids = [...await parts.index.snapshotBlobs(snapshot.seq)]
      const records = await parts.index.blobRecords(ids)
      expect(records.filter(r => r?.kind === 'data').length).toBeGreaterThanOrEqual(64)
      for (const host of hosts) {
        const held = await host.backup.book.locate(parts.owner, records.map(r => r!.sealedId))
        expect(records.map(r => r!.size)).toEqual(held.map(h => h?.size))
      }
    } finally {
      parts.index.putBlobs = putBlobs
    }
  })
})
