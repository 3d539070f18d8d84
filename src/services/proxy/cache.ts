import { createHash, randomBytes, type Hash } from 'node:crypto'
import { mkdir, open, readdir, rename, rm, stat, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { syncDir } from '../../peer/home.ts'
import type { Sublevel } from '../../peer/database.ts'
import type { Validators } from '../downloads/http/validators.ts'
import { ChunkHasher } from './swarm/hash-list.ts'
import { CACHE_SYNC_EVERY, CACHE_WRITE_BATCH, MAX_CACHE_UNWRITTEN } from './constants.ts'

/**
 * What the proxy fetched whole, kept for the next request of the same URL
 * class (docs/proxy.md, "The cache"): one file per entry in the home's
 * proxy-cache folder, indexed in LevelDB by the class's URLs, the origin's
 * validators (ETag, Last-Modified), the length and the sha256 of the bytes.
 * An entry is written to a partial, fsynced and renamed before the index
 * names it, so a kill -9 leaves whole entries or none (start-up removes
 * what the index does not name). Bounded by size; least recently used go
 * first.
 */
export const CACHE_RECORD_VERSION = 1

export interface CacheEntry {
  v: typeof CACHE_RECORD_VERSION
  id: string
  /** the equivalence class it was fetched for */
  urls: string[]
  etag: string | null
  lastModified: string | null
  length: number
  contentType: string | null
  sha256: string
  /** wall-clock ms of the last use: orders eviction across restarts */
  lastUsed: number
}

export interface CacheInit {
  level: Sublevel<CacheEntry>
  dir: string
  maxBytes: number
  /** told of each entry kept, with its file and its chunks' hashes (the swarm index records it) */
  onKept?: (entry: CacheEntry, path: string, chunks: Uint8Array) => Promise<void>
  /** told of each file that goes (evicted, replaced, gone) */
  onRemoved?: (path: string) => Promise<void>
}

export class ProxyCache {
  private readonly init: CacheInit
  private readonly entries = new Map<string, CacheEntry>()

  private constructor (init: CacheInit) {
    this.init = init
  }

  static async open (init: CacheInit): Promise<ProxyCache> {
    await mkdir(init.dir, { recursive: true, mode: 0o700 })
    const cache = new ProxyCache(init)
    for await (const [id, entry] of init.level.iterator()) {
      const size = await stat(join(init.dir, id)).then(s => s.size, () => -1)
      if (entry?.v !== CACHE_RECORD_VERSION || entry.id !== id || size !== entry.length) await init.level.del(id)
      else cache.entries.set(id, entry)
    }
    // partials of fetches a stop or crash cut short, files whose index entry never landed
    for (const name of await readdir(init.dir)) {
      if (!cache.entries.has(name)) await rm(join(init.dir, name), { force: true })
    }
    await cache.evict()
    return cache
  }

  /** The entry for the class: one whose URLs share one with it. */
  find (urls: readonly URL[]): CacheEntry | null {
    for (const entry of this.entries.values()) {
      if (urls.some(u => entry.urls.includes(u.href))) return entry
    }
    return null
  }

  path (entry: CacheEntry): string {
    return join(this.init.dir, entry.id)
  }

  /** bytes held now */
  get size (): number {
    let total = 0
    for (const e of this.entries.values()) total += e.length
    return total
  }

  get count (): number {
    return this.entries.size
  }

  async touch (entry: CacheEntry): Promise<void> {
    if (!this.entries.has(entry.id)) return
    entry.lastUsed = Date.now()
    // the map's order is the order of use too, so two uses in one millisecond still evict in order
    this.entries.delete(entry.id)
    this.entries.set(entry.id, entry)
    await this.init.level.put(entry.id, entry)
  }

  async remove (entry: CacheEntry): Promise<void> {
    this.entries.delete(entry.id)
    await this.init.level.del(entry.id)
    await this.init.onRemoved?.(join(this.init.dir, entry.id))
    // out of the index is what counts: a file left behind is swept at the next start
    await rm(join(this.init.dir, entry.id), { force: true }).catch(() => {})
  }

  /**
   * A writer for a whole file of `length` bytes fetched for `urls`, or null
   * when it would not fit the bound (or its length is unknown). `chunks`:
   * the chunks' hashes when every chunk given is checked against them
   * already (friends' bytes), so they are not hashed again.
   */
  async writer (urls: readonly URL[], validators: Validators, length: number | null, contentType: string | null, chunks?: Uint8Array): Promise<CacheWriter | null> {
    if (length == null || length > this.init.maxBytes || (validators.etag == null && validators.lastModified == null)) return null
    const id = randomBytes(12).toString('hex')
    const partial = join(this.init.dir, `${id}.partial`)
    const file = await open(partial, 'wx', 0o600)
    return new CacheWriter(file, partial, async (sha256, chunks) => {
      const entry: CacheEntry = { v: CACHE_RECORD_VERSION, id, urls: urls.map(u => u.href), ...validators, length, contentType, sha256, lastUsed: Date.now() }
      await rename(partial, join(this.init.dir, id))
      await syncDir(this.init.dir)
      // an older version of the class goes: one entry per class, never two versions to mix
      for (const old of [...this.entries.values()]) {
        if (old.urls.some(u => entry.urls.includes(u))) await this.remove(old)
      }
      await this.init.level.put(id, entry)
      this.entries.set(id, entry)
      await this.evict(id)
      // friends may ask for it now; not being able to offer it never fails the keeping
      if (this.entries.has(id)) await this.init.onKept?.(entry, join(this.init.dir, id), chunks).catch(err => { console.error(`kith proxy: the swarm index could not record a file: ${(err as Error).message}`) })
    }, length, chunks)
  }

  /** Drops least recently used entries until the bound holds (never `keep`, just written). */
  private async evict (keep?: string): Promise<void> {
    const byAge = [...this.entries.values()].sort((a, b) => a.lastUsed - b.lastUsed)
    let total = this.size
    for (const entry of byAge) {
      if (total <= this.init.maxBytes) return
      if (entry.id === keep) continue
      total -= entry.length
      await this.remove(entry)
    }
  }
}

/**
 * Bytes of one fetch on their way into the cache: hashed as they are
 * given, written to the partial in batches behind the caller's back (one
 * writev of CACHE_WRITE_BATCH bytes, not one write per 64 KiB socket read: the
 * writes cost the daemon more CPU than the hashing did, and each one held
 * the next origin bytes back from the client); flushed to the disk every
 * CACHE_SYNC_EVERY bytes while the fetch goes on (an fdatasync beside the
 * writes), so the fsync before the answer's last byte has little left to
 * flush; committed only whole.
 */
export class CacheWriter {
  private readonly file: FileHandle
  private readonly partial: string
  private readonly onCommit: (sha256: string, chunks: Uint8Array) => Promise<void>
  private readonly length: number
  private readonly hash: Hash = createHash('sha256')
  /** the swarm's hash list, made as the bytes go by, or given */
  private readonly chunks: ChunkHasher | Uint8Array
  private written = 0
  private ended = false
  /** bytes given and not written yet: the batch being gathered */
  private batch: Uint8Array[] = []
  private batched = 0
  /** bytes given that the disk has not taken yet (the batch and the writes under way) */
  private unwritten = 0
  /** the writes under way, one after the other */
  private writing: Promise<void> = Promise.resolve()
  /** bytes written since the last flush to the disk began, and that flush while under way */
  private unsynced = 0
  private syncing: Promise<void> | null = null
  private failure: Error | null = null

  constructor (file: FileHandle, partial: string, onCommit: (sha256: string, chunks: Uint8Array) => Promise<void>, length: number, chunks?: Uint8Array) {
    this.file = file
    this.partial = partial
    this.onCommit = onCommit
    this.length = length
    this.chunks = chunks ?? new ChunkHasher()
  }

  /**
   * Takes `chunk` (kept by reference until written: not to be reused).
   * Resolves at once unless MAX_CACHE_UNWRITTEN bytes wait for the disk; throws
   * when an earlier write failed.
   */
  async write (chunk: Uint8Array): Promise<void> {
    if (this.failure != null) throw this.failure
    this.hash.update(chunk)
    if (this.chunks instanceof ChunkHasher) this.chunks.update(chunk)
    this.written += chunk.length
    this.batch.push(chunk)
    this.batched += chunk.length
    this.unwritten += chunk.length
    if (this.batched >= CACHE_WRITE_BATCH) this.flush()
    // a disk slower than the origin slows the fetch rather than filling memory
    if (this.unwritten > MAX_CACHE_UNWRITTEN) await this.writing
    if (this.failure != null) throw this.failure
  }

  /** every byte of the announced length given */
  get complete (): boolean {
    return this.written === this.length
  }

  /** Keeps it when every byte of the announced length came, and no more. */
  async commit (): Promise<void> {
    if (this.ended) return
    this.ended = true
    if (this.written !== this.length) { await this.drop(); return }
    try {
      this.flush()
      await this.writing
      await this.syncing
      if (this.failure != null) throw this.failure
      await this.file.sync()
      await this.file.close()
      await this.onCommit(this.hash.digest('hex'), this.chunks instanceof ChunkHasher ? this.chunks.digest() : this.chunks)
    } catch (err) {
      // a file renamed before the index failed is an orphan the next start removes
      await this.drop()
      throw err
    }
  }

  async abort (): Promise<void> {
    if (this.ended) return
    this.ended = true
    await this.drop()
  }

  /** The batch gathered so far, written after the writes under way. */
  private flush (): void {
    if (this.batched === 0) return
    const batch = this.batch
    const bytes = this.batched
    this.batch = []
    this.batched = 0
    this.writing = this.writing.then(async () => {
      try {
        if (this.failure != null || (this.ended && this.written !== this.length)) return
        // libuv writes every buffer (IOV_MAX at a time, again after a short write) or fails
        const { bytesWritten } = await this.file.writev(batch)
        if (bytesWritten !== bytes) throw new Error(`the disk took ${bytesWritten} of ${bytes} bytes`)
        this.unsynced += bytes
        if (this.unsynced >= CACHE_SYNC_EVERY && this.syncing == null) this.syncBeside()
      } catch (err) {
        this.failure = err as Error
      } finally {
        this.unwritten -= bytes
      }
    })
  }

  /** Flushes what is written to the disk while the writes go on (one flush at a time; a failure fails the keeping). */
  private syncBeside (): void {
    this.unsynced = 0
    this.syncing = this.file.datasync().catch(err => { this.failure ??= err as Error }).finally(() => { this.syncing = null })
  }

  private async drop (): Promise<void> {
    // a write or flush under way finishes first: the file is not closed under it
    await this.writing
    await this.syncing
    await this.file.close().catch(() => {})
    await rm(this.partial, { force: true })
  }
}
