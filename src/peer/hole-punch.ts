import net from 'node:net'
import { z } from 'zod'
import { AbstractMultiaddrConnection, isPrivate, type AbstractMultiaddrConnectionInit, type SendResult } from '@libp2p/utils'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { TimeoutError, type AbortOptions, type ComponentLogger, type Connection, type Logger, type Stream, type Upgrader } from '@libp2p/interface'
import { KithError } from '../errors.ts'
import { encodeCanonical, decodeCanonical } from './canonical.ts'
import { safeText } from './safe-text.ts'
import { msFromEnv } from './timing-env.ts'
import { lengthPrefixed } from './length-decoders.ts'

/**
 * TCP hole punching between two friends behind NAT (docs/protocols.md,
 * "Hole punching"), where `@libp2p/dcutr` can't: js-libp2p's TCP transport
 * dials from a random port and Node can't bind a client socket to a listening
 * port, so neither NAT ever maps a port the other side knows.
 *
 * Over the relayed connection, on `/kith/punch/1.0.0`, the side that accepted
 * the relayed connection (the initiator) and the other (the responder) each
 * pick a free local port and swap their public IP and that port; then both
 * `connect()` from their port to the other's at the same moment (the
 * initiator half a round trip after it sends `go`, the responder as `go`
 * arrives). Each SYN opens its own NAT for the other's: a TCP simultaneous
 * open. A NAT that keeps the source port when it is free (Linux MASQUERADE,
 * most home routers) maps the port to the same number, which is what each
 * side announced. The socket then becomes an ordinary libp2p connection:
 * Noise with the initiator as the handshake initiator, checked against the
 * friend's peer id, then yamux.
 *
 * The service needs libp2p's upgrader, which libp2p hands to transports and
 * (as a component) to services; a libp2p without one stops the node.
 */
export const PUNCH_PROTOCOL = '/kith/punch/1.0.0'
export const PUNCH_VERSION = 1
/** largest punch message, checked before it is read */
export const MAX_PUNCH_MESSAGE = 256
/** the whole exchange over the relay, before any dialing */
export const PUNCH_SIGNAL_TIMEOUT_MS = 10_000
/** how long both sides keep trying to connect once they start */
export const PUNCH_WINDOW_MS = 5_000
/** the most KITH_PUNCH_WINDOW_MS may set */
export const MAX_PUNCH_WINDOW_MS = 60_000
/**
 * the window in use unless the service's init sets one: KITH_PUNCH_WINDOW_MS sets it (src/peer/timing-env.ts),
 * read as the daemon loads; longer for slow links, shorter where failed punches are expected (nat-relay.spec)
 */
const punchWindowMs = msFromEnv('KITH_PUNCH_WINDOW_MS', PUNCH_WINDOW_MS, MAX_PUNCH_WINDOW_MS)
/** pause after a refused attempt (a router that answers RST), with as much jitter again */
export const PUNCH_RETRY_MS = 25
/** Noise + yamux on the punched socket */
export const PUNCH_UPGRADE_TIMEOUT_MS = 10_000
/** an idle punched socket is closed after this long, as @libp2p/tcp does */
export const PUNCH_INACTIVITY_TIMEOUT_MS = 2 * 60_000
/** TCP keep-alive on a punched socket, to keep both NAT mappings */
export const PUNCH_KEEPALIVE_MS = 30_000

const version = z.literal(PUNCH_VERSION)
const endpoint = {
  ip: z.string().max(45).refine(ip => net.isIP(ip) !== 0, 'not an IP address'),
  port: z.number().int().min(1).max(65535)
}
const messageSchema = z.discriminatedUnion('t', [
  /** initiator -> responder: where I will connect from */
  z.object({ v: version, t: z.literal('offer'), ...endpoint }).strict(),
  /** responder -> initiator: where I will connect from */
  z.object({ v: version, t: z.literal('answer'), ...endpoint }).strict(),
  /** responder -> initiator: I won't punch (no public address known, ...) */
  z.object({ v: version, t: z.literal('refuse'), code: safeText(64, 1), message: safeText(160) }).strict(),
  /** initiator -> responder: connect now */
  z.object({ v: version, t: z.literal('go') }).strict()
])

