import { createHash, hash, randomBytes, type Hash } from 'node:crypto'
import { lstat, readdir, rm, type FileHandle } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import type { AbortOptions } from '@libp2p/interface'
import { KithError } from '../errors.ts'
import { syncDir } from '../peer/home.ts'
import { MAX_CHUNKS, PARTIAL_SUFFIX } from './constants.ts'
import { checkPath, chunkCount, chunkLength, type Manifest, type ManifestFile } from './manifest.ts'
import type { ChunkStore } from './chunk-store.ts'
import { BufferPool } from './buffer-pool.ts'
import { openChunk, verifySealed, type ChunkPosition, type SealKeys } from './seal.ts'
import { DestinationTaken, checkUnder, isPresent, makeRoot, openNoFollow, placeFile, prepareUnder, writeWhole } from './destination.ts'

/**
 * Assembling files from verified chunks.
 *
 * A file is written to a hidden sibling of its destination,
 * `.kith-<16 hex>.kith-partial`, chunk by chunk in whatever order they come
 * (each checked for length at its offset), hashed as a whole in order against
 * the manifest's sha256, fsynced, and only then renamed (or, when not
 * overwriting, hard-linked) into place and the folder fsynced. So a
 * destination is either absent (or its previous content) or complete and
 * verified; a kill leaves at most a partial file, which the next run for the
 * same file takes over (`partialKey`) or `removePartials` clears. The partial
 * sits in the destination's own folder so the final step is a rename within
 * one filesystem.
 *
 * Every folder on the way and the partial itself are checked paths
 * (destination.ts): a symbolic link planted there is refused with
 * DESTINATION_LINK, never followed.
 *
 * `ShareAssembly` does this for the files of a fetch while the fetch runs,
 * and records in the chunk store that each chunk it wrote is held in its file
 * (first the partial, then the placed file), so the fetched files themselves
 * serve the chunks to other friends: no second, sealed copy is written.
 * `assembleShare` and `assembleFile` do it from a store, in one pass.
 */

/** Plaintext of chunk `index`, whose manifest id is `id`; verified by the reader. */
export type ChunkReader = (index: number, id: string) => Promise<Uint8Array>

export interface AssembleOptions extends AbortOptions {
  /**
   * Replace an existing file at the destination. Without it, an existing
   * destination gives DESTINATION_EXISTS and is left untouched.
   *
   * @default false
   */
  overwrite?: boolean
}

const PARTIAL_NAME = new RegExp(`^\\.kith-[0-9a-f]{16}${PARTIAL_SUFFIX.replaceAll('.', '\\.')}$`)

function verifyFailed (path: string, why: string): KithError {
  return new KithError('FILE_VERIFY_FAILED', `${JSON.stringify(path)} did not verify (${why}); nothing was written. The share may be damaged; ask the owner to share it again`)
}

function exists (dest: string): KithError {
  return new KithError('DESTINATION_EXISTS', `${JSON.stringify(dest)} already exists; move it away or choose to overwrite`)
}

/** Writes all of `data` at `position` (a write may take less than it is given). */
export async function writeAll (handle: FileHandle, data: Uint8Array, position: number): Promise<void> {
  let at = 0
  while (at < data.length) {
    const { bytesWritten } = await handle.write(data, at, data.length - at, position + at)
    at += bytesWritten
  }
}

/**
 * Bytes a file being assembled is flushed to the disk after while its chunks
 * come (an fdatasync beside the writes), so the fsync before it is placed has
 * little left: the kernel would otherwise write a big fetch out only then,
 * all at once, while the fetch waits (a third of a second for 256 MiB here).
 */
export const SYNC_EVERY = 32 * 1024 * 1024

/**
 * Bytes of chunks written ahead of their files' hashed prefix that an
 * assembly keeps copies of for the whole-file hash (see `AheadCopies`).
 */
export const AHEAD_BYTES = 8 * 1024 * 1024

/** Chunk states in a FileAssembly */
const PENDING = 0
const WRITING = 1
const WRITTEN = 2

export interface FileAssemblyOptions {
  /** @see AssembleOptions.overwrite */
  overwrite?: boolean
  /**
   * Names the partial file (hashed into `.kith-<16 hex>.kith-partial`), so a
   * later run for the same file reuses the name and takes over what a kill
   * left behind (its chunks are written again; the store may hold some of
   * them in it). Random when absent.
   */
  partialKey?: string
  /**
   * The destination root `dest` lies under: every folder between them is
   * checked again (real folders, no links) right before the partial is
   * opened and before the file is placed. Without it, only the partial
   * itself is opened without following links.
   */
  root?: string
  /** @see SYNC_EVERY */
  syncEvery?: number
  /** where copies of chunks written ahead of the hashed prefix are kept; without it, they are read back */
  ahead?: AheadCopies
}

/**
 * Copies of chunks that were written ahead of their file's hashed prefix,
 * kept until the whole-file sha256 reaches them, so it need not read them
 * back from the partial: a fetch's GET streams deliver their chunks side by
 * side, so about half of a big file's chunks from one source come ahead of
 * the prefix. At most `max` bytes over every file of an assembly; a chunk
 * that would pass it is read back as before. The buffers are reused.
 */
export class AheadCopies {
  private readonly max: number
  private readonly pool: BufferPool
  private used = 0

  constructor (max: number, buffers: number) {
    this.max = max
    this.pool = new BufferPool(buffers)
  }

  /** bytes held in copies now */
  get held (): number {
    return this.used
  }

  /** A copy of `plaintext`, or undefined if it would pass the budget. */
  copy (plaintext: Uint8Array): Uint8Array | undefined {
    if (this.used + plaintext.length > this.max) return undefined
    const copy = this.pool.take(plaintext.length)
    copy.set(plaintext)
    this.used += copy.length
    return copy
  }

