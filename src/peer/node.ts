import { createLibp2p, type Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { averagesIgnoreClockSteps } from './clock-steps.ts'
import { corkedWrites } from './corked-writes.ts'
import { decryptWithoutCopy } from './noise-decrypt.ts'
import { libp2pLogger } from './silent-logger.ts'
import { yamux } from '@chainsafe/libp2p-yamux'
import { halfWindowUpdates } from './yamux-window.ts'
import { identify, type Identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper, type KadDHT } from '@libp2p/kad-dht'
import { circuitRelayServer, circuitRelayTransport, type CircuitRelayService } from '@libp2p/circuit-relay-v2'
import { dcutr } from '@libp2p/dcutr'
import type { ConnectionGater, PrivateKey, StreamMiddleware } from '@libp2p/interface'
import { KithError } from '../errors.ts'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { dhtRecordRules } from './address-record.ts'
import { holePunch, type HolePunch } from './hole-punch.ts'
import { ping, type Ping } from './ping.ts'
import { NodeDatastore } from './datastore.ts'
import { dialPolicyFor, isDialable, type DialPolicy } from './dial-policy.ts'

/**
 * The libp2p node: TCP, Noise, yamux, identify, a bounded ping (ping.ts),
 * circuit relay, dcutr, kith's own TCP hole punching, and a Kademlia DHT under
 * kith's own protocol prefix, so it only ever meets other kith nodes. The DHT
 * accepts one kind of record, signed address records (`/kith-addr/...`, see
 * address-record.ts), in a bounded store (datastore.ts). Every dial follows
 * the dial policy (dial-policy.ts), and nothing from outside is resolved in
 * DNS.
 */
export const DHT_PROTOCOL = '/kith/kad/1.0.0'
export const DEFAULT_LISTEN = ['/ip4/0.0.0.0/tcp/0']

/**
 * Connection slots (docs/security.md, hole 3). Strangers hold at most a
 * few of them after their handshake (src/services/connection-slots.ts) and
 * friends' peers carry a tag that makes libp2p's pruning close strangers'
 * connections first, so strangers can't fill the node and lock friends out.
 */
/** Connections held at once; beyond it libp2p refuses inbound connections and prunes the least valued. */
export const MAX_CONNECTIONS = 256
/** Inbound connections still in their Noise and yamux handshake, from everyone at once. */
export const MAX_PENDING_INBOUND = 64
/** New inbound connections one IP address may open per second (libp2p's default). */
export const INBOUND_PER_HOST_PER_SECOND = 5
/**
 * An inbound connection finishes its handshake within this (libp2p: 10 s);
 * with INBOUND_PER_HOST_PER_SECOND, one IP holds at most 25 of the
 * MAX_PENDING_INBOUND handshakes.
 */
export const INBOUND_UPGRADE_TIMEOUT_MS = 5_000

/**
 * yamux lets a stream's window grow to 16 MiB by default; a fetcher with two
 * GET streams to each of several sources then holds tens of MiB in flight.
 * 4 MiB is still far above the bandwidth-delay product of a home link.
 */
const MAX_STREAM_WINDOW = 4 * 1024 * 1024
/** Above the largest window: a read buffer smaller than the window makes pause() reset the stream. */
const MAX_READ_BUFFER = 32 * 1024 * 1024

export type KithServices = {
  identify: Identify
  ping: Ping
  dht: KadDHT
  relay: CircuitRelayService
  dcutr: unknown
  punch: HolePunch
}

/**
 * What this node, as a circuit relay, gives each relayed connection of a
 * friend (docs/protocols.md, "Reachability and relays"). js-libp2p's stock
 * budget is 2 minutes and 128 KiB a connection; kith's default is no limit
 * at all, for friends I granted `relay` only (the gate refuses everyone
 * else). Any limit makes libp2p mark the relayed connection "limited", and
 * kith's bulk protocols (files, chunks) never run on limited connections, so
 * with a limit set, files move through this relay only after hole punching.
 */
export interface RelayBudget {
  /** ms a relayed connection may last; 0 or absent: no limit */
  maxDurationMs?: number
  /** bytes a relayed connection may carry (both ways); 0 or absent: no limit */
  maxDataBytes?: number
  /** reservations held at once (friends only) */
  maxReservations?: number
  /** a reservation lasts this long unless the friend refreshes it (it does, before it ends) */
  reservationTtlMs?: number
}

export const DEFAULT_RELAY_MAX_RESERVATIONS = 64
export const DEFAULT_RELAY_RESERVATION_TTL_MS = 60 * 60 * 1000
/**
 * The longest relayed-connection duration a relay can enforce: js-libp2p's
 * server arms `AbortSignal.timeout(duration)`, which throws above 2^32 - 1 ms
 * and, like every Node timer, fires at once above 2^31 - 1 ms (~24.8 days).
 */
export const MAX_RELAY_DURATION_MS = 2 ** 31 - 1

export function relayReservations (budget: RelayBudget = {}): NonNullable<NonNullable<Parameters<typeof circuitRelayServer>[0]>['reservations']> {
  const duration = budget.maxDurationMs ?? 0
  const data = budget.maxDataBytes ?? 0
  const limited = duration > 0 || data > 0
  return {
    maxReservations: budget.maxReservations ?? DEFAULT_RELAY_MAX_RESERVATIONS,
    reservationTtl: budget.reservationTtlMs ?? DEFAULT_RELAY_RESERVATION_TTL_MS,
    applyDefaultLimit: limited,
    // js-libp2p's server counts the duration in ms (its client reads seconds: a 1000x longer limit, harmless here)
    // and, with applyDefaultLimit, fills in the stock 2 min / 128 KiB for whichever is unset: "unset" means huge here,
    // but within a Node timer (a 365-day placeholder made the server reset every relayed connection at once)
    defaultDurationLimit: Math.min(duration > 0 ? duration : MAX_RELAY_DURATION_MS, MAX_RELAY_DURATION_MS),
    defaultDataLimit: BigInt(data > 0 ? data : Number.MAX_SAFE_INTEGER)
  }
}

export type KithLibp2p = Libp2p<KithServices>

export interface NodeInit {
  privateKey: PrivateKey
  listen: string[]
  gater: ConnectionGater
  relay?: RelayBudget
  /** which addresses may be dialled; @default dialPolicyFor(listen) */
  dialPolicy?: DialPolicy
  /** @default MAX_CONNECTIONS */
  maxConnections?: number
  /**
   * Which peers' address records the DHT takes (my friends'); a record
   * about anyone else is refused. @default every peer but me
   */
  dhtSubjects?: (peerId: string) => boolean
  /** @default a new one */
  datastore?: NodeDatastore
}

export async function createNode (init: NodeInit): Promise<KithLibp2p> {
  const policy = init.dialPolicy ?? dialPolicyFor(init.listen)
  const self = peerIdFromPrivateKey(init.privateKey).toString()
  // yamux grants window by halves, not after every frame (yamux-window.ts); KITH_YAMUX_EVERY_FRAME=1 keeps yamux's own, for an A/B
  halfWindowUpdates(process.env.KITH_YAMUX_EVERY_FRAME !== '1')
  // libp2p's adaptive timeouts (connection monitor, DHT) survive the wall clock stepping back (clock-steps.ts)
  averagesIgnoreClockSteps()
  const node = await createLibp2p({
    start: false,
    privateKey: init.privateKey,
    logger: libp2pLogger(),
    addresses: { listen: init.listen },
    datastore: init.datastore ?? new NodeDatastore(),
    connectionManager: {
      maxConnections: init.maxConnections ?? MAX_CONNECTIONS,
      maxIncomingPendingConnections: MAX_PENDING_INBOUND,
      inboundConnectionThreshold: INBOUND_PER_HOST_PER_SECOND,
      inboundUpgradeTimeout: INBOUND_UPGRADE_TIMEOUT_MS,
      // no dnsaddr lookups: the dial policy refuses every name, and this resolver would look it up before the gate sees it
      resolvers: {}
    },
    // circuit relay: dialing friends through a relay, and listening on the relays
    // src/services/reachability.ts reserves explicitly (no `/p2p-circuit` discovery)
    transports: [tcp(), circuitRelayTransport({ reservationCompletionTimeout: 10_000 })],
    connectionEncrypters: [components => corkedWrites(decryptWithoutCopy(noise()(components)))],
    streamMuxers: [yamux({ streamOptions: { maxReadBufferLength: MAX_READ_BUFFER, maxStreamWindowSize: MAX_STREAM_WINDOW } })],
    connectionGater: {
      ...init.gater,
      // every dial libp2p makes, whoever asked for it: presence, locate, redeem, the DHT, dcutr
      denyDialMultiaddr: async (ma) => !isDialable(ma, policy) || (await init.gater.denyDialMultiaddr?.(ma)) === true
    },
    services: {
      identify: identify({ protocolPrefix: 'kith' }),
      // kad-dht pings its contacts; the daemon lets friends only (src/services/daemon.ts)
      ping: ping(),
      // relays for friends holding my `relay` grant, from my friends only, while I am publicly reachable (src/trust/gate.ts)
      relay: circuitRelayServer({ reservations: relayReservations(init.relay) }),
      // upgrades relayed connections to direct ones where the NATs allow
      dcutr: dcutr(),
      // TCP hole punching between friends behind NAT, which dcutr can't do on Node (src/peer/hole-punch.ts);
      // src/services/reachability.ts serves /kith/punch/1.0.0 to friends only and decides when to punch
      punch: holePunch(),
      dht: kadDHT({
        protocol: DHT_PROTOCOL,
        clientMode: false,
        // friends are often on the same LAN: keep private addresses
        peerInfoMapper: passthroughMapper,
        // signed address records under /kith-addr/: by signature, then highest seq
        ...dhtRecordRules(self, init.dhtSubjects)
      })
    }
  })
  fixStreamMiddleware(node)
  await node.start()
  return node
}

/**
 * Call after `libp2p.stop()`. libp2p 3.3.11's address manager writes the
 * node's addresses to the peer store a second after its listeners change (a
 * debounce), and stopping closes them all: the write it schedules then, which
 * its stop does not cancel, kept a stopped daemon's process up for that
 * second (each `kith stop`, every restart). test/peer/node.spec.ts fails if
 * the write is no longer left pending, or if this no longer cancels it.
 */
export function cancelPendingAddressWrite (node: Libp2p): void {
  const manager = (node as unknown as { components?: { addressManager?: { _updatePeerStoreAddresses?: { stop?: () => void } } } }).components?.addressManager
  manager?._updatePeerStoreAddresses?.stop?.()
}

/**
 * The libp2p release `fixStreamMiddleware`, `cancelPendingAddressWrite` (and reachability.ts's use of the
 * transport and address managers, dial-at.ts's of the transport manager and gater) was written against. package.json pins it
 * exactly; test/peer/node.spec.ts fails if the installed libp2p differs or
 * if libp2p stops calling the patched hook, so an upgrade is a deliberate
 * change that rechecks these.
 */
export const LIBP2P_CHECKED_VERSION = '3.3.11'

/**
 * Works around two bugs of libp2p 3.3.11's stream middleware, both shown by
 * test/peer/node.spec.ts:
 *
 * - `handle(protocol, handler, { middleware })` never runs that middleware
 *   (only middleware given to `use()` runs), so a `friendsOnly` gate passed
 *   to `handle()` let strangers reach the handler.
 * - For every inbound stream, `Connection.onIncomingStream` pushes the
 *   protocol handler onto the array `getMiddleware()` returns, which is the
 *   very array `use()` registered. The array grows with each inbound stream:
 *   later inbound streams run the handler several times, and outbound streams
 *   run it too, where it waits for a request that never comes (the DHT
 *   stalled after its first inbound query).
 *
 * The registrar's `getMiddleware` is replaced by one returning a fresh array:
 * the handler's own middleware, then the `use()` middleware; libp2p runs it
 * for inbound and outbound streams alike. The gate depends on this, so a
 * libp2p whose registrar looks different stops the node instead of running
 * ungated; recheck this when upgrading libp2p.
 */
function fixStreamMiddleware (node: Libp2p): void {
  interface Registrar {
    getMiddleware?: (protocol: string) => StreamMiddleware[]
    getHandler?: (protocol: string) => { options?: { middleware?: StreamMiddleware[] } }
  }
  const registrar = (node as unknown as { components?: { registrar?: Registrar } }).components?.registrar
  const getMiddleware = registrar?.getMiddleware
  const getHandler = registrar?.getHandler
  if (registrar == null || typeof getMiddleware !== 'function' || typeof getHandler !== 'function') {
    throw new KithError('INTERNAL', 'this libp2p version has no registrar kith can fix the stream middleware of; the friend gate would not hold, so the node does not start')
  }
  registrar.getMiddleware = (protocol: string): StreamMiddleware[] => {
    let own: StreamMiddleware[] = []
    try {
      own = getHandler.call(registrar, protocol).options?.middleware ?? []
    } catch {} // no handler: an outbound-only protocol
    return [...own, ...getMiddleware.call(registrar, protocol)]
  }
}
