import { createServer, type Server, type Socket } from 'node:net'
import { peerIdFromString } from '@libp2p/peer-id'
import { KithError, asKithError } from '../../errors.ts'
import type { KithLibp2p } from '../../peer/node.ts'
import type { FriendBook } from '../../trust/friends.ts'
import type { BandwidthScheduler } from '../../transfer/scheduler/index.ts'
import { Book, connectKey, type Connect } from './books.ts'
import { openTunnel } from './tunnel-protocol.ts'
import { splice } from './splice.ts'
import { checkPort, checkServiceName } from './names.ts'
import { MAX_CONNECTS, OPEN_TIMEOUT_MS } from './constants.ts'

/**
 * The connecting side: for each `kith connect FRIEND:NAME`, a listener on
 * 127.0.0.1 whose every TCP connection is carried to the friend's service
 * over its own stream. The port is chosen once (given, or any free one) and
 * kept across restarts until `kith disconnect`. A connection the friend
 * refuses, or that breaks, is reset at once, and `kith connections` says why.
 */
export interface ConnectRequest {
  /** a friend's name or peer id */
  friend: string
  service: string
  /** @default any free port, then kept */
  port?: number
}

export interface ConnectionView {
  friend: string
  peerId: string
  service: string
  /** 127.0.0.1 */
  host: string
  port: number
  /** false when the port could not be opened at start (`error` says why) */
  listening: boolean
  /** TCP connections carried now */
  open: number
  /** bytes sent to the friend's service, and received from it, since start */
  bytesUp: number
  bytesDown: number
  /** the last failure: a refusal, a broken stream, a port taken; null if none since start */
  error: { code: string, message: string, at: number } | null
  created: number
}

interface Listener {
  entry: Connect
  server: Server | null
  open: Set<AbortController>
  bytesUp: number
  bytesDown: number
  error: ConnectionView['error']
}

export interface ConnectorInit {
  book: Book<Connect>
  libp2p: KithLibp2p
  friends: FriendBook
  bandwidth: BandwidthScheduler
}

export const LOCALHOST = '127.0.0.1'

export class Connector {
  private readonly init: ConnectorInit
  private readonly listeners = new Map<string, Listener>()

  constructor (init: ConnectorInit) {
    this.init = init
    init.friends.on('event', evt => {
      if (evt.type !== 'friend:revoked') return
      for (const l of this.listeners.values()) {
        if (l.entry.peer === evt.friend.peerId) for (const c of l.open) c.abort(new KithError('FRIEND_REVOKED', `you ended your friendship with ${evt.friend.label}`))
      }
    })
  }

  /** Opens the kept ports; one that can't be opened is reported in `list()`, not thrown. */
  async start (): Promise<void> {
    for (const entry of this.init.book.list()) {
      const listener: Listener = { entry, server: null, open: new Set(), bytesUp: 0, bytesDown: 0, error: null }
      this.listeners.set(connectKey(entry.peer, entry.service), listener)
      try {
        listener.server = await this.listen(listener, entry.port)
      } catch (err) {
        this.failed(listener, err)
      }
    }
  }

  list (): ConnectionView[] {
    return [...this.listeners.values()].map(l => this.view(l)).sort((a, b) => a.friend.localeCompare(b.friend) || a.service.localeCompare(b.service))
  }

  private view (l: Listener): ConnectionView {
    return {
      friend: this.init.friends.get(l.entry.peer)?.label ?? l.entry.peer,
      peerId: l.entry.peer,
      service: l.entry.service,
      host: LOCALHOST,
      port: l.entry.port,
      listening: l.server?.listening === true,
      open: l.open.size,
      bytesUp: l.bytesUp,
      bytesDown: l.bytesDown,
      error: l.error,
      created: l.entry.created
    }
  }

  openCount (): number {
    let n = 0
    for (const l of this.listeners.values()) n += l.open.size
    return n
  }

  /** Keeps a local port for a friend's service. The same again answers what exists; another port for it is CONNECT_EXISTS. */
  async connect (req: ConnectRequest): Promise<ConnectionView> {
    const friend = this.init.friends.resolve(req.friend)
    if (friend.state !== 'active') throw new KithError('FRIEND_REVOKED', `${friend.label} is no longer your friend`)
    const service = checkServiceName(req.service)
    const port = req.port != null ? checkPort(req.port, '--port') : undefined
    const key = connectKey(friend.peerId, service)
    const existing = this.listeners.get(key)
    if (existing != null) {
      if (port != null && port !== existing.entry.port) {
        throw new KithError('CONNECT_EXISTS', `${friend.label}:${service} is kept on port ${existing.entry.port} already; \`kith disconnect ${friend.label}:${service}\` first to move it`)
      }
      return this.view(existing)
    }
    if (this.listeners.size >= MAX_CONNECTS) throw new KithError('BAD_REQUEST', `${MAX_CONNECTS} friend services are connected already, the most kith keeps; disconnect one first`)
    const listener: Listener = { entry: { peer: friend.peerId, service, port: port ?? 0, created: Date.now() }, server: null, open: new Set(), bytesUp: 0, bytesDown: 0, error: null }
    listener.server = await this.listen(listener, port ?? 0)
    listener.entry.port = (listener.server.address() as { port: number }).port
    try {
      await this.init.book.put(key, listener.entry)
    } catch (err) {
      listener.server.close()
      throw err
    }
    this.listeners.set(key, listener)
    return this.view(listener)
  }

