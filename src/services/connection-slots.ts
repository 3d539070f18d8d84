import { peerIdFromString } from '@libp2p/peer-id'
import type { Connection, PeerId } from '@libp2p/interface'
import type { KithLibp2p } from '../peer/node.ts'
import type { FriendBook, FriendEvent } from '../trust/friends.ts'

/**
 * Who holds the node's connection slots (docs/security.md, "Strangers").
 *
 * - Friends: their peers carry FRIEND_TAG at libp2p's highest value, so when
 *   the node holds more than MAX_CONNECTIONS (src/peer/node.ts), libp2p's
 *   pruning closes strangers' connections first and friends' last. Not
 *   libp2p's KEEP_ALIVE tag: that makes libp2p redial on its own, and
 *   presence already keeps friends connected, with its backoff and locate.
 * - Strangers, peers that are not active friends and connected to me: at most
 *   MAX_STRANGER_CONNECTIONS inbound connections at once (one beyond is
 *   closed as soon as it opens), each closed STRANGER_GRACE_MS after it opened
 *   unless the peer became a friend meanwhile. That is what redeeming an
 *   invite needs (one connection, one request, REDEEM_TIMEOUT_MS), and not
 *   enough to squat. Connections I open to strangers (redeeming an invite
 *   myself) are mine to bound, and not counted.
 */
export const FRIEND_TAG = 'kith-friend'
/** libp2p's highest tag value */
export const FRIEND_TAG_VALUE = 100
export const MAX_STRANGER_CONNECTIONS = 8
export const STRANGER_GRACE_MS = 30_000

export class StrangerLimitError extends Error {
  override name = 'StrangerLimitError'
}

export interface ConnectionSlotsInit {
  libp2p: KithLibp2p
  friends: FriendBook
  /** @default MAX_STRANGER_CONNECTIONS */
  maxStrangers?: number
  /** @default STRANGER_GRACE_MS */
  graceMs?: number
}

export class ConnectionSlots {
  private readonly libp2p: KithLibp2p
  private readonly friends: FriendBook
  private readonly maxStrangers: number
  private readonly graceMs: number
  /** inbound connections of strangers, and the timer that ends each */
  private readonly strangers = new Map<Connection, NodeJS.Timeout>()

  constructor (init: ConnectionSlotsInit) {
    this.libp2p = init.libp2p
    this.friends = init.friends
    this.maxStrangers = init.maxStrangers ?? MAX_STRANGER_CONNECTIONS
    this.graceMs = init.graceMs ?? STRANGER_GRACE_MS
  }

  start (): void {
    this.libp2p.addEventListener('connection:open', this.onOpen)
    this.libp2p.addEventListener('connection:close', this.onClose)
    this.friends.on('event', this.onFriendEvent)
    // tagged before they connect: libp2p prunes as a connection opens, before a tag set then would land
    for (const friend of this.friends.list()) {
      if (friend.state === 'active') this.tag(peerIdFromString(friend.peerId), true)
    }
    for (const connection of this.libp2p.getConnections()) this.admit(connection)
  }

  stop (): void {
    this.libp2p.removeEventListener('connection:open', this.onOpen)
    this.libp2p.removeEventListener('connection:close', this.onClose)
    this.friends.off('event', this.onFriendEvent)
    for (const timer of this.strangers.values()) clearTimeout(timer)
    this.strangers.clear()
  }

  /** Inbound connections of strangers held now. */
  get strangerConnections (): number {
    return this.strangers.size
  }

  private readonly onOpen = (evt: CustomEvent<Connection>): void => {
    this.admit(evt.detail)
  }

  private readonly onClose = (evt: CustomEvent<Connection>): void => {
    const timer = this.strangers.get(evt.detail)
    if (timer != null) clearTimeout(timer)
    this.strangers.delete(evt.detail)
  }

  private admit (connection: Connection): void {
    const peer = connection.remotePeer
    if (this.friends.isActive(peer.toString())) {
      this.tag(peer, true)
      return
    }
    if (connection.direction !== 'inbound' || this.strangers.has(connection)) return
    if (this.strangers.size >= this.maxStrangers) {
      connection.abort(new StrangerLimitError(`already ${this.maxStrangers} connections from peers that are not friends`))
      return
    }
    const timer = setTimeout(() => {
      this.strangers.delete(connection)
      if (!this.friends.isActive(peer.toString())) connection.abort(new StrangerLimitError(`not a friend after ${this.graceMs} ms`))
    }, this.graceMs)
    timer.unref()
    this.strangers.set(connection, timer)
  }

  private readonly onFriendEvent = (evt: FriendEvent): void => {
    let peer: PeerId
    try {
      peer = peerIdFromString(evt.friend.peerId)
    } catch {
      return
    }
    if (evt.type === 'friend:revoked') {
      this.tag(peer, false)
      return
    }
    if (evt.type !== 'friend:added') return
    // a stranger who just redeemed an invite: its connections are a friend's now
    for (const connection of this.libp2p.getConnections(peer)) {
      const timer = this.strangers.get(connection)
      if (timer != null) clearTimeout(timer)
      this.strangers.delete(connection)
    }
    this.tag(peer, true)
  }

  private tag (peer: PeerId, on: boolean): void {
    void this.libp2p.peerStore.merge(peer, { tags: { [FRIEND_TAG]: on ? { value: FRIEND_TAG_VALUE } : undefined } }).catch(() => {})
  }
}
