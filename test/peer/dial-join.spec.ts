import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { Connection } from '@libp2p/interface'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { createNode, type KithLibp2p } from '../../src/peer/node.ts'

/**
 * A guard for libp2p upgrades: libp2p 3.3.11's dial queue joins a dial to an
 * address onto any dial already queued or running to the same peer (by peer
 * id), adding the address to that dial's list, which it reads only once the
 * addresses it is on have failed. So the joined dial
 *
 * - fails with the first dial's error, its address never dialled, when the
 *   first fails before dialling anything (every address it took from the peer
 *   store refused by the gate: DialDeniedError; none found:
 *   NoValidAddressesError). test/peer/dial.spec.ts failed so, its DHT's dial
 *   by peer id beside its retry's dial by address (its x now serves no DHT);
 * - waits for the first dial's addresses, each up to libp2p's 6 s. A friend
 *   who moved: presence redials their old address by peer id, locate finds
 *   the new one and dials it within LOCATE_DIAL_TIMEOUT_MS (5 s), joined onto
 *   presence's dial. With the old address a host that takes the connection
 *   and never answers, locate's dial failed in 5.2 s ("aborted due to
 *   timeout") and presence's connected over locate's address at 6.1 s;
 *   without presence's dial, locate's took 0.8 s (F, 2026-12-07, load ~20).
 *   So a newer record now drops presence's dial first (Presence.moved,
 *   test/services/presence.spec.ts), and locate dials round any other dial
 *   by peer id still under way (src/peer/dial-at.ts, dial-at.spec.ts).
 *
 * This test shows the first case, which also fails if libp2p stops joining
 * or dials a joined address at once. Real nodes over real TCP. y holds for x
 * only an address its gate refuses; the gate's answer about it waits until
 * the test lets it go, so y's dial by peer id is in the queue, working out
 * its addresses, when the dial by x's real address comes. No timing: each
 * step waits on the one before.
 */
describe('a dial by address while a dial by peer id to the same peer is under way', () => {
  let x: KithLibp2p, y: KithLibp2p
  /** an address y's gate refuses (once let go); nothing listens there */
  const refused = '/ip4/127.0.0.1/tcp/9'
  const inbound: Connection[] = []
  /** the gate's next answer about `refused` waits for `letGo`; `gateAsked` resolves when it is asked */
  let asked: () => void
  let letGo: () => void
  let gateAsked: Promise<void>
  let held: Promise<void>
  function holdGate (): void {
    gateAsked = new Promise(resolve => { asked = resolve })
    held = new Promise(resolve => { letGo = resolve })
  }

  beforeAll(async () => {
    x = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
    y = await createNode({
      privateKey: await generateKeyPair('Ed25519'),
      listen: ['/ip4/127.0.0.1/tcp/0'],
      gater: {
        denyDialMultiaddr: async (ma) => {
          if (!ma.toString().startsWith(refused)) return false
          asked()
          await held
          return true
        }
      }
    })
    x.addEventListener('connection:open', (evt) => { inbound.push(evt.detail) })
  })

  afterAll(async () => {
    await y?.stop()
    await x?.stop()
  })

  /** x's real address with its peer id, as an invite or an address record gives it. */
  const xAddress = (): Multiaddr => multiaddr(`${x.getMultiaddrs()[0]!.toString().split('/p2p/')[0]!}/p2p/${x.peerId.toString()}`)

  it('libp2p fails the joined dial with the first dial\'s error, without dialling its address', async () => {
    await y.hangUp(x.peerId)
    await y.peerStore.save(x.peerId, { multiaddrs: [multiaddr(refused)] })
    holdGate()
    const byId = y.dial(x.peerId, { signal: AbortSignal.timeout(30_000) }).then(() => null, (err: Error) => err)
    await gateAsked
    const progress: string[] = []
    const byAddress = y.dial(xAddress(), { signal: AbortSignal.timeout(30_000), onProgress: (evt) => { progress.push(evt.type) } })
      .then((connection) => connection, (err: Error) => err)
    letGo()
    const [first, joined] = await Promise.all([byId, byAddress])
    expect(first?.name).toBe('DialDeniedError')
    const how = joined instanceof Error ? `${joined.name}: ${joined.message}` : `a connection to ${joined.remoteAddr.toString()}`
    expect(progress.includes('dial-queue:already-in-dial-queue') && joined instanceof Error && joined.name === 'DialDeniedError' && inbound.length === 0,
      `libp2p changed: the dial by address ${progress.includes('dial-queue:already-in-dial-queue') ? 'joined' : 'did not join'} the dial by peer id, ended with ${how}, ` +
      `and x saw ${inbound.length} inbound connections. If it no longer joins, or dials a joined address at once: dial.spec's x may serve its DHT again, ` +
      'Presence.moved need not drop its dial (src/services/presence.ts), dialAt may always use libp2p.dial (src/peer/dial-at.ts), and this test may go').toBe(true)
  })
})
