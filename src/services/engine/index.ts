/**
 * The transfer engine: the daemon's shared machinery for moving and keeping
 * chunks, which every service plugs into (docs/engine.md).
 *
 * One chunk store, one bandwidth scheduler, one chunk protocol handler
 * (CHUNK_PROTOCOL, with a per-peer upload flow), the bandwidth limits, and
 * one chunk collector whose live set is the union of what each registered
 * service declares. A service (file sharing, backups, downloads, the proxy)
 * registers once, then uses the store, the scheduler and the collector's
 * pins and guards; it owns its own books and protocols.
 *
 *   const engine = transferEngine({ maxUpload })({ db, home, libp2p, friends })
 *   await engine.start()                  // store, limits, chunk protocol
 *   engine.register({ name: 'files', liveChunks, sealKeys, onDropped })
 *   engine.afterStart()                   // every service registered: collection may run
 *   ...
 *   await engine.beforeStop()             // no collection while services stop
 *   await engine.stop()
 */
import type { Database } from '../../peer/database.ts'
import type { KithLibp2p } from '../../peer/node.ts'
import type { FriendBook } from '../../trust/friends.ts'
import type { ChunkStore, FileRef } from '../../transfer/chunk-store.ts'
import type { SealKeys } from '../../transfer/seal.ts'
import type { BandwidthScheduler } from '../../transfer/scheduler/index.ts'
import type { BandwidthView, ConfigFile, LimitsBook } from './limits.ts'
import type { ChunkCollector, GcResult, GcStatus } from './collector.ts'
import type { BandwidthHistoryView } from './bandwidth-history.ts'
import { Engine } from './engine.ts'

export type { GcResult, GcStatus, Pin } from './collector.ts'
export type { BandwidthHistoryView } from './bandwidth-history.ts'
export { loadConfig, type BandwidthView, type ConfigFile, type LimitsView } from './limits.ts'
export { MAX_INBOUND_CHUNK_STREAMS } from './constants.ts'

/**
 * What a service tells the engine about its chunks. Chunks are shared: the
 * same id may be live for several services, and one is kept while any
 * service declares it.
 */
export interface EngineService {
  /** names the service in errors (a failed mark) */
  name: string
  /**
   * Adds to `live` every chunk this service still needs, for a collection's
   * mark; everything no service adds (and nothing pinned or touched meanwhile)
   * is deleted. Throwing aborts the cycle, deleting nothing: better a store
   * that keeps too much than a service that lost its data.
   */
  liveChunks: (live: Set<string>) => Promise<void>
  /**
   * The keys that seal `owner`'s chunks of `shareId` (a share, a backup
   * set...), for chunks held in files, which are sealed again when served:
   * one, or every key it had, newest first. Undefined when this service does
   * not know them; the engine asks each service in turn.
   */
  sealKeys?: (shareId: string, owner: string) => Promise<SealKeys | readonly SealKeys[] | undefined>
  /** Told of every chunk held in a file that the store found gone (its row then dropped). */
  onDropped?: (id: string, file: FileRef) => void
}

export interface EngineInit {
  /** global cap on what this node serves, bytes per second (`kith start --max-upload`); overrides the stored limits for this run @default none */
  maxUpload?: number
  /** global cap on what this node fetches, bytes per second (`kith start --max-download`); likewise @default none */
  maxDownload?: number
  /** config.json of the home folder, if there is one (limits.ts) @default null */
  config?: ConfigFile | null
  /** @default MAX_INBOUND_CHUNK_STREAMS */
  maxInboundChunkStreams?: number
}

/** What the engine uses of the daemon. */
export interface EngineComponents {
  db: Database
  /** the home folder: the chunk files live in its `chunks` folder */
  home: string
  libp2p: KithLibp2p
  /** who is a friend (the chunk protocol serves friends only; their uploads are class `friend`) and friends' names in limits */
  friends: FriendBook
}

/** `kith status`: what the chunk store holds, and how its last clean-up went */
export interface StoreStatus {
  chunks: number
  /** what the store's own sealed chunk files take on disk */
  bytes: number
  /** of `chunks`, those held in files (shared and fetched files: no disk of their own) */
  inFiles: number
  gc: GcStatus
}

export interface TransferEngine {
  /** the node's one chunk store; writes a collection must not race go through `collector.use` or `guardedStore` */
  readonly store: ChunkStore
  /** the store as fetches should see it: every chunk they look at is safe from a sweep under way */
  readonly guardedStore: ChunkStore
  /** every chunk this node serves or fetches passes through it; services take flows of their own class */
  readonly bandwidth: BandwidthScheduler
  /** pins, guards and collections of the store (collector.ts) */
  readonly collector: ChunkCollector
  /** global, per-peer and time-of-day limits, persisted; `kith limits` */
  readonly limits: LimitsBook

  /** Opens the store and the limits, serves CHUNK_PROTOCOL, and starts the bandwidth history's timer. */
  start: () => Promise<void>
  /**
   * Plugs a service in: from the next collection on, its live chunks are
   * kept and its keys serve its chunks held in files. Registered for the
   * engine's life; names are unique (INTERNAL otherwise).
   */
  register: (service: EngineService) => void
  /** Every service has registered: collection may run (the first one runs now, in the background). */
  afterStart: () => void
  /** Runs a collection now (after one under way, if any) and says what it freed. */
  collect: () => Promise<GcResult>
  storeStatus: () => StoreStatus
  /** current rates per direction, class and peer, peers with their friend labels */
  bandwidthView: () => BandwidthView
  /** rates per direction and class over the last hour, in intervals (bandwidth-history.ts), sampled from start */
  bandwidthHistory: () => BandwidthHistoryView
  /** Stops collection (a sweep under way stops between two deletes): call before stopping the services. */
  beforeStop: () => Promise<void>
  /** Stops serving chunks and closes the scheduler (waiting takes reject). */
  stop: () => Promise<void>
}

export function transferEngine (init: EngineInit = {}): (components: EngineComponents) => TransferEngine {
  return components => new Engine(init, components)
}