  /** Hands a copy back once hashed (or not needed any more). */
  give (copy: Uint8Array): void {
    this.used -= copy.length
    this.pool.give(copy)
  }
}

/**
 * One file being assembled as its chunks arrive, in any order. Each chunk's
 * plaintext (already authenticated by its AEAD tag at its position) has its
 * length checked and is written at its offset in the partial file; the
 * whole-file sha256 is computed in order as the written prefix grows, from
 * the chunk just written when it is the next one, else read back from the
 * partial (out-of-order arrivals only). `finish` checks that every chunk is in
 * and the hash matches, fsyncs, and places the file.
 */
export class FileAssembly {
  readonly dest: string
  readonly entry: ManifestFile
  private readonly chunkSize: number
  /** where the file is assembled until it is placed */
  readonly partial: string
  private readonly overwrite: boolean
  private readonly root: string | undefined
  private readonly syncEvery: number
  private readonly state: Uint8Array
  private written = 0
  private created = false
  private handle: Promise<FileHandle> | undefined
  private busy = 0
  /** made when the first chunk is hashed, dropped once checked: a share of many files holds one per file being written, not per file */
  private whole: Hash | undefined
  private hashed = 0
  private hashing: Promise<void> = Promise.resolve()
  private readBuffer: Buffer | undefined
  private readonly ahead: AheadCopies | undefined
  /** copies of chunks written ahead of the hashed prefix, by index (see AheadCopies) */
  private readonly kept = new Map<number, Uint8Array>()
  private finishing: Promise<void> | undefined
  /** bytes written since the last flush began (see SYNC_EVERY) */
  private unsynced = 0
  /** the flush under way beside the writes, one at a time */
  private syncing: Promise<void> | undefined
  /** what a flush beside the writes threw: the file is not placed (a later fsync may not report it again) */
  private syncFailure: unknown

  constructor (dest: string, entry: ManifestFile, chunkSize: number, options: FileAssemblyOptions = {}) {
    if (entry.chunks.length !== chunkCount(entry.size, chunkSize)) throw verifyFailed(entry.path, 'its chunk list does not match its size')
    this.dest = dest
    this.entry = entry
    this.chunkSize = chunkSize
    this.overwrite = options.overwrite ?? false
    this.root = options.root
    this.syncEvery = options.syncEvery ?? SYNC_EVERY
    this.ahead = options.ahead
    this.partial = partialPath(dest, options.partialKey)
    this.state = new Uint8Array(entry.chunks.length)
  }

  /** Every chunk is written. */
  get complete (): boolean {
    return this.written === this.entry.chunks.length
  }

  /** `finish` was called: the file is being (or was) checked and placed. */
  get placing (): boolean {
    return this.finishing !== undefined
  }

  /** Chunk `index` is neither written nor being written. */
  needs (index: number): boolean {
    return this.state[index] === PENDING
  }

  /** The partial's handle is open (see `release`). */
  get open (): boolean {
    return this.handle !== undefined
  }

  /**
   * Runs `task` with the partial's handle: opened on first use (the partial
   * created then, replacing one an earlier run with the same key left) and
   * kept open until `release`, `finish` or `abort`.
   */
  private async use<T> (task: (handle: FileHandle) => Promise<T>): Promise<T> {
    this.busy++
    try {
      if (this.handle === undefined) {
        const opening = this.openPartial()
        this.handle = opening
        opening.catch(() => { if (this.handle === opening) this.handle = undefined })
      }
      return await task(await this.handle)
    } finally {
      this.busy--
    }
  }

  private async openPartial (): Promise<FileHandle> {
    await this.checkFolders()
    if (this.created) return await openNoFollow(this.partial, 'existing')
    let handle: FileHandle
    try {
      handle = await openNoFollow(this.partial, 'create', this.entry.executable ? 0o755 : 0o644)
      this.created = true
      return handle
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    }
    // one a killed run left: kept, since the store may hold chunks in it; every chunk is written again
    handle = await openNoFollow(this.partial, 'existing')
    try {
      await handle.truncate(this.entry.size)
    } catch (err) {
      await handle.close()
      throw err
    }
    this.created = true
    return handle
  }

  /** Every folder between the root and the file is still a real folder (see FileAssemblyOptions.root). */
  private async checkFolders (): Promise<void> {
    if (this.root !== undefined) await checkFolder(this.root, dirname(this.dest))
  }

  /** Closes the partial's handle if nothing is using it; the next use opens it again. */
  async release (): Promise<void> {
    this.readBuffer = undefined
    await this.syncing
    const handle = this.handle
    if (handle === undefined || this.busy > 0) return
    this.handle = undefined
    await (await handle).close()
  }

  /**
   * Writes chunk `index` (its plaintext); a chunk written before is ignored.
   * Throws FILE_VERIFY_FAILED if its length is wrong, and whatever the disk
   * throws (the chunk then counts as not written).
   */
  async write (index: number, plaintext: Uint8Array): Promise<void> {
    if (!Number.isInteger(index) || index < 0 || index >= this.state.length) {
      throw new KithError('BAD_REQUEST', `${JSON.stringify(this.entry.path)} has no chunk ${index}`)
    }
    if (this.state[index] !== PENDING) return
    const want = chunkLength(this.entry.size, this.chunkSize, index)
    if (plaintext.length !== want) throw verifyFailed(this.entry.path, `chunk ${index} is ${plaintext.length} bytes, not ${want}`)
    this.state[index] = WRITING
    try {
      await this.use(async handle => { await writeAll(handle, plaintext, index * this.chunkSize) })
    } catch (err) {
      this.state[index] = PENDING
      throw err
    }
    this.state[index] = WRITTEN
    this.written++
    this.unsynced += plaintext.length
    if (this.unsynced >= this.syncEvery && this.syncing === undefined) this.syncBeside()
    await this.advance(index, plaintext)
  }

