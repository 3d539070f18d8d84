import { KithError, asKithError } from '../../errors.ts'
import type { ChunkStore, PutOptions } from '../../transfer/chunk-store.ts'
import { decodeManifest, type Manifest } from '../../transfer/manifest.ts'
import { ShareBook } from './share-book.ts'
import { select, type Transfer } from './transfers.ts'

/**
 * Garbage collection of the chunk store: mark and sweep.
 *
 * The store holds chunks of my shares and of friends' shares I fetched, and
 * knows nothing about either (no keys, no policy). This decides which chunks
 * are still wanted (`liveChunks`, the policy) and deletes the rest
 * (`ChunkCollector`, the mechanism).
 *
 * **Live** (everything else is garbage):
 * 1. every chunk of the newest manifest of each of my shares (an unshared
 *    share has no record left; older versions of a share are superseded, and
 *    their chunks stay only where the newest version still lists them, as
 *    unchanged files keep their chunk ids);
 * 2. the chunks an open fetch needs (queued, running, paused or failed: a
 *    failed fetch can be resumed): those of the files it selects in the
 *    manifest it pinned, whoever the owner is now; `kith cancel` frees them;
 * 3. for each friend's share I finished fetching (some part of), while that
 *    friend is still my friend: the chunks, in the newest version I finished
 *    fetching, of the files under every path I finished fetching of it (in any
 *    version), so I keep serving them to other friends. A newer finished
 *    version supersedes the older ones (their changed files' chunks go); a
 *    revoked friend's shares are no longer served, so their chunks go.
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
 * **Cost.** The mark decodes (and verifies) each manifest it needs once and
 * holds the live ids in a set, ~150 bytes a chunk: 100 MiB per 700 000 live
 * chunks (700 GiB at 1 MiB chunks). The sweep walks the store's index.
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

  constructor (init: ChunkCollectorInit) {
    this.init = init
  }

  /**
   * Runs a cycle that starts after this call: at once if none is running,
   * else right after the running one (callers arriving meanwhile share it).
   */
  async collect (): Promise<GcResult> {
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

/** What the live set is made from: my shares, my fetches and my friends. */
export interface LiveInit {
  shares: ShareBook
  /** my public key: my shares' manifests must be signed by it */
  publicKey: Uint8Array
  transfers: () => Array<Pick<Transfer, 'id' | 'owner' | 'shareId' | 'version' | 'path' | 'state'>>
  friends: {
    get: (peerId: string) => { publicKey: string } | undefined
    isActive: (peerId: string) => boolean
  }
  /** filled with the received manifests (`owner/shareId/version`) the live chunks come from */
  manifestsUsed?: Set<string>
}

const OPEN: ReadonlySet<Transfer['state']> = new Set(['queued', 'running', 'paused', 'failed'])

/**
 * The chunks to keep (see the policy above). Throws, so the cycle deletes
 * nothing, if any manifest it needs is missing or can't be decoded: better a
 * store that keeps too much than a share that can no longer be served.
 */
export async function liveChunks (init: LiveInit): Promise<Set<string>> {
  const live = new Set<string>()
  const addAll = (manifest: Manifest): void => {
    for (const entry of manifest.entries) if (entry.type === 'file') for (const id of entry.chunks) live.add(id)
  }
  const addSelected = (manifest: Manifest, path: string): void => {
    for (const { entry } of select(manifest, path).files) for (const id of entry.chunks) live.add(id)
  }

  // 1. my shares, newest versions
  for (const share of await init.shares.list()) {
    try {
      addAll(ShareBook.decode(share.manifest, init.publicKey))
    } catch (err) {
      throw new KithError('INTERNAL', `the stored manifest of your share ${share.name} (${share.id}) can't be read (${asKithError(err).message}); the chunk store was left as it is`, { cause: err })
    }
  }

  const manifests = new Map<string, Manifest>()
  const received = async (t: Pick<Transfer, 'id' | 'owner' | 'shareId' | 'version'>): Promise<Manifest> => {
    const key = `${t.owner}/${t.shareId}/${t.version}`
    init.manifestsUsed?.add(key)
    let manifest = manifests.get(key)
    if (manifest !== undefined) return manifest
    const saved = await init.shares.getReceived(t.owner, t.shareId, t.version)
    if (saved === undefined) {
      throw new KithError('INTERNAL', `the manifest transfer ${t.id} was started from (version ${t.version}) is missing; cancel the transfer to let the chunk store be cleaned`)
    }
    const ownerKey = init.friends.get(t.owner)?.publicKey
    try {
      // checked against the owner's key when they are still in my book; the signature is checked either way
      manifest = decodeManifest(Buffer.from(saved.manifest, 'base64'), ownerKey !== undefined ? { owner: Buffer.from(ownerKey, 'base64') } : {})
    } catch (err) {
      throw new KithError('INTERNAL', `the manifest transfer ${t.id} was started from can't be read (${asKithError(err).message}); cancel the transfer to let the chunk store be cleaned`, { cause: err })
    }
    manifests.set(key, manifest)
    return manifest
  }

  // 2. what open fetches need; 3. the newest finished version of each friend's share
  const finished = new Map<string, { owner: string, shareId: string, newest: Pick<Transfer, 'id' | 'owner' | 'shareId' | 'version'>, paths: Set<string> }>()
  for (const t of init.transfers()) {
    if (OPEN.has(t.state)) {
      addSelected(await received(t), t.path)
    } else if (t.state === 'done' && init.friends.isActive(t.owner)) {
      const key = `${t.owner}/${t.shareId}`
      const group = finished.get(key) ?? { owner: t.owner, shareId: t.shareId, newest: t, paths: new Set<string>() }
      if (t.version > group.newest.version) group.newest = t
      group.paths.add(t.path)
      finished.set(key, group)
    }
  }
  for (const group of finished.values()) {
    const manifest = await received(group.newest)
    for (const path of group.paths) {
      try {
        addSelected(manifest, path)
      } catch (err) {
        // a path fetched from an older version that the newest no longer has: superseded
        if (asKithError(err).code !== 'SHARE_UNKNOWN') throw err
      }
    }
  }
  return live
}
