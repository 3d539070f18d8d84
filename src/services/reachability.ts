import { EventEmitter } from 'node:events'
import { z } from 'zod'
import { isPrivate } from '@libp2p/utils'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import type { Connection, Stream, PeerId, IdentifyResult } from '@libp2p/interface'
import { KithError, isErrorCode } from '../errors.ts'
import { encodeCanonical, decodeCanonical } from '../peer/canonical.ts'
import { failureSchema, serveOnce } from '../peer/request-response.ts'
import { asError } from '../peer/dial.ts'
import { safeText } from '../peer/safe-text.ts'
import type { KithLibp2p } from '../peer/node.ts'
import type { FriendBook, FriendEvent } from '../trust/friends.ts'
import { friendsOnly } from '../trust/gate.ts'
import { PUNCH_PROTOCOL } from '../peer/hole-punch.ts'
import { backoffCap, msFromEnv } from '../peer/timing-env.ts'
import { lengthPrefixed } from '../peer/length-decoders.ts'

/**
 * Reachability and relays (docs/protocols.md, "Reachability and relays").
 *
 * - Am I reachable? I ask up to MAX_HELPERS friends, over direct
 *   connections, to dial me back (`/kith/reach/1.0.0`): each dials the IP it
 *   sees me at, on my listen ports, with a fresh connection, and says whether
 *   it got through. A dial-back that reaches me at a public IP makes me
 *   `public`; dial-backs to public IPs that all fail make me `nat`; dial-backs
 *   on private IPs only (LAN, loopback) say nothing, and I stay `unknown`.
 *   libp2p's AutoNAT (@libp2p/autonat 3) would need 4 confirmations from
 *   distinct peers and ignores private networks: too many for a few friends.
 * - A `public` node relays for friends it granted `relay` (the gate refuses
 *   reservations otherwise). A `nat` node reserves a slot on up to MAX_RELAYS
 *   friends who grant it `relay` and whom it reaches directly at a public IP
 *   (so they are reachable), by listening on `/p2p/<relay>/p2p-circuit`; the
 *   relayed addresses join its own, and the locate publisher signs and pushes
 *   them in its address record.
 * - Hole punching (src/peer/hole-punch.ts): when a friend is connected only
 *   through a relay, the side that accepted the relayed connection asks the
 *   other, over it, to punch a direct TCP connection, announcing the public IP
 *   friends' dial-backs saw it at. A failed punch is tried again after
 *   PUNCH_RETRY_BASE_MS, doubling to PUNCH_RETRY_MAX_MS, while the link
 *   stays relayed; a punched connection that closes while the relayed one is
 *   up is punched again.
 */
export const REACH_PROTOCOL = '/kith/reach/1.0.0'
const VERSION = 1
export const MAX_REACH_MESSAGE = 2048
export const MAX_REACH_PORTS = 4
export const REACH_STREAM_TIMEOUT_MS = 12_000
export const DIAL_BACK_TIMEOUT_MS = 5_000
/**
 * the dial-back timeout in use: KITH_DIAL_BACK_TIMEOUT_MS sets it (src/peer/timing-env.ts), read as the
 * daemon loads; up to 2 s short of the asker's wait for the answer (the NAT tests' relay: 1 s, test/helpers/netns.ts)
 */
const dialBackTimeoutMs = msFromEnv('KITH_DIAL_BACK_TIMEOUT_MS', DIAL_BACK_TIMEOUT_MS, REACH_STREAM_TIMEOUT_MS - 2_000)
/** a friend answers one asker at most this often */
export const MIN_DIAL_BACK_INTERVAL_MS = 3_000
export const MAX_HELPERS = 3
export const MAX_RELAYS = 2
/** reachability is checked again this often, and when my addresses change */
export const RECHECK_MS = 10 * 60_000
/** checks wait this long for things to settle (several friends connecting at start) */
export const CHECK_DEBOUNCE_MS = 500
export const RESERVE_RETRY_BASE_MS = 2_000
export const RESERVE_RETRY_MAX_MS = 5 * 60_000
/** the cap in use: KITH_RESERVE_RETRY_MAX_MS lowers it (test daemons; src/peer/timing-env.ts), read as the daemon loads */
const reserveRetryMaxMs = backoffCap('KITH_RESERVE_RETRY_MAX_MS', RESERVE_RETRY_MAX_MS)
/** first punch this long after the relayed link to a friend appears (both sides finish storing the friendship) */
export const PUNCH_FIRST_DELAY_MS = 300
export const PUNCH_RETRY_BASE_MS = 2_000
export const PUNCH_RETRY_MAX_MS = 10 * 60_000

