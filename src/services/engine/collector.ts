import { KithError, asKithError } from '../../errors.ts'
import type { ChunkStore, PutOptions } from '../../transfer/chunk-store.ts'

/**
 * Garbage collection of the engine's chunk store: mark and sweep, the
 * mechanism only.
 *
 * The store holds the chunks of every service (file sharing's shares and
 * fetches, backups...) and knows nothing about any of them (no keys, no
 * policy). Each cycle's `mark` asks the engine for the live set, the union of
 * what every registered service declares (engine.ts); this deletes the rest.
 * What file sharing keeps alive is its own policy (services/files/live-chunks.ts).
 *
 * **Races.** Chunks reach the store before anything refers to them: a share
 * writes its chunks before its manifest is saved, a fetch stores chunks
 * before it is done, and a fetch that starts after the mark finds chunks
 * already held and counts on them. So, besides the marked set, a sweep never
 * deletes
 * - a chunk *pinned* by a share being made (`pin()`: every chunk the share
 *   writes, until its manifest is saved or it failed);
 * - a chunk *touched* since the cycle began (`guard(store)`: every `has`,
 *   `get` or `put` through the guarded store, which is what fetches use, and
 *   every chunk of a pin released during the cycle): the generation of
 *   chunks in use after the mark looked;
 * and a `has`/`get`/`put` of a chunk whose delete is under way waits for the
 *   delete, so it sees the chunk gone (and fetches or writes it again)
 *   instead of holding on to a chunk about to vanish. Deciding to delete and
 *   registering the delete happen in one synchronous step, as does touching
 *   and looking for a delete under way, so one of the two always sees the
 *   other.
 *
 * **Crashes.** The store's delete unindexes before it unlinks, and the sweep
 * deletes one chunk at a time, so a kill -9 mid-sweep leaves every indexed
 * chunk whole and at most one unindexed file behind (overwritten if that
 * chunk is stored again). Nothing about a sweep is persisted: the next one
 * starts over.
 *
 * **Cost.** The live ids are held in one set, ~150 bytes a chunk: 100 MiB
 * per 700 000 live chunks (700 GiB at 1 MiB chunks). The sweep walks the
 * store's index.
 */

export interface GcResult {
  /** chunks and bytes deleted */
  freed: { chunks: number, bytes: number }
  /** garbage by the mark, kept because a share or fetch used it during the sweep */
  inUse: number
  /** live chunks the mark found (some may not be held) */
  live: number
  /** the store after the sweep */
  store: { chunks: number, bytes: number, inFiles: number }
  /** the sweep stopped early (the daemon is stopping) */
  aborted: boolean
  /** when it finished, ms since the epoch */
  at: number
  ms: number
}

export interface GcStatus {
  running: boolean
  last: GcResult | null
  /** the last cycle's failure, if the last cycle failed */
  error: { code: string, message: string } | null
  /** every cycle since the daemon started, automatic ones included */
  total: { cycles: number, chunks: number, bytes: number }
}

export interface ChunkCollectorInit {
  store: ChunkStore
  /** The live set, computed afresh for each cycle; throwing aborts the cycle, deleting nothing. */
  mark: () => Promise<Set<string>>
}

interface Cycle {
  touched: Set<string>
}

/** Chunks a share is writing; `release` it once the manifest is saved, or the share failed. */
export interface Pin {
  add: (id: string) => void
  release: () => void
}

export class ChunkCollector {
  private readonly init: ChunkCollectorInit
  private cycle: Cycle | null = null
  private readonly pins = new Set<Set<string>>()
  private readonly deleting = new Map<string, Promise<boolean>>()
  private running: Promise<GcResult> | null = null
  private next: Promise<GcResult> | null = null
  private readonly controller = new AbortController()
  private lastResult: GcResult | null = null
  private lastError: { code: string, message: string } | null = null
  private readonly total = { cycles: 0, chunks: 0, bytes: 0 }

  /** settled by start() or stop(): no cycle marks before then */
  private readonly started = Promise.withResolvers<void>()
  private isStarted = false

  constructor (init: ChunkCollectorInit) {
    this.init = init
  }

  /**
   * Lets cycles run. Until then `collect` waits and `schedule` is kept for
   * later: the engine starts its collector once every service has
   * registered, so no mark misses a service's live chunks.
   */
  start (): void {
    this.isStarted = true
    this.started.resolve()
  }

