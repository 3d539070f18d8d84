import type { Database } from '../../peer/database.ts'
import type { KithLibp2p } from '../../peer/node.ts'
import type { FriendBook } from '../../trust/friends.ts'
import type { TransferEngine } from '../engine/index.ts'
import { DEFAULT_GRACE_MS, HostBook, type HostedView } from './host-book.ts'
import { BACKUP_PROTOCOL, MAX_INBOUND_BACKUP_STREAMS, backupHandler } from './protocol.ts'

/**
 * Backup hosting: keeping my friends' sealed blobs and recovery records
 * (docs/backup.md, "Host"): blobs in pack files of each owner's
 * (pack-store.ts), indexed by the host book. Plugs into the engine (blobs
 * kept by a host from before packs are live chunks of its store) and serves
 * `/kith/backup/1.0.0`. The owner's side is
 * BackupService (index.ts).
 *
 *   const host = await BackupHost.start({ db, home, libp2p, friends, engine })
 *   ...
 *   await host.stop()
 */
export interface BackupHostInit {
  db: Database
  home: string
  libp2p: KithLibp2p
  friends: FriendBook
  engine: TransferEngine
  /** how long a revoked friend's blobs are kept @default DEFAULT_GRACE_MS (30 days) */
  graceMs?: number
  /** how often revoked friends' data is looked at @default one hour */
  sweepEveryMs?: number
}

/** What `kith backup hosted` lists: the host book's view, with the friend's name. */
export interface HostedFriend extends HostedView {
  name: string | null
  /** when what they left here will be deleted (goneSince + the grace period), ms since the epoch; null while granted */
  deleteAt: number | null
}

export class BackupHost {
  readonly book: HostBook
  private readonly init: BackupHostInit
  private timer: NodeJS.Timeout | undefined
  private readonly onFriend = (): void => { void this.sweep() }
  private sweeping: Promise<unknown> = Promise.resolve()

  private constructor (init: BackupHostInit) {
    this.init = init
    this.book = new HostBook({ db: init.db, home: init.home, store: init.engine.guardedStore })
  }

  static async start (init: BackupHostInit): Promise<BackupHost> {
    const host = new BackupHost(init)
    const { engine, libp2p, friends } = init
    await host.book.open()
    // blobs kept by a host from before packs are in the engine's store: they stay live until removed
    engine.register({ name: 'backup-host', liveChunks: async live => { await host.book.liveChunks(live) } })
    await libp2p.handle(BACKUP_PROTOCOL, backupHandler({
      book: host.book,
      bandwidth: engine.bandwidth,
      friends,
      self: libp2p.peerId.toString()
    }), { maxInboundStreams: MAX_INBOUND_BACKUP_STREAMS })
    // a revoked friend's data is looked at when it happens (starting the grace period) and every hour
    friends.on('event', host.onFriend)
    void host.sweep()
    host.timer = setInterval(host.onFriend, init.sweepEveryMs ?? 3600_000)
    host.timer.unref()
    return host
  }

  /** Starts a sweep of owners no longer granted backup, after the one under way. */
  sweep (): Promise<unknown> {
    const { friends } = this.init
    this.sweeping = this.sweeping.then(async () => await this.book.sweep(owner => friends.allows(owner, 'backup'), this.init.graceMs ?? DEFAULT_GRACE_MS)).catch(() => {})
    return this.sweeping
  }

  /** Sets the quota of a friend (by name or peer id); 0 stops new writes, what is stored stays. */
  async setQuota (name: string, bytes: number): Promise<HostedFriend> {
    const friend = this.init.friends.resolve(name)
    await this.book.setQuota(friend.peerId, bytes)
    const view = this.book.hosted().find(h => h.peerId === friend.peerId)!
    return { ...view, name: friend.label, deleteAt: null }
  }

  hosted (): HostedFriend[] {
    const { friends } = this.init
    const views = new Map(this.book.hosted().map(view => [view.peerId, view]))
    // friends granted backup who have stored nothing yet are listed too
    for (const friend of friends.list()) {
      if (!views.has(friend.peerId) && friends.allows(friend.peerId, 'backup')) {
        views.set(friend.peerId, { peerId: friend.peerId, quota: this.book.quotaOf(friend.peerId), used: 0, blobs: 0, lastWrite: null, lastAudit: null, record: null, goneSince: null, trail: [] })
      }
    }
    const grace = this.init.graceMs ?? DEFAULT_GRACE_MS
    return [...views.values()]
      .filter(view => friends.allows(view.peerId, 'backup') || view.blobs > 0 || view.record !== null)
      .map(view => ({ ...view, name: friends.get(view.peerId)?.label ?? null, deleteAt: view.goneSince != null ? view.goneSince + grace : null }))
  }

  async stop (): Promise<void> {
    clearInterval(this.timer)
    this.init.friends.off('event', this.onFriend)
    await this.init.libp2p.unhandle(BACKUP_PROTOCOL).catch(() => {})
    await this.sweeping
    await this.book.close()
  }
}
