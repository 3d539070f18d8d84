import type { Socket } from 'node:net'
import type { Connection, Stream } from '@libp2p/interface'
import { KithError, asKithError } from '../../errors.ts'
import type { FriendBook, Friend } from '../../trust/friends.ts'
import type { BandwidthScheduler } from '../../transfer/scheduler/index.ts'
import { Book, type Exposed } from './books.ts'
import { Inbox } from './inbox.ts'
import { splice } from './splice.ts'
import { connectLocal } from './local-socket.ts'
import { answerBytes, readOpen } from './tunnel-protocol.ts'
import type { Offer } from './catalog-protocol.ts'
import { checkDescription, checkHost, checkPort, checkServiceName } from './names.ts'
import { HIGH_WATER, MAX_CONNECTIONS_PER_FRIEND, MAX_EXPOSED, MAX_GRANTEES, OPEN_TIMEOUT_MS } from './constants.ts'

/**
 * The exposing side: the services I offer, who may use each (the
 * per-service grant), and the connections friends hold to them. A stream is
 * let in only if its friend is active and named in the service's grant,
 * checked when it opens; revoking the friend, taking the grant back or
 * unexposing the service resets the connections it holds at once.
 */
export interface ExposeRequest {
  name: string
  port: number
  /** @default '127.0.0.1' */
  host?: string
  /** @default '' (or what it was) */
  description?: string
  /** friends (names or peer ids) to grant it, added to those already granted */
  to?: string[]
}

export interface ExposedView {
  name: string
  host: string
  port: number
  description: string
  /** the friends granted it */
  to: Array<{ peerId: string, label: string }>
  /** connections friends hold to it now */
  open: number
}

interface Tunnel {
  peer: string
  service: string
  controller: AbortController
}

export interface ExposerInit {
  book: Book<Exposed>
  friends: FriendBook
  bandwidth: BandwidthScheduler
}

export class Exposer {
  private readonly init: ExposerInit
  /** open connections by friend (their count is what MAX_CONNECTIONS_PER_FRIEND caps) */
  private readonly open = new Map<string, Set<Tunnel>>()
  private readonly stopping = new AbortController()

  constructor (init: ExposerInit) {
    this.init = init
    init.friends.on('event', evt => {
      if (evt.type === 'friend:revoked') this.cut(evt.friend.peerId, null, new KithError('NOT_A_FRIEND', 'this node ended its friendship with you'))
    })
  }

  private allowed (peer: string, service: Exposed): boolean {
    return this.init.friends.isActive(peer) && service.to.includes(peer)
  }

  /** What `peer` may use: the catalog protocol's answer. */
  offers (peer: string): Offer[] {
    return this.init.book.list().filter(s => this.allowed(peer, s)).sort(byName).map(s => ({ name: s.name, description: s.description }))
  }

  list (): ExposedView[] {
    return this.init.book.list().sort(byName).map(s => this.view(s))
  }

  private view (s: Exposed): ExposedView {
    let open = 0
    for (const tunnels of this.open.values()) for (const t of tunnels) if (t.service === s.name) open++
    const to = s.to.map(peerId => ({ peerId, friend: this.init.friends.get(peerId) }))
      .filter(({ friend }) => friend?.state === 'active')
      .map(({ peerId, friend }) => ({ peerId, label: friend!.label }))
    return { name: s.name, host: s.host, port: s.port, description: s.description, to, open }
  }

  private get (name: string): Exposed {
    const service = this.init.book.get(checkServiceName(name))
    if (service == null) throw new KithError('SERVICE_UNKNOWN', `you expose no service called ${name}; see \`kith expose --list\``)
    return service
  }

  private activeFriend (name: string): Friend {
    const friend = this.init.friends.resolve(name)
    if (friend.state !== 'active') throw new KithError('FRIEND_REVOKED', `${friend.label} was revoked; a revoked friend can't be granted anything`)
    return friend
  }

  /** Exposes a service, or changes one: its address and description are replaced, `to` adds friends to its grant. */
  async expose (req: ExposeRequest): Promise<ExposedView> {
    const name = checkServiceName(req.name)
    const port = checkPort(req.port)
    const host = checkHost(req.host ?? '127.0.0.1')
    const existing = this.init.book.get(name)
    const description = checkDescription(req.description ?? existing?.description ?? '')
    if (existing == null && this.init.book.size >= MAX_EXPOSED) throw new KithError('BAD_REQUEST', `you expose ${MAX_EXPOSED} services already, the most kith offers; unexpose one first`)
    const to = new Set(existing?.to ?? [])
    for (const friend of req.to ?? []) to.add(this.activeFriend(friend).peerId)
    if (to.size > MAX_GRANTEES) throw new KithError('BAD_REQUEST', `a service can be granted to at most ${MAX_GRANTEES} friends`)
    const service: Exposed = { name, host, port, description, to: [...to].sort(), created: existing?.created ?? Date.now() }
    await this.init.book.put(name, service)
    return this.view(service)
  }