  async disconnect (friendName: string, service: string): Promise<ConnectionView> {
    const friend = this.init.friends.resolve(friendName)
    const key = connectKey(friend.peerId, checkServiceName(service))
    const listener = this.listeners.get(key)
    if (listener == null) throw new KithError('CONNECT_UNKNOWN', `${friend.label}:${service} is not connected; see \`kith connections\``)
    await this.init.book.delete(key)
    this.listeners.delete(key)
    this.close(listener, new KithError('CONNECT_UNKNOWN', 'disconnected'))
    return { ...this.view(listener), listening: false }
  }

  private close (listener: Listener, reason: KithError): void {
    listener.server?.close()
    for (const c of listener.open) c.abort(reason)
  }

  private async listen (listener: Listener, port: number): Promise<Server> {
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, socket => { void this.carry(listener, socket) })
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => {
        reject(err.code === 'EADDRINUSE'
          ? new KithError('PORT_IN_USE', `port ${port} on ${LOCALHOST} is taken by another program; pick another with --port (or leave it out for any free one)`)
          : new KithError('PORT_IN_USE', `can't listen on ${LOCALHOST}:${port} (${err.message})`))
      })
      server.listen(port, LOCALHOST, () => { resolve() })
    })
    server.on('error', err => { this.failed(listener, err) })
    return server
  }

  /** Carries one local TCP connection to the friend's service. */
  private async carry (listener: Listener, socket: Socket): Promise<void> {
    socket.on('error', () => {})
    const { peer, service } = listener.entry
    const controller = new AbortController()
    listener.open.add(controller)
    try {
      if (!this.init.friends.isActive(peer)) throw new KithError('FRIEND_REVOKED', 'they are no longer your friend; `kith disconnect` this service')
      const peerId = peerIdFromString(peer)
      const { stream, inbox } = await openTunnel(this.init.libp2p, peerId, service, AbortSignal.any([controller.signal, AbortSignal.timeout(OPEN_TIMEOUT_MS)]))
      const limited = this.onlyLimited(peer)
      const label = `service ${service}`
      const up = this.init.bandwidth.flow({ direction: 'up', peer, class: 'service', label })
      const down = this.init.bandwidth.flow({ direction: 'down', peer, class: 'service', label })
      try {
        await splice({
          socket,
          stream,
          inbox,
          up,
          down,
          signal: controller.signal,
          onBytes: (direction, bytes) => { if (direction === 'up') listener.bytesUp += bytes; else listener.bytesDown += bytes }
        })
      } catch (err) {
        throw limited && !controller.signal.aborted ? this.relayLimited(peer, err) : err
      } finally {
        up.close()
        down.close()
      }
    } catch (err) {
      if (!socket.destroyed) socket.resetAndDestroy()
      this.failed(listener, controller.signal.reason ?? err)
    } finally {
      listener.open.delete(controller)
    }
  }

  /** Whether every open connection to `peer` is limited (a relay with a budget). */
  private onlyLimited (peer: string): boolean {
    const open = this.init.libp2p.getConnections(peerIdFromString(peer)).filter(c => c.status === 'open')
    return open.length > 0 && open.every(c => c.limits != null)
  }

  private relayLimited (peer: string, err: unknown): KithError {
    const label = this.init.friends.get(peer)?.label ?? peer
    return new KithError('FRIEND_RELAY_LIMITED',
      `the connection broke (${asKithError(err).message}); ${label} is reached only through a relay whose budget limits each relayed connection (time or bytes), too small for this service. ` +
      `Ask the relay's owner to relay without a limit (\`kith start\` without --relay-max-data and --relay-max-duration), or reach ${label} directly`, { cause: err })
  }

  private failed (listener: Listener, err: unknown): void {
    const error = asKithError(err)
    listener.error = { code: error.code, message: error.message, at: Date.now() }
  }

  stop (): void {
    for (const listener of this.listeners.values()) this.close(listener, new KithError('FRIEND_OFFLINE', 'the node is stopping'))
  }
}
