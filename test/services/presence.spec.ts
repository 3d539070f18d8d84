import { describe, it, expect, afterEach } from 'vitest'
import net from 'node:net'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import { createNode, type KithLibp2p } from '../../src/peer/node.ts'
import { openDatabase, sublevel, type Database } from '../../src/peer/database.ts'
import type { AddressRecord } from '../../src/peer/address-record.ts'
import { dialAt } from '../../src/peer/dial-at.ts'
import { FriendBook } from '../../src/trust/friends.ts'
import { connectionGater } from '../../src/trust/gate.ts'
import { Presence } from '../../src/services/presence.ts'
import { applyRecord, Locator } from '../../src/services/locate/locator.ts'
import { RecordStore } from '../../src/services/locate/record-store.ts'
import { waitFor } from '../helpers/testnet.ts'

/**
 * Presence on a real node, with a friend who moved: their old addresses are
 * hosts that take the connection and never answer, so a dial there sits on
 * each until libp2p's 6 s per address, one after another (several: one
 * address's 6 s can run out before a loaded machine has run the test's
 * steps, as V's fault 2 showed of dial-at.spec, session 15). A newer record
 * of the friend (what locate finds, or their push: applyRecord) drops
 * presence's dial and dials the new address; otherwise a dial of the new
 * address joins presence's and waits behind the old ones
 * (test/peer/dial-join.spec.ts).
 */
describe('presence, when a friend moved', () => {
  let world: World | undefined

  afterEach(async () => {
    await world?.close()
    world = undefined
  })

  it('drops the dial to their old address for one to the new address of a newer record', async () => {
    world = await startWorld()
    const { x, y, presence } = world
    const stuck = await world.stuckOnOld()

    await applyRecord(world.applyInit(), world.record())
    // gone by the time applyRecord returns: locate dials the new address next
    expect(y.getDialQueue().map(d => d.id), 'presence\'s dial to the old address is still under way').not.toContain(stuck.id)
    await waitFor(() => presence.link(x.peerId.toString()).online, 'x reached at its new address', 30_000, 10)
    expect(presence.link(x.peerId.toString()).remoteAddr).toBe(`${world.newAddr}/p2p/${x.peerId.toString()}`)
  })

  it('locate\'s dial of the new address is not held behind another dial by peer id joined onto presence\'s', async () => {
    // V's fault 3 (session 14): a fetch's retry, a backup run or the DHT dials x by peer id meanwhile; dropping
    // presence's dial then leaves libp2p's job on the old address for that dial, and a dial joined onto it waited there
    world = await startWorld()
    const { x, y } = world
    const stuck = await world.stuckOnOld()
    const stopOther = new AbortController()
    const other = y.dial(x.peerId, { signal: AbortSignal.any([stopOther.signal, AbortSignal.timeout(300_000)]) }).catch(() => {})

    await applyRecord(world.applyInit(), world.record())
    expect(y.getDialQueue().map(d => d.id), 'the other dial keeps libp2p\'s job on the old address').toContain(stuck.id)
    // what Locator.locate dials next
    const connection = await dialAt(y, x.peerId, [multiaddr(`${world.newAddr}/p2p/${x.peerId.toString()}`)], AbortSignal.timeout(30_000))
    expect(y.getDialQueue().map(d => d.id), 'locate\'s dial waited for the job on the old address to end').toContain(stuck.id)
    expect(connection.remotePeer.equals(x.peerId)).toBe(true)
    expect(y.getConnections(x.peerId).map(c => c.id)).toContain(connection.id)
    stopOther.abort()
    await other
  })

  it('kith locate reaches them at the address it knows while presence\'s dial sits on the old ones', async () => {
    // the locator's own dial (src/services/locate/locator.ts), through dialAt: libp2p.dial would join presence's dial
    // and wait behind its old addresses past LOCATE_DIAL_TIMEOUT_MS
    world = await startWorld()
    const { x, y, friends, locator } = world
    const stuck = await world.stuckOnOld()
    // joined onto presence's dial, it keeps libp2p's job on the old addresses past presence's own 10 s
    const stopOther = new AbortController()
    const other = y.dial(x.peerId, { signal: stopOther.signal }).catch(() => {})
    await friends.moved(x.peerId.toString(), [world.newAddr])
    const report = await locator.locate(friends.get(x.peerId.toString())!, { dialKnown: true })
    expect(y.getDialQueue().map(d => d.id), 'locate waited for the dial on the old addresses to end').toContain(stuck.id)
    expect(report, JSON.stringify(report.steps)).toMatchObject({ ok: true, via: 'known', remoteAddr: `${world.newAddr}/p2p/${x.peerId.toString()}` })
    stopOther.abort()
    await other
  })
})

/** libp2p dials a peer's addresses one after another, 6 s each: a dial on these stays under way for 48 s */
const OLD_ADDRESSES = 8

/** A node y whose friend x moved from silent hosts (OLD_ADDRESSES of them) to x's own address; presence runs on y. */
interface World {
  x: KithLibp2p
  y: KithLibp2p
  presence: Presence
  /** a Locator on y, as the daemon's: friends' records in y's database, no DHT */
  locator: Locator
  friends: FriendBook
  newAddr: string
  /** x befriended at the old address; resolves with presence's dial once it sits on the silent host */
  stuckOnOld: () => Promise<{ id: string }>
  applyInit: () => Parameters<typeof applyRecord>[0]
  /** x's newer record: its own address */
  record: () => AddressRecord
  close: () => Promise<void>
}

async function startWorld (): Promise<World> {
  const base = await mkdtemp(join(tmpdir(), 'kith-presence-'))
  const db = await openDatabase(join(base, 'db'))
  const friends = new FriendBook(sublevel(db, 'friends'))
  await friends.load()
  const held: net.Socket[] = []
  const old = await Promise.all(Array.from({ length: OLD_ADDRESSES }, async () => {
    const server = net.createServer(socket => { held.push(socket) })
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
    return server
  }))
  const x = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
  const y = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: connectionGater(friends) })
  const presence = new Presence(y, friends, { loopback: true })
  const oldAddrs = old.map(server => `/ip4/127.0.0.1/tcp/${(server.address() as net.AddressInfo).port}`)
  const newAddr = x.getMultiaddrs()[0]!.toString().split('/p2p/')[0]!
  const locator = new Locator({ libp2p: y, friends, store: new RecordStore(sublevel(db, 'records')), dht: false, dialPolicy: { loopback: true } })
  return {
    x,
    y,
    presence,
    locator,
    friends,
    newAddr,
    stuckOnOld: async () => {
      await friends.befriend({ peerId: x.peerId.toString(), publicKey: Buffer.from(x.peerId.publicKey!.raw).toString('base64'), label: 'x', grantsToThem: [], grantsFromThem: [], addrs: oldAddrs, via: 'test' })
      presence.start()
      await waitFor(() => held.length > 0, 'presence to dial the old address', 30_000, 10)
      const stuck = y.getDialQueue().find(d => d.peerId?.equals(x.peerId) === true)
      expect(stuck?.status).toBe('active')
      return stuck!
    },
    applyInit: () => ({ libp2p: y, friends, dialPolicy: { loopback: true }, moved: async peer => { await presence.moved(peer) } }),
    record: () => ({ peerId: x.peerId.toString(), addrs: [newAddr] }) as unknown as AddressRecord,
    close: async () => {
      presence.stop()
      for (const socket of held) socket.destroy()
      for (const server of old) server.close()
      await y.stop()
      await x.stop()
      await db.close()
      await rm(base, { recursive: true, force: true })
    }
  }
}
