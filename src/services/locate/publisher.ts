import { peerIdFromString } from '@libp2p/peer-id'
import type { Connection } from '@libp2p/interface'
import { KithError } from '../../errors.ts'
import { createAddressRecord, withoutPeerId, MAX_RECORD_ADDRS, type AddressRecord } from '../../peer/address-record.ts'
import type { Identity } from '../../peer/identity.ts'
import type { KithLibp2p } from '../../peer/node.ts'
import type { FriendBook, FriendEvent } from '../../trust/friends.ts'
import type { RecordStore } from './record-store.ts'
import { pushRecord } from './locate-protocol.ts'
import { putRecord } from './dht.ts'
import { PUBLISH_DEBOUNCE_MS, DHT_PUT_TIMEOUT_MS, DHT_REPUBLISH_MS } from './constants.ts'

/**
 * Keeps my own address record: signs a new one at start and whenever my
 * listen addresses change (libp2p's 'self:peer:update'), pushes it to every
 * friend I am connected to (once per friend and record), and puts it into
 * the DHT.
 *
 * seq is the time of signing in ms, but never less than the last seq plus
 * one (kept in the record store), so it only grows even if the clock steps
 * back.
 */
export interface PublisherInit {
  libp2p: KithLibp2p
  friends: FriendBook
  store: RecordStore
  identity: Identity
  /** put records into the DHT as well */
  dht: boolean
}

/** Addresses worth publishing: my listen addresses, loopback last. */
export function publishable (addrs: string[]): string[] {
  const plain = [...new Set(addrs.map(withoutPeerId))]
  const loopback = (a: string): boolean => a.startsWith('/ip4/127.') || a.startsWith('/ip6/::1/')
  return [...plain.filter(a => !loopback(a)), ...plain.filter(loopback)].slice(0, MAX_RECORD_ADDRS)
}

export class Publisher {
  private readonly init: PublisherInit
  private readonly self: string
  private record: AddressRecord | null = null
  /** friend -> seq of the record they have from me */
  private readonly pushed = new Map<string, number>()
  private readonly pushing = new Set<string>()
  private readonly controller = new AbortController()
  private debounce: NodeJS.Timeout | null = null
  private republish: NodeJS.Timeout | null = null
  private dhtPublished = -1
  private dhtBusy = false
  private signing: Promise<void> = Promise.resolve()
  private running = false

  constructor (init: PublisherInit) {
    this.init = init
    this.self = init.identity.peerId.toString()
  }

  get current (): AddressRecord | null {
    return this.record
  }

  /** seq of the newest record at least one DHT peer took, or -1 */
  get dhtPublishedSeq (): number {
    return this.dhtPublished
  }

  async start (): Promise<void> {
    this.running = true
    await this.sign()
    this.init.libp2p.addEventListener('self:peer:update', this.onSelfUpdate)
    this.init.libp2p.addEventListener('connection:open', this.onOpen)
    this.init.friends.on('event', this.onFriendEvent)
    if (this.init.dht) {
      this.republish = setInterval(() => { this.dhtPublished = -1; this.publishToDht() }, DHT_REPUBLISH_MS)
      this.republish.unref()
    }
    for (const connection of this.init.libp2p.getConnections()) this.pushTo(connection.remotePeer.toString())
  }

  stop (): void {
    this.running = false
    this.controller.abort()
    this.init.libp2p.removeEventListener('self:peer:update', this.onSelfUpdate)
    this.init.libp2p.removeEventListener('connection:open', this.onOpen)
    this.init.friends.off('event', this.onFriendEvent)
    if (this.debounce != null) clearTimeout(this.debounce)
    if (this.republish != null) clearInterval(this.republish)
  }

  /** Signs a new record if my addresses differ from the current one's (or always, at start). */
  private async sign (): Promise<void> {
    const run = this.signing.then(async () => {
      const addrs = publishable(this.init.libp2p.getMultiaddrs().map(a => a.toString()))
      if (this.record != null && sameAddrs(addrs, this.record.addrs)) return
      const previous = this.record ?? await this.init.store.get(this.self)
      const now = Date.now()
      const record = createAddressRecord({
        secretKey: this.init.identity.secretKey,
        publicKey: this.init.identity.publicKey,
        addrs,
        seq: Math.max(now, (previous?.seq ?? 0) + 1),
        time: now
      })
      // kept before it is sent, so a crash never lets a seq be used twice
      await this.init.store.offer(record, this.self)
      this.record = record
    })
    this.signing = run.catch(() => {})
    await run
  }

  private readonly onSelfUpdate = (): void => {
    if (this.debounce != null) clearTimeout(this.debounce)
    this.debounce = setTimeout(() => {
      this.debounce = null
      if (!this.running) return
      const before = this.record?.seq
      this.sign().then(() => {
        if (this.record?.seq === before) return
        for (const connection of this.init.libp2p.getConnections()) this.pushTo(connection.remotePeer.toString())
        this.publishToDht()
      }).catch(() => {})
    }, PUBLISH_DEBOUNCE_MS)
    this.debounce.unref()
  }

  private readonly onOpen = (evt: CustomEvent<Connection>): void => {
    this.pushTo(evt.detail.remotePeer.toString())
    if (this.dhtPublished !== this.record?.seq) this.publishToDht()
  }

  private readonly onFriendEvent = (evt: FriendEvent): void => {
    if (evt.type === 'friend:added') this.pushTo(evt.friend.peerId)
    if (evt.type === 'friend:revoked') this.pushed.delete(evt.friend.peerId)
  }

  /** Pushes the current record to a connected friend who doesn't have it yet. */
  private pushTo (peer: string): void {
    const record = this.record
    if (!this.running || record == null || !this.init.friends.isActive(peer)) return
    if (this.pushed.get(peer) === record.seq || this.pushing.has(peer)) return
    // only over a connection that is up: a dial here could wait on peer routing for long
    const peerId = peerIdFromString(peer)
    if (!this.init.libp2p.getConnections(peerId).some(c => c.status === 'open')) return
    this.pushing.add(peer)
    pushRecord(this.init.libp2p, peerId, record.bytes, { signal: this.controller.signal })
      .then(() => { this.pushed.set(peer, record.seq) })
      .catch(err => {
        // they hold this record or a newer one already: nothing to do
        if (err instanceof KithError && err.code === 'RECORD_STALE') this.pushed.set(peer, record.seq)
      })
      .finally(() => {
        this.pushing.delete(peer)
        // a newer record may have been signed meanwhile
        if (this.record != null && this.record.seq !== record.seq) this.pushTo(peer)
      })
  }

  private publishToDht (): void {
    const record = this.record
    if (!this.init.dht || !this.running || record == null || this.dhtBusy) return
    this.dhtBusy = true
    const signal = AbortSignal.any([this.controller.signal, AbortSignal.timeout(DHT_PUT_TIMEOUT_MS)])
    putRecord(this.init.libp2p.services.dht, this.init.identity.peerId, record, { signal })
      .then(accepted => { if (accepted > 0) this.dhtPublished = record.seq })
      .finally(() => { this.dhtBusy = false })
  }
}

function sameAddrs (a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}
