import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { createNode, type KithLibp2p } from '../../src/peer/node.ts'
import { openDatabase, sublevel, type Database } from '../../src/peer/database.ts'
import { FriendBook } from '../../src/trust/friends.ts'
import { connectionGater } from '../../src/trust/gate.ts'
import { ConnectionSlots, FRIEND_TAG, FRIEND_TAG_VALUE } from '../../src/services/connection-slots.ts'
import { HostilePeer } from '../helpers/hostile-peer.ts'
import { waitFor } from '../helpers/testnet.ts'

/**
 * Connection slots on a real node (src/services/connection-slots.ts), with
 * real peers connecting over TCP: strangers get a few connections for a
 * short while; friends are tagged, so libp2p's pruning closes strangers'
 * connections first. Small limits and a short grace period keep it quick;
 * test/integration/strangers.spec.ts floods a daemon at its real limits.
 */
describe('connection slots', () => {
  let base: string
  let db: Database
  let friends: FriendBook
  const nodes: KithLibp2p[] = []
  const slots: ConnectionSlots[] = []
  const peers: HostilePeer[] = []

  const peer = async (listen = false): Promise<HostilePeer> => {
    const p = await HostilePeer.start({ listen })
    peers.push(p)
    return p
  }
  const befriend = async (p: HostilePeer): Promise<void> => {
    await friends.befriend({ peerId: p.peerId, publicKey: Buffer.from(p.node.peerId.publicKey!.raw).toString('base64'), label: p.peerId.slice(-8), grantsToThem: [], grantsFromThem: [], addrs: [], via: 'test' })
  }
  const node = async (maxConnections: number, maxStrangers: number, graceMs: number): Promise<{ node: KithLibp2p, addr: string }> => {
    const n = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: connectionGater(friends), maxConnections })
    nodes.push(n)
    const s = new ConnectionSlots({ libp2p: n, friends, maxStrangers, graceMs })
    s.start()
    slots.push(s)
    return { node: n, addr: n.getMultiaddrs()[0]!.toString() }
  }

  beforeAll(async () => {
    base = await mkdtemp(join(tmpdir(), 'kith-slots-'))
    db = await openDatabase(join(base, 'db'))
    friends = new FriendBook(sublevel(db, 'friends'))
    await friends.load()
  })

  afterAll(async () => {
    for (const s of slots) s.stop()
    await Promise.all([...peers, ...nodes].map(async p => await p.stop()))
    await db?.close()
    await rm(base, { recursive: true, force: true })
  })

  it('holds a few strangers: a stranger who became a friend holds no slot, and one over the limit is closed as soon as it opens', async () => {
    // a grace period longer than any load makes the connects take: here no stranger's slot frees by its grace ending
    const { addr } = await node(100, 2, 60_000)
    const [s1, s2, s3, s4] = [await peer(), await peer(), await peer(), await peer()]
    // s1 connects as a stranger and redeems an invite, as it were: a friend now, it holds no stranger's slot
    await s1.connect(addr)
    await befriend(s1)
    for (const s of [s2, s3, s4]) await s.connect(addr).catch(() => {})
    // the third stranger is closed as soon as it opens
    await waitFor(() => s4.openConnections(addr).length === 0, 'the third stranger closed', 10_000, 10)
    expect(s2.openConnections(addr).length).toBe(1)
    expect(s3.openConnections(addr).length).toBe(1)
    expect(s1.openConnections(addr).length).toBe(1)
  })

  it('closes each stranger when its grace period ends, and keeps one that became a friend meanwhile', async () => {
    const grace = 3_000
    const { node: n, addr } = await node(100, 2, grace)
    const [s1, s2] = [await peer(), await peer()]
    // Each inbound connection the node holds is looked at twice, by timers set as it opens: at 0.9 and 1.5 grace
    // periods. ConnectionSlots's listener ran just before this one, in the same turn, and set the grace timer there:
    // timers set in one turn start at the same instant, and Node runs them in the order they fall due however late the
    // process runs. So this bounds the grace period on the node's own timers, whatever the load: longer than 0.9 and
    // shorter than 1.5 of it.
    const looks = new Map<string, Promise<{ early: string, late: string }>>()
    n.addEventListener('connection:open', ({ detail: connection }) => {
      if (connection.direction !== 'inbound' || connection.status !== 'open') return
      looks.set(connection.remotePeer.toString(), new Promise(resolve => {
        let early = ''
        setTimeout(() => { early = connection.status }, grace * 0.9)
        setTimeout(() => { resolve({ early, late: connection.status }) }, grace * 1.5)
      }))
    })
    await s1.connect(addr)
    await befriend(s1)
    await s2.connect(addr)
    // the node's side of the connection opens a moment after the dialer's
    await waitFor(() => looks.has(s2.peerId), 'the node to see the stranger connect', 10_000, 10)
    const seen = Object.fromEntries(await Promise.all([s1, s2].map(async s => [s === s1 ? 'friend' : 's2', await looks.get(s.peerId)])))
    expect(seen).toEqual({
      friend: { early: 'open', late: 'open' },
      s2: { early: 'open', late: 'aborted' }
    })
    // and the stranger learns it
    await waitFor(() => s2.openConnections(addr).length === 0, 'the stranger to see its connection closed', 10_000, 10)
    expect(s1.openConnections(addr).length).toBe(1)
  })

  it('tags friends so that pruning closes strangers\' connections first', async () => {
    const { node: n, addr } = await node(3, 100, 60_000)
    const friend = await peer(true)
    await befriend(friend)
    const strangers = [await peer(), await peer(), await peer()]
    for (const s of strangers) await s.connect(addr)
    // full: libp2p refuses inbound connections now, so the node dials its friend, one over the limit;
    // the friend's connection is the newest, which libp2p would prune first without the tag
    await n.dial(friend.node.getMultiaddrs()[0]!)
    await waitFor(() => n.getConnections().length <= 3, 'pruning back to three connections', 10_000, 10)
    // the pruned side learns it a moment later
    await waitFor(() => strangers.filter(s => s.openConnections(addr).length > 0).length === 2, 'one stranger pruned', 10_000, 10)
    expect(friend.openConnections(addr).length).toBe(1)
    expect((await n.peerStore.get(friend.node.peerId)).tags.get(FRIEND_TAG)?.value).toBe(FRIEND_TAG_VALUE)
  })
})
