import { EventEmitter } from 'node:events'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Connection, PeerId } from '@libp2p/interface'
import type { KithLibp2p } from '../peer/node.ts'
import { dialable, type DialPolicy } from '../peer/dial-policy.ts'
import type { FriendBook, FriendEvent } from '../trust/friends.ts'
import { backoffCap } from '../peer/timing-env.ts'

/**
 * Keeps a connection up to every active friend: dials their last known
 * addresses on start, redials with capped exponential backoff (and jitter)
 * when a connection drops, learns new addresses from identify, and hangs up
 * on a friend the moment they are revoked. Only addresses the dial policy
 * allows are learned and dialled (src/peer/dial-policy.ts).
 */
export const RECONNECT_BASE_MS = 500
export const RECONNECT_MAX_MS = 30_000
/** the cap in use: KITH_RECONNECT_MAX_MS lowers it (test daemons; src/peer/timing-env.ts), read as the daemon loads */
const reconnectMaxMs = backoffCap('KITH_RECONNECT_MAX_MS', RECONNECT_MAX_MS)
export const DIAL_TIMEOUT_MS = 10_000

export interface LinkInfo {
  online: boolean
  /** ms since epoch the current connection opened */
  since: number | null
  direct: boolean | null
  remoteAddr: string | null
  /**
   * How the connection in use runs: straight to the friend, through a relay,
   * or straight after a relayed one was upgraded ('hole-punched': kith's own
   * TCP hole punching, src/peer/hole-punch.ts, or dcutr's direct dial when
   * one side is reachable)
   */
  kind: LinkKind | null
  /** ms since epoch the connection in use opened */
  kindSince: number | null
  /** the relay's peer id, for a relayed link */
  relay: string | null
  /**
   * The connection in use has a relay's budget on it (time or bytes): libp2p
   * then runs only protocols that opt in (identify, ping, hole punching), not
   * files or chunks. null when offline.
   */
  limited: boolean | null
}

export type LinkKind = 'direct' | 'relayed' | 'hole-punched'

function relayOf (connection: Connection): string | null {
  const parts = connection.remoteAddr.getComponents()
  const at = parts.findIndex(c => c.name === 'p2p-circuit')
  if (at < 0) return null
  const relay = parts[at - 1]
  return relay?.name === 'p2p' ? relay.value ?? null : null
}

const relayed = (connection: Connection): boolean => connection.remoteAddr.getComponents().some(c => c.name === 'p2p-circuit')

export type PresenceEvent =
  | { type: 'friend:online', peerId: string, label: string }
  | { type: 'friend:offline', peerId: string, label: string }
  /** a direct connection opened while the friend was reached through a relay (a hole punch) */
  | { type: 'friend:link', peerId: string, label: string, kind: 'hole-punched', remoteAddr: string }

interface Retry {
  attempt: number
  timer: NodeJS.Timeout | null
}