  /** Flushes what is written to the disk while the writes go on (see SYNC_EVERY). */
  private syncBeside (): void {
    this.unsynced = 0
    this.syncing = this.use(async handle => { await handle.datasync() })
      .catch((err: unknown) => { this.syncFailure ??= err })
      .finally(() => { this.syncing = undefined })
  }

  /**
   * Hashes the written prefix as far as it reaches; one run at a time, in
   * order. Chunk `index`, written ahead of the prefix, is kept as a copy if
   * the budget allows (`ahead`), else read back when the prefix reaches it.
   */
  private async advance (index: number, plaintext: Uint8Array): Promise<void> {
    this.hashing = this.hashing.then(async () => {
      while (this.hashed < this.state.length && this.state[this.hashed] === WRITTEN) {
        const at = this.hashed
        this.whole ??= createHash('sha256')
        const kept = this.kept.get(at)
        this.whole.update(at === index ? plaintext : kept ?? await this.readBack(at))
        if (kept !== undefined) {
          this.kept.delete(at)
          this.ahead!.give(kept)
        }
        this.hashed++
      }
      if (this.hashed < index) {
        const copy = this.ahead?.copy(plaintext)
        if (copy !== undefined) this.kept.set(index, copy)
      }
    })
    await this.hashing
  }

  /** Gives back the copies kept for the hash: the file is given up, or it closes with the assembly. */
  private dropKept (): void {
    for (const copy of this.kept.values()) this.ahead!.give(copy)
    this.kept.clear()
  }

  /** Reads a written chunk back for the hash, into one buffer reused for every chunk (advance hashes one at a time). */
  private async readBack (index: number): Promise<Uint8Array> {
    const length = chunkLength(this.entry.size, this.chunkSize, index)
    this.readBuffer ??= Buffer.allocUnsafe(this.chunkSize)
    const bytes = this.readBuffer.subarray(0, length)
    await this.use(async handle => {
      let at = 0
      while (at < length) {
        const { bytesRead } = await handle.read(bytes, at, length - at, index * this.chunkSize + at)
        if (bytesRead === 0) throw verifyFailed(this.entry.path, 'its partial file was cut short while it was assembled')
        at += bytesRead
      }
    })
    return bytes
  }

  /**
   * Checks the whole file, then moves it into place: renamed over the
   * destination when overwriting, else hard-linked (DESTINATION_EXISTS if
   * something is there). Idempotent. On failure the partial is removed.
   */
  async finish (): Promise<void> {
    this.finishing ??= this.place()
    await this.finishing
  }

  private async place (): Promise<void> {
    try {
      if (!this.complete) throw verifyFailed(this.entry.path, `${this.entry.chunks.length - this.written} of its chunks never arrived`)
      await this.hashing
      const whole = this.whole ?? createHash('sha256')
      this.whole = undefined
      if (this.hashed !== this.state.length || whole.digest('hex') !== this.entry.sha256) {
        throw verifyFailed(this.entry.path, 'the whole-file sha256 does not match the manifest')
      }
      await this.syncing
      if (this.syncFailure !== undefined) throw this.syncFailure
      await this.use(async handle => { await handle.sync() }) // an empty file is created here
      await this.release()
      await this.checkFolders()
      await placeFile(this.partial, this.dest, this.overwrite)
    } catch (err) {
      // a verified file whose destination is taken waits in its partial for a resume; otherwise it is gone
      if (err instanceof DestinationTaken) await this.release()
      else await this.abort()
      throw err
    }
    await syncFolder(dirname(this.dest))
  }

  /** Closes and removes the partial (never the destination). */
  async abort (): Promise<void> {
    this.readBuffer = undefined
    await this.hashing.catch(() => {})
    this.dropKept()
    await this.syncing
    const handle = this.handle
    this.handle = undefined
    if (handle !== undefined) await (await handle).close().catch(() => {})
    await rm(this.partial, { force: true })
  }
}

/**
 * Runs of a task per key, shared: a caller waits for a run that began after
 * its call (so the run sees whatever the caller did before), and callers that
 * ask while one run is under way share the one queued after it. Many small
 * files of one folder in flight at once so cost one run, not one each.
 */
class SharedRuns {
  private readonly runs = new Map<string, { running: Promise<void> | undefined, queued: Promise<void> | undefined }>()

  async run (key: string, task: () => Promise<void>): Promise<void> {
    let state = this.runs.get(key)
    if (state === undefined) this.runs.set(key, state = { running: undefined, queued: undefined })
    const runs = state
    const start = async (): Promise<void> => {
      const run = task()
      runs.running = run
      try {
        await run
      } finally {
        if (runs.running === run) runs.running = undefined
        if (runs.running === undefined && runs.queued === undefined && this.runs.get(key) === runs) this.runs.delete(key)
      }
    }
    if (runs.queued !== undefined) return await runs.queued
    if (runs.running === undefined) return await start()
    const next = async (): Promise<void> => {
      runs.queued = undefined
      await start()
    }
    const queued = runs.running.then(next, next)
    runs.queued = queued
    await queued
  }
}

const folderSyncs = new SharedRuns()
const folderChecks = new SharedRuns()

/**
 * fsyncs a folder after a file was placed in it, sharing syncs: files of one
 * folder placed at about the same time (many small files) wait for one sync
 * that starts after their renames, not for one each. A rename is durable once
 * a sync of its folder that began after it has ended, which is what each
 * caller waits for.
 */