export type ReachabilityState = 'unknown' | 'public' | 'nat'

export interface DialBackResult {
  /** the address the friend dialed, /ip4/<ip>/tcp/<port> */
  addr: string
  ok: boolean
}

export interface ReachabilityView {
  state: ReachabilityState
  /** ms since epoch of the last check that told something, or null */
  checkedAt: number | null
  /** the friends' dial-backs of the last check */
  evidence: Array<{ peerId: string, label: string, results: DialBackResult[] }>
  /** where friends reached me at a public IP */
  publicAddrs: string[]
}

/**
 * How hole punching to a friend has gone, as either side sees it: punches I
 * started (as the side that accepted the relayed connection) and those the
 * friend started that I answered. Shown by `kith status` while the link is
 * relayed, so a person can tell "not tried yet" from "tried, and the NATs
 * won't let it through".
 */
export interface PunchView {
  /** punches tried (started or answered) since the daemon started */
  attempts: number
  /** failures in a row; 0 after a success */
  failures: number
  /** ms since epoch the last punch ended */
  lastAt: number | null
  /** why the last punch failed, or null if it succeeded */
  lastError: { code: string, message: string } | null
  /** ms since epoch I try again, or null (none scheduled by me: the friend starts punches on our link) */
  nextAt: number | null
  /** a punch is under way */
  running: boolean
}

export interface RelayInUse {
  peerId: string
  label: string
  addrs: string[]
}

const requestSchema = z.object({ v: z.literal(VERSION), ports: z.array(z.number().int().min(1).max(65535)).min(1).max(MAX_REACH_PORTS) }).strict()
const failure = failureSchema(VERSION)
export const responseSchema = z.union([
  z.object({ v: z.literal(VERSION), ok: z.literal(true), results: z.array(z.object({ addr: safeText(256), ok: z.boolean() }).strict()).max(MAX_REACH_PORTS) }).strict(),
  failure
])

const isCircuit = (ma: Multiaddr): boolean => ma.getComponents().some(c => c.name === 'p2p-circuit')

/** The IP (and its protocol) a connection's remote address names, or null. */
function ipOf (ma: Multiaddr): { proto: 'ip4' | 'ip6', ip: string } | null {
  const c = ma.getComponents().find(c => c.name === 'ip4' || c.name === 'ip6')
  return c?.value != null ? { proto: c.name as 'ip4' | 'ip6', ip: c.value } : null
}

