import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import net from 'node:net'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { createNode, type KithLibp2p } from '../../src/peer/node.ts'
import { openDatabase, sublevel, type Database } from '../../src/peer/database.ts'
import type { AddressRecord } from '../../src/peer/address-record.ts'
import { FriendBook } from '../../src/trust/friends.ts'
import { connectionGater } from '../../src/trust/gate.ts'
import { Presence } from '../../src/services/presence.ts'
import { applyRecord } from '../../src/services/locate/locator.ts'
import { waitFor } from '../helpers/testnet.ts'

/**
 * Presence on a real node, with a friend who moved: their old address is a
 * host that takes the connection and never answers, so presence's dial sits
 * on it until libp2p's 6 s per address. A newer record of the friend (what
 * locate finds, or their push: applyRecord) drops that dial and dials the new
 * address; otherwise a dial of the new address joins presence's and waits
 * behind the old one (test/peer/dial-join.spec.ts).
 */
describe('presence, when a friend moved', () => {
  let base: string
  let db: Database
  let friends: FriendBook
  let x: KithLibp2p, y: KithLibp2p
  let presence: Presence
  const held: net.Socket[] = []
  let old: net.Server

  beforeAll(async () => {
    base = await mkdtemp(join(tmpdir(), 'kith-presence-'))
    db = await openDatabase(join(base, 'db'))
    friends = new FriendBook(sublevel(db, 'friends'))
    await friends.load()
    old = net.createServer(socket => { held.push(socket) })
    await new Promise<void>(resolve => old.listen(0, '127.0.0.1', resolve))
    x = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
    y = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: connectionGater(friends) })
  })

  afterAll(async () => {
    presence?.stop()
    for (const socket of held) socket.destroy()
    old?.close()
    await y?.stop()
    await x?.stop()
    await db?.close()
    await rm(base, { recursive: true, force: true })
  })

  it('drops the dial to their old address for one to the new address of a newer record', async () => {
    const oldAddr = `/ip4/127.0.0.1/tcp/${(old.address() as net.AddressInfo).port}`
    const newAddr = x.getMultiaddrs()[0]!.toString().split('/p2p/')[0]!
    await friends.befriend({ peerId: x.peerId.toString(), publicKey: Buffer.from(x.peerId.publicKey!.raw).toString('base64'), label: 'x', grantsToThem: [], grantsFromThem: [], addrs: [oldAddr], via: 'test' })
    presence = new Presence(y, friends, { loopback: true })
    presence.start()
    await waitFor(() => held.length > 0, 'presence to dial the old address', 30_000, 10)
    const stuck = y.getDialQueue().find(d => d.peerId?.equals(x.peerId) === true)
    expect(stuck?.status).toBe('active')

    const record = { peerId: x.peerId.toString(), addrs: [newAddr] } as unknown as AddressRecord
    await applyRecord({ libp2p: y, friends, dialPolicy: { loopback: true }, moved: async peer => { await presence.moved(peer) } }, record)
    // gone by the time applyRecord returns: locate dials the new address next
    expect(y.getDialQueue().map(d => d.id), 'presence\'s dial to the old address is still under way').not.toContain(stuck!.id)
    await waitFor(() => presence.link(x.peerId.toString()).online, 'x reached at its new address', 30_000, 10)
    expect(presence.link(x.peerId.toString()).remoteAddr).toBe(`${newAddr}/p2p/${x.peerId.toString()}`)
  })
})