export async function syncFolder (dir: string): Promise<void> {
  await folderSyncs.run(dir, async () => { await syncDir(dir) })
}

/**
 * `checkUnder(root, folder)`, shared like `syncFolder`: a check that began
 * after the call, so nothing swapped in before the caller asked goes unseen.
 */
async function checkFolder (root: string, folder: string): Promise<void> {
  await folderChecks.run(`${root}\0${folder}`, async () => { await checkUnder(root, folder) })
}

/** The partial file a FileAssembly for `dest` writes: named by `partialKey`, random without one. */
export function partialPath (dest: string, partialKey?: string): string {
  const name = partialKey === undefined
    ? randomBytes(8).toString('hex')
    : hash('sha256', partialKey).slice(0, 16)
  return join(dirname(dest), `.kith-${name}${PARTIAL_SUFFIX}`)
}

/**
 * Writes one file from its chunks to `dest`, verified, reading them in order.
 * Throws FILE_VERIFY_FAILED if a chunk has the wrong length or the whole file
 * the wrong hash, DESTINATION_EXISTS, or whatever the reader throws (such as
 * CHUNK_NOT_FOUND); in every case no destination file is created or changed.
 */
export async function assembleFile (dest: string, entry: ManifestFile, chunkSize: number, read: ChunkReader, options: AssembleOptions & Pick<FileAssemblyOptions, 'root'> = {}): Promise<void> {
  const file = new FileAssembly(dest, entry, chunkSize, options)
  if (!(options.overwrite ?? false) && await isPresent(dest)) throw exists(dest)
  try {
    for (const [index, id] of entry.chunks.entries()) {
      options.signal?.throwIfAborted()
      await file.write(index, await read(index, id))
    }
    options.signal?.throwIfAborted()
  } catch (err) {
    await file.abort()
    throw err
  }
  await file.finish()
}

/**
 * A reader for the file at `manifest.entries[file]` that takes sealed chunks
 * from a store (hash-checked there) and opens them at their position: the
 * share, that entry's whole-file sha256, and the chunk's index. Reading fails
 * with BAD_REQUEST if that entry is not a file.
 */
export function storeReader (store: Pick<ChunkStore, 'get'>, keys: SealKeys, manifest: Pick<Manifest, 'shareId' | 'entries' | 'packs'>, file: number): ChunkReader {
  const entry = manifest.entries[file]
  const fileHash = entry?.type === 'file' ? entry.sha256 : undefined
  return async (index, id) => {
    if (fileHash === undefined) throw new KithError('BAD_REQUEST', `entry ${file} of the manifest is not a file, so it has no chunks to read`)
    if (entry?.type === 'file' && entry.pack !== undefined) return cutFromPack(keys, manifest, entry, await store.get(id))
    return openChunk(keys, { shareId: manifest.shareId, fileHash, index }, await store.get(id))
  }
}

/**
 * A packed file's bytes, cut from its pack (`sealed`, its id already
 * checked): opened at the pack's position, which authenticates every byte of
 * it, and its length checked against the manifest before anything is cut.
 * The file's own sha256 is checked when it is placed. With `into`, the
 * plaintext is a buffer of that pool, for the caller to give back.
 */
export function openPack (keys: SealKeys, manifest: Pick<Manifest, 'shareId' | 'packs'>, index: number, sealed: Uint8Array, into?: BufferPool): Uint8Array {
  const pack = manifest.packs[index]
  if (pack === undefined) throw new KithError('BAD_REQUEST', `the manifest has no pack ${index}`)
  const plaintext = openChunk(keys, { shareId: manifest.shareId, fileHash: pack.hash, index: 0 }, sealed, into)
  if (plaintext.length !== pack.size) {
    into?.give(plaintext)
    throw new KithError('FILE_VERIFY_FAILED', `pack ${index} of the share is ${plaintext.length} bytes, not the ${pack.size} its files add up to; nothing was written from it. The share may be damaged; ask the owner to share it again`)
  }
  return plaintext
}

function cutFromPack (keys: SealKeys, manifest: Pick<Manifest, 'shareId' | 'packs'>, entry: ManifestFile, sealed: Uint8Array): Uint8Array {
  const plaintext = openPack(keys, manifest, entry.pack!.index, sealed)
  return plaintext.subarray(entry.pack!.offset, entry.pack!.offset + entry.size)
}

/**
 * `path` (a manifest path, checked) under `root`, its folders made and
 * checked on the way: real folders, no links (destination.ts).
 */
async function prepare (root: string, path: string, isDir: boolean): Promise<string> {
  checkPath(path)
  return await prepareUnder(root, path.split('/'), { dir: isDir })
}

export interface AssembleShareInit extends AssembleOptions {
  store: Pick<ChunkStore, 'get'>
  keys: SealKeys
  manifest: Manifest
  /** The folder the share's entries are written into; created if missing. */
  root: string
}

/**
 * Writes every entry of a manifest under `root`, file by file. Each file is
 * all-or-nothing; if one fails, the error is thrown and the files before it
 * stay in place, complete and verified.
 */
export async function assembleShare (init: AssembleShareInit): Promise<void> {
  const root = resolve(init.root)
  await makeRoot(root)
  for (const [file, entry] of init.manifest.entries.entries()) {
    init.signal?.throwIfAborted()
    const target = await prepare(root, entry.path, entry.type === 'dir')
    if (entry.type === 'dir') continue
    await assembleFile(target, entry, init.manifest.chunkSize, storeReader(init.store, init.keys, init.manifest, file), { ...init, root })
  }
}

