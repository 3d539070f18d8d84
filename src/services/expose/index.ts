import { peerIdFromString } from '@libp2p/peer-id'
import { KithError } from '../../errors.ts'
import { sublevel, type Database } from '../../peer/database.ts'
import type { KithLibp2p } from '../../peer/node.ts'
import type { FriendBook } from '../../trust/friends.ts'
import { friendsOnly } from '../../trust/gate.ts'
import type { BandwidthScheduler } from '../../transfer/scheduler/index.ts'
import { Book, type Connect, type Exposed } from './books.ts'
import { Exposer, type ExposedView, type ExposeRequest } from './exposer.ts'
import { Connector, type ConnectionView, type ConnectRequest } from './connector.ts'
import { askCatalog, catalogHandler, type Offer } from './catalog-protocol.ts'
import { CATALOG_PROTOCOL, MAX_INBOUND_TUNNEL_STREAMS, MAX_OUTBOUND_TUNNEL_STREAMS, TUNNEL_PROTOCOL } from './constants.ts'

export type { ExposedView, ExposeRequest } from './exposer.ts'
export type { ConnectionView, ConnectRequest } from './connector.ts'
export type { Offer } from './catalog-protocol.ts'
export { CATALOG_PROTOCOL, TUNNEL_PROTOCOL } from './constants.ts'

/**
 * Friend services (docs/services.md): a program on my machine offered to
 * the friends I choose, and friends' programs reached through a local port.
 *
 * - exposing (exposer.ts): `kith expose NAME --port P --to FRIEND`; each
 *   service has its own grant (the friends named), checked on every stream;
 *   the node connects only to the host and port its owner gave.
 * - asking (catalog-protocol.ts): `kith services FRIEND`, what they offer me.
 * - connecting (connector.ts): `kith connect FRIEND:NAME` keeps a port on
 *   127.0.0.1; each TCP connection to it becomes one stream
 *   (tunnel-protocol.ts) carried both ways by splice.ts, through the
 *   bandwidth scheduler in the class `service`.
 */
export interface FriendServicesInit {
  db: Database
  libp2p: KithLibp2p
  friends: FriendBook
  /** the engine's scheduler: every byte both ways goes through it */
  bandwidth: BandwidthScheduler
}

export interface ServicesSummary {
  exposed: number
  /** connections friends hold to my services now */
  serving: number
  connected: number
  /** connections I carry to friends' services now */
  carrying: number
}

export class FriendServices {
  private readonly init: FriendServicesInit
  private readonly exposer: Exposer
  private readonly connector: Connector

  private constructor (init: FriendServicesInit, exposed: Book<Exposed>, connects: Book<Connect>) {
    this.init = init
    this.exposer = new Exposer({ book: exposed, friends: init.friends, bandwidth: init.bandwidth })
    this.connector = new Connector({ book: connects, libp2p: init.libp2p, friends: init.friends, bandwidth: init.bandwidth })
  }

  static async start (init: FriendServicesInit): Promise<FriendServices> {
    const exposed = new Book<Exposed>(sublevel(init.db, 'exposed-services'))
    const connects = new Book<Connect>(sublevel(init.db, 'service-connects'))
    await exposed.load()
    await connects.load()
    const services = new FriendServices(init, exposed, connects)
    // both small: fine over a relay with a budget (the tunnel says when one is too small)
    await init.libp2p.handle(CATALOG_PROTOCOL, catalogHandler(peer => services.exposer.offers(peer)), {
      runOnLimitedConnection: true,
      middleware: [friendsOnly(init.friends)]
    })
    await init.libp2p.handle(TUNNEL_PROTOCOL, services.exposer.handle, {
      runOnLimitedConnection: true,
      maxInboundStreams: MAX_INBOUND_TUNNEL_STREAMS,
      maxOutboundStreams: MAX_OUTBOUND_TUNNEL_STREAMS,
      middleware: [friendsOnly(init.friends)]
    })
    await services.connector.start()
    return services
  }

  list (): ExposedView[] { return this.exposer.list() }
  async expose (req: ExposeRequest): Promise<ExposedView> { return await this.exposer.expose(req) }
  async unexpose (name: string): Promise<ExposedView> { return await this.exposer.unexpose(name) }
  async grant (friend: string, service: string): Promise<ExposedView> { return await this.exposer.grant(friend, service) }
  async ungrant (friend: string, service: string): Promise<ExposedView> { return await this.exposer.ungrant(friend, service) }
  /** the names of my services granted to `peer` */
  grantedTo (peer: string): string[] { return this.exposer.grantedTo(peer) }

  /** What a friend offers me, asked over CATALOG_PROTOCOL. */
  async offeredBy (name: string): Promise<{ friend: { peerId: string, label: string }, services: Offer[] }> {
    const friend = this.init.friends.resolve(name)
    if (friend.state !== 'active') throw new KithError('FRIEND_REVOKED', `${friend.label} is no longer your friend`)
    const services = await askCatalog(this.init.libp2p, peerIdFromString(friend.peerId))
    return { friend: { peerId: friend.peerId, label: friend.label }, services }
  }

  connections (): ConnectionView[] { return this.connector.list() }
  async connect (req: ConnectRequest): Promise<ConnectionView> { return await this.connector.connect(req) }
  async disconnect (friend: string, service: string): Promise<ConnectionView> { return await this.connector.disconnect(friend, service) }

  summary (): ServicesSummary {
    return { exposed: this.exposer.list().length, serving: this.exposer.openCount(), connected: this.connector.list().length, carrying: this.connector.openCount() }
  }

  async stop (): Promise<void> {
    this.connector.stop()
    this.exposer.stop()
    await this.init.libp2p.unhandle(CATALOG_PROTOCOL).catch(() => {})
    await this.init.libp2p.unhandle(TUNNEL_PROTOCOL).catch(() => {})
  }
}
