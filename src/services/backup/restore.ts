/**
 * `kith backup restore`: a snapshot, or a path in it, back into a folder
 * (docs/backup.md, Run and restore).
 *
 * The snapshot blob is fetched and its signature, owner and seq checked
 * against the index; every tree and chunk fetched after it is checked
 * against the id its parent names (the host's sealed id, then the AEAD, then
 * the keyed id over the plaintext), so a host can neither alter nor swap
 * anything. Folders are made first; each file is written to a partial
 * beside its place, fsynced, given its mode and mtime, then moved into place
 * (destination.ts: no link is ever followed under the folder); links are made
 * as links; folders get their modes and mtimes last, deepest first (a
 * read-only folder is filled before it is closed).
 *
 * Resuming: a file already in place with its snapshot size and mtime was
 * restored before and is skipped; a leftover partial is started again. Any
 * other file in the way is left alone and named (DESTINATION_EXISTS).
 */
import { createHash } from 'node:crypto'
import type { BigIntStats } from 'node:fs'
import type { FileHandle } from 'node:fs/promises'
import { lstat, lutimes, readlink, rm, symlink, utimes, chmod } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { KithError } from '../../errors.ts'
import { PARTIAL_SUFFIX } from '../../transfer/constants.ts'
import { checkUnder, makeRoot, openNoFollow, placeFile, prepareUnder } from '../../transfer/destination.ts'
import { ByteBudget } from './budget.ts'
import { BlobGetter } from './getter.ts'
import { fetchBlob, type BackupParts } from './parts.ts'
import { decodeSnapshot, type Snapshot } from './snapshot.ts'
import { decodeTree, MAX_TREE_BYTES, type TreeEntry } from './tree.ts'
import type { SnapshotRecord } from './owner-index.ts'

/**
 * Files written at once: small files' gets share requests. With 4, a
 * restore of the bench's mixed tree sent 1.02 blobs per get-many, 1,000
 * requests for 256 MiB, each costing both ends some 2-5 ms of CPU; the
 * AHEAD_BYTES budget, not this, bounds the memory.
 */
const FILES_AT_ONCE = 16
/**
 * Files written whole and being made durable (fsync, mode, mtime, placed) at
 * once, each holding only its handle: a file's fsync waits on the disk, not
 * the CPU, and on a busy disk the next files' writes would wait behind it.
 * 256 MiB restored, one run each: 32 at once peaked the owner at 262 MB, 8 at
 * 243 MB, at the same speed (25-26 MB/s).
 */
const FINISHING_AT_ONCE = 8
/** Chunks of one file fetched ahead of the one being written. */
const PREFETCH = 4
/** Sealed bytes fetched (or being fetched) and not yet written, at most, over all files: the memory bound. */
const AHEAD_BYTES = 8 * 1024 * 1024
const PROGRESS_EVERY_MS = 250
/** How far (µs) a file's mtime may be from the snapshot's and still count as restored before (see file()). */
const MTIME_SLACK_US = 2n

export interface RestoreOptions {
  snapshot: string | number
  /** a path inside the snapshot, like "photos/2024"; default all of it */
  path?: string
  /** absolute folder to restore into (made if missing) */
  out: string
  signal?: AbortSignal
  onProgress?: (progress: RestoreProgress) => void
}

export interface RestoreProgress {
  doneBytes: number
  totalBytes: number
  files: number
}

export interface RestoreResult {
  snapshot: SnapshotRecord
  files: number
  dirs: number
  links: number
  bytes: number
  /** files found already restored (a resumed restore) */
  skipped: number
}

/** One thing to restore, at `segments` under the output folder. */
interface Item { segments: string[], entry: TreeEntry }

/** The verified snapshot an index record names. */
export async function loadSnapshot (parts: BackupParts, record: SnapshotRecord, signal?: AbortSignal): Promise<Snapshot> {
  const snapshot = decodeSnapshot(await fetchBlob(parts, record.id, 'snapshot', signal), parts.publicKey)
  if (snapshot.owner !== parts.owner || snapshot.seq !== record.seq) {
    throw new KithError('SNAPSHOT_MISMATCH', `the snapshot fetched as number ${record.seq} is number ${snapshot.seq} of ${snapshot.owner}: a host served another one. kith backup health shows the hosts`)
  }
  return snapshot
}