/** Removes partial files a killed assembly left in `dir` (not recursive). */
export async function removePartials (dir: string): Promise<number> {
  let removed = 0
  for (const name of await readdir(dir)) {
    if (!PARTIAL_NAME.test(name)) continue
    await rm(join(dir, name), { force: true })
    removed++
  }
  return removed
}

/**
 * Files of one pack written and placed at once: enough to keep the disk and
 * libuv's threads busy with their writes, fsyncs and renames, few enough that
 * a pack of hundreds of files holds few descriptors.
 */
const PACK_WRITERS = 16

/**
 * Packs whose files are written at once. A fetch of many small files is
 * held by the disk, not the network: chunks arrive faster than their files
 * are placed, and every pack let in holds its plaintext and its sealed copy
 * (about 2 MiB), its files' paths and requests, until its last file is
 * placed. Two keep PACK_WRITERS * 2 writes queued for libuv's threads
 * (UV_THREADPOOL_SIZE, 16), the next pack's while one ends on its folder
 * fsyncs; the rest wait as sealed chunks.
 */
const PACKS_AT_ONCE = 2

/** Runs `task` on every item, PACK_WRITERS at a time; the first failure is thrown once all have ended. */
async function inTurn<T> (items: T[], task: (item: T) => Promise<void>): Promise<void> {
  let next = 0
  const results = await Promise.allSettled(Array.from({ length: Math.min(PACK_WRITERS, items.length) }, async () => {
    while (next < items.length) await task(items[next++]!)
  }))
  const failed = results.find(r => r.status === 'rejected')
  if (failed !== undefined) throw failed.reason
}

/** Partials a ShareAssembly keeps open at once; files written out of order past this are reopened. */
export const MAX_OPEN_PARTIALS = 32

/**
 * The files a ShareAssembly writes, numbered from 0: each a file entry of
 * the manifest and where it goes, asked for when needed, so a fetch of many
 * files holds no object per file (`targetList` makes one of a list).
 */
export interface ShareTargets {
  readonly count: number
  /** index of target `t`'s file entry in the manifest */
  file: (t: number) => number
  /** where target `t` goes; its folder must exist. Asked once its first chunk comes (so it may be made then) */
  dest: (t: number) => string
}

/** A file entry of the manifest (its index) and where it goes. */
export interface ShareTarget {
  file: number
  dest: string
}

/** `ShareTargets` of a list. */
export function targetList (list: ShareTarget[]): ShareTargets {
  return { count: list.length, file: t => list[t]!.file, dest: t => list[t]!.dest }
}

export interface ShareAssemblyInit {
  /**
   * Where chunks held before (a resumed fetch) are read from, and where the
   * chunks written are recorded as held in their files.
   */
  store: Pick<ChunkStore, 'get' | 'has' | 'put' | 'putInFile' | 'moveInFile'>
  keys: SealKeys
  /** peer id of the share's owner (recorded with chunks held in files) */
  owner: string
  manifest: Pick<Manifest, 'shareId' | 'chunkSize' | 'entries' | 'packs'>
  targets: ShareTargets
  /** @see AssembleOptions.overwrite */
  overwrite?: boolean
  /**
   * Names the partial files (with each target's entry index), so a run after
   * a kill takes over what the killed one left instead of leaving it behind.
   */
  partialKey?: string
  /**
   * The destination root every target lies under (prepared with
   * `prepareUnder`); the folders between are checked again before each
   * partial is opened and each file placed. @see FileAssemblyOptions.root
   */
  root?: string
  /**
   * A full garbage collection (the daemon's: V8's, `--expose-gc`), run every
   * `collectEvery` files placed. Placing a file leaves its paths,
   * requests and promises behind, which outlive the scavenges while its
   * writes and fsyncs are under way, so they reach V8's old generation, and
   * the daemon lets that double before it collects it
   * (`--heap-growing-percent=100`, daemon-heap.ts): a fetch of 100,000 small
   * files grew the fetcher's heap by its garbage.
   */
  collect?: () => void
  /** @default COLLECT_EVERY_FILES */
  collectEvery?: number
}

/** Files placed between two `ShareAssemblyInit.collect` calls. */
export const COLLECT_EVERY_FILES = 5_000

/** The partial a ShareAssembly with this `partialKey` writes for manifest entry `file` at `dest`. */
export function sharePartialPath (dest: string, partialKey: string, file: number): string {
  return partialPath(dest, `${partialKey}\0${file}`)
}

/**
 * Where a chunk stands: target `t`'s chunk `index`, as one number
 * (t * MAX_CHUNKS + index; a file has fewer than MAX_CHUNKS chunks), so a
 * share of many small files keeps a number per chunk, not an object.
 */
type Place = number

interface Spot {
  target: number
  file: FileAssembly
  index: number
}

/**
 * Files of a share assembled while their chunks are fetched: the fetcher
 * hands each verified sealed chunk to `accept`, which opens it at its
 * position (a chunk id can stand at several places: identical files) and
 * writes it into every file that wants it. A file is checked and placed as
 * soon as its last chunk is in, so the files of a folder appear one by one
 * and no second pass over the data is needed. Chunks the store held before
 * the fetch began are read from it by `fill`.
 */