/** The responder: dial the asker back where I see it, on the ports it names. */
export function reachHandler (libp2p: KithLibp2p) {
  const lastAnswered = new Map<string, number>()
  return async (stream: Stream, connection: Connection): Promise<void> => {
    const asker = connection.remotePeer.toString()
    await serveOnce(stream, { version: VERSION, schema: requestSchema, maxRequest: MAX_REACH_MESSAGE, timeoutMs: REACH_STREAM_TIMEOUT_MS, what: 'the reach request' }, async (request, signal) => {
      const ip = ipOf(connection.remoteAddr)
      if (isCircuit(connection.remoteAddr) || ip == null) throw new KithError('BAD_REQUEST', 'ask for a dial-back over a direct connection')
      // monotonic: a wall clock step must neither lift nor stretch the limit
      const now = performance.now()
      if (now - (lastAnswered.get(asker) ?? -Infinity) < MIN_DIAL_BACK_INTERVAL_MS) throw new KithError('BAD_REQUEST', 'asked for a dial-back too often; wait a few seconds')
      lastAnswered.set(asker, now)
      if (lastAnswered.size > 1024) lastAnswered.clear()
      // only ever the IP the asker connects from: a friend can't point me at somebody else
      const ports = [...new Set(request.ports)]
      const results = await Promise.all(ports.map(async port => {
        const addr = `/${ip.proto}/${ip.ip}/tcp/${port}`
        try {
          const back = await libp2p.dial(multiaddr(`${addr}/p2p/${asker}`), { force: true, signal: AbortSignal.any([signal, AbortSignal.timeout(dialBackTimeoutMs)]) })
          const ok = back.remotePeer.equals(connection.remotePeer) && !isCircuit(back.remoteAddr) && back.id !== connection.id
          if (back.id !== connection.id) await back.close().catch(() => {})
          return { addr, ok }
        } catch {
          return { addr, ok: false }
        }
      }))
      return { results }
    })
  }
}

/** The asker: which of my ports a friend reached at the IP it sees me at. */
export async function askDialBack (libp2p: KithLibp2p, peer: PeerId, ports: number[], signal?: AbortSignal): Promise<DialBackResult[]> {
  const timeout = AbortSignal.timeout(REACH_STREAM_TIMEOUT_MS)
  const all = signal != null ? AbortSignal.any([signal, timeout]) : timeout
  // over a direct connection only: the friend must see my IP, not a relay's
  const connection = libp2p.getConnections(peer).find(c => c.status === 'open' && !isCircuit(c.remoteAddr))
  if (connection == null) throw new KithError('FRIEND_OFFLINE', `no direct connection to ${peer.toString()} to ask for a dial-back`)
  let stream: Stream
  try {
    stream = await connection.newStream(REACH_PROTOCOL, { signal: all })
  } catch (err) {
    throw new KithError('FRIEND_OFFLINE', `can't ask ${peer.toString()} for a dial-back (${asError(err, REACH_PROTOCOL).message})`, { cause: err })
  }
  const lp = lengthPrefixed(stream, { maxDataLength: MAX_REACH_MESSAGE })
  try {
    await lp.write(encodeCanonical({ v: VERSION, ports: ports.slice(0, MAX_REACH_PORTS) }), { signal: all })
    const reply = responseSchema.safeParse(decodeCanonical((await lp.read({ signal: all })).subarray(), 'PROTOCOL_VIOLATION', 'the reach answer'))
    await stream.close({ signal: all }).catch(() => {})
    if (!reply.success) throw new KithError('PROTOCOL_VIOLATION', `${peer.toString()} sent a malformed reach answer`)
    if (!reply.data.ok) throw new KithError(isErrorCode(reply.data.code) ? reply.data.code : 'PROTOCOL_VIOLATION', reply.data.message)
    return reply.data.results
  } catch (err) {
    stream.abort(err as Error)
    if (err instanceof KithError) throw err
    // the stream's own errors (an answer cut short, a reset) are the friend's connection failing, like the other askers say
    throw new KithError('FRIEND_OFFLINE', `the connection to ${peer.toString()} broke while asking for a dial-back (${(err as Error).message})`, { cause: err })
  }
}

/** Whether a dial-back address is on a public IP. */
function publicAddr (addr: string): boolean {
  try { return !isPrivate(multiaddr(addr)) } catch { return false }
}

export interface ReachabilityInit {
  libp2p: KithLibp2p
  friends: FriendBook
  /** tells the gate whether to grant relay reservations */
  onState?: (state: ReachabilityState) => void
}

