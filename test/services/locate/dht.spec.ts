import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { openDatabase, sublevel, type Database } from '../../../src/peer/database.ts'
import { createIdentity, type Identity } from '../../../src/peer/identity.ts'
import { createNode, DHT_PROTOCOL, type KithLibp2p } from '../../../src/peer/node.ts'
import { FriendBook } from '../../../src/trust/friends.ts'
import { connectionGater, friendsOnly } from '../../../src/trust/gate.ts'
import type { Service } from '../../../src/trust/grants.ts'
import { LocateService } from '../../../src/services/locate/index.ts'
import { getRecords, putRecord } from '../../../src/services/locate/dht.ts'
import { parseAddressRecord, createAddressRecord, peerIdOfKey, dhtRecordKey, MAX_RECORD_ADDRS, MAX_RECORD_BYTES } from '../../../src/peer/address-record.ts'
import { NodeDatastore } from '../../../src/peer/datastore.ts'
import { dhtPeers } from '../../../src/services/locate/dht.ts'
import { peerIdFromString } from '@libp2p/peer-id'
import type { ConnectionGater, PeerId } from '@libp2p/interface'
import nacl from 'tweetnacl'
import { waitFor } from '../../helpers/testnet.ts'

/**
 * The DHT fallback, in one process: B looks for C, who moved; their common
 * friend A is online but doesn't grant B `locate`, so asking fails and the
 * record comes from the DHT (C put it to A). Then what a node's DHT store
 * holds: records of its friends only, within its limits, and not those of a
 * friend it revoked. Each node is wired as the daemon wires it.
 */
interface Peer {
  name: string
  dir: string
  db: Database
  identity: Identity
  friends: FriendBook
  node: KithLibp2p
  locate: LocateService
  datastore: NodeDatastore
  /** peers this node neither dials nor takes connections from, on top of the gate (a network between them that is down) */
  cutOff: Set<string>
}

async function start (name: string, dir: string, identity?: Identity, port = 0, options: { datastore?: NodeDatastore, dht?: boolean } = {}): Promise<Peer> {
  const db = await openDatabase(join(dir, 'db'))
  identity ??= await createIdentity(join(dir, 'identity.key'))
  const friends = new FriendBook(sublevel(db, 'friends'))
  await friends.load()
  const datastore = options.datastore ?? new NodeDatastore()
  const cutOff = new Set<string>()
  const gate = connectionGater(friends)
  const cut = (peerId: PeerId): boolean => cutOff.has(peerId.toString())
  const gater: ConnectionGater = {
    ...gate,
    denyDialPeer: peerId => cut(peerId) || (gate.denyDialPeer?.(peerId) ?? false),
    denyInboundEncryptedConnection: (peerId, conn) => cut(peerId) || (gate.denyInboundEncryptedConnection?.(peerId, conn) ?? false),
    denyOutboundEncryptedConnection: (peerId, conn) => cut(peerId) || (gate.denyOutboundEncryptedConnection?.(peerId, conn) ?? false)
  }
  const node = await createNode({ privateKey: identity.privateKey, listen: [`/ip4/127.0.0.1/tcp/${port}`], gater, datastore, dhtSubjects: peer => friends.isActive(peer) })
  node.use(DHT_PROTOCOL, friendsOnly(friends))
  const locate = await LocateService.start({ db, libp2p: node, friends, identity, dialPolicy: { loopback: true }, dhtRecords: datastore, ...(options.dht != null ? { dht: options.dht } : {}) })
  return { name, dir, db, identity, friends, node, locate, datastore, cutOff }
}

async function stop (p: Peer): Promise<void> {
  await p.locate.stop()
  await p.node.stop()
  await p.db.close()
}

async function befriend (x: Peer, y: Peer, grantsToY: Service[], grantsToX: Service[]): Promise<void> {
  const entry = (p: Peer, grantsToThem: Service[], grantsFromThem: Service[]) => ({
    peerId: p.node.peerId.toString(),
    publicKey: Buffer.from(p.identity.publicKey).toString('base64'),
    label: p.name,
    grantsToThem,
    grantsFromThem,
    addrs: p.node.getMultiaddrs().map(a => a.decapsulateCode(421).toString()),
    via: 'test'
  })
  await x.friends.befriend(entry(y, grantsToY, grantsToX))
  await y.friends.befriend(entry(x, grantsToX, grantsToY))
}