export class ShareAssembly {
  private readonly init: ShareAssemblyInit
  /** per target, its assembly while it is written: made at its first chunk, dropped once it is placed */
  private readonly files: Array<FileAssembly | undefined>
  /** per target, 1 once placed (its chunks' records moved with it) */
  private readonly placed: Uint8Array
  private readonly places = new Map<string, Place | Place[]>()
  /** targets a pack's copy is being written to: another copy of the pack (from another source, or the store) leaves them alone */
  private readonly packing = new Set<number>()
  private readonly placing = new Set<Promise<void>>()
  private readonly active = new Set<Promise<void>>()
  /** files with an open partial, least recently written first */
  private readonly recent = new Set<FileAssembly>()
  /** per file, the chunk writes (and their store records) under way */
  private readonly recording = new Map<FileAssembly, Set<Promise<void>>>()
  /** plaintext buffers, reused from chunk to chunk: about one per chunk being written at once */
  private readonly plaintexts = new BufferPool(8)
  /** copies of chunks written ahead of their file's hashed prefix, for the whole-file hash */
  private readonly ahead = new AheadCopies(AHEAD_BYTES, 8)
  /** packs being written (at most PACKS_AT_ONCE), and the ones waiting to start */
  private packsWriting = 0
  private readonly packsWaiting: Array<() => void> = []
  /** files placed since the last `init.collect` */
  private placedSinceCollect = 0
  private failure: unknown
  private closed = false

  constructor (init: ShareAssemblyInit) {
    this.init = init
    const { manifest, targets } = init
    this.files = new Array(targets.count)
    this.placed = new Uint8Array(targets.count)
    for (let t = 0; t < targets.count; t++) {
      const entry = manifest.entries[targets.file(t)]
      if (entry?.type !== 'file') throw new KithError('BAD_REQUEST', `entry ${targets.file(t)} of the manifest is not a file`)
      entry.chunks.forEach((id, index) => {
        const place = t * MAX_CHUNKS + index
        const list = this.places.get(id)
        if (list === undefined) this.places.set(id, place)
        else if (typeof list === 'number') this.places.set(id, [list, place])
        else list.push(place)
      })
    }
  }

  /** Target `t`'s assembly, made on first use. */
  private fileOf (t: number): FileAssembly {
    let file = this.files[t]
    if (file !== undefined) return file
    const { init } = this
    const entry = init.targets.file(t)
    file = new FileAssembly(init.targets.dest(t), init.manifest.entries[entry] as ManifestFile, init.manifest.chunkSize, {
      overwrite: init.overwrite,
      ...(init.root !== undefined ? { root: init.root } : {}),
      ...(init.partialKey !== undefined ? { partialKey: `${init.partialKey}\0${entry}` } : {}),
      ahead: this.ahead
    })
    this.files[t] = file
    return file
  }

  /** The places of `id` still waiting for it: neither placed, written nor being written. */
  private waiting (id: string): Place[] {
    const list = this.places.get(id)
    if (list === undefined) return []
    return (typeof list === 'number' ? [list] : list).filter(place => {
      const t = Math.floor(place / MAX_CHUNKS)
      return this.placed[t] === 0 && !this.packing.has(t) && (this.files[t]?.needs(place % MAX_CHUNKS) ?? true)
    })
  }

  /** Ids of every chunk still wanted, each once. */
  wanted (): string[] {
    const ids: string[] = []
    for (const id of this.places.keys()) if (this.waiting(id).length > 0) ids.push(id)
    return ids
  }

  /**
   * A chunk as received from a source: checked against its id (throwing
   * CHUNK_TOO_LARGE or CHUNK_HASH_MISMATCH, as `ChunkStore.put` does, so the
   * fetcher blames the source), then `accept`ed. For `fetchChunks`' store:
   * nothing refers to `sealed` once it resolves (the fetcher reuses it).
   */
  async put (id: string, sealed: Uint8Array): Promise<boolean> {
    verifySealed(id, sealed)
    await this.accept(id, sealed)
    return true
  }

  /**
   * Takes a sealed chunk (its id already checked against its bytes) and writes
   * it wherever the share wants it, then records it in the store as held in
   * the first file it went to; a chunk not wanted, or wanted no more, is
   * ignored. Throws CHUNK_DECRYPT_FAILED if it does not open at its place,
   * FILE_VERIFY_FAILED if a file it completes does not verify, or the disk's
   * error. Once a call fails, every later one throws the same error.
   */
  async accept (id: string, sealed: Uint8Array): Promise<void> {
    const task = this.write(id, sealed)
    this.active.add(task)
    try {
      await task
    } catch (err) {
      this.failure ??= err
      throw err
    } finally {
      this.active.delete(task)
    }
  }

  private async write (id: string, sealed: Uint8Array): Promise<void> {
    if (this.failure !== undefined) throw this.failure
    if (this.closed) throw new KithError('FETCH_ABORTED', 'the assembly was stopped')
    const places = this.waiting(id)
    if (places.length === 0) return
    const targets = places.map(place => Math.floor(place / MAX_CHUNKS))
    // a pack's files are written as a batch, without an assembly each
    if ((this.init.manifest.entries[this.init.targets.file(targets[0]!)] as ManifestFile).pack !== undefined) {
      await this.writePack(id, sealed, targets)
      return
    }
    const list: Spot[] = places.map((place, i) => ({ target: targets[i]!, file: this.fileOf(targets[i]!), index: place % MAX_CHUNKS }))
    const first = list[0]!
    const position = { shareId: this.init.manifest.shareId, fileHash: first.file.entry.sha256, index: first.index }
    // a reused buffer: what is written and hashed is done with when write() resolves
    const plaintext = openChunk(this.init.keys, position, sealed, this.plaintexts)
    /** a file of this one chunk (a small file): placed once written, its chunk recorded only there */
    let whole: Spot | undefined
    try {
      for (const [i, spot] of list.entries()) {
        const { file, index } = spot
        if (i === 0 && file.entry.chunks.length === 1) {
          await file.write(index, plaintext)
          whole = spot
          continue
        }
        // placing the file waits for this: its chunks' records move with it
        const done = Promise.withResolvers<void>()
        const pending = this.recording.get(file) ?? new Set()
        this.recording.set(file, pending.add(done.promise))
        try {
          await file.write(index, plaintext)
          if (i === 0) {
            await this.init.store.putInFile(id, sealed, { path: file.partial, offset: index * this.init.manifest.chunkSize, position, owner: this.init.owner })
          }
        } finally {
          done.resolve()
          pending.delete(done.promise)
        }
        if (file.complete) this.place(spot.target, file)
        else this.touch(file)
      }
    } finally {
      this.plaintexts.give(plaintext)
    }
    if (whole !== undefined) await this.placeWhole(whole.target, whole.file, id, sealed, position)
  }