export class Reachability extends EventEmitter<{ change: [ReachabilityView] }> {
  private readonly libp2p: KithLibp2p
  private readonly friends: FriendBook
  private readonly init: ReachabilityInit
  private view: ReachabilityView = { state: 'unknown', checkedAt: null, evidence: [], publicAddrs: [] }
  private readonly controller = new AbortController()
  private checkTimer: NodeJS.Timeout | null = null
  private periodic: NodeJS.Timeout | null = null
  private checking = false
  private recheck = false
  private lastPorts = ''
  /** relay peer -> reservation attempt state */
  private readonly reserving = new Set<string>()
  private readonly backoff = new Map<string, { attempt: number, until: number }>()
  private reserveTimer: NodeJS.Timeout | null = null
  private running = false
  /** friends a punch is under way or scheduled for, and failed punches' backoff */
  private readonly punches = new Map<string, { attempt: number, timer: NodeJS.Timeout | null, running: boolean }>()
  /** how punching to each friend went (kith status) */
  private readonly punchViews = new Map<string, PunchView>()
  /** my IP as the last friend at a public IP saw it (identify's observed address), before any dial-back tells */
  private observed: { ip: string, at: number } | null = null

  constructor (init: ReachabilityInit) {
    super()
    this.init = init
    this.libp2p = init.libp2p
    this.friends = init.friends
  }

  async start (): Promise<void> {
    await this.libp2p.handle(REACH_PROTOCOL, reachHandler(this.libp2p), {
      maxInboundStreams: 2,
      middleware: [friendsOnly(this.friends)]
    })
    // over relayed connections, which may be limited (a relay with a budget): friends only
    await this.libp2p.handle(PUNCH_PROTOCOL, this.onPunch, {
      maxInboundStreams: 1,
      maxOutboundStreams: 1,
      runOnLimitedConnection: true,
      middleware: [friendsOnly(this.friends)]
    })
    this.running = true
    this.libp2p.addEventListener('connection:open', this.onOpen)
    this.libp2p.addEventListener('connection:close', this.onClose)
    this.libp2p.addEventListener('peer:identify', this.onIdentify)
    this.libp2p.addEventListener('self:peer:update', this.onSelfUpdate)
    this.friends.on('event', this.onFriendEvent)
    this.lastPorts = this.ports().join()
    this.periodic = setInterval(() => this.scheduleCheck(), RECHECK_MS)
    this.periodic.unref()
    this.scheduleCheck()
  }

  async stop (): Promise<void> {
    this.running = false
    this.controller.abort()
    for (const t of [this.checkTimer, this.reserveTimer]) if (t != null) clearTimeout(t)
    if (this.periodic != null) clearInterval(this.periodic)
    for (const p of this.punches.values()) if (p.timer != null) clearTimeout(p.timer)
    this.punches.clear()
    this.libp2p.removeEventListener('connection:open', this.onOpen)
    this.libp2p.removeEventListener('connection:close', this.onClose)
    this.libp2p.removeEventListener('peer:identify', this.onIdentify)
    this.libp2p.removeEventListener('self:peer:update', this.onSelfUpdate)
    this.friends.off('event', this.onFriendEvent)
    await this.libp2p.unhandle(REACH_PROTOCOL).catch(() => {})
    await this.libp2p.unhandle(PUNCH_PROTOCOL).catch(() => {})
  }

  get current (): ReachabilityView {
    return this.view
  }

  /** How hole punching to a friend went, or null if no punch was tried or scheduled. */
  punchState (peer: string): PunchView | null {
    const view = this.punchViews.get(peer)
    return view != null ? { ...view } : null
  }

  private punchView (peer: string): PunchView {
    let view = this.punchViews.get(peer)
    if (view == null) {
      view = { attempts: 0, failures: 0, lastAt: null, lastError: null, nextAt: null, running: false }
      this.punchViews.set(peer, view)
    }
    return view
  }

  private punchEnded (peer: string, error: unknown): void {
    const view = this.punchView(peer)
    view.attempts++
    view.lastAt = Date.now()
    view.nextAt = null
    view.running = false
    if (error == null) {
      view.failures = 0
      view.lastError = null
    } else {
      view.failures++
      const e = error instanceof KithError ? error : new KithError('PUNCH_FAILED', (error as Error)?.message ?? String(error))
      view.lastError = { code: e.code, message: e.message }
    }
  }

