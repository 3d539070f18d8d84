import { join } from 'node:path'
import { KithError, asKithError } from '../../errors.ts'
import { sublevel } from '../../peer/database.ts'
import { friendsOnly } from '../../trust/gate.ts'
import { openChunkStore, type ChunkStore, type FileRef } from '../../transfer/chunk-store.ts'
import { chunkHandler, CHUNK_PROTOCOL } from '../../transfer/chunk-protocol.ts'
import type { SealKeys } from '../../transfer/seal.ts'
import { BandwidthScheduler } from '../../transfer/scheduler/index.ts'
import { LimitsBook, bandwidthView, type BandwidthView, type LimitsDoc } from './limits.ts'
import { ChunkCollector, type GcResult } from './collector.ts'
import { BandwidthHistory, type BandwidthHistoryView } from './bandwidth-history.ts'
import { MAX_INBOUND_CHUNK_STREAMS } from './constants.ts'
import { UploadFlows } from './uploads.ts'
import type { EngineComponents, EngineInit, EngineService, StoreStatus, TransferEngine } from './index.ts'

interface Parts {
  store: ChunkStore
  guardedStore: ChunkStore
  collector: ChunkCollector
  limits: LimitsBook
}

/** The transfer engine (index.ts has the interface and docs). */
export class Engine implements TransferEngine {
  readonly bandwidth: BandwidthScheduler
  private readonly init: EngineInit
  private readonly components: EngineComponents
  private readonly services: EngineService[] = []
  private readonly uploads: UploadFlows
  private readonly history: BandwidthHistory
  private parts: Parts | null = null

  constructor (init: EngineInit, components: EngineComponents) {
    this.init = init
    this.components = components
    // limits come from the config file, the database and the start flags once friends resolve (see start)
    this.bandwidth = new BandwidthScheduler()
    // friends' traffic is 'friend'; friends of friends and public content will come with their features
    this.uploads = new UploadFlows(this.bandwidth, peer => components.friends.isActive(peer) ? 'friend' : 'public')
    this.history = new BandwidthHistory({ counters: this.bandwidth })
  }

  private get ready (): Parts {
    if (this.parts == null) throw new KithError('INTERNAL', 'the transfer engine is not started')
    return this.parts
  }

  get store (): ChunkStore { return this.ready.store }
  get guardedStore (): ChunkStore { return this.ready.guardedStore }
  get collector (): ChunkCollector { return this.ready.collector }
  get limits (): LimitsBook { return this.ready.limits }

  async start (): Promise<void> {
    const { db, home, libp2p, friends } = this.components
    // Sealed chunks (fetched before they could be held in files, backups)
    // are not fsynced one by one: a killed process loses nothing (the page
    // cache survives it), and after a power loss every read re-verifies the
    // hash, so a damaged chunk is dropped and fetched again. Assembled files
    // are fsynced before they are moved into place.
    // Chunks held in files (shared files, fetched files) are sealed again
    // with the keys a service gives when asked for.
    const store = await openChunkStore({
      dir: join(home, 'chunks'),
      db: sublevel(db, 'chunk-index'),
      sync: false,
      keys: async (shareId, owner) => await this.sealKeys(shareId, owner),
      onDropped: (id, file) => { this.dropped(id, file) }
    })
    const collector = new ChunkCollector({ store, mark: async () => await this.mark() })
    const limits = await LimitsBook.open({
      level: sublevel<LimitsDoc>(db, 'limits'),
      bandwidth: this.bandwidth,
      resolvePeer: name => friends.resolve(name).peerId,
      label: peer => friends.get(peer)?.label ?? null,
      config: this.init.config ?? null,
      override: { ...(this.init.maxUpload != null ? { upload: this.init.maxUpload } : {}), ...(this.init.maxDownload != null ? { download: this.init.maxDownload } : {}) }
    })
    this.parts = { store, guardedStore: collector.guard(store), collector, limits }
    // Friends holding a files grant fetch chunks; services needing other grants will widen this gate.
    await libp2p.handle(CHUNK_PROTOCOL, chunkHandler({ store, beforeSend: async (bytes, peer, signal) => { await this.uploads.of(peer.toString()).take(bytes, signal) } }), {
      maxInboundStreams: this.init.maxInboundChunkStreams ?? MAX_INBOUND_CHUNK_STREAMS,
      middleware: [friendsOnly(friends, 'files')]
    })
    this.history.start()
  }

  register (service: EngineService): void {
    if (this.services.some(s => s.name === service.name)) throw new KithError('INTERNAL', `a service named ${service.name} is already registered with the transfer engine`)
    this.services.push(service)
  }

  afterStart (): void {
    const { collector } = this.ready
    collector.start()
    // once at start-up, in the background: start is not held up by it
    collector.schedule()
  }

  /** The union of every service's live chunks. */
  private async mark (): Promise<Set<string>> {
    const live = new Set<string>()
    for (const service of this.services) {
      try {
        await service.liveChunks(live)
      } catch (err) {
        const error = asKithError(err)
        throw new KithError(error.code, `${service.name}: ${error.message}`, { cause: err })
      }
    }
    return live
  }

  /** The first answer of the services that know the keys. */
  private async sealKeys (shareId: string, owner: string): Promise<SealKeys | readonly SealKeys[] | undefined> {
    for (const service of this.services) {
      const keys = await service.sealKeys?.(shareId, owner)
      if (keys !== undefined && (!Array.isArray(keys) || keys.length > 0)) return keys
    }
    return undefined
  }

  private dropped (id: string, file: FileRef): void {
    for (const service of this.services) service.onDropped?.(id, file)
  }

  async collect (): Promise<GcResult> {
    return await this.ready.collector.collect()
  }

  storeStatus (): StoreStatus {
    const { store, collector } = this.ready
    const stats = store.stats()
    return { chunks: stats.count, bytes: stats.bytes, inFiles: stats.inFiles, gc: collector.status() }
  }

  bandwidthView (): BandwidthView {
    return bandwidthView(this.bandwidth.stats(), peer => this.components.friends.get(peer)?.label ?? null)
  }

  bandwidthHistory (): BandwidthHistoryView {
    return this.history.view()
  }

  async beforeStop (): Promise<void> {
    await this.parts?.collector.stop()
  }

  async stop (): Promise<void> {
    await this.parts?.collector.stop()
    if (this.parts != null) await this.components.libp2p.unhandle(CHUNK_PROTOCOL).catch(() => {})
    this.history.stop()
    this.uploads.close()
    this.bandwidth.close()
  }
}