  /**
   * Writes the files a pack holds (see manifest.ts) that are still wanted.
   * The pack is opened (its AEAD tag checks every byte) and its length
   * checked before any file is cut from it, then kept sealed in the store
   * (one row for all its files; a resume after a kill cuts the files not yet
   * placed from it instead of fetching it again, and friends are served from
   * it). Then its files, as a batch: each hashed against its own sha256
   * before anything of it is written; the folders checked once; each
   * written whole to its partial and fsynced (`writeWhole`), PACK_WRITERS
   * at a time; the folders checked again; each placed; each folder fsynced
   * once. So a destination file is absent or whole and verified across a
   * kill, and a pack of hundreds of files costs a few folder checks, not
   * two per file. A partial this run made and did not place is removed on
   * failure (the pack in the store has its bytes), except behind a taken
   * destination: there the verified file waits for a resume.
   */
  private async writePack (id: string, sealed: Uint8Array, targets: number[]): Promise<void> {
    // claimed before anything is awaited: a second copy arriving meanwhile finds nothing to write
    for (const target of targets) this.packing.add(target)
    const { init } = this
    let plaintext: Uint8Array | undefined
    const written = new Set<string>()
    let taken = false
    await this.packTurn()
    try {
      if (this.failure !== undefined) throw this.failure
      const bytes = plaintext = openPack(init.keys, init.manifest, (init.manifest.entries[init.targets.file(targets[0]!)] as ManifestFile).pack!.index, sealed, this.plaintexts)
      const files = targets.map(target => {
        const file = init.targets.file(target)
        const entry = init.manifest.entries[file] as ManifestFile
        const { offset } = entry.pack!
        const data = bytes.subarray(offset, offset + entry.size)
        if (hash('sha256', data) !== entry.sha256) throw verifyFailed(entry.path, 'the whole-file sha256 does not match the manifest')
        const dest = init.targets.dest(target)
        return { target, entry, data, dest, partial: partialPath(dest, init.partialKey !== undefined ? `${init.partialKey}\0${file}` : undefined) }
      })
      // checked against its id already (`put`, or the store it was read from), and not reused until this
      // resolves: written as it is, not copied and hashed again (a MiB of garbage and a sha256 a pack)
      await init.store.put(id, sealed, { verified: true })
      const folders = [...new Set(files.map(f => dirname(f.dest)))]
      const checkAll = async (): Promise<void> => {
        if (init.root !== undefined) await Promise.all(folders.map(async folder => { await checkFolder(init.root!, folder) }))
      }
      await checkAll()
      await inTurn(files, async f => {
        await writeWhole(f.partial, f.data, f.entry.executable ? 0o755 : 0o644)
        // (one that failed midway is left as it is, like a killed run's: taken over next time; never a link, which it refused)
        written.add(f.partial)
      })
      await checkAll()
      await inTurn(files, async f => {
        try {
          await placeFile(f.partial, f.dest, init.overwrite ?? false)
        } catch (err) {
          if (err instanceof DestinationTaken) taken = true
          throw err
        }
        written.delete(f.partial)
        // its place goes with the others' below: one pass over the pack's places, not one per file
        this.markPlaced(f.target)
      })
      await Promise.all(folders.map(syncFolder))
    } catch (err) {
      // the verified files behind a taken destination wait in their partials (a resume places them)
      if (!taken) await Promise.all([...written].map(async partial => { await rm(partial, { force: true }) }))
      throw err
    } finally {
      // (a failure fails the whole assembly: accept keeps it)
      for (const target of targets) this.packing.delete(target)
      this.prune(id)
      if (plaintext !== undefined) this.plaintexts.give(plaintext)
      this.packEnded()
    }
  }

  /** Waits until fewer than PACKS_AT_ONCE packs are being written; `packEnded` hands the turn on. */
  private async packTurn (): Promise<void> {
    if (this.packsWriting < PACKS_AT_ONCE) {
      this.packsWriting++
      return
    }
    await new Promise<void>(resolve => { this.packsWaiting.push(resolve) })
  }

  private packEnded (): void {
    const next = this.packsWaiting.shift()
    if (next !== undefined) next()
    else this.packsWriting--
  }

  /**
   * Places a file of one chunk, just written, and then records the chunk as
   * held in it: one row per small file, not one in its partial and then its
   * move (and the file is placed by the request that brought it, so files
   * being placed are as many as the chunks a fetch stores at once). A kill
   * before the row costs a fetch of that chunk again (the partial is taken
   * over) or, once placed, its row (the placed file is not offered to other
   * friends). A file whose destination is taken waits in its partial,
   * recorded there, so a resume reads it back instead of fetching it.
   */
  private async placeWhole (target: number, file: FileAssembly, id: string, sealed: Uint8Array, position: ChunkPosition): Promise<void> {
    const ref = { offset: 0, position, owner: this.init.owner }
    try {
      await file.finish()
    } catch (err) {
      if (err instanceof DestinationTaken) await this.init.store.putInFile(id, sealed, { ...ref, path: file.partial })
      throw err
    }
    // placed and complete: its size and mtime from now on say whether it was written to since
    const info = await lstat(file.dest)
    await this.init.store.putInFile(id, sealed, { ...ref, path: file.dest, ...(info.isFile() ? { seen: { size: info.size, mtimeMs: info.mtimeMs } } : {}) })
    this.forget(target, file)
  }