  /** Relays I hold a reservation on: my relayed listen addresses, grouped by relay. */
  relays (): RelayInUse[] {
    const byRelay = new Map<string, string[]>()
    for (const ma of this.libp2p.getMultiaddrs()) {
      const parts = ma.getComponents()
      const at = parts.findIndex(c => c.name === 'p2p-circuit')
      const relay = at > 0 ? parts[at - 1] : undefined
      if (relay?.name !== 'p2p' || relay.value == null) continue
      const list = byRelay.get(relay.value) ?? []
      list.push(ma.toString())
      byRelay.set(relay.value, list)
    }
    return [...byRelay].map(([peerId, addrs]) => ({ peerId, label: this.friends.get(peerId)?.label ?? peerId, addrs }))
  }

  /** Friends holding a reservation on me, as their relay. */
  serving (): Array<{ peerId: string, label: string, expires: number }> {
    const out: Array<{ peerId: string, label: string, expires: number }> = []
    for (const [peer, reservation] of this.libp2p.services.relay.reservations.entries()) {
      const id = peer.toString()
      out.push({ peerId: id, label: this.friends.get(id)?.label ?? id, expires: reservation.expiry.getTime() })
    }
    return out
  }

  /** Checks now (or right after the check in flight) and resolves with the outcome. */
  async check (): Promise<ReachabilityView> {
    if (this.checking) {
      this.recheck = true
      return this.view
    }
    this.checking = true
    try {
      do {
        this.recheck = false
        await this.runCheck()
      } while (this.recheck && this.running)
    } finally {
      this.checking = false
    }
    return this.view
  }

  private scheduleCheck (delay = CHECK_DEBOUNCE_MS): void {
    if (!this.running) return
    if (this.checkTimer != null) clearTimeout(this.checkTimer)
    this.checkTimer = setTimeout(() => {
      this.checkTimer = null
      this.check().catch(() => {})
    }, delay)
    this.checkTimer.unref()
  }

  /** My TCP listen ports (not relayed addresses). */
  private ports (): number[] {
    const ports = new Set<number>()
    for (const ma of this.libp2p.getMultiaddrs()) {
      if (isCircuit(ma)) continue
      const tcp = ma.getComponents().find(c => c.name === 'tcp')
      if (tcp?.value != null && Number(tcp.value) > 0) ports.add(Number(tcp.value))
    }
    return [...ports].slice(0, MAX_REACH_PORTS)
  }

  /** Friends I am connected to directly, who can dial me back. */
  private helpers (): string[] {
    const out: string[] = []
    for (const friend of this.friends.list()) {
      if (friend.state !== 'active') continue
      const direct = this.libp2p.getConnections(peerIdFromString(friend.peerId)).some(c => c.status === 'open' && !isCircuit(c.remoteAddr))
      if (direct) out.push(friend.peerId)
    }
    // prefer friends I reach at a public IP: they see my public IP
    const publicFirst = (peer: string): number => this.libp2p.getConnections(peerIdFromString(peer)).some(c => c.status === 'open' && !isCircuit(c.remoteAddr) && !isPrivate(c.remoteAddr)) ? 0 : 1
    return out.sort((a, b) => publicFirst(a) - publicFirst(b)).slice(0, MAX_HELPERS)
  }

