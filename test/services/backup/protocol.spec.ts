import { randomBytes } from 'node:crypto'
import { open, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import nacl from 'tweetnacl'
import { privateKeyFromRaw } from '@libp2p/crypto/keys'
import { lpStream } from '@libp2p/utils'
import { openDatabase, sublevel, type Database } from '../../../src/peer/database.ts'
import { createNode, type KithLibp2p } from '../../../src/peer/node.ts'
import { decodeCanonical, encodeCanonical } from '../../../src/peer/canonical.ts'
import { connectionGater } from '../../../src/trust/gate.ts'
import { FriendBook } from '../../../src/trust/friends.ts'
import type { Service } from '../../../src/trust/grants.ts'
import { transferEngine, type TransferEngine } from '../../../src/services/engine/index.ts'
import { BackupHost } from '../../../src/services/backup/host.ts'
import { backupClient, type BackupClient } from '../../../src/services/backup/protocol.ts'
import { auditHost } from '../../../src/services/backup/audit.ts'
import { BLOB_FORMAT } from '../../../src/services/backup/blob.ts'
import { LevelOwnerIndex } from '../../../src/services/backup/owner-index.ts'
import { AUDIT_LEAF_SIZE, LEGACY_AUDIT_LEAF_SIZE, auditRoot, leafCount, verifyAudit } from '../../../src/services/backup/audit-tree.ts'
import { BACKUP_PROTOCOL, BODY_SLICE, MAX_HEADER, MAX_MANY_BYTES, MAX_STREAMS_PER_OWNER, signRequest, signedBody } from '../../../src/services/backup/wire.ts'
import { BandwidthScheduler } from '../../../src/transfer/scheduler/index.ts'
import { askHave, getChunks } from '../../../src/transfer/chunk-protocol.ts'
import { chunkId, SEAL_FORMAT } from '../../../src/transfer/seal.ts'
import { tempDir } from '../../helpers/chunks.ts'
import { KithError } from '../../../src/errors.ts'

/**
 * The backup protocol between real libp2p nodes in this process: a host with
 * a real LevelDB home, the engine's real chunk store and its BackupHost, and
 * owners that are its friends (granted backup or not) or strangers.
 */

interface Peer {
  node: KithLibp2p
  peerId: string
  secretKey: Uint8Array
  publicKey: string
}

async function peer (gater = {}): Promise<Peer> {
  const { secretKey, publicKey } = nacl.sign.keyPair()
  const node = await createNode({ privateKey: privateKeyFromRaw(secretKey), listen: ['/ip4/127.0.0.1/tcp/0'], gater })
  await node.start()
  return { node, peerId: node.peerId.toString(), secretKey, publicKey: Buffer.from(publicKey).toString('base64') }
}

const codeOf = (err: unknown): string => err instanceof KithError ? err.code : `not a KithError: ${String(err)}`

/** bytes in the form of a sealed backup blob (its format byte first); what follows is random, as ciphertext looks */
const blob = (size: number, format = BLOB_FORMAT): { id: string, sealed: Buffer } => {
  const sealed = randomBytes(size)
  sealed[0] = format
  return { id: chunkId(sealed), sealed }
}

describe('backup protocol', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let db: Database
  let friends: FriendBook
  let host: Peer
  let engine: TransferEngine
  let backup: BackupHost
  let alice: Peer, bob: Peer, carol: Peer, stranger: Peer
  const bandwidth = new BandwidthScheduler()

  const clientOf = (p: Peer): BackupClient => {
    return backupClient({ libp2p: p.node, bandwidth, peer: host.peerId, identity: { secretKey: p.secretKey } })
  }

  /** One raw request on a fresh stream: the frames given, then the host's first answer, decoded. */
  async function raw (from: Peer, frames: Uint8Array[]): Promise<Record<string, unknown>> {
    const stream = await from.node.dialProtocol(host.node.peerId, BACKUP_PROTOCOL)
    const lp = lpStream(stream, { maxDataLength: 2 * MAX_HEADER })
    for (const f of frames) await lp.write(f)
    const answer = decodeCanonical((await lp.read()).subarray(), 'PROTOCOL_VIOLATION', 'answer') as Record<string, unknown>
    stream.abort(new Error('done'))
    return answer
  }

  beforeAll(async () => {
    tmp = await tempDir('kith-backup-protocol-')
    db = await openDatabase(join(tmp.dir, 'db'))
    friends = new FriendBook(sublevel(db, 'friends'))
    await friends.load()
    host = await peer(connectionGater(friends))
    engine = transferEngine()({ db, home: tmp.dir, libp2p: host.node, friends })
    await engine.start()
    backup = await BackupHost.start({ db, home: tmp.dir, libp2p: host.node, friends, engine, graceMs: 0 })
    engine.afterStart()
    ;[alice, bob, carol, stranger] = await Promise.all([peer(), peer(), peer(), peer()])
    const befriend = async (p: Peer, label: string, grants: Service[]): Promise<void> => {
      await friends.befriend({ peerId: p.peerId, publicKey: p.publicKey, label, grantsToThem: grants, grantsFromThem: [], addrs: [], via: 'test' })
      await p.node.peerStore.merge(host.node.peerId, { multiaddrs: host.node.getMultiaddrs() })
    }
    await befriend(alice, 'alice', ['backup', 'files'])
    await befriend(bob, 'bob', ['backup'])
    await befriend(carol, 'carol', ['files']) // a friend, but not granted backup
    await stranger.node.peerStore.merge(host.node.peerId, { multiaddrs: host.node.getMultiaddrs() })
  })

  afterAll(async () => {
    await Promise.all([alice, bob, carol, stranger].map(async p => { await p.node.stop() }))
    await engine.beforeStop()
    await backup.stop()
    await engine.stop()
    await host.node.stop()
    await db.close()
    bandwidth.close()
    await tmp.cleanup()
  })

  it('puts, finds, lists, gets, audits and removes an owner\'s blobs', async () => {
    const client = clientOf(alice)
    const blobs = [blob(100), blob(BODY_SLICE * 2 + 17), blob(64 * 1024)]
    for (const b of blobs) expect(await client.put(b.id, b.sealed)).toMatchObject({ stored: true })
    const total = blobs.reduce((n, b) => n + b.sealed.length, 0)
    // a blob held already moves no bytes and costs nothing more
    expect(await client.put(blobs[0]!.id, blobs[0]!.sealed)).toMatchObject({ stored: false, used: total })
    expect(await client.usage()).toMatchObject({ used: total, blobs: 3 })
    expect(await client.has([blobs[1]!.id, blob(10).id])).toEqual([true, false])

    const sorted = blobs.map(b => ({ id: b.id, size: b.sealed.length })).sort((a, b) => a.id < b.id ? -1 : 1)
    const page = await client.list(undefined, 2)
    expect(page).toEqual({ ids: sorted.slice(0, 2), next: sorted[1]!.id })
    expect(await client.list(page.next!, 2)).toEqual({ ids: sorted.slice(2), next: null })

    for (const b of blobs) expect(Buffer.from(await client.get(b.id))).toEqual(b.sealed)

    // challenges name the owner's leaf size; a legacy 4 KiB one goes without it, as owners before it sent them
    const big = blobs[1]!
    const n = leafCount(big.sealed.length, AUDIT_LEAF_SIZE)
    const old = leafCount(big.sealed.length, LEGACY_AUDIT_LEAF_SIZE)
    const results = await client.audit([
      { id: big.id, leaf: 0, leafSize: AUDIT_LEAF_SIZE }, { id: big.id, leaf: n - 1, leafSize: AUDIT_LEAF_SIZE }, { id: big.id, leaf: n, leafSize: AUDIT_LEAF_SIZE },
      { id: blob(10).id, leaf: 0, leafSize: AUDIT_LEAF_SIZE }, { id: big.id, leaf: old - 1, leafSize: LEGACY_AUDIT_LEAF_SIZE }
    ])
    expect(results.map(r => r.answer === null)).toEqual([false, false, true, true, false])
    expect(results[0]!.answer!.leaf.length).toBe(AUDIT_LEAF_SIZE)
    expect(verifyAudit(auditRoot(big.sealed, AUDIT_LEAF_SIZE), 0, n, results[0]!.answer!, AUDIT_LEAF_SIZE)).toBe(true)
    expect(verifyAudit(auditRoot(big.sealed, AUDIT_LEAF_SIZE), n - 1, n, results[1]!.answer!, AUDIT_LEAF_SIZE)).toBe(true)
    expect(verifyAudit(auditRoot(big.sealed, LEGACY_AUDIT_LEAF_SIZE), old - 1, old, results[4]!.answer!, LEGACY_AUDIT_LEAF_SIZE)).toBe(true)
    expect(backup.hosted().find(h => h.peerId === alice.peerId)?.trail.at(-1)).toMatchObject({ challenges: 5, answered: 3 })
    // more leaf bytes than one answer may hold (17 x 16 KiB) are refused before a blob is read
    const tooMany = Array.from({ length: 17 }, () => ({ id: big.id, leaf: 0, leafSize: AUDIT_LEAF_SIZE } as const))
    expect(codeOf(await client.audit(tooMany).catch(e => e))).toBe('PROTOCOL_VIOLATION')

    expect(await client.remove([blobs[0]!.id, blob(10).id])).toEqual({ freed: 100, used: total - 100 })
    expect(await client.has([blobs[0]!.id])).toEqual([false])
    expect(codeOf(await client.get(blobs[0]!.id).catch(e => e))).toBe('BLOB_MISSING')

    expect(await client.getRecord()).toBeNull()
    await client.putRecord(Buffer.from('record one'))
    await client.putRecord(Buffer.from('record two'))
    expect(Buffer.from((await client.getRecord())!).toString()).toBe('record two')
  })

  it('keeps only sealed backup blobs: bytes in the form of a shared chunk are refused, by put and put-many, and nothing is kept', async () => {
    const client = clientOf(alice)
    const before = await client.usage()
    // a chunk sealed for sharing (first byte SEAL_FORMAT) would be served by the chunk protocol to friends granted files
    const shareLike = blob(5000, SEAL_FORMAT)
    expect(codeOf(await client.put(shareLike.id, shareLike.sealed).catch(e => e))).toBe('BLOB_MALFORMED')
    expect(codeOf(await client.putMany([blob(300), shareLike]).catch(e => e))).toBe('BLOB_MALFORMED')
    expect(await client.has([shareLike.id])).toEqual([false])
    expect(await engine.store.has(shareLike.id)).toBe(false)
    const items = []
    for await (const item of getChunks(alice.node, host.node.peerId, [shareLike.id])) items.push(item)
    expect(items).toEqual([{ id: shareLike.id, missing: true }])
    expect((await client.usage()).used).toBeLessThanOrEqual(before.used + 300)
  })

  it('refuses strangers and friends not granted backup, and shows no owner another\'s blobs or record', async () => {
    const b = blob(5000)
    await clientOf(alice).put(b.id, b.sealed)
    for (const outsider of [stranger, carol]) {
      const client = clientOf(outsider)
      const calls: Array<Promise<unknown>> = [client.usage(), client.put(b.id, b.sealed), client.get(b.id), client.getRecord(), client.list(), client.has([b.id])]
      expect(await Promise.all(calls.map(async call => await call.then(() => 'ok', codeOf)))).toEqual(calls.map(() => 'BACKUP_NOT_GRANTED'))
    }
    const other = clientOf(bob)
    expect(await other.has([b.id])).toEqual([false])
    expect(codeOf(await other.get(b.id).catch(e => e))).toBe('BLOB_MISSING')
    expect((await other.list()).ids.map(x => x.id)).not.toContain(b.id)
    expect(await other.getRecord()).toBeNull()
    expect((await other.audit([{ id: b.id, leaf: 0, leafSize: AUDIT_LEAF_SIZE }]))[0]!.answer).toBeNull()
    // the backup grant opens no way into the chunk protocol (friends granted files only)
    expect(await askHave(bob.node, host.node.peerId, [b.id]).then(() => 'answered', () => 'refused')).toBe('refused')
    expect(await askHave(alice.node, host.node.peerId, [b.id]).then(() => 'answered', () => 'refused')).toBe('answered')
    // and a friend granted files who knows a blob's sealed id gets no bytes of it there: only shared chunks go out
    const items = []
    for await (const item of getChunks(alice.node, host.node.peerId, [b.id])) items.push(item)
    expect(items).toEqual([{ id: b.id, missing: true }])
    // removing it as bob frees nothing of alice's
    expect((await other.remove([b.id])).freed).toBe(0)
    expect(await clientOf(alice).has([b.id])).toEqual([true])
  })

  it('keeps used within the quota, exactly, under concurrent puts; quota 0 stops new writes', async () => {
    const size = 100 * 1024
    await backup.setQuota('bob', 5 * size + size / 2)
    const client = clientOf(bob)
    const before = (await client.usage()).used
    expect(before).toBe(0)
    // nearly as many at once as the host serves one owner (MAX_STREAMS_PER_OWNER), room for 5
    const blobs = Array.from({ length: MAX_STREAMS_PER_OWNER - 2 }, () => blob(size))
    const outcomes = await Promise.all(blobs.map(async b => await client.put(b.id, b.sealed).then(() => 'ok', e => codeOf(e))))
    expect(outcomes.filter(o => o === 'ok')).toHaveLength(5)
    expect(outcomes.filter(o => o === 'QUOTA_EXCEEDED')).toHaveLength(MAX_STREAMS_PER_OWNER - 2 - 5)
    const usage = await client.usage()
    const listed = (await client.list()).ids
    expect(usage).toMatchObject({ used: 5 * size, blobs: 5, quota: 5 * size + size / 2 })
    expect(listed.reduce((n, x) => n + x.size, 0)).toBe(usage.used)
    expect((await client.getMany(listed.map(x => x.id))).map(got => got instanceof Uint8Array)).toEqual(listed.map(() => true))

    await backup.setQuota('bob', 0)
    const late = blob(100)
    expect(codeOf(await client.put(late.id, late.sealed).catch(e => e))).toBe('QUOTA_EXCEEDED')
    // what is stored stays readable and removable
    expect((await client.remove([listed[0]!.id])).freed).toBe(size)
    await backup.setQuota('bob', 10 * size)
  })

  it('refuses truncated, bit-flipped, oversize and unknown requests, and lying bodies, changing nothing', async () => {
    const client = clientOf(bob)
    const before = await client.usage()
    const good = encodeCanonical({ v: 1, op: 'usage' })
    expect(await raw(bob, [good.subarray(0, good.length - 1)])).toMatchObject({ ok: false, code: 'PROTOCOL_VIOLATION' })
    const flipped = Uint8Array.from(good)
    flipped[3]! ^= 0x20
    expect(await raw(bob, [flipped])).toMatchObject({ ok: false, code: 'PROTOCOL_VIOLATION' })
    expect(await raw(bob, [encodeCanonical({ v: 2, op: 'usage' })])).toMatchObject({ ok: false, code: 'PROTOCOL_VIOLATION' })
    expect(await raw(bob, [encodeCanonical({ v: 1, op: 'format-disk' })])).toMatchObject({ ok: false, code: 'PROTOCOL_VIOLATION' })
    expect(await raw(bob, [new Uint8Array(MAX_HEADER + 1)])).toMatchObject({ ok: false, code: 'PAYLOAD_TOO_LARGE' })
    // a blob bigger (or smaller) than any sealed blob is refused before a byte of it moves
    expect(await raw(bob, [encodeCanonical({ v: 1, op: 'put', id: blob(1).id, size: 64 * 1024 * 1024 })])).toMatchObject({ ok: false, code: 'PROTOCOL_VIOLATION' })
    expect(await raw(bob, [encodeCanonical({ v: 1, op: 'put', id: blob(1).id, size: 28 })])).toMatchObject({ ok: false, code: 'PROTOCOL_VIOLATION' })

    // a body longer than announced, and one whose bytes are not the id
    const b = blob(1000)
    const put = encodeCanonical({ v: 1, op: 'put', id: b.id, size: 1000 })
    const stream = await bob.node.dialProtocol(host.node.peerId, BACKUP_PROTOCOL)
    const lp = lpStream(stream)
    await lp.write(put)
    expect(decodeCanonical((await lp.read()).subarray(), 'PROTOCOL_VIOLATION', 'go')).toMatchObject({ ok: true, go: true })
    await lp.write(Buffer.concat([b.sealed, Buffer.alloc(1)]))
    expect(decodeCanonical((await lp.read()).subarray(), 'PROTOCOL_VIOLATION', 'answer')).toMatchObject({ ok: false, code: 'PROTOCOL_VIOLATION' })
    stream.abort(new Error('done'))
    expect(await client.put(b.id, blob(1000).sealed).catch(e => codeOf(e))).toBe('CHUNK_HASH_MISMATCH')

    // removes: another key, another host, a replay
    const ids = [blob(3).id]
    const forged = { v: 1, op: 'remove', ids, counter: Date.now() + 10_000, sig: signRequest(signedBody('remove', host.peerId, Date.now() + 10_000, ids), alice.secretKey) }
    expect(await raw(bob, [encodeCanonical(forged)])).toMatchObject({ ok: false, code: 'BACKUP_BAD_SIGNATURE' })
    const elsewhere = { ...forged, sig: signRequest(signedBody('remove', alice.peerId, forged.counter, ids), bob.secretKey) }
    expect(await raw(bob, [encodeCanonical(elsewhere)])).toMatchObject({ ok: false, code: 'BACKUP_BAD_SIGNATURE' })
    const signed = { ...forged, sig: signRequest(signedBody('remove', host.peerId, forged.counter, ids), bob.secretKey) }
    expect(await raw(bob, [encodeCanonical(signed)])).toMatchObject({ ok: true })
    expect(await raw(bob, [encodeCanonical(signed)])).toMatchObject({ ok: false, code: 'BACKUP_REPLAYED' })
    // the client steps over a counter the host saw from elsewhere
    const kept = blob(40)
    await client.put(kept.id, kept.sealed)
    expect(await client.remove([kept.id])).toMatchObject({ freed: 40 })

    const after = await client.usage()
    expect(after.used).toBe(before.used)
    expect(after.blobs).toBe(before.blobs)
  })

  it('a host stores a body in frames of the old 256 KiB and of the most it takes (MAX_HEADER), as in BODY_SLICE\'s', async () => {
    // BODY_SLICE fills five Noise messages (noise-fit.ts); owners from before it send 256 KiB, and hosts from before it take up to MAX_HEADER
    expect(BODY_SLICE).toBeLessThanOrEqual(MAX_HEADER)
    const client = clientOf(alice)
    for (const slice of [256 * 1024, MAX_HEADER, BODY_SLICE]) {
      const b = blob(3 * slice + 5)
      const stream = await alice.node.dialProtocol(host.node.peerId, BACKUP_PROTOCOL)
      const lp = lpStream(stream, { maxDataLength: 2 * MAX_HEADER })
      await lp.write(encodeCanonical({ v: 1, op: 'put', id: b.id, size: b.sealed.length }))
      expect(decodeCanonical((await lp.read()).subarray(), 'PROTOCOL_VIOLATION', 'go')).toMatchObject({ ok: true, go: true })
      for (let at = 0; at < b.sealed.length; at += slice) await lp.write(b.sealed.subarray(at, at + slice))
      expect(decodeCanonical((await lp.read()).subarray(), 'PROTOCOL_VIOLATION', 'answer'), `frames of ${slice} bytes`).toMatchObject({ ok: true, stored: true })
      await stream.close()
      expect(Buffer.from(await client.get(b.id))).toEqual(b.sealed)
    }
  })

  it('fails the audit of a host whose disk has two of my blobs swapped and one gone, over the wire, saying which were damaged', async () => {
    const client = clientOf(bob)
    const [x, y, z] = [blob(40_000), blob(40_000), blob(40_000)]
    const ownerDb = await openDatabase(join(tmp.dir, 'bob-owner-db'))
    const index = LevelOwnerIndex.open(ownerDb)
    for (const b of [x, y, z]) {
      expect(await client.put(b.id, b.sealed)).toMatchObject({ stored: true })
      const root = Buffer.from(auditRoot(b.sealed, AUDIT_LEAF_SIZE)).toString('hex')
      await index.putBlob(randomBytes(32).toString('hex'), { kind: 'data', sealedId: b.id, size: b.sealed.length, root, auditLeaf: AUDIT_LEAF_SIZE, hosts: [host.peerId] })
    }
    const before = await auditHost(client, index)
    expect(before).toMatchObject({ ok: true, blobs: 3, failures: [] })
    // in the pack, each of x and y now has the other's bytes (the host checks a blob's hash as it reads it), and z, the last, is cut off
    const places = (await backup.book.locate(bob.peerId, [x.id, y.id, z.id])).map(held => held!.place!)
    expect(new Set(places.map(p => p.pack)).size).toBe(1)
    const pack = await open(join(tmp.dir, 'backup-host', 'packs', bob.peerId, `${places[0]!.pack}.pack`), 'r+')
    await pack.write(y.sealed, 0, y.sealed.length, places[0]!.offset)
    await pack.write(x.sealed, 0, x.sealed.length, places[1]!.offset)
    expect((await pack.stat()).size).toBe(places[2]!.offset + z.sealed.length)
    await pack.truncate(places[2]!.offset)
    await pack.close()
    const after = await auditHost(client, index)
    expect(after).toMatchObject({ ok: false, blobs: 3, error: null })
    const whys = (outcome: typeof after): string[][] => outcome.failures.map(f => [f.sealedId, f.why]).sort()
    expect(whys(after)).toEqual([[x.id, 'damaged'], [y.id, 'damaged'], [z.id, 'missing']].sort())
    // the host dropped its damaged copies as it found them: asked again, they are missing
    expect(whys(await auditHost(client, index))).toEqual([[x.id, 'missing'], [y.id, 'missing'], [z.id, 'missing']].sort())
    // an owner from before the damaged answer reads its empty leaf as wrong data: verifyAudit refuses it
    expect(verifyAudit(auditRoot(x.sealed, AUDIT_LEAF_SIZE), 0, leafCount(x.sealed.length, AUDIT_LEAF_SIZE), { leaf: new Uint8Array(0), path: [] }, AUDIT_LEAF_SIZE)).toBe(false)
    await ownerDb.close()
  })

  it('fails the audit of a host that answers without the data, over the wire', async () => {
    // it kept the ids and nothing else: each answer is a leaf and a path of its own making
    const liar = await peer()
    await liar.node.handle(BACKUP_PROTOCOL, async stream => {
      const lp = lpStream(stream)
      const request = decodeCanonical((await lp.read()).subarray(), 'PROTOCOL_VIOLATION', 'request') as { challenges: Array<{ id: string, leaf: number }> }
      await lp.write(encodeCanonical({ v: 1, ok: true, answers: request.challenges.map(c => ({ id: c.id, leaf: c.leaf, leafBytes: randomBytes(AUDIT_LEAF_SIZE), path: [randomBytes(32)] })) }))
      await stream.close()
    })
    await alice.node.peerStore.merge(liar.node.peerId, { multiaddrs: liar.node.getMultiaddrs() })
    const ownerDb = await openDatabase(join(tmp.dir, 'alice-owner-db'))
    const index = LevelOwnerIndex.open(ownerDb)
    const placed = [blob(2 * AUDIT_LEAF_SIZE), blob(2 * AUDIT_LEAF_SIZE)]
    for (const b of placed) {
      const root = Buffer.from(auditRoot(b.sealed, AUDIT_LEAF_SIZE)).toString('hex')
      await index.putBlob(randomBytes(32).toString('hex'), { kind: 'data', sealedId: b.id, size: b.sealed.length, root, auditLeaf: AUDIT_LEAF_SIZE, hosts: [liar.peerId] })
    }
    const outcome = await auditHost(backupClient({ libp2p: alice.node, bandwidth, peer: liar.peerId }), index)
    expect(outcome).toMatchObject({ ok: false, blobs: 2, error: null })
    expect(outcome.failures.map(f => [f.sealedId, f.why]).sort()).toEqual(placed.map(b => [b.id, 'wrong']).sort())
    await ownerDb.close()
    await liar.node.stop()
  })

  it('tells the owner a host sent bytes that are not the blob', async () => {
    const liar = await peer()
    await liar.node.handle(BACKUP_PROTOCOL, async stream => {
      const lp = lpStream(stream)
      await lp.read()
      await lp.write(encodeCanonical({ v: 1, ok: true, size: 100 }))
      await lp.write(randomBytes(100))
      await stream.close()
    })
    await alice.node.peerStore.merge(liar.node.peerId, { multiaddrs: liar.node.getMultiaddrs() })
    const client = backupClient({ libp2p: alice.node, bandwidth, peer: liar.node.peerId })
    expect(codeOf(await client.get(blob(100).id).catch(e => e))).toBe('BLOB_CORRUPT')
    await liar.node.stop()
  })

  it('moves every byte through the bandwidth scheduler in class backup, both ends', async () => {
    /** counts what flows of `scheduler` are granted, by direction and class */
    const spy = (scheduler: BandwidthScheduler): Map<string, number> => {
      const taken = new Map<string, number>()
      const flow = scheduler.flow.bind(scheduler)
      scheduler.flow = init => {
        const f = flow(init)
        const take = f.take.bind(f)
        f.take = async (bytes, signal, p) => {
          const key = `${f.direction} ${f.class}`
          taken.set(key, (taken.get(key) ?? 0) + bytes)
          await take(bytes, signal, p)
        }
        return f
      }
      return taken
    }
    const owner = new BandwidthScheduler()
    const ownerTaken = spy(owner)
    const hostTaken = spy(engine.bandwidth)
    const client = backupClient({ libp2p: alice.node, bandwidth: owner, peer: host.peerId })
    const b = blob(300 * 1024)
    await client.put(b.id, b.sealed)
    await client.get(b.id)
    owner.close()
    for (const taken of [ownerTaken, hostTaken]) {
      expect([...taken.keys()].every(k => k.endsWith(' backup'))).toBe(true)
      expect(taken.get('up backup')).toBeGreaterThan(b.sealed.length)
      expect(taken.get('down backup')).toBeGreaterThan(b.sealed.length)
    }
  })

  it('put-many and get-many: many blobs a request, the quota exact under concurrent batches, a bad body gives back what it did not store', async () => {
    const client = clientOf(bob)
    const size = 50 * 1024
    const start = (await client.usage()).used
    await backup.setQuota('bob', start + 5 * size + size / 2)
    // two batches at once against room for 5 of their 8 blobs (one blob in both): 5 reserved, whichever wins
    const shared = blob(size)
    const batches = [[shared, blob(size), blob(size), blob(size)], [blob(size), shared, blob(size), blob(size), blob(size)]]
    const answers = await Promise.all(batches.map(async b => await client.putMany(b)))
    const go = answers.flatMap(a => a.status).filter(s => s === 'go').length
    expect(go).toBe(5)
    // 8 distinct blobs, 5 fit: the other 3 were refused before a byte of them moved
    expect(answers.flatMap(a => a.status).filter(s => s === 'full').length).toBeGreaterThanOrEqual(3)
    const usage = await client.usage()
    expect(usage.used).toBe(start + 5 * size)
    const listed = (await client.list()).ids
    expect(listed.reduce((n, x) => n + x.size, 0)).toBe(usage.used)
    expect((await client.getMany(listed.map(x => x.id))).map(got => got instanceof Uint8Array)).toEqual(listed.map(() => true))

    // get-many: each blob verified, or missing, in the order asked
    const stored = [...new Map(batches.flat().map(x => [x.id, x])).values()].filter(x => listed.some(l => l.id === x.id))
    const unknown = blob(100)
    const got = await client.getMany([...stored.map(b => b.id), unknown.id])
    expect(got.slice(0, -1).map(g => Buffer.from(g as Uint8Array))).toEqual(stored.map(b => b.sealed))
    expect(codeOf(got.at(-1))).toBe('BLOB_MISSING')

    // a body that is not its blob: the one before it is kept, it and the rest are given back
    await backup.setQuota('bob', start + 100 * size)
    const [a, b, c] = [blob(1000), blob(1000), blob(1000)]
    const stream = await bob.node.dialProtocol(host.node.peerId, BACKUP_PROTOCOL)
    const lp = lpStream(stream)
    await lp.write(encodeCanonical({ v: 1, op: 'put-many', blobs: [a, b, c].map(x => ({ id: x.id, size: 1000 })) }))
    expect(decodeCanonical((await lp.read()).subarray(), 'PROTOCOL_VIOLATION', 'status')).toMatchObject({ ok: true, status: ['go', 'go', 'go'] })
    await lp.write(a.sealed)
    await lp.write(blob(1000).sealed)
    expect(decodeCanonical((await lp.read()).subarray(), 'PROTOCOL_VIOLATION', 'answer')).toMatchObject({ ok: false, code: 'CHUNK_HASH_MISMATCH' })
    stream.abort(new Error('done'))
    expect(await client.has([a.id, b.id, c.id])).toEqual([true, false, false])
    expect((await client.usage()).used).toBe(start + 5 * size + 1000)

    // get-many of more bytes than one answer may hold is refused before a blob is read
    const bigs = Array.from({ length: 5 }, () => blob(MAX_MANY_BYTES / 4 - 1000))
    for (const part of [bigs.slice(0, 3), bigs.slice(3)]) await clientOf(alice).putMany(part)
    expect(codeOf(await clientOf(alice).getMany(bigs.map(x => x.id)).catch(e => e))).toBe('PAYLOAD_TOO_LARGE')
    await clientOf(alice).remove(bigs.map(x => x.id))
  })

  it('deletes a revoked friend\'s blobs and record after the grace period (0 here)', async () => {
    const b = blob(2000)
    const client = clientOf(bob)
    await client.put(b.id, b.sealed)
    await client.putRecord(Buffer.from('bob'))
    await friends.revoke('bob')
    await backup.sweep()
    expect(backup.hosted().find(h => h.peerId === bob.peerId)).toBeUndefined()
    const live = new Set<string>()
    await backup.book.liveChunks(live)
    expect(live.has(b.id)).toBe(false)
    // their packs went with their rows
    expect(await readdir(join(tmp.dir, 'backup-host', 'packs'))).not.toContain(bob.peerId)
  })
})