  /**
   * A placed file is wanted no more: its places and its assembly go, so a
   * share of many files keeps state only for the files being written.
   */
  private forget (target: number, file: FileAssembly): void {
    this.markPlaced(target)
    this.files[target] = undefined
    this.recent.delete(file)
    for (const id of file.entry.chunks) this.prune(id)
  }

  /** Target `t` is placed; every COLLECT_EVERY_FILES of them, `init.collect` runs. */
  private markPlaced (t: number): void {
    this.placed[t] = 1
    if (this.init.collect === undefined || ++this.placedSinceCollect < (this.init.collectEvery ?? COLLECT_EVERY_FILES)) return
    this.placedSinceCollect = 0
    this.init.collect()
  }

  /** Drops the places of placed files from `id`'s list. */
  private prune (id: string): void {
    const list = this.places.get(id)
    if (list === undefined) return
    const rest = (typeof list === 'number' ? [list] : list).filter(place => this.placed[Math.floor(place / MAX_CHUNKS)] === 0)
    if (rest.length === 0) this.places.delete(id)
    else this.places.set(id, rest.length === 1 ? rest[0]! : rest)
  }

  /** Keeps at most MAX_OPEN_PARTIALS partials open, closing the least recently written. */
  private touch (file: FileAssembly): void {
    this.recent.delete(file)
    this.recent.add(file)
    for (const old of this.recent) {
      if (this.recent.size <= MAX_OPEN_PARTIALS) break
      this.recent.delete(old)
      old.release().catch((err: unknown) => { this.failure ??= err })
    }
  }

  /** Checks and places a complete file without holding up the chunk that completed it. */
  private place (target: number, file: FileAssembly): void {
    this.recent.delete(file)
    const placing = file.finish().then(async () => {
      await Promise.all(this.recording.get(file) ?? [])
      this.recording.delete(file)
      await this.init.store.moveInFile(file.entry.chunks, file.partial, file.dest)
      this.forget(target, file)
    })
    this.placing.add(placing)
    placing.then(() => this.placing.delete(placing), (err: unknown) => {
      this.placing.delete(placing)
      this.failure ??= err
    })
  }

  /**
   * Writes the chunks the store holds that are still wanted (a resumed
   * fetch's). With `strict`, a wanted chunk the store lacks is an error
   * (CHUNK_NOT_FOUND, or CHUNK_CORRUPT if damaged on disk); without, it is
   * left for the fetch (`wanted` still lists it). `held`: the ids the caller
   * just found in the store, so the store is not asked again for each (one
   * gone since is left for the fetch, as without it).
   */
  async fill (options: AbortOptions & { strict?: boolean, held?: ReadonlySet<string> } = {}): Promise<void> {
    for (const id of this.wanted()) {
      options.signal?.throwIfAborted()
      if (this.closed) return
      if (!(options.strict ?? false) && !(options.held?.has(id) ?? await this.init.store.has(id))) continue
      let sealed: Uint8Array
      try {
        sealed = await this.init.store.get(id)
      } catch (err) {
        // gone, or damaged on disk (the store then drops it): left for the fetch
        const code = (err as KithError).code
        if (!(options.strict ?? false) && (code === 'CHUNK_NOT_FOUND' || code === 'CHUNK_CORRUPT')) continue
        throw err
      }
      await this.accept(id, sealed)
    }
  }

  /**
   * Writes what the fetch left to the store (strictly: every chunk must be
   * there by now), then waits until every file is checked and placed. Throws
   * the first error any file met.
   */
  async finish (options: AbortOptions = {}): Promise<void> {
    await this.fill({ ...options, strict: true })
    for (let t = 0; t < this.files.length; t++) {
      if (this.placed[t] === 1) continue
      const file = this.fileOf(t)
      if (file.complete && !file.placing) this.place(t, file)
    }
    for (let t = 0; t < this.files.length; t++) {
      // a file with no chunks (empty) is complete from the start; the rest were placed above
      if (this.placed[t] === 0) await this.fileOf(t).finish()
    }
    await Promise.allSettled([...this.placing])
    if (this.failure !== undefined) throw this.failure
  }

  /**
   * Stops but keeps the partials (a paused or failed fetch): later `accept`s
   * throw, writes in flight are awaited, and the partials are closed. The
   * store holds the chunks written so far in them, and the next assembly with
   * the same `partialKey` takes them over.
   */
  async close (): Promise<void> {
    this.closed = true
    await this.settle()
    await Promise.all(this.files.map(async file => { await file?.release() }))
  }

  /** Waits until no write and no placing is under way (a write that completes a file starts a placing). */
  private async settle (): Promise<void> {
    while (this.active.size > 0 || this.placing.size > 0) {
      await Promise.allSettled([...this.active, ...this.placing])
    }
  }

  /**
   * Stops (a cancelled fetch): later `accept`s throw, writes in flight are
   * awaited, and every partial is removed. Files already placed stay.
   */
  async abort (): Promise<void> {
    this.closed = true
    await this.settle()
    // every file not placed, also one this run never wrote to: a killed run may have left its partial
    for (let t = 0; t < this.files.length; t += MAX_OPEN_PARTIALS) {
      const batch: Array<Promise<void>> = []
      for (let at = t; at < Math.min(t + MAX_OPEN_PARTIALS, this.files.length); at++) {
        if (this.placed[at] === 0) batch.push(this.fileOf(at).abort())
      }
      await Promise.all(batch)
    }
  }
}