  /**
   * Runs a cycle that starts after this call: at once if none is running,
   * else right after the running one (callers arriving meanwhile share it).
   */
  async collect (): Promise<GcResult> {
    if (!this.isStarted) await this.started.promise
    if (this.controller.signal.aborted) throw new KithError('INTERNAL', 'the chunk collector is stopped')
    if (this.next != null) return await this.next
    if (this.running == null) {
      this.running = this.run().finally(() => { this.running = null })
      return await this.running
    }
    const after = this.running.then(() => {}, () => {}).then(async () => {
      this.next = null
      return await this.collect()
    })
    this.next = after
    return await after
  }

  /** `collect` in the background; the outcome shows in `status()`. */
  schedule (): void {
    if (this.controller.signal.aborted) return
    this.collect().catch(() => {}) // recorded by run()
  }

  status (): GcStatus {
    return { running: this.running != null, last: this.lastResult, error: this.lastError, total: { ...this.total } }
  }

  /** Stops a running sweep between two deletes and waits for it. */
  async stop (): Promise<void> {
    this.controller.abort()
    this.started.resolve()
    await Promise.allSettled([this.running, this.next])
  }

  /** Protects what a share writes until it is saved or has failed. */
  pin (): Pin {
    const ids = new Set<string>()
    this.pins.add(ids)
    return {
      add: id => {
        ids.add(id)
        this.cycle?.touched.add(id)
      },
      release: () => {
        if (!this.pins.delete(ids)) return
        // the manifest may have been saved after this cycle's mark looked
        const cycle = this.cycle
        if (cycle != null) for (const id of ids) cycle.touched.add(id)
      }
    }
  }

  /**
   * Marks the chunk in use for the current cycle, then waits out a delete of
   * it already under way. The marking happens before the first await.
   */
  async use (id: string, pin?: Pin): Promise<void> {
    pin?.add(id)
    this.cycle?.touched.add(id)
    const deleting = this.deleting.get(id)
    if (deleting !== undefined) await deleting.catch(() => {})
  }

  /** The store as fetches should see it: every chunk they look at is safe from a sweep under way. */
  guard (store: ChunkStore): ChunkStore {
    return {
      put: async (id: string, sealed: Uint8Array, options?: PutOptions) => {
        await this.use(id)
        return await store.put(id, sealed, options)
      },
      putInFile: async (id, sealed, ref, options) => {
        await this.use(id)
        return await store.putInFile(id, sealed, ref, options)
      },
      moveInFile: async (ids, from, to) => {
        const list = [...ids]
        for (const id of list) await this.use(id)
        await store.moveInFile(list, from, to)
      },
      has: async (id: string) => {
        await this.use(id)
        return await store.has(id)
      },
      get: async (id: string) => {
        await this.use(id)
        return await store.get(id)
      },
      getParts: async (id: string) => {
        await this.use(id)
        return await store.getParts(id)
      },
      delete: async (id: string) => await store.delete(id),
      list: () => store.list(),
      stats: () => store.stats()
    }
  }

  private protectedNow (id: string): boolean {
    if (this.cycle?.touched.has(id) === true) return true
    for (const pin of this.pins) if (pin.has(id)) return true
    return false
  }

  private async run (): Promise<GcResult> {
    const started = performance.now()
    const cycle: Cycle = { touched: new Set() }
    this.cycle = cycle
    const signal = this.controller.signal
    try {
      // anything used from here on is kept, whatever the mark finds
      const live = await this.init.mark()
      const store = this.init.store
      let chunks = 0
      let bytes = 0
      let inUse = 0
      for await (const chunk of store.list()) {
        if (signal.aborted) break
        if (live.has(chunk.id)) continue
        if (this.protectedNow(chunk.id)) {
          inUse++
          continue
        }
        // decided and registered in one synchronous step (see use())
        const deleting = store.delete(chunk.id)
        this.deleting.set(chunk.id, deleting)
        try {
          if (await deleting) {
            chunks++
            if (!chunk.inFile) bytes += chunk.size
          }
        } finally {
          this.deleting.delete(chunk.id)
        }
      }
      const stats = store.stats()
      const result: GcResult = {
        freed: { chunks, bytes },
        inUse,
        live: live.size,
        store: { chunks: stats.count, bytes: stats.bytes, inFiles: stats.inFiles },
        aborted: signal.aborted,
        at: Date.now(),
        ms: Math.round(performance.now() - started)
      }
      this.lastResult = result
      this.total.cycles++
      this.total.chunks += chunks
      this.total.bytes += bytes
      this.lastError = null
      return result
    } catch (err) {
      const error = asKithError(err)
      this.lastError = { code: error.code, message: error.message }
      throw error
    } finally {
      if (this.cycle === cycle) this.cycle = null
    }
  }
}