  private async runCheck (): Promise<void> {
    const ports = this.ports()
    const helpers = this.helpers()
    if (ports.length === 0 || helpers.length === 0) return
    const evidence = (await Promise.all(helpers.map(async peer => {
      try {
        const results = await askDialBack(this.libp2p, peerIdFromString(peer), ports, this.controller.signal)
        return [{ peerId: peer, label: this.friends.get(peer)?.label ?? peer, results }]
      } catch {
        return []
      }
    }))).flat()
    if (!this.running) return
    const results = evidence.flatMap(e => e.results).filter(r => publicAddr(r.addr))
    // only dial-backs on public IPs tell: LAN or loopback friends always get through
    if (results.length === 0) return
    const reached = [...new Set(results.filter(r => r.ok).map(r => r.addr))]
    // libp2p announces a public listen address only once something confirmed it: a friend just did
    for (const addr of reached) {
      try { addressManager(this.libp2p)?.confirmObservedAddr(multiaddr(addr)) } catch {}
    }
    const state: ReachabilityState = reached.length > 0 ? 'public' : 'nat'
    const changed = state !== this.view.state
    this.view = { state, checkedAt: Date.now(), evidence, publicAddrs: reached }
    this.init.onState?.(state)
    if (changed) this.emit('change', this.view)
    this.reserve()
  }

  private readonly onOpen = (evt: CustomEvent<Connection>): void => {
    const connection = evt.detail
    const peer = connection.remotePeer.toString()
    if (!this.friends.isActive(peer)) return
    if (isCircuit(connection.remoteAddr)) {
      this.schedulePunch(peer, PUNCH_FIRST_DELAY_MS)
      return
    }
    // a friend to ask, or a relay to reserve on
    if (this.view.state === 'unknown' || this.view.checkedAt == null) this.scheduleCheck()
    else this.reserve()
  }

  private readonly onSelfUpdate = (): void => {
    const ports = this.ports().join()
    if (ports === this.lastPorts) return // only relayed addresses changed
    this.lastPorts = ports
    this.scheduleCheck()
  }

  private readonly onClose = (evt: CustomEvent<Connection>): void => {
    const connection = evt.detail
    const peer = connection.remotePeer.toString()
    // a punched connection gone while the relayed one stays: punch again
    if (this.running && this.friends.isActive(peer) && this.libp2p.services.punch.isPunched(connection)) this.schedulePunch(peer, PUNCH_FIRST_DELAY_MS)
  }

  /**
   * A friend I reach directly at a public IP sees my public IP: identify tells
   * it at once, while a dial-back check behind a NAT that drops it takes
   * DIAL_BACK_TIMEOUT_MS. (libp2p keeps no observed TCP address itself.)
   */
  private readonly onIdentify = (evt: CustomEvent<IdentifyResult>): void => {
    const { connection, observedAddr, peerId } = evt.detail
    if (observedAddr == null || !this.friends.isActive(peerId.toString())) return
    if (isCircuit(connection.remoteAddr) || isPrivate(connection.remoteAddr)) return
    try {
      const ip = ipOf(observedAddr)
      if (ip != null && publicAddr(`/${ip.proto}/${ip.ip}/tcp/1`)) this.observed = { ip: ip.ip, at: Date.now() }
    } catch {}
  }

  private readonly onFriendEvent = (evt: FriendEvent): void => {
    if (evt.type === 'friend:added') this.schedulePunch(evt.friend.peerId, PUNCH_FIRST_DELAY_MS)
    if (evt.type !== 'friend:added' && evt.type !== 'friend:changed') return
    // a new friend may dial me back (the redeem connection is still up), or relay for me
    if (evt.type === 'friend:added' && this.view.checkedAt == null) this.scheduleCheck()
    else this.reserve()
  }

