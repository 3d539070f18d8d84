import net from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import type { PeerId } from '@libp2p/interface'
import { createNode, type KithLibp2p } from '../../src/peer/node.ts'
import { dialAt } from '../../src/peer/dial-at.ts'
import { waitFor } from '../helpers/testnet.ts'

/**
 * A guard for the libp2p behaviour src/peer/dial-at.ts relies on, on real
 * nodes over real TCP. y dials x by peer id at an old address whose gate
 * answer y holds back until the tests end, so that dial sits in libp2p's
 * queue, working out its addresses, for as long as they need (a silent host
 * instead kept it there only for libp2p's 6 s per address, which three cases
 * outlasted under load: V's fault 2, session 15). Meanwhile:
 *
 * - a dial of x's real address through libp2p joins it (so dialAt has a
 *   reason to exist), and dialAt's, through the transport manager, connects
 *   while it is still there, and the connection manager tracks it;
 * - dialAt to an address where z answers, asked for x, fails in the Noise
 *   handshake before y says who it is: z's gate is never asked about y;
 * - with x reaching y through a relay r, dialAt still dials x's direct
 *   address, as libp2p.dial would, and does not return the relayed
 *   connection (V's fault 1 on the first version, session 15).
 *
 * No timing: each step waits on a condition, and "at once" is "while the
 * dial by peer id is still in the queue".
 */
describe('dialAt, while a dial by peer id to the same peer is under way', () => {
  let x: KithLibp2p, y: KithLibp2p, z: KithLibp2p, r: KithLibp2p
  /** an address y's gate refuses once let go; its answer waits until afterAll */
  const old = '/ip4/127.0.0.1/tcp/9'
  let letGo: () => void
  const held = new Promise<void>(resolve => { letGo = resolve })
  /** the peer ids z's gate was asked about once their Noise handshake with z completed */
  const zLearned: string[] = []
  let stuck: { id: string }
  const stopStuck = new AbortController()
  let stuckDial: Promise<unknown>

  const addressOf = (node: KithLibp2p, peer: PeerId): Multiaddr => multiaddr(`${node.getMultiaddrs()[0]!.toString().split('/p2p/')[0]!}/p2p/${peer.toString()}`)
  const queued = (): string[] => y.getDialQueue().map(d => d.id)

  beforeAll(async () => {
    x = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
    z = await createNode({
      privateKey: await generateKeyPair('Ed25519'),
      listen: ['/ip4/127.0.0.1/tcp/0'],
      gater: { denyInboundEncryptedConnection: (peer) => { zLearned.push(peer.toString()); return false } }
    })
    let asked: () => void
    const gateAsked = new Promise<void>(resolve => { asked = resolve })
    y = await createNode({
      privateKey: await generateKeyPair('Ed25519'),
      listen: ['/ip4/127.0.0.1/tcp/0'],
      gater: {
        denyDialMultiaddr: async (ma) => {
          if (ma.toString().split('/p2p/')[0] !== old) return false
          asked()
          await held
          return true
        }
      }
    })
    r = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
    await y.peerStore.save(x.peerId, { multiaddrs: [multiaddr(old)] })
    // its own signal, not libp2p's default 10 s: the dial leaves the queue when afterAll ends it
    stuckDial = y.dial(x.peerId, { signal: stopStuck.signal }).catch(() => {})
    await gateAsked
    stuck = y.getDialQueue().find(d => d.peerId?.equals(x.peerId) === true)!
    expect(stuck).toBeDefined()
  })

  afterAll(async () => {
    stopStuck.abort()
    letGo()
    await stuckDial
    await y?.stop()
    await z?.stop()
    await r?.stop()
    await x?.stop()
  })

  it('libp2p joins a dial of x\'s address onto it; dialAt connects beside it, and libp2p tracks the connection', async () => {
    const progress: string[] = []
    const joining = new AbortController()
    const joined = y.dial(addressOf(x, x.peerId), { signal: joining.signal, onProgress: (evt) => { progress.push(evt.type) } }).catch(() => {})
    joining.abort()
    await joined
    expect(progress, 'libp2p no longer joins a dial by address onto a dial by peer id under way: dialAt may dial through libp2p.dial always (src/peer/dial-at.ts)').toContain('dial-queue:already-in-dial-queue')

    const connection = await dialAt(y, x.peerId, [addressOf(x, x.peerId)], AbortSignal.timeout(30_000))
    expect(queued(), 'dialAt waited for the dial by peer id on the silent host').toContain(stuck.id)
    expect(connection.remotePeer.equals(x.peerId)).toBe(true)
    expect(y.getConnections(x.peerId).map(c => c.id), 'the connection manager does not track a connection the transport manager dialled').toContain(connection.id)
    await connection.close()
  })

  it('dialAt to an address where somebody else answers fails before we say who we are', async () => {
    const impostor = addressOf(z, x.peerId)
    const err = await dialAt(y, x.peerId, [impostor], AbortSignal.timeout(30_000)).then(() => null, (e: Error) => e)
    expect(queued(), 'the test needs the dial by peer id still under way').toContain(stuck.id)
    expect(`${err?.name}: ${err?.message}`).toMatch(/^EncryptionFailedError: .*does not match/)
    // the control: once y does finish a handshake with z, z's gate hears of it
    await y.dial(addressOf(z, z.peerId), { signal: AbortSignal.timeout(30_000) })
    await waitFor(() => zLearned.length > 0, 'z\'s gate to be asked about y', 30_000, 10)
    expect(zLearned, 'z learned y\'s peer id from a handshake y should have broken off when z proved not to be x').toEqual([y.peerId.toString()])
  })

  it('dialAt dials x\'s direct address while x reaches y only through a relay', async () => {
    await waitFor(() => y.getConnections(x.peerId).length === 0, 'the first test\'s connection to close', 30_000, 10)
    // y reserves a slot on r, and x reaches y through it: an open, unlimited, relayed connection at y
    await (y as unknown as { components: { transportManager: { listen: (a: Multiaddr[]) => Promise<void> } } }).components.transportManager.listen([multiaddr(`${addressOf(r, r.peerId).toString()}/p2p-circuit`)])
    await waitFor(() => y.getMultiaddrs().some(a => a.toString().includes('/p2p-circuit')), 'y\'s reservation on r', 30_000, 10)
    await x.dial(multiaddr(`${addressOf(r, r.peerId).toString()}/p2p-circuit/p2p/${y.peerId.toString()}`), { signal: AbortSignal.timeout(30_000) })
    await waitFor(() => y.getConnections(x.peerId).some(c => c.status === 'open' && !c.direct), 'y to see x\'s relayed connection', 30_000, 10)

    const connection = await dialAt(y, x.peerId, [addressOf(x, x.peerId)], AbortSignal.timeout(30_000))
    expect(queued(), 'the test needs the dial by peer id still under way').toContain(stuck.id)
    expect(`${connection.remoteAddr.toString()} direct: ${String(connection.direct)}`, 'dialAt returned the relayed connection, never dialling the direct address').toBe(`${addressOf(x, x.peerId).toString()} direct: true`)
  })
})