export class Presence extends EventEmitter<{
  event: [PresenceEvent]
  /** a dial to a friend at their known addresses failed (peer id); locate listens */
  unreachable: [string]
}> {
  private readonly libp2p: KithLibp2p
  private readonly friends: FriendBook
  private readonly dialPolicy: DialPolicy
  private readonly retries = new Map<string, Retry>()
  /** the dial under way to each friend, and what drops it when their addresses change (`moved`) */
  private readonly dialing = new Map<string, { drop: AbortController, done: Promise<void> }>()
  private readonly onlineSince = new Map<string, number>()
  /** direct connections opened while a relayed one to the same friend was up */
  private readonly upgraded = new WeakSet<Connection>()
  private readonly controller = new AbortController()
  private running = false

  constructor (libp2p: KithLibp2p, friends: FriendBook, dialPolicy: DialPolicy) {
    super()
    this.libp2p = libp2p
    this.friends = friends
    this.dialPolicy = dialPolicy
  }

  start (): void {
    this.running = true
    this.libp2p.addEventListener('connection:open', this.onOpen)
    this.libp2p.addEventListener('connection:close', this.onClose)
    this.libp2p.addEventListener('peer:identify', this.onIdentify)
    this.friends.on('event', this.onFriendEvent)
    for (const friend of this.friends.list()) {
      if (friend.state === 'active') this.schedule(friend.peerId, 0)
    }
  }

  stop (): void {
    this.running = false
    this.controller.abort()
    this.libp2p.removeEventListener('connection:open', this.onOpen)
    this.libp2p.removeEventListener('connection:close', this.onClose)
    this.libp2p.removeEventListener('peer:identify', this.onIdentify)
    this.friends.off('event', this.onFriendEvent)
    for (const retry of this.retries.values()) if (retry.timer != null) clearTimeout(retry.timer)
    this.retries.clear()
  }

  link (peerId: string): LinkInfo {
    const connections = this.connections(peerId)
    const best = connections.find(c => !relayed(c)) ?? connections[0]
    const punched = (c: Connection): boolean => this.upgraded.has(c) || this.libp2p.services.punch.isPunched(c)
    const kind: LinkKind | null = best == null ? null : relayed(best) ? 'relayed' : punched(best) ? 'hole-punched' : 'direct'
    return {
      online: best != null,
      since: best != null ? this.onlineSince.get(peerId) ?? null : null,
      direct: best != null ? !relayed(best) : null,
      remoteAddr: best?.remoteAddr.toString() ?? null,
      kind,
      kindSince: best?.timeline.open ?? null,
      relay: best != null ? relayOf(best) : null,
      limited: best != null ? best.limits != null : null
    }
  }

  private connections (peerId: string): Connection[] {
    try {
      return this.libp2p.getConnections(peerIdFromString(peerId)).filter(c => c.status === 'open')
    } catch {
      return []
    }
  }

  private readonly onOpen = (evt: CustomEvent<Connection>): void => {
    const peer = evt.detail.remotePeer.toString()
    const friend = this.friends.get(peer)
    if (friend?.state !== 'active') return
    if (!relayed(evt.detail) && this.connections(peer).some(c => c !== evt.detail && relayed(c))) {
      this.upgraded.add(evt.detail)
      this.emit('event', { type: 'friend:link', peerId: peer, label: friend.label, kind: 'hole-punched', remoteAddr: evt.detail.remoteAddr.toString() })
    }
    this.clearRetry(peer)
    if (!this.onlineSince.has(peer)) {
      this.onlineSince.set(peer, Date.now())
      this.emit('event', { type: 'friend:online', peerId: peer, label: friend.label })
    }
    void this.friends.seen(peer).catch(() => {})
  }

  private readonly onClose = (evt: CustomEvent<Connection>): void => {
    const peer = evt.detail.remotePeer.toString()
    if (this.connections(peer).length > 0) return
    const friend = this.friends.get(peer)
    if (this.onlineSince.delete(peer) && friend != null) {
      this.emit('event', { type: 'friend:offline', peerId: peer, label: friend.label })
    }
    if (friend?.state === 'active') this.schedule(peer)
  }

  private readonly onIdentify = (evt: CustomEvent<{ peerId: PeerId, listenAddrs: Array<{ toString: () => string }> }>): void => {
    const peer = evt.detail.peerId.toString()
    if (!this.friends.isActive(peer)) return
    // relayed addresses (a friend behind NAT) last: they work, but direct ones are better
    const all = dialable(evt.detail.listenAddrs.map(a => a.toString()), this.dialPolicy).addrs.map(a => a.toString())
    const addrs = [...all.filter(a => !a.includes('/p2p-circuit')), ...all.filter(a => a.includes('/p2p-circuit'))]
    void this.friends.seen(peer, addrs).catch(() => {})
  }

  private readonly onFriendEvent = (evt: FriendEvent): void => {
    const peer = evt.friend.peerId
    if (evt.type === 'friend:revoked') {
      this.clearRetry(peer)
      this.onlineSince.delete(peer)
      void this.libp2p.hangUp(peerIdFromString(peer)).catch(() => {})
    } else if (evt.type === 'friend:added') {
      // the redeem connection is usually still open; if not, dial
      if (this.connections(peer).length > 0) this.onOpen(new CustomEvent('connection:open', { detail: this.connections(peer)[0]! }))
      else this.schedule(peer, 0)
    }
  }

  /**
   * A friend's addresses changed to a newer record's (locate found it, or
   * they pushed it): a dial under way to their old addresses is dropped and
   * the new ones are dialled at once. libp2p joins a dial by address onto a
   * dial by peer id under way to the same peer, and tries the joined address
   * only after the addresses that dial is on, each up to libp2p's 6 s
   * (test/peer/dial-join.spec.ts): locate's dial of the new address, joined
   * onto this one stuck on an old address, ran out of its 5 s. Resolves once
   * presence's dial has ended; when it was the only dial on libp2p's job, the
   * job has then left the queue, so a dial made next is not joined onto it
   * (and failed with its abort). When another dial by peer id joined it, the
   * job goes on for that dial on the old addresses, and locate dials round it
   * (src/peer/dial-at.ts, docs/protocols.md).
   */
  async moved (peer: string): Promise<void> {
    const dial = this.dialing.get(peer)
    if (dial == null) return
    dial.drop.abort()
    await dial.done
    void this.dial(peer)
  }

  private clearRetry (peer: string): void {
    const retry = this.retries.get(peer)
    if (retry?.timer != null) clearTimeout(retry.timer)
    this.retries.delete(peer)
  }

  private schedule (peer: string, delay?: number): void {
    if (!this.running) return
    const retry = this.retries.get(peer) ?? { attempt: 0, timer: null }
    if (retry.timer != null) return
    const backoff = Math.min(reconnectMaxMs, RECONNECT_BASE_MS * 2 ** retry.attempt)
    const wait = delay ?? backoff / 2 + Math.random() * backoff / 2
    retry.timer = setTimeout(() => {
      retry.timer = null
      void this.dial(peer)
    }, wait)
    retry.timer.unref()
    this.retries.set(peer, retry)
  }

  private async dial (peer: string): Promise<void> {
    const friend = this.friends.get(peer)
    if (!this.running || friend?.state !== 'active' || this.connections(peer).length > 0) return
    const retry = this.retries.get(peer)
    if (retry != null) retry.attempt++
    const drop = new AbortController()
    const done = this.attempt(peer, friend.addrs, drop.signal)
    this.dialing.set(peer, { drop, done })
    await done
    if (this.dialing.get(peer)?.done === done) this.dialing.delete(peer)
  }

  private async attempt (peer: string, known: string[], drop: AbortSignal): Promise<void> {
    try {
      const peerId = peerIdFromString(peer)
      const { addrs } = dialable(known, this.dialPolicy)
      if (addrs.length > 0) await this.libp2p.peerStore.merge(peerId, { multiaddrs: addrs })
      await this.libp2p.dial(peerId, { signal: AbortSignal.any([this.controller.signal, drop, AbortSignal.timeout(DIAL_TIMEOUT_MS)]) })
    } catch {
      // dropped for a dial to the friend's new addresses (`moved`)
      if (!this.running || drop.aborted) return
      this.emit('unreachable', peer)
      this.schedule(peer)
    }
  }
}