  /** Behind NAT: keep reservations on up to MAX_RELAYS reachable friends who grant me `relay`. */
  private reserve (): void {
    if (!this.running || this.view.state !== 'nat') return
    const inUse = new Set(this.relays().map(r => r.peerId))
    let wanted = MAX_RELAYS - inUse.size - this.reserving.size
    if (wanted <= 0) return
    // backoff deadlines are on the monotonic clock
    const now = performance.now()
    let nextRetry = Infinity
    for (const friend of this.friends.list()) {
      if (wanted <= 0) break
      const peer = friend.peerId
      if (friend.state !== 'active' || !friend.grantsFromThem.includes('relay') || inUse.has(peer) || this.reserving.has(peer)) continue
      const wait = this.backoff.get(peer)
      if (wait != null && wait.until > now) {
        nextRetry = Math.min(nextRetry, wait.until)
        continue
      }
      // a friend I reach directly at a public IP is reachable, and can relay
      const conn = this.libp2p.getConnections(peerIdFromString(peer)).find(c => c.status === 'open' && !isCircuit(c.remoteAddr) && !isPrivate(c.remoteAddr))
      if (conn == null) continue
      wanted--
      this.reserving.add(peer)
      const addr = multiaddr(`${conn.remoteAddr.decapsulateCode(421).toString()}/p2p/${peer}/p2p-circuit`)
      Promise.resolve().then(async () => { await transportManager(this.libp2p).listen([addr]) })
        .then(() => { this.backoff.delete(peer) })
        .catch(() => {
          const attempt = (this.backoff.get(peer)?.attempt ?? 0) + 1
          this.backoff.set(peer, { attempt, until: performance.now() + Math.min(reserveRetryMaxMs, RESERVE_RETRY_BASE_MS * 2 ** (attempt - 1)) })
        })
        .finally(() => {
          this.reserving.delete(peer)
          this.scheduleReserve(500)
        })
    }
    if (Number.isFinite(nextRetry)) this.scheduleReserve(nextRetry - now)
  }

  /** My public IP as friends saw it last: their dial-backs (reached or not) or a public friend's identify; null if none did. */
  publicIp (): string | null {
    if (this.observed != null && this.observed.at > (this.view.checkedAt ?? 0)) return this.observed.ip
    const addrs = [...this.view.publicAddrs, ...this.view.evidence.flatMap(e => e.results.map(r => r.addr)).filter(publicAddr)]
    for (const addr of addrs) {
      try {
        const ip = ipOf(multiaddr(addr))
        if (ip != null) return ip.ip
      } catch {}
    }
    return this.observed?.ip ?? null
  }

  /** The relayed connection I accepted from a friend I have no direct connection to, or null. */
  private punchable (peer: string): Connection | null {
    let connections: Connection[]
    try { connections = this.libp2p.getConnections(peerIdFromString(peer)).filter(c => c.status === 'open') } catch { return null }
    if (connections.some(c => !isCircuit(c.remoteAddr))) return null
    // the side that accepted the relayed connection starts, as with dcutr
    return connections.find(c => c.direction === 'inbound') ?? null
  }

  private schedulePunch (peer: string, delay: number): void {
    if (!this.running || !this.friends.isActive(peer) || this.punchable(peer) == null) return
    const p = this.punches.get(peer) ?? { attempt: 0, timer: null, running: false }
    this.punches.set(peer, p)
    if (p.timer != null || p.running) return
    this.punchView(peer).nextAt = Date.now() + delay
    p.timer = setTimeout(() => {
      p.timer = null
      void this.punch(peer)
    }, delay)
    p.timer.unref()
  }

  /** Punches a direct connection to a friend I reach through a relay only; retried with backoff while that lasts. */
  private async punch (peer: string): Promise<void> {
    const p = this.punches.get(peer)
    const relayed = this.punchable(peer)
    const ip = this.publicIp()
    if (p == null || !this.running || !this.friends.isActive(peer) || relayed == null) {
      this.punches.delete(peer)
      const view = this.punchViews.get(peer)
      if (view != null) view.nextAt = null
      return
    }
    p.running = true
    Object.assign(this.punchView(peer), { running: true, nextAt: null })
    let ok = false
    let failure: unknown = null
    try {
      if (ip == null) throw new KithError('PUNCH_REFUSED', 'no friend has told me my public address yet')
      const signal = this.controller.signal
      const stream = await relayed.newStream(PUNCH_PROTOCOL, { runOnLimitedConnection: true, signal: AbortSignal.any([signal, AbortSignal.timeout(REACH_STREAM_TIMEOUT_MS)]) })
        .catch((err: unknown) => { throw asError(err, PUNCH_PROTOCOL) })
      // the punched connection announces itself (connection:open); presence reports it as hole-punched
      await this.libp2p.services.punch.initiate(stream, relayed, ip, { signal })
      ok = true
      this.punches.delete(peer)
    } catch (err) {
      failure = err ?? new KithError('PUNCH_FAILED', 'the punch failed')
    } finally {
      p.running = false
    }
    // the node stopping is no failure to show
    if (this.running) this.punchEnded(peer, ok ? null : failure)
    else this.punchView(peer).running = false
    if (!ok && this.running) {
      p.attempt++
      this.schedulePunch(peer, Math.min(PUNCH_RETRY_MAX_MS, PUNCH_RETRY_BASE_MS * 2 ** (p.attempt - 1)))
    }
  }

