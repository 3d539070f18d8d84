import { KithError } from '../../errors.ts'
import { sublevel, type Database } from '../../peer/database.ts'
import type { Identity } from '../../peer/identity.ts'
import type { KithLibp2p } from '../../peer/node.ts'
import type { AddressRecord } from '../../peer/address-record.ts'
import type { DialPolicy } from '../../peer/dial-policy.ts'
import type { NodeDatastore } from '../../peer/datastore.ts'
import type { Connection } from '@libp2p/interface'
import type { FriendBook, FriendEvent } from '../../trust/friends.ts'
import { friendsOnly } from '../../trust/gate.ts'
import { RecordStore, type StoredRecord } from './record-store.ts'
import { Publisher } from './publisher.ts'
import { Locator, applyRecord, type LocateReport } from './locator.ts'
import { locateHandler } from './locate-protocol.ts'
import { LOCATE_PROTOCOL, MAX_INBOUND_LOCATE_STREAMS, AUTO_LOCATE_MIN_INTERVAL_MS } from './constants.ts'

export { LOCATE_PROTOCOL } from './constants.ts'
export type { LocateReport, LocateStep } from './locator.ts'

/**
 * Finding friends wherever they move (docs/protocols.md, "Locate").
 *
 * - My record: signed at start and on every address change, pushed to
 *   friends as they connect, put into the DHT (publisher.ts).
 * - Friends' records: the newest verified one per friend, in LevelDB
 *   (record-store.ts); a friend's push updates their addresses. Records of
 *   peers who are not my friends are refused, here and in the DHT, and a
 *   revoked friend's are forgotten in both.
 * - Answering: a friend I granted `locate` may ask where one of MY friends
 *   is; I answer with the newest record I verified, or null (also for
 *   peers who are not my friends, so the answer doesn't tell whom I know).
 * - Asking: when presence fails to reach a friend, and again whenever a
 *   friend who grants me `locate` comes online, ask (locator.ts).
 */
export interface LocateServiceInit {
  db: Database
  libp2p: KithLibp2p
  friends: FriendBook
  identity: Identity
  /** which of a record's addresses may be dialled (src/peer/dial-policy.ts) */
  dialPolicy: DialPolicy
  /** told when a friend's addresses became a newer record's; resolves once presence dropped its dial to the old ones (Presence.moved) */
  moved?: (peerId: string) => Promise<void>
  /** the node's datastore, to forget a revoked friend's DHT record; none: the DHT keeps it until it expires */
  dhtRecords?: Pick<NodeDatastore, 'dropRecord'>
  /**
   * Publish records to and look them up in the DHT.
   *
   * @default true
   */
  dht?: boolean
}

export class LocateService {
  readonly store: RecordStore
  readonly publisher: Publisher
  readonly locator: Locator
  private readonly init: LocateServiceInit
  /** friends presence failed to reach, not connected since */
  private readonly unreachable = new Set<string>()
  /** automatic locates in flight; `rerun` when something changed meanwhile */
  private readonly auto = new Map<string, { rerun: boolean }>()
  private readonly lastAuto = new Map<string, number>()
  private readonly controller = new AbortController()
  private running = false

  private constructor (init: LocateServiceInit) {
    this.init = init
    const dht = init.dht ?? true
    const self = init.identity.peerId.toString()
    this.store = new RecordStore(sublevel<StoredRecord>(init.db, 'address-records'), peer => peer === self || init.friends.isActive(peer))
    this.publisher = new Publisher({ libp2p: init.libp2p, friends: init.friends, store: this.store, identity: init.identity, dht })
    this.locator = new Locator({ libp2p: init.libp2p, friends: init.friends, store: this.store, dht, dialPolicy: init.dialPolicy, ...(init.moved != null ? { moved: init.moved } : {}) })
  }