/**
 * The dial by peer id that dialAt goes round (a fetch's retry, a backup run's
 * host dial) still ends connected, as it did when locate's addresses joined
 * it through libp2p.dial: it is given them, and dials them once its own
 * address fails (V's fault 3, session 15: it failed while y and x were
 * connected). Its old address is a host that takes the connection and says
 * nothing; the test hangs up on it once dialAt has connected, so the dial
 * fails there then (or at libp2p's 6 s for the address, if that comes
 * first), not on the machine's speed.
 */
describe('the dial by peer id dialAt goes round', () => {
  let x: KithLibp2p, y: KithLibp2p
  let silent: net.Server
  const held: net.Socket[] = []

  afterAll(async () => {
    for (const socket of held) socket.destroy()
    silent?.close()
    await y?.stop()
    await x?.stop()
  })

  it('dials the addresses dialAt connected to once its own fail, and ends connected', async () => {
    silent = net.createServer(socket => { held.push(socket) })
    await new Promise<void>(resolve => silent.listen(0, '127.0.0.1', resolve))
    x = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
    y = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
    await y.peerStore.save(x.peerId, { multiaddrs: [multiaddr(`/ip4/127.0.0.1/tcp/${(silent.address() as net.AddressInfo).port}`)] })
    const other = y.dial(x.peerId, { signal: AbortSignal.timeout(120_000) })
      .then(c => `connected to ${c.remotePeer.toString()}`, (e: Error) => `failed: ${e.name}: ${e.message}`)
    await waitFor(() => held.length > 0, 'the dial by peer id to reach the silent host', 30_000, 10)
    expect(y.getDialQueue().some(d => d.peerId?.equals(x.peerId) === true), 'the test needs the dial by peer id under way').toBe(true)
    const at = multiaddr(`${x.getMultiaddrs()[0]!.toString().split('/p2p/')[0]!}/p2p/${x.peerId.toString()}`)
    const connection = await dialAt(y, x.peerId, [at], AbortSignal.timeout(30_000))
    expect(connection.remotePeer.equals(x.peerId)).toBe(true)
    for (const socket of held) socket.destroy()
    expect(await other, 'the dial by peer id that dialAt went round failed although y is connected to x').toBe(`connected to ${x.peerId.toString()}`)
  })
})
