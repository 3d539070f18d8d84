import type { Connection, ConnectionGater, Libp2p, PeerId } from '@libp2p/interface'
import { defaultMultiaddrSorter } from '@libp2p/utils'
import type { Multiaddr } from '@multiformats/multiaddr'
import { KithError } from '../errors.ts'

/**
 * Dials `peer` at `addrs`, each ending in `/p2p/<peer>`, now: not behind a
 * dial by peer id already under way to that peer.
 *
 * Why: libp2p 3.3.11's dial queue joins any dial to a peer onto a dial under
 * way to the same peer id (dial-queue.js matches `job.options.peerId`, and no
 * dial option skips that: `force` only skips an open connection), and tries
 * the joined addresses only after that dial's own, each up to 6 s
 * (test/peer/dial-join.spec.ts). A friend who moved: presence, a fetch's
 * retry, a backup run or the DHT redial them by peer id at their old
 * addresses, and locate's dial of the new ones, joined behind them, ran out
 * of its 5 s (V's fault 3 at session 14). Presence.moved drops presence's own
 * dial, which clears libp2p's job only when no other dial joined it.
 *
 * So when such a dial is under way (libp2p.getDialQueue, read in the same
 * turn as the dial it decides on), each address is dialled through libp2p's
 * transport manager, which the queue itself dials through: the connection is
 * upgraded, gated (denyOutbound*) and tracked by the connection manager as
 * any other. The address keeps its `/p2p/<peer>`, so the Noise handshake
 * checks the responder's identity before we send ours: whoever now answers
 * at an address learns nothing of us unless it is `peer`
 * (test/peer/dial-at.spec.ts guards both). The gate's dial checks, which the
 * queue makes, are made here; addresses go in libp2p's order, one at a time.
 * The other dial is given the addresses too, and dials them once its old
 * ones fail, as it would have without dialAt (joinWithoutWaiting).
 * Otherwise, the ordinary `libp2p.dial`.
 */
export async function dialAt (libp2p: Libp2p, peer: PeerId, addrs: Multiaddr[], signal: AbortSignal): Promise<Connection> {
  if (!libp2p.getDialQueue().some(d => d.peerId?.equals(peer) === true)) return await libp2p.dial(addrs, { signal })
  const open = reusable(libp2p.getConnections(peer), addrs)
  if (open != null) return open
  const { transportManager, connectionGater } = internals(libp2p)
  if (await connectionGater.denyDialPeer?.(peer) === true) throw new KithError('FRIEND_REVOKED', `the gate refuses to dial ${peer.toString()}`)
  joinWithoutWaiting(libp2p, addrs)
  const errors: Error[] = []
  for (const addr of defaultMultiaddrSorter([...addrs])) {
    if (await connectionGater.denyDialMultiaddr?.(addr) === true) continue
    try {
      return await transportManager.dial(addr, { signal })
    } catch (err) {
      if (signal.aborted) throw err
      errors.push(err as Error)
    }
  }
  if (errors.length === 0) throw new KithError('FRIEND_OFFLINE', `the gate refuses every address of ${peer.toString()}`)
  throw errors.length === 1 ? errors[0]! : new AggregateError(errors, 'All multiaddr dials failed')
}

/**
 * Gives `addrs` to the dial by peer id under way, as libp2p.dial would have,
 * without waiting behind it: libp2p adds a joining dial's addresses to the
 * job in the same turn as the call (dial-queue.js), and keeps them when the
 * joiner leaves, which this one does at once. Once the job's own addresses
 * fail, it dials these, and whoever waits on it (a fetch's retry, a backup
 * run's host dial) gets a connection, as before dialAt, not a failure while
 * the friend is connected (V's fault 3, session 15; dial-at.spec.ts).
 */
function joinWithoutWaiting (libp2p: Libp2p, addrs: Multiaddr[]): void {
  const leave = new AbortController()
  libp2p.dial(addrs, { signal: leave.signal }).catch(() => {})
  leave.abort()
}

/**
 * An open connection libp2p.dial would return instead of dialling `addrs`
 * (libp2p 3.3.11's findExistingConnection, not exported): one without
 * limits, a direct one first; a relayed one only when none of `addrs` is
 * direct, since a dial of a direct address is how a relayed friend gets a
 * direct connection (V's proof, dial-at.spec.ts).
 */
function reusable (connections: Connection[], addrs: Multiaddr[]): Connection | undefined {
  const open = connections.filter(c => c.status === 'open' && c.limits == null)
  const direct = open.find(c => c.direct)
  if (direct != null) return direct
  return addrs.some(a => !a.getComponents().some(c => c.name === 'p2p-circuit')) ? undefined : open[0]
}

interface Internals {
  transportManager: { dial: (addr: Multiaddr, options: { signal: AbortSignal }) => Promise<Connection> }
  connectionGater: ConnectionGater
}

function internals (libp2p: Libp2p): Internals {
  const components = (libp2p as unknown as { components?: Partial<Internals> }).components
  if (typeof components?.transportManager?.dial !== 'function' || components.connectionGater == null) {
    throw new KithError('INTERNAL', 'this libp2p version has no transport manager kith can dial through; see src/peer/node.ts LIBP2P_CHECKED_VERSION')
  }
  return components as Internals
}