describe('the DHT fallback', () => {
  let base: string
  let a: Peer, b: Peer, c: Peer

  beforeAll(async () => {
    base = await mkdtemp(join(tmpdir(), 'kith-dht-'))
    ;[a, b, c] = await Promise.all(['alice', 'bob', 'carol'].map(async n => await start(n, join(base, n)))) as [Peer, Peer, Peer]
    await befriend(a, b, ['files'], ['files', 'locate']) // A grants B no locate
    await befriend(a, c, ['locate'], ['locate'])
    await befriend(b, c, ['locate'], ['locate'])
    await b.node.dial(a.node.getMultiaddrs()[0]!)
    await c.node.dial(a.node.getMultiaddrs()[0]!)
    await b.node.dial(c.node.getMultiaddrs()[0]!)
  })

  afterAll(async () => {
    for (const p of [a, b, c]) if (p != null) await stop(p).catch(() => {})
    await rm(base, { recursive: true, force: true })
  })

  it('finds a friend in the DHT when no common friend answers, and refuses an older record put back', async () => {
    const carolId = c.node.peerId.toString()
    await waitFor(async () => await b.locate.store.get(carolId), 'B has C\'s record', 30_000, 20)
    const old = (await b.locate.store.get(carolId))!
    const oldAddrs = c.node.getMultiaddrs()
    // C moves: same key and database, new port; it puts its new record into the DHT, where A keeps it
    await stop(c)
    c = await start('carol', c.dir, c.identity)
    await c.node.dial(a.node.getMultiaddrs()[0]!)
    const newest = (await c.locate.store.get(carolId))!
    expect(newest.seq).toBeGreaterThan(old.seq)
    await waitFor(() => c.locate.publisher.dhtPublishedSeq === newest.seq, 'C\'s new record in the DHT', 30_000, 20)

    // B knows only C's old record and address. C's DHT put may have connected them, and C pushed its new record then:
    // undo that. While B is cut off from C, neither redials the other (kad-dht keeps its closest peers connected), and
    // B's store takes the old record only after any push it is still storing (one offer per peer at a time).
    b.cutOff.add(carolId)
    await b.node.hangUp(c.node.peerId)
    await b.locate.store.drop(carolId)
    await b.locate.store.offer(old, carolId)
    await b.node.peerStore.patch(c.node.peerId, { multiaddrs: oldAddrs.map(ma => ma.decapsulateCode(421)) })
    b.cutOff.delete(carolId)

    const report = await b.locate.locator.locate(b.friends.get(carolId)!)
    // (record.from may say carol: the DHT query can connect B to C, who then pushes the same record)
    // its steps say which one failed
    expect(report, JSON.stringify(report.steps)).toMatchObject({ ok: true, via: 'dht', record: { seq: newest.seq } })
    expect(report.steps.find(s => s.step === 'skip')).toMatchObject({ label: 'alice', reason: expect.stringContaining('locate') })
    expect(report.steps.find(s => s.step === 'dht')).toMatchObject({ result: 'record', record: { seq: newest.seq } })
    expect(report.steps.find(s => s.step === 'verify')).toMatchObject({ from: 'dht', known: old.seq, newer: true })
    expect(b.friends.get(carolId)!.addrs).toEqual(newest.addrs)

    // a friend putting C's older record back into the DHT: A's validator refuses it and keeps the new one
    const accepted = await putRecord(b.node.services.dht, c.node.peerId, old, { signal: AbortSignal.timeout(5_000) })
    expect(accepted).toBe(0)
    const held = await getRecords(a.node.services.dht, c.node.peerId, { signal: AbortSignal.timeout(10_000) })
    expect(held.map(bytes => parseAddressRecord(bytes).seq)).not.toContain(old.seq)
  })
})

/** Someone's Ed25519 keys, to sign address records as them (no node needed). */
function someone (): { peerId: string, publicKey: Uint8Array, record: (seq: number, addrs?: string[]) => ReturnType<typeof createAddressRecord> } {
  const keys = nacl.sign.keyPair()
  return {
    peerId: peerIdOfKey(keys.publicKey),
    publicKey: keys.publicKey,
    record: (seq, addrs = ['/ip4/10.1.2.3/tcp/4001']) => createAddressRecord({ secretKey: keys.secretKey, publicKey: keys.publicKey, addrs, seq })
  }
}