/** A folder's entries from its tree blobs. */
export async function loadTree (parts: BackupParts, ids: string[], signal?: AbortSignal): Promise<TreeEntry[]> {
  const pieces: Uint8Array[] = []
  let size = 0
  for (const id of ids) {
    const piece = await fetchBlob(parts, id, 'tree', signal)
    size += piece.length
    if (size > MAX_TREE_BYTES) throw new KithError('TREE_TOO_LARGE', `a folder's tree blobs hold more than ${MAX_TREE_BYTES} bytes; they were damaged or forged`)
    pieces.push(piece)
  }
  return decodeTree(Buffer.concat(pieces))
}

/** The entry at `path` (slash-separated names) under the root entries, with the entries on the way. */
export async function findPath (parts: BackupParts, root: TreeEntry[], path: string, signal?: AbortSignal): Promise<TreeEntry> {
  const names = path.split('/').filter(n => n !== '')
  if (names.length === 0) throw new KithError('BAD_REQUEST', 'give a path inside the snapshot, like photos/2024')
  let entries = root
  for (const [i, name] of names.entries()) {
    const entry = entries.find(e => e.name === name)
    if (entry == null) throw new KithError('NOT_FOUND', `the snapshot has no ${JSON.stringify(names.slice(0, i + 1).join('/'))}; kith backup ls shows what it holds`)
    if (i === names.length - 1) return entry
    if (entry.type !== 'dir') throw new KithError('NOT_FOUND', `${JSON.stringify(names.slice(0, i + 1).join('/'))} in the snapshot is not a folder`)
    entries = await loadTree(parts, entry.tree, signal)
  }
  throw new KithError('INTERNAL', 'unreachable')
}

/** Everything under `entries`, parents before children: trees fetched as the walk goes. */
async function plan (parts: BackupParts, entries: TreeEntry[], signal?: AbortSignal): Promise<Item[]> {
  const items: Item[] = []
  const pending: Array<{ prefix: string[], entries: TreeEntry[] }> = [{ prefix: [], entries }]
  while (pending.length > 0) {
    const { prefix, entries } = pending.shift()!
    for (const entry of entries) {
      const segments = [...prefix, entry.name]
      items.push({ segments, entry })
      if (entry.type === 'dir') pending.push({ prefix: segments, entries: await loadTree(parts, entry.tree, signal) })
    }
  }
  return items
}

const seconds = (micros: number): number => micros / 1e6

/** A chunk fetched ahead: its plaintext or why not, and the budget it took. */
interface Ahead { size: number, data?: Uint8Array, error?: unknown }

class Restorer {
  private readonly parts: BackupParts
  private readonly options: RestoreOptions
  private readonly getter: BlobGetter
  private readonly budget = new ByteBudget(AHEAD_BYTES)
  private readonly total: number
  private done = 0
  private lastReport = 0
  /** files written whole and being finished (finish()), and the first that failed */
  private readonly finishing = new Set<Promise<void>>()
  private finishFailure: unknown = null
  /** folders made or checked by this restore (not looked at again), and those it made (nothing is in them but what it put there) */
  private readonly folders = { checked: new Set<string>(), made: new Set<string>() }
  readonly counts = { files: 0, dirs: 0, links: 0, bytes: 0, skipped: 0 }

  constructor (parts: BackupParts, options: RestoreOptions, total: number) {
    this.parts = parts
    this.options = options
    this.total = total
    this.getter = new BlobGetter(parts, options.signal)
  }