export type PunchMessage = z.infer<typeof messageSchema>
export interface Endpoint { ip: string, port: number }

export function encodePunchMessage (message: PunchMessage): Uint8Array {
  const bytes = encodeCanonical(message)
  if (bytes.byteLength > MAX_PUNCH_MESSAGE) throw new KithError('PUNCH_TOO_LARGE', `a punch message may be ${MAX_PUNCH_MESSAGE} bytes at most`)
  return bytes
}

/** Parses one punch message: size first, then canonical CBOR, the version, then every field. */
export function decodePunchMessage (bytes: Uint8Array): PunchMessage {
  if (bytes.byteLength > MAX_PUNCH_MESSAGE) throw new KithError('PUNCH_TOO_LARGE', `the punch message is ${bytes.byteLength} bytes; at most ${MAX_PUNCH_MESSAGE} are accepted`)
  const value = decodeCanonical(bytes, 'PUNCH_MALFORMED', 'the punch message')
  if (value != null && typeof value === 'object' && 'v' in value && typeof value.v === 'number' && value.v !== PUNCH_VERSION) {
    throw new KithError('UNSUPPORTED_VERSION', `the punch message has version ${value.v}; this node speaks ${PUNCH_VERSION}`)
  }
  const parsed = messageSchema.safeParse(value)
  if (!parsed.success) throw new KithError('PUNCH_MALFORMED', `the punch message is malformed: ${parsed.error.issues[0]?.message ?? ''}`)
  return parsed.data
}

/** The friend's endpoint must be a public unicast address: a friend can't make me send SYNs into my own LAN. */
function checkEndpoint (e: Endpoint): Endpoint {
  const ma = multiaddr(`/${net.isIP(e.ip) === 6 ? 'ip6' : 'ip4'}/${e.ip}/tcp/${e.port}`)
  if (isPrivate(ma) === true || e.ip === '0.0.0.0' || e.ip === '::' || e.ip.startsWith('224.') || e.ip.toLowerCase().startsWith('ff')) {
    throw new KithError('PUNCH_REFUSED', `the friend offered ${e.ip}, which is not a public address to punch to`)
  }
  return e
}

/** A free local TCP port (bound and released at once). */
async function freeLocalPort (ip: string): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen({ port: 0, host: net.isIP(ip) === 6 ? '::' : '0.0.0.0', exclusive: true }, () => { resolve() })
  })
  const port = (server.address() as net.AddressInfo).port
  await new Promise<void>(resolve => { server.close(() => { resolve() }) })
  return port
}

async function pause (ms: number, signal: AbortSignal): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const onAbort = (): void => { clearTimeout(timer); reject(signal.reason) }
    const timer = setTimeout(() => { signal.removeEventListener('abort', onAbort); resolve() }, ms)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