  static async start (init: LocateServiceInit): Promise<LocateService> {
    const service = new LocateService(init)
    // friends revoked while the node was down
    await service.store.prune()
    await init.libp2p.handle(LOCATE_PROTOCOL, locateHandler({
      onPush: async (record, from) => { await service.onPush(record, from) },
      onQuery: async (asker, subject) => await service.onQuery(asker, subject)
    }), {
      maxInboundStreams: MAX_INBOUND_LOCATE_STREAMS,
      runOnLimitedConnection: true, // small records: fine over a relay with a budget
      middleware: [friendsOnly(init.friends)]
    })
    service.running = true
    init.libp2p.addEventListener('connection:open', service.onOpen)
    init.friends.on('event', service.onFriendEvent)
    await service.publisher.start()
    return service
  }

  async stop (): Promise<void> {
    this.running = false
    this.controller.abort()
    this.publisher.stop()
    this.init.libp2p.removeEventListener('connection:open', this.onOpen)
    this.init.friends.off('event', this.onFriendEvent)
    await this.init.libp2p.unhandle(LOCATE_PROTOCOL).catch(() => {})
  }

  /** `kith locate NAME`: every step, starting with the last known addresses. */
  async locate (name: string): Promise<LocateReport> {
    const friend = this.init.friends.resolve(name)
    return await this.locator.locate(friend, { dialKnown: true, signal: this.controller.signal })
  }

  /** Presence could not reach `peer` at its known addresses. */
  unreachableFriend (peer: string): void {
    if (!this.running || !this.init.friends.isActive(peer)) return
    this.unreachable.add(peer)
    this.autoLocate(peer, false)
  }

  /** A friend pushed their own record (verified, and about them: see the protocol). */
  private async onPush (record: AddressRecord, from: string): Promise<void> {
    // the gate already refused strangers; records are kept for friends only, whatever happens to the gate
    if (!this.init.friends.isActive(from)) throw new KithError('NOT_A_FRIEND', 'only friends may push their address record')
    await this.store.offer(record, from) // RECORD_STALE for a replay
    await applyRecord(this.init, record)
  }

  private async onQuery (asker: string, subject: string): Promise<Uint8Array | null> {
    const { friends } = this.init
    if (!friends.allows(asker, 'locate')) {
      throw new KithError('LOCATE_NOT_GRANTED', 'you have no locate grant from this friend; ask them to `kith friend grant <you> locate`')
    }
    if (subject === asker || !friends.isActive(subject)) return null
    return (await this.store.get(subject))?.bytes ?? null
  }

  private readonly onOpen = (evt: CustomEvent<Connection>): void => {
    const peer = evt.detail.remotePeer.toString()
    const friend = this.init.friends.get(peer)
    if (friend?.state !== 'active') return
    this.unreachable.delete(peer)
    // someone new to ask about the friends we lost
    if (friend.grantsFromThem.includes('locate')) {
      for (const lost of this.unreachable) this.autoLocate(lost, true)
    }
  }

  private readonly onFriendEvent = (evt: FriendEvent): void => {
    if (evt.type !== 'friend:revoked') return
    const peer = evt.friend.peerId
    this.unreachable.delete(peer)
    this.init.dhtRecords?.dropRecord(peer)
    void this.store.drop(peer).catch(() => {})
  }

  /**
   * Locates a lost friend in the background. One run per friend at a time;
   * a trigger during a run makes it run once more if it failed. Failed
   * redials trigger at most every AUTO_LOCATE_MIN_INTERVAL_MS; a friend
   * coming online (`force`) always does.
   */
  private autoLocate (peer: string, force: boolean): void {
    const current = this.auto.get(peer)
    if (current != null) {
      current.rerun = true
      return
    }
    if (!force && performance.now() - (this.lastAuto.get(peer) ?? -Infinity) < AUTO_LOCATE_MIN_INTERVAL_MS) return
    const entry = { rerun: false }
    this.auto.set(peer, entry)
    const run = async (): Promise<void> => {
      do {
        entry.rerun = false
        this.lastAuto.set(peer, performance.now())
        const friend = this.init.friends.get(peer)
        if (!this.running || friend?.state !== 'active' || !this.unreachable.has(peer)) return
        const report = await this.locator.locate(friend, { signal: this.controller.signal })
        if (report.ok) {
          this.unreachable.delete(peer)
          return
        }
      } while (entry.rerun)
    }
    run().catch(() => {}).finally(() => this.auto.delete(peer))
  }
}
