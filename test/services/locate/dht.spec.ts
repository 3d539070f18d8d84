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
import type { StoredRecord } from '../../../src/services/locate/record-store.ts'
import { parseAddressRecord } from '../../../src/peer/address-record.ts'
import { waitFor } from '../../helpers/testnet.ts'

/**
 * The DHT fallback, in one process: B looks for C, who moved; their common
 * friend A is online but doesn't grant B `locate`, so asking fails and the
 * record comes from the DHT (C put it to A).
 */
interface Peer {
  name: string
  dir: string
  db: Database
  identity: Identity
  friends: FriendBook
  node: KithLibp2p
  locate: LocateService
}

async function start (name: string, dir: string, identity?: Identity, port = 0): Promise<Peer> {
  const db = await openDatabase(join(dir, 'db'))
  identity ??= await createIdentity(join(dir, 'identity.key'))
  const friends = new FriendBook(sublevel(db, 'friends'))
  await friends.load()
  const node = await createNode({ privateKey: identity.privateKey, listen: [`/ip4/127.0.0.1/tcp/${port}`], gater: connectionGater(friends) })
  node.use(DHT_PROTOCOL, friendsOnly(friends))
  const locate = await LocateService.start({ db, libp2p: node, friends, identity })
  return { name, dir, db, identity, friends, node, locate }
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
    await waitFor(async () => await b.locate.store.get(carolId), 'B has C\'s record', 5_000, 20)
    const old = (await b.locate.store.get(carolId))!
    const oldAddrs = c.node.getMultiaddrs()
    // C moves: same key and database, new port; it puts its new record into the DHT, where A keeps it
    await stop(c)
    c = await start('carol', c.dir, c.identity)
    await c.node.dial(a.node.getMultiaddrs()[0]!)
    const newest = (await c.locate.store.get(carolId))!
    expect(newest.seq).toBeGreaterThan(old.seq)
    await waitFor(() => c.locate.publisher.dhtPublishedSeq === newest.seq, 'C\'s new record in the DHT', 10_000, 20)

    // B knows only C's old record and address (the DHT may have connected them meanwhile: undo that)
    await b.node.hangUp(c.node.peerId)
    await sublevel<StoredRecord>(b.db, 'address-records').put(carolId, { record: Buffer.from(old.bytes).toString('base64'), received: Date.now(), from: carolId })
    await b.node.peerStore.patch(c.node.peerId, { multiaddrs: oldAddrs.map(ma => ma.decapsulateCode(421)) })

    const report = await b.locate.locator.locate(b.friends.get(carolId)!)
    // (record.from may say carol: the DHT query can connect B to C, who then pushes the same record)
    expect(report).toMatchObject({ ok: true, via: 'dht', record: { seq: newest.seq } })
    expect(report.steps.find(s => s.step === 'skip')).toMatchObject({ label: 'alice', reason: expect.stringContaining('locate') })
    expect(report.steps.find(s => s.step === 'dht')).toMatchObject({ result: 'record', record: { seq: newest.seq } })
    expect(report.steps.find(s => s.step === 'verify')).toMatchObject({ from: 'dht', known: old.seq, newer: true })
    expect(b.friends.get(carolId)!.addrs).toEqual(newest.addrs)

    // a friend putting C's older record back into the DHT: A's validator refuses it and keeps the new one
    const accepted = await putRecord(b.node.services.dht, c.node.peerId, old, { signal: AbortSignal.timeout(5_000) })
    expect(accepted).toBe(0)
    const held = await getRecords(a.node.services.dht, c.node.peerId, { signal: AbortSignal.timeout(2_000) })
    expect(held.map(bytes => parseAddressRecord(bytes).seq)).not.toContain(old.seq)
  })
})