describe('what a node\'s DHT store holds', () => {
  let base: string
  let a: Peer, b: Peer
  // four friends of A on paper (no node), whose records B passes on, and a stranger
  const paper = [someone(), someone(), someone(), someone()]
  const stranger = someone()
  const put = async (who: ReturnType<typeof someone>, record: ReturnType<typeof createAddressRecord>): Promise<number> =>
    await putRecord(b.node.services.dht, peerIdFromString(who.peerId), record, { signal: AbortSignal.timeout(5_000) })

  beforeAll(async () => {
    base = await mkdtemp(join(tmpdir(), 'kith-dht-store-'))
    // A holds three records, or 2 KiB of them, at most; A and B don't publish their own, so only the test's puts count
    a = await start('alice', join(base, 'alice'), undefined, 0, { datastore: new NodeDatastore({ maxRecords: 3, maxRecordBytes: 2048 }), dht: false })
    b = await start('bob', join(base, 'bob'), undefined, 0, { dht: false })
    await befriend(a, b, ['locate'], ['locate'])
    for (const [i, p] of paper.entries()) {
      await a.friends.befriend({ peerId: p.peerId, publicKey: Buffer.from(p.publicKey).toString('base64'), label: `paper${i}`, grantsToThem: [], grantsFromThem: [], addrs: [], via: 'test' })
    }
    await b.node.dial(a.node.getMultiaddrs()[0]!)
    await waitFor(() => dhtPeers(b.node.services.dht) > 0, 'A in B\'s DHT routing table', 30_000, 20)
  })

  afterAll(async () => {
    for (const p of [a, b]) if (p != null) await stop(p).catch(() => {})
    await rm(base, { recursive: true, force: true })
  })

  it('refuses a friend\'s put of a record about a peer that is not my friend', async () => {
    expect(await put(stranger, stranger.record(1))).toBe(0)
    expect(a.datastore.recordUsage.records).toBe(0)
  })

  it('takes friends\' records up to its count limit, then refuses new ones; a newer record of one it holds still fits', async () => {
    for (const p of paper.slice(0, 3)) expect(await put(p, p.record(1))).toBe(1)
    expect(a.datastore.recordUsage.records).toBe(3)
    expect(await put(paper[3]!, paper[3]!.record(1))).toBe(0)
    expect(a.datastore.recordUsage.records).toBe(3)
    expect(await put(paper[0]!, paper[0]!.record(2))).toBe(1)
    expect(a.datastore.recordUsage.records).toBe(3)
  })

  it('refuses a record over the size any record may have, and one that would take the store over its byte limit', async () => {
    const p = paper[1]!
    const long = Array.from({ length: MAX_RECORD_ADDRS }, (_, i) => `/ip6/fd00:1111:2222:3333:4444:5555:6666:${i + 1}/tcp/4001/p2p/${b.node.peerId.toString()}/p2p-circuit`)
    const big = p.record(5, long)
    // a valid record, newer, of a friend: only the 2 KiB limit can refuse it
    expect(big.bytes.length).toBeLessThan(MAX_RECORD_BYTES)
    expect(big.bytes.length).toBeGreaterThan(2048)
    const before = a.datastore.recordUsage.bytes
    expect(await put(p, big)).toBe(0)
    expect(a.datastore.recordUsage.bytes).toBe(before)
    // over MAX_RECORD_BYTES: refused by the validator whatever room is left
    const oversize = new Uint8Array(MAX_RECORD_BYTES + 1).fill(0xa0)
    let accepted = 0
    for await (const event of b.node.services.dht.put(dhtRecordKey(peerIdFromString(p.peerId).toMultihash().bytes), oversize, { signal: AbortSignal.timeout(5_000) })) {
      if (event.name === 'PEER_RESPONSE' && event.messageName === 'PUT_VALUE') accepted++
    }
    expect(accepted).toBe(0)
    expect(a.datastore.recordUsage.bytes).toBe(before)
  })

  it('keeps no provider records: kith provides nothing through the DHT', async () => {
    // kad-dht's provider store, the same path a friend's ADD_PROVIDER takes
    await expect((async () => { for await (const _ of a.node.services.dht.provide(b.node.peerId.toCID())) {} })())
      .rejects.toMatchObject({ code: 'DHT_STORE_FULL' })
    let providers = 0
    for await (const _ of a.datastore.queryKeys({ prefix: '/dht/provider/' })) providers++
    expect(providers).toBe(0)
  })

  it('forgets a friend\'s record when the friend is revoked', async () => {
    const p = paper[2]!
    expect(a.datastore.recordUsage.records).toBe(3)
    await a.friends.revoke(p.peerId)
    await waitFor(() => a.datastore.recordUsage.records === 2, 'A to drop the revoked friend\'s DHT record', 10_000, 10)
    expect(a.datastore.dropRecord(p.peerId)).toBe(false)
    // and takes no new one about them
    expect(await put(p, p.record(9))).toBe(0)
    expect(a.datastore.recordUsage.records).toBe(2)
  })
})