  /** The responder: punch back to a friend who asks over our relayed connection. */
  private readonly onPunch = async (stream: Stream, connection: Connection): Promise<void> => {
    if (!isCircuit(connection.remoteAddr)) {
      stream.abort(new KithError('BAD_REQUEST', 'punch over a relayed connection only'))
      return
    }
    const peer = connection.remotePeer.toString()
    const ip = this.publicIp()
    this.punchView(peer).running = true
    const result = await this.libp2p.services.punch.respond(stream, connection, ip, { signal: this.controller.signal })
    if (!this.running) {
      this.punchView(peer).running = false
      return
    }
    this.punchEnded(peer, result != null
      ? null
      : ip == null
        ? new KithError('PUNCH_REFUSED', 'no friend has told me my public address yet')
        : new KithError('PUNCH_FAILED', `no direct connection came of the punch ${this.friends.get(peer)?.label ?? peer} started; the NATs may not keep source ports`))
  }

  private scheduleReserve (delay: number): void {
    if (!this.running) return
    if (this.reserveTimer != null) clearTimeout(this.reserveTimer)
    this.reserveTimer = setTimeout(() => {
      this.reserveTimer = null
      this.reserve()
    }, Math.max(0, delay))
    this.reserveTimer.unref()
  }
}

/** libp2p has no public way to listen on a new address once started: its transport manager does it. */
function transportManager (libp2p: KithLibp2p): { listen: (addrs: Multiaddr[]) => Promise<void> } {
  const tm = (libp2p as unknown as { components?: { transportManager?: { listen?: (addrs: Multiaddr[]) => Promise<void> } } }).components?.transportManager
  if (tm?.listen == null) throw new KithError('INTERNAL', 'this libp2p has no transport manager to listen on a relay with')
  return tm as { listen: (addrs: Multiaddr[]) => Promise<void> }
}

interface AddressManagerLike {
  confirmObservedAddr: (addr: Multiaddr) => void
  getAddressesWithMetadata: () => Array<{ multiaddr: Multiaddr, type: string }>
}

function addressManager (libp2p: KithLibp2p): AddressManagerLike | undefined {
  const am = (libp2p as unknown as { components?: { addressManager?: Partial<AddressManagerLike> } }).components?.addressManager
  return typeof am?.confirmObservedAddr === 'function' && typeof am.getAddressesWithMetadata === 'function' ? am as AddressManagerLike : undefined
}

/**
 * Every address I listen on, with those libp2p does not announce yet (a
 * public IP nobody confirmed), then my relayed ones: what an invite should
 * carry, since the friend who takes it is the first who can confirm them.
 */
export function allAddrs (libp2p: KithLibp2p): string[] {
  const announced = libp2p.getMultiaddrs().map(a => a.toString())
  const self = libp2p.peerId.toString()
  const unconfirmed = (addressManager(libp2p)?.getAddressesWithMetadata() ?? [])
    .filter(a => a.type === 'transport')
    .map(a => a.multiaddr.toString())
    .map(a => a.endsWith(`/p2p/${self}`) ? a : `${a}/p2p/${self}`)
  return [...new Set([...announced, ...unconfirmed])]
}

export function isCircuitAddr (ma: Multiaddr): boolean {
  return isCircuit(ma)
}