  async item ({ segments, entry }: Item): Promise<void> {
    this.options.signal?.throwIfAborted()
    const { out } = this.options
    switch (entry.type) {
      case 'dir':
        await prepareUnder(out, segments, { dir: true, ...this.folders })
        this.counts.dirs++
        return
      case 'symlink': return await this.link(await prepareLinkPlace(out, segments, this.folders), entry.target, entry.mtime)
      case 'file': return await this.file(await prepareUnder(out, segments, this.folders), entry)
    }
  }

  /** A folder's mode and mtime, once everything in it is in place. */
  async finishDir ({ segments, entry }: Item): Promise<void> {
    const path = join(this.options.out, ...segments)
    await checkUnder(this.options.out, path)
    await chmod(path, entry.mode)
    await utimes(path, seconds(entry.mtime), seconds(entry.mtime))
  }

  /** What is at `path` now: nothing, in a folder this restore made. */
  private async found (path: string): Promise<BigIntStats | null> {
    if (this.folders.made.has(dirname(path))) return null
    return await lstat(path, { bigint: true }).catch(() => null)
  }

  private async link (path: string, target: string, mtime: number): Promise<void> {
    const info = await this.found(path)
    if (info != null) {
      if (info.isSymbolicLink() && await readlink(path) === target) { this.counts.skipped++; return }
      throw new KithError('DESTINATION_EXISTS', `${JSON.stringify(path)} is in the way of a link the snapshot holds; move it away, then restore again`)
    }
    await symlink(target, path)
    await lutimes(path, seconds(mtime), seconds(mtime))
    this.counts.links++
  }

  private async file (dest: string, entry: Extract<TreeEntry, { type: 'file' }>): Promise<void> {
    const info = await this.found(dest)
    if (info != null) {
      // utimes takes a double of seconds: a restored mtime may be a microsecond or two off the snapshot's
      const drift = info.mtimeNs / 1000n - BigInt(entry.mtime)
      if (info.size === BigInt(entry.size) && drift <= MTIME_SLACK_US && drift >= -MTIME_SLACK_US) {
        this.counts.skipped++
        this.progress(entry.size)
        return
      }
      throw new KithError('DESTINATION_EXISTS', `${JSON.stringify(dest)} is in the way and is not the file the snapshot holds; restore into an empty folder, or move it away`)
    }
    const name = createHash('sha256').update(dest).digest('hex').slice(0, 16)
    const partial = join(dirname(dest), `.kith-${name}${PARTIAL_SUFFIX}`)
    // a killed restore's partial; none can be in a folder this restore made
    if (!this.folders.made.has(dirname(dest))) await rm(partial, { force: true })
    const handle = await openNoFollow(partial, 'create', 0o600)
    let written = 0
    const ahead: Array<Promise<Ahead>> = []
    // each file takes the budget for its chunks in order, so the chunk it waits on is never behind its later ones
    let taking: Promise<unknown> = Promise.resolve()
    const fetch = (i: number): void => {
      if (i >= entry.chunks.length) return
      const id = entry.chunks[i]!
      const took = taking.then(async () => {
        const record = await this.parts.index.blob(id) ?? undefined
        await this.budget.take(record?.size ?? 0)
        return record
      })
      taking = took.catch(() => {})
      ahead.push(took.then(async record => {
        const size = record?.size ?? 0
        try {
          return { size, data: await this.getter.get(id, 'data', record) }
        } catch (error) {
          return { size, error }
        }
      }, error => ({ size: 0, error })))
    }
    try {
      for (let i = 0; i < Math.min(PREFETCH, entry.chunks.length); i++) fetch(i)
      for (let i = 0; i < entry.chunks.length; i++) {
        const got = await ahead.shift()!
        fetch(i + PREFETCH)
        let length = 0
        try {
          if (got.error !== undefined) throw got.error
          length = got.data!.length
          await handle.write(got.data!)
          this.getter.release(got.data!)
        } finally {
          this.budget.give(got.size)
        }
        written += length
        this.progress(length)
      }
      if (written !== entry.size) throw new KithError('FILE_VERIFY_FAILED', `${JSON.stringify(dest)}: the snapshot says ${entry.size} bytes, its chunks hold ${written}`)
    } catch (err) {
      // what is still being fetched gives its budget back when it lands
      for (const rest of ahead.splice(0)) void rest.then(got => { this.budget.give(got.size) })
      await handle.close()
      await rm(partial, { force: true })
      throw err
    }
    // the next file starts while this one waits on the disk; settle() waits for it
    while (this.finishing.size >= FINISHING_AT_ONCE) await Promise.race(this.finishing)
    if (this.finishFailure != null) {
      await handle.close()
      await rm(partial, { force: true })
      throw this.finishFailure
    }
    const finish: Promise<void> = this.finish(handle, partial, dest, entry)
      .catch(err => { this.finishFailure ??= err })
      .finally(() => { this.finishing.delete(finish) })
    this.finishing.add(finish)
  }