  /** Stops offering a service: its grant goes, and its open connections are reset. */
  async unexpose (name: string): Promise<ExposedView> {
    const service = this.get(name)
    await this.init.book.delete(service.name)
    const view = this.view(service)
    for (const peer of service.to) this.cut(peer, service.name, new KithError('SERVICE_UNKNOWN', `service ${service.name} is no longer offered`))
    return { ...view, open: 0 }
  }

  /** The per-service grant: `kith friend grant bob service:blog`. */
  async grant (friendName: string, name: string): Promise<ExposedView> {
    const service = this.get(name)
    const friend = this.activeFriend(friendName)
    if (service.to.includes(friend.peerId)) return this.view(service)
    if (service.to.length >= MAX_GRANTEES) throw new KithError('BAD_REQUEST', `a service can be granted to at most ${MAX_GRANTEES} friends`)
    const updated = { ...service, to: [...service.to, friend.peerId].sort() }
    await this.init.book.put(name, updated)
    return this.view(updated)
  }

  /** Takes a per-service grant back; the connections it let in are reset now. */
  async ungrant (friendName: string, name: string): Promise<ExposedView> {
    const service = this.get(name)
    const friend = this.init.friends.resolve(friendName)
    const updated = { ...service, to: service.to.filter(p => p !== friend.peerId) }
    await this.init.book.put(name, updated)
    this.cut(friend.peerId, name, new KithError('SERVICE_UNKNOWN', `service ${name} is no longer offered to you`))
    return this.view(updated)
  }

  /** Services granted to a friend (for the friend view). */
  grantedTo (peer: string): string[] {
    return this.init.book.list().filter(s => s.to.includes(peer)).map(s => s.name).sort()
  }

  /** Resets `peer`'s open connections (to `service` only, when given). */
  private cut (peer: string, service: string | null, reason: KithError): void {
    for (const tunnel of this.open.get(peer) ?? []) {
      if (service === null || tunnel.service === service) tunnel.controller.abort(reason)
    }
  }

  openCount (): number {
    let n = 0
    for (const tunnels of this.open.values()) n += tunnels.size
    return n
  }

  /** TUNNEL_PROTOCOL's handler (behind friendsOnly: active friends only). */
  readonly handle = async (stream: Stream, connection: Connection): Promise<void> => {
    const peer = connection.remotePeer.toString()
    const inbox = new Inbox(stream, HIGH_WATER)
    let tunnel: Tunnel | undefined
    let socket: Socket
    try {
      const { service: name } = await readOpen(inbox, AbortSignal.any([AbortSignal.timeout(OPEN_TIMEOUT_MS), this.stopping.signal]))
      const service = this.init.book.get(name)
      // unknown and not granted answer alike: a friend learns nothing of what others are offered
      if (service == null || !this.allowed(peer, service)) throw new KithError('SERVICE_UNKNOWN', `no service called ${name} is offered to you here; \`kith services\` lists those that are`)
      const mine = this.open.get(peer) ?? new Set()
      if (mine.size >= MAX_CONNECTIONS_PER_FRIEND) {
        throw new KithError('SERVICE_BUSY', `you hold ${MAX_CONNECTIONS_PER_FRIEND} connections to services here already, the most one friend may; close some and try again`)
      }
      tunnel = { peer, service: name, controller: new AbortController() }
      mine.add(tunnel)
      this.open.set(peer, mine)
      const signal = AbortSignal.any([tunnel.controller.signal, this.stopping.signal])
      socket = await connectLocal(service.host, service.port, name, AbortSignal.any([signal, AbortSignal.timeout(OPEN_TIMEOUT_MS)]))
      // revoked while connecting: the abort above already threw
      stream.send(answerBytes())
    } catch (err) {
      this.forget(tunnel)
      inbox.dispose()
      const error = err instanceof KithError ? err : asKithError(this.stopping.signal.reason ?? err)
      try {
        stream.send(answerBytes(error))
        await stream.close({ signal: AbortSignal.timeout(OPEN_TIMEOUT_MS) })
      } catch (e) {
        stream.abort(e as Error)
      }
      return
    }
    const flows = this.flows(peer, tunnel.service)
    try {
      await splice({ socket, stream, inbox, ...flows, signal: AbortSignal.any([tunnel.controller.signal, this.stopping.signal]) })
    } catch {
      // reset both ways already; the friend's side says why
    } finally {
      flows.up.close()
      flows.down.close()
      this.forget(tunnel)
    }
  }

  private flows (peer: string, service: string): { up: ReturnType<BandwidthScheduler['flow']>, down: ReturnType<BandwidthScheduler['flow']> } {
    const label = `service ${service}`
    return {
      up: this.init.bandwidth.flow({ direction: 'up', peer, class: 'service', label }),
      down: this.init.bandwidth.flow({ direction: 'down', peer, class: 'service', label })
    }
  }

  private forget (tunnel: Tunnel | undefined): void {
    if (tunnel === undefined) return
    const mine = this.open.get(tunnel.peer)
    mine?.delete(tunnel)
    if (mine?.size === 0) this.open.delete(tunnel.peer)
  }

  stop (): void {
    this.stopping.abort(new KithError('FRIEND_OFFLINE', 'the node is stopping'))
  }
}

function byName (a: { name: string }, b: { name: string }): number {
  return a.name.localeCompare(b.name)
}
