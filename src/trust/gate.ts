import type { ConnectionGater, PeerId, StreamMiddleware } from '@libp2p/interface'
import type { FriendBook } from './friends.ts'
import type { Service } from './grants.ts'

/**
 * The connection gate. Strangers may connect (they need to, to redeem an
 * invite) but reach only identify and the redeem protocol (and only a few of
 * them at a time, briefly: src/services/connection-slots.ts); revoked
 * friends can't connect at all; my relay carries friends only. Friend
 * protocols are wrapped in `friendsOnly`, which refuses any stream whose
 * remote peer is not an active friend holding the right grant.
 */
export interface GateOptions {
  /**
   * Whether this node relays at all now (kith relays only while it is
   * publicly reachable); reservations are refused while it returns false.
   */
  relaying?: () => boolean
}

export function connectionGater (friends: FriendBook, options: GateOptions = {}): ConnectionGater {
  const revoked = (peerId: PeerId): boolean => friends.isRevoked(peerId.toString())
  return {
    denyDialPeer: revoked,
    denyInboundEncryptedConnection: revoked,
    denyOutboundEncryptedConnection: revoked,
    // a reservation: friends I granted `relay`, and only while I relay (publicly reachable)
    denyInboundRelayReservation: (peerId) => !friends.allows(peerId.toString(), 'relay') || options.relaying?.() === false,
    // a relayed connection through me: from a friend, to a friend I granted `relay` (who holds the reservation);
    // my relay is a service to my friends, not to whoever wants to reach them
    denyOutboundRelayedConnection: (source, destination) => !friends.isActive(source.toString()) || !friends.allows(destination.toString(), 'relay'),
    denyInboundRelayedConnection: (relay, remotePeer) => !friends.isActive(relay.toString()) && !friends.isActive(remotePeer.toString())
  }
}

export class NotAFriendError extends Error {
  override name = 'NotAFriendError'
}

/**
 * Stream middleware letting through only active friends, and, for inbound
 * streams when `service` is given, only those I granted it. (What a friend
 * grants me is their node's business: their gate decides.)
 */
export function friendsOnly (friends: FriendBook, service?: Service): StreamMiddleware {
  return (stream, connection, next) => {
    const peer = connection.remotePeer.toString()
    const ok = service == null || stream.direction === 'outbound' ? friends.isActive(peer) : friends.allows(peer, service)
    if (!ok) {
      stream.abort(new NotAFriendError(service == null ? 'not a friend' : `no ${service} grant`))
      return
    }
    next(stream, connection)
  }
}