  /** A file written whole: made durable, given its mode and mtime, then placed (absent or whole, never part). */
  private async finish (handle: FileHandle, partial: string, dest: string, entry: Extract<TreeEntry, { type: 'file' }>): Promise<void> {
    try {
      await handle.sync()
      await handle.chmod(entry.mode)
    } catch (err) {
      await handle.close()
      await rm(partial, { force: true })
      throw err
    }
    await handle.close()
    await utimes(partial, seconds(entry.mtime), seconds(entry.mtime))
    await checkUnder(this.options.out, dirname(dest))
    await placeFile(partial, dest, false)
    this.counts.files++
    this.counts.bytes += entry.size
  }

  /** Waits for every file being finished; throws the first failure. */
  async settle (): Promise<void> {
    while (this.finishing.size > 0) await Promise.race(this.finishing)
    if (this.finishFailure != null) throw this.finishFailure
  }

  progress (bytes: number): void {
    this.done += bytes
    const now = performance.now()
    if (now - this.lastReport < PROGRESS_EVERY_MS && this.done < this.total) return
    this.lastReport = now
    this.options.onProgress?.({ doneBytes: this.done, totalBytes: this.total, files: this.counts.files })
  }
}

/** A link's place: its folders made and checked; the name itself may be a link already (checked by the caller). */
async function prepareLinkPlace (out: string, segments: string[], folders: { checked: Set<string>, made: Set<string> }): Promise<string> {
  const folder = segments.length > 1 ? await prepareUnder(out, segments.slice(0, -1), { dir: true, ...folders }) : out
  return join(folder, segments.at(-1)!)
}

export async function restoreBackup (parts: BackupParts, options: RestoreOptions): Promise<RestoreResult> {
  const record = await parts.index.snapshot(options.snapshot)
  const snapshot = await loadSnapshot(parts, record, options.signal)
  const root = await loadTree(parts, snapshot.tree, options.signal)
  const top = options.path != null ? [await findPath(parts, root, options.path, options.signal)] : root
  const items = await plan(parts, top, options.signal)
  const total = items.reduce((sum, { entry }) => sum + (entry.type === 'file' ? entry.size : 0), 0)
  await makeRoot(options.out)
  const restorer = new Restorer(parts, options, total)
  // folders first, in order (parents before children); then files and links, a few at once
  for (const item of items) if (item.entry.type === 'dir') await restorer.item(item)
  const rest = items.filter(i => i.entry.type !== 'dir')
  let next = 0
  let failure: unknown = null
  await Promise.all(Array.from({ length: FILES_AT_ONCE }, async () => {
    while (failure == null && next < rest.length) {
      try {
        await restorer.item(rest[next++]!)
      } catch (err) {
        failure ??= err
      }
    }
  }))
  // files still being finished end (placed, or their partial removed) before the restore reports
  await restorer.settle().catch(err => { failure ??= err })
  if (failure != null) throw failure
  const dirs = items.filter(i => i.entry.type === 'dir').sort((a, b) => b.segments.length - a.segments.length)
  for (const dir of dirs) await restorer.finishDir(dir)
  restorer.progress(0)
  const { files, links, bytes, skipped } = restorer.counts
  return { snapshot: record, files, dirs: dirs.length, links, bytes, skipped }
}