/** One connect() from `localPort`, pending until it connects, fails, the deadline or the signal. */
async function connectOnce (remote: Endpoint, localPort: number, deadline: number, signal: AbortSignal): Promise<net.Socket> {
  return await new Promise((resolve, reject) => {
    const socket = net.connect({ host: remote.ip, port: remote.port, localPort, localAddress: net.isIP(remote.ip) === 6 ? '::' : '0.0.0.0', noDelay: true, keepAlive: true, keepAliveInitialDelay: PUNCH_KEEPALIVE_MS })
    const cleanup = (): void => {
      clearTimeout(timer)
      signal.removeEventListener('abort', onAbort)
      socket.off('error', fail)
      socket.off('connect', connected)
    }
    const fail = (err: Error): void => { cleanup(); socket.destroy(); reject(err) }
    const onAbort = (): void => { fail(signal.reason as Error) }
    const connected = (): void => {
      cleanup()
      // the whole point: the connection must leave from the port we announced
      if (socket.localPort !== localPort) {
        socket.destroy()
        reject(new KithError('INTERNAL', `Node connected from port ${String(socket.localPort)}, not the requested ${localPort}; hole punching can't work on this Node`))
        return
      }
      resolve(socket)
    }
    const timer = setTimeout(() => { fail(new TimeoutError('no answer')) }, Math.max(0, deadline - performance.now()))
    socket.once('error', fail)
    socket.once('connect', connected)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

/**
 * Both sides connect to each other at once, again after each refusal (a
 * router that answers an early SYN with RST), until one attempt connects or
 * PUNCH_WINDOW_MS is up. A router that drops early SYNs instead leaves the
 * attempt pending, and the other side's SYN completes it.
 */
export async function simultaneousOpen (remote: Endpoint, localPort: number, signal: AbortSignal, windowMs = PUNCH_WINDOW_MS): Promise<{ socket: net.Socket, attempts: number }> {
  const deadline = performance.now() + windowMs
  let attempts = 0
  let last: unknown
  while (performance.now() < deadline) {
    signal.throwIfAborted()
    attempts++
    try {
      return { socket: await connectOnce(remote, localPort, deadline, signal), attempts }
    } catch (err) {
      if (signal.aborted || (err instanceof KithError)) throw err
      last = err
    }
    if (performance.now() + PUNCH_RETRY_MS >= deadline) break
    await pause(PUNCH_RETRY_MS + Math.random() * PUNCH_RETRY_MS, signal)
  }
  throw new KithError('PUNCH_FAILED', `no direct connection to ${remote.ip}:${remote.port} from port ${localPort} after ${attempts} attempts in ${windowMs} ms (${(last as Error | undefined)?.message ?? 'no attempt'}); the NATs may not keep source ports`)
}

/** A connected socket as a libp2p MultiaddrConnection (as @libp2p/tcp makes one, which it does not export). */
class PunchedSocketConnection extends AbstractMultiaddrConnection {
  private readonly socket: net.Socket

  constructor (init: AbstractMultiaddrConnectionInit & { socket: net.Socket }) {
    super(init)
    const socket = this.socket = init.socket
    socket.on('data', buf => { this.onData(buf) })
    socket.on('error', err => { this.abort(err) })
    socket.setTimeout(PUNCH_INACTIVITY_TIMEOUT_MS)
    socket.once('timeout', () => { this.abort(new TimeoutError('punched socket idle')) })
    socket.once('end', () => { this.onTransportClosed() })
    socket.once('close', hadError => {
      if (hadError) this.abort(new Error('TCP transmission error'))
      else this.onTransportClosed()
    })
    socket.on('drain', () => { this.safeDispatchEvent('drain') })
  }

  sendData (data: Parameters<AbstractMultiaddrConnection['sendData']>[0]): SendResult {
    let sentBytes = 0
    let canSendMore = true
    for (const buf of data) {
      sentBytes += buf.byteLength
      canSendMore = this.socket.write(buf)
      if (!canSendMore) break
    }
    return { sentBytes, canSendMore }
  }

  async sendClose (options?: AbortOptions): Promise<void> {
    if (this.socket.destroyed) return
    this.socket.destroySoon()
    await new Promise<void>((resolve, reject) => {
      const onAbort = (): void => { reject(options?.signal?.reason) }
      options?.signal?.addEventListener('abort', onAbort, { once: true })
      this.socket.once('close', () => { options?.signal?.removeEventListener('abort', onAbort); resolve() })
    })
  }

  sendReset (): void {
    if (this.socket.writableEnded) this.socket.destroy()
    else this.socket.resetAndDestroy()
  }

  sendPause (): void { this.socket.pause() }
  sendResume (): void { this.socket.resume() }
}

export interface PunchResult {
  connection: Connection
  /** connect() calls made before one got through */
  attempts: number
  /** round trip over the relay, ms */
  rttMs: number
  /** ms from the start of the exchange to the upgraded connection */
  ms: number
}

export interface HolePunchComponents {
  upgrader: Upgrader
  logger: ComponentLogger
}

export interface HolePunchInit {
  /** how long both sides keep trying to connect, ms; @default KITH_PUNCH_WINDOW_MS, or PUNCH_WINDOW_MS */
  windowMs?: number
}

export interface HolePunch {
  /**
   * As the initiator: run the exchange on `stream` (opened by the caller on
   * the relayed connection `relayed`, with `runOnLimitedConnection`),
   * announcing `publicIp`; resolves with the punched, upgraded connection.
   */
  initiate: (stream: Stream, relayed: Connection, publicIp: string, options?: AbortOptions) => Promise<PunchResult>
  /**
   * As the responder: answer the exchange on an inbound stream. `publicIp`
   * null refuses (I don't know where I am). Never throws for what the peer
   * sends; resolves with the punched connection, or null when nothing came of it.
   */
  respond: (stream: Stream, relayed: Connection, publicIp: string | null, options?: AbortOptions) => Promise<PunchResult | null>
  /** whether a connection came from a punch */
  isPunched: (connection: Connection) => boolean
}

class DefaultHolePunch implements HolePunch {
  private readonly upgrader: Upgrader
  private readonly log: Logger
  private readonly windowMs: number
  private readonly punched = new WeakSet<Connection>()
  private readonly controller = new AbortController()

  constructor (components: HolePunchComponents, init: HolePunchInit) {
    const upgrader = (components as Partial<HolePunchComponents>).upgrader
    if (upgrader == null || typeof upgrader.upgradeOutbound !== 'function') {
      throw new KithError('INTERNAL', 'this libp2p gives services no upgrader; hole punching could not turn a socket into a connection, so the node does not start')
    }
    this.upgrader = upgrader
    this.log = components.logger.forComponent('kith:punch')
    this.windowMs = init.windowMs ?? punchWindowMs
  }

  readonly [Symbol.toStringTag] = 'kith/punch'

  start (): void {}

  stop (): void {
    this.controller.abort(new KithError('PUNCH_FAILED', 'the node is stopping'))
  }

  isPunched (connection: Connection): boolean {
    return this.punched.has(connection)
  }

  async initiate (stream: Stream, relayed: Connection, publicIp: string, options: AbortOptions = {}): Promise<PunchResult> {
    try {
      return await this.runInitiator(stream, relayed, publicIp, options)
    } catch (err) {
      this.log('punch to %p failed - %e', relayed.remotePeer, err)
      throw err
    }
  }

  private async runInitiator (stream: Stream, relayed: Connection, publicIp: string, options: AbortOptions): Promise<PunchResult> {
    const t0 = performance.now()
    const signal = this.signal(options)
    const lp = lengthPrefixed(stream, { maxDataLength: MAX_PUNCH_MESSAGE })
    let remote: Endpoint
    let localPort: number
    let rttMs: number
    try {
      localPort = await freeLocalPort(publicIp)
      const sent = performance.now()
      await lp.write(encodePunchMessage({ v: PUNCH_VERSION, t: 'offer', ip: publicIp, port: localPort }), { signal })
      const reply = await readMessage(lp, signal)
      rttMs = Math.round(performance.now() - sent)
      if (reply.t === 'refuse') throw new KithError('PUNCH_REFUSED', `the friend won't punch: ${reply.message} [${reply.code}]`)
      if (reply.t !== 'answer') throw new KithError('PUNCH_MALFORMED', `expected an answer, got ${reply.t}`)
      remote = checkEndpoint(reply)
      await lp.write(encodePunchMessage({ v: PUNCH_VERSION, t: 'go' }), { signal })
      await stream.close({ signal }).catch(() => {})
    } catch (err) {
      stream.abort(err as Error)
      throw err
    }
    // the responder starts as `go` arrives, about half a round trip from now
    await pause(rttMs / 2, signal)
    this.log('punching to %s:%d from port %d (relay rtt %d ms)', remote.ip, remote.port, localPort, rttMs)
    const { socket, attempts } = await simultaneousOpen(remote, localPort, signal, this.windowMs)
    const connection = await this.upgrade(socket, remote, relayed, true, signal)
    this.log('punched %p at %s:%d as initiator: %d attempts, %d ms', relayed.remotePeer, remote.ip, remote.port, attempts, Math.round(performance.now() - t0))
    return { connection, attempts, rttMs, ms: Math.round(performance.now() - t0) }
  }

  async respond (stream: Stream, relayed: Connection, publicIp: string | null, options: AbortOptions = {}): Promise<PunchResult | null> {
    const t0 = performance.now()
    const signal = this.signal(options)
    const lp = lengthPrefixed(stream, { maxDataLength: MAX_PUNCH_MESSAGE })
    let remote: Endpoint
    let localPort: number
    try {
      const offer = await readMessage(lp, signal)
      if (offer.t !== 'offer') throw new KithError('PUNCH_MALFORMED', `expected an offer, got ${offer.t}`)
      if (publicIp == null) {
        await lp.write(encodePunchMessage({ v: PUNCH_VERSION, t: 'refuse', code: 'PUNCH_REFUSED', message: 'I do not know my public address yet' }), { signal })
        await stream.close({ signal }).catch(() => {})
        return null
      }
      remote = checkEndpoint(offer)
      localPort = await freeLocalPort(publicIp)
      await lp.write(encodePunchMessage({ v: PUNCH_VERSION, t: 'answer', ip: publicIp, port: localPort }), { signal })
      const go = await readMessage(lp, signal)
      if (go.t !== 'go') throw new KithError('PUNCH_MALFORMED', `expected go, got ${go.t}`)
      await stream.close({ signal }).catch(() => {})
    } catch (err) {
      this.log('punch exchange with %p failed - %e', relayed.remotePeer, err)
      stream.abort(err as Error)
      return null
    }
    try {
      this.log('punching to %s:%d from port %d', remote.ip, remote.port, localPort)
      const { socket, attempts } = await simultaneousOpen(remote, localPort, signal, this.windowMs)
      const connection = await this.upgrade(socket, remote, relayed, false, signal)
      this.log('punched %p at %s:%d as responder: %d attempts, %d ms', relayed.remotePeer, remote.ip, remote.port, attempts, Math.round(performance.now() - t0))
      return { connection, attempts, rttMs: 0, ms: Math.round(performance.now() - t0) }
    } catch (err) {
      this.log('punch to %p failed - %e', relayed.remotePeer, err)
      return null
    }
  }

  private signal (options: AbortOptions): AbortSignal {
    const signals = [this.controller.signal, AbortSignal.timeout(PUNCH_SIGNAL_TIMEOUT_MS + this.windowMs + PUNCH_UPGRADE_TIMEOUT_MS)]
    if (options.signal != null) signals.push(options.signal)
    return AbortSignal.any(signals)
  }

  /** Noise (as initiator or responder, checked against the relayed peer's id), then yamux: a libp2p connection like any other. */
  private async upgrade (socket: net.Socket, remote: Endpoint, relayed: Connection, initiator: boolean, signal: AbortSignal): Promise<Connection> {
    const remoteAddr: Multiaddr = multiaddr(`/${net.isIP(remote.ip) === 6 ? 'ip6' : 'ip4'}/${remote.ip}/tcp/${remote.port}/p2p/${relayed.remotePeer.toString()}`)
    const maConn = new PunchedSocketConnection({
      socket,
      remoteAddr,
      direction: initiator ? 'outbound' : 'inbound',
      log: this.log.newScope('connection')
    })
    try {
      const connection = await this.upgrader.upgradeOutbound(maConn, {
        // the multistream-select and Noise roles: exactly one side initiates
        initiator,
        signal: AbortSignal.any([signal, AbortSignal.timeout(PUNCH_UPGRADE_TIMEOUT_MS)])
      })
      if (!connection.remotePeer.equals(relayed.remotePeer)) {
        await connection.close().catch(() => {})
        throw new KithError('PUNCH_FAILED', 'the punched connection reached another peer')
      }
      this.punched.add(connection)
      return connection
    } catch (err) {
      maConn.abort(err as Error)
      throw err
    }
  }
}

async function readMessage (lp: ReturnType<typeof lengthPrefixed>, signal: AbortSignal): Promise<PunchMessage> {
  let bytes: Uint8Array
  try {
    bytes = (await lp.read({ signal })).subarray()
  } catch (err) {
    if (signal.aborted) throw err
    const tooLarge = (err as Error).name === 'InvalidDataLengthError'
    throw new KithError(tooLarge ? 'PUNCH_TOO_LARGE' : 'PUNCH_MALFORMED', `the punch message could not be read (${(err as Error).message})`)
  }
  return decodePunchMessage(bytes)
}

/** The libp2p service: `services: { punch: holePunch() }`. */
export function holePunch (init: HolePunchInit = {}): (components: HolePunchComponents) => HolePunch {
  return (components) => new DefaultHolePunch(components, init)
}
