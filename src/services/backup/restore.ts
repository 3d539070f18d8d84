/**
 * `kith backup restore`: a snapshot, or a path in it, back into a folder
 * (docs/backup.md, Run and restore).
 *
 * The snapshot blob is fetched and its signature, owner and seq checked
 * against the index; every tree and chunk fetched after it is checked
 * against the id its parent names (the host's sealed id, then the AEAD, then
 * the keyed id over the plaintext), so a host can neither alter nor swap
 * anything. Folders are made first, then links and each file's place;
 * then the files' blobs, many per request (getter.ts), each written at its
 * offsets in a partial beside its file's place as it comes; a file whose
 * last blob is written is given its mode and mtime, fsynced, then moved into
 * place (destination.ts: no link is ever followed under the folder);
 * folders get their modes and mtimes last, deepest first (a read-only
 * folder is filled before it is closed).
 *
 * Resuming: a file already in place with its snapshot size and mtime was
 * restored before and is skipped; a leftover partial is started again. Any
 * other file in the way is left alone and named (DESTINATION_EXISTS).
 */
import { createHash } from 'node:crypto'
import type { BigIntStats } from 'node:fs'
import { lstat, lutimes, readlink, rm, symlink, utimes, chmod } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { KithError } from '../../errors.ts'
import { PARTIAL_SUFFIX, SEAL_OVERHEAD } from '../../transfer/constants.ts'
import { checkUnder, createNoFollow, makeRoot, placeFile, prepareUnder } from '../../transfer/destination.ts'
import { closeFd, fchmodFd, fsyncFd, futimesFd, writeAt } from '../../transfer/fd.ts'
import { ByteBudget } from './budget.ts'
import { BlobGetter, type Want } from './getter.ts'
import { MAX_MANY_BLOBS } from './wire.ts'
import { fetchBlob, type BackupParts } from './parts.ts'
import { decodeSnapshot, type Snapshot } from './snapshot.ts'
import { decodeTree, MAX_TREE_BYTES, type TreeEntry } from './tree.ts'
import type { SnapshotRecord } from './owner-index.ts'

/** Links made and files' places prepared at once (each an lstat or two where the folder was there before). */
const PREPARING_AT_ONCE = 16
/**
 * Files written whole and being made durable (mode, mtime, fsync, placed) at
 * once, each holding only its descriptor: a file's fsync waits on the disk,
 * not the CPU, and on a busy disk the next files' writes would wait behind
 * it. 256 MiB restored, one run each: 32 at once peaked the owner at 262 MB,
 * 8 at 243 MB, at the same speed (25-26 MB/s).
 */
const FINISHING_AT_ONCE = 8
/**
 * Files written whole and waiting for one of those turns, at most, each
 * holding its open descriptor and nothing else: the blobs' bytes are
 * written and their buffers and budget given back, so the fetch goes on
 * while the disk catches up. Beyond it the writer waits. When a written
 * blob waited for a turn instead, holding its share of the 4 MiB read
 * ahead, the 128 MiB bench's restores spent a third of their time with
 * the reading stopped: 410 of its 441 files waited, behind fsyncs of 13 to
 * 19 ms each (load 26-33).
 */
const WAITING_TO_FINISH = 256
/** Sealed bytes read from the hosts and not yet written, at most, over all files: the memory bound (getter.ts). */
const AHEAD_BYTES = 4 * 1024 * 1024
const PROGRESS_EVERY_MS = 250
/** How far (µs) a file's mtime may be from the snapshot's and still count as restored before (see prepareFile()). */
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

/** `work` on each of `items`, `atOnce` at a time, the results in their order; the first failure stops the rest from starting. */
async function inTurn<T, R> (items: T[], atOnce: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length)
  let next = 0
  let failed = false
  await Promise.all(Array.from({ length: Math.min(atOnce, items.length) }, async () => {
    while (!failed && next < items.length) {
      const i = next++
      try {
        results[i] = await work(items[i]!)
      } catch (err) {
        failed = true
        throw err
      }
    }
  }))
  return results
}

/** Folders whose trees are fetched together while the plan is made: their blobs share get-many requests. */
const TREES_AT_ONCE = 256
/** Tree blobs read and not yet decoded, at most, while the plan is made. */
const TREES_AHEAD_BYTES = 8 * 1024 * 1024

/** Many folders' entries from their tree blobs, fetched together (getter.ts: get-many from every host at once). */
async function loadTrees (parts: BackupParts, folders: string[][], signal?: AbortSignal): Promise<TreeEntry[][]> {
  const ids = [...new Set(folders.flat())]
  const records = await parts.index.blobRecords(ids)
  const wants = ids.map((id, i) => {
    const record = records[i]
    if (record == null) throw new KithError('BLOB_MISSING', `blob ${id.slice(0, 12)}… (tree) is not in this node's backup index; was the snapshot forgotten?`)
    if (record.kind !== 'tree') throw new KithError('BLOB_OPEN_FAILED', `blob ${id.slice(0, 12)}… is a ${record.kind} blob, not a tree blob`)
    return { id, record }
  })
  const sizes = new Map(wants.map(w => [w.id, w.record.size - SEAL_OVERHEAD]))
  for (const tree of folders) {
    if (tree.reduce((sum, id) => sum + sizes.get(id)!, 0) > MAX_TREE_BYTES) throw new KithError('TREE_TOO_LARGE', `a folder's tree blobs hold more than ${MAX_TREE_BYTES} bytes; they were damaged or forged`)
  }
  const got = new Map<string, Uint8Array>()
  const getter = new BlobGetter<Want>({
    parts,
    budget: new ByteBudget(TREES_AHEAD_BYTES),
    ...(signal != null ? { signal } : {}),
    // the getter reuses its buffers: each tree kept is a copy
    write: async (want, plaintext) => { got.set(want.id, Buffer.from(plaintext)) }
  })
  await getter.run((async function * () { yield wants })())
  return folders.map(tree => decodeTree(Buffer.concat(tree.map(id => got.get(id)!))))
}

/** Everything under `entries`, parents before children (a level at a time, in order): trees fetched as the walk goes. */
async function plan (parts: BackupParts, entries: TreeEntry[], signal?: AbortSignal): Promise<Item[]> {
  const items: Item[] = []
  let level: Array<{ prefix: string[], entries: TreeEntry[] }> = [{ prefix: [], entries }]
  while (level.length > 0) {
    const dirs: Array<{ segments: string[], tree: string[] }> = []
    for (const { prefix, entries } of level) {
      for (const entry of entries) {
        const segments = [...prefix, entry.name]
        items.push({ segments, entry })
        if (entry.type === 'dir') dirs.push({ segments, tree: entry.tree })
      }
    }
    level = []
    for (let at = 0; at < dirs.length; at += TREES_AT_ONCE) {
      const some = dirs.slice(at, at + TREES_AT_ONCE)
      const trees = await loadTrees(parts, some.map(d => d.tree), signal)
      level.push(...some.map((d, i) => ({ prefix: d.segments, entries: trees[i]! })))
    }
  }
  return items
}

/**
 * A snapshot's microseconds as the double of seconds utimes takes, half a
 * microsecond in: libuv truncates that double to whole microseconds, and
 * micros / 1e6 lands just below the microsecond about half the time (973
 * of 2,000 restored 1 µs early, measured), which with the doubles on the
 * way made an mtime up to 2.2 µs off its source (backup.spec once, at load
 * 30). Half a microsecond in, every one of 2,000 came back exact.
 */
const seconds = (micros: number): number => (micros + 0.5) / 1e6

type FileEntry = Extract<TreeEntry, { type: 'file' }>

/** A file to write: its partial made at its first chunk, placed once its last is written. */
interface FileJob {
  dest: string
  partial: string
  entry: FileEntry
  /** chunks not yet written */
  left: number
  written: number
  /** the partial's descriptor, once made */
  fd?: Promise<number>
}

/** A data blob and every place it goes: a blob several files (or one file twice) hold is fetched once. */
interface DataWant extends Want {
  places: Array<{ file: FileJob, offset: number }>
}

class Restorer {
  private readonly parts: BackupParts
  private readonly options: RestoreOptions
  readonly budget = new ByteBudget(AHEAD_BYTES)
  private readonly total: number
  private done = 0
  private lastReport = 0
  /** blobs asked for and not yet written to every place, by plaintext id */
  private readonly wanted = new Map<string, DataWant>()
  /** files whose partial is made and that are not yet handed to finish() */
  private readonly started = new Set<FileJob>()
  /** files written whole and being finished (finish()), and the first that failed */
  private readonly finishing = new Set<Promise<void>>()
  private finishFailure: unknown = null
  /** files written whole waiting for one of the FINISHING_AT_ONCE, in order (still in `started` until finish() takes them) */
  private readonly toFinish: FileJob[] = []
  /** writers waiting for room in `toFinish` */
  private readonly roomToWait: Array<() => void> = []
  /** folders made or checked by this restore (not looked at again), and those it made (nothing is in them but what it put there) */
  private readonly folders = { checked: new Set<string>(), made: new Set<string>() }
  readonly counts = { files: 0, dirs: 0, links: 0, bytes: 0, skipped: 0 }

  constructor (parts: BackupParts, options: RestoreOptions, total: number) {
    this.parts = parts
    this.options = options
    this.total = total
  }

  /** A folder made, a link made, or a file's place prepared (null: a folder or link, or a file restored before). */
  async item ({ segments, entry }: Item): Promise<FileJob | null> {
    this.options.signal?.throwIfAborted()
    const { out } = this.options
    switch (entry.type) {
      case 'dir':
        await prepareUnder(out, segments, { dir: true, ...this.folders })
        this.counts.dirs++
        return null
      case 'symlink':
        await this.link(await prepareLinkPlace(out, segments, this.folders), entry.target, entry.mtime)
        return null
      case 'file': return await this.prepareFile(await prepareUnder(out, segments, this.folders), entry)
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

  private async prepareFile (dest: string, entry: FileEntry): Promise<FileJob | null> {
    const info = await this.found(dest)
    if (info != null) {
      // utimes takes a double of seconds: a file restored before seconds() aimed half a microsecond in may be a microsecond or two off
      const drift = info.mtimeNs / 1000n - BigInt(entry.mtime)
      if (info.size === BigInt(entry.size) && drift <= MTIME_SLACK_US && drift >= -MTIME_SLACK_US) {
        this.counts.skipped++
        this.progress(entry.size)
        return null
      }
      throw new KithError('DESTINATION_EXISTS', `${JSON.stringify(dest)} is in the way and is not the file the snapshot holds; restore into an empty folder, or move it away`)
    }
    const name = createHash('sha256').update(dest).digest('hex').slice(0, 16)
    const partial = join(dirname(dest), `.kith-${name}${PARTIAL_SUFFIX}`)
    // a killed restore's partial; none can be in a folder this restore made
    if (!this.folders.made.has(dirname(dest))) await rm(partial, { force: true })
    return { dest, partial, entry, left: entry.chunks.length, written: 0 }
  }

  /**
   * The files' blobs in the order they are written, a few files' at a time
   * (their index records read in one go), each blob once while it is wanted;
   * a file of no chunks is finished as it comes.
   */
  async * wants (files: FileJob[]): AsyncGenerator<DataWant[]> {
    for (let at = 0; at < files.length;) {
      const group: FileJob[] = []
      let chunks = 0
      while (at < files.length && (group.length === 0 || chunks + files[at]!.entry.chunks.length <= MAX_MANY_BLOBS)) {
        chunks += files[at]!.entry.chunks.length
        group.push(files[at++]!)
      }
      const ids = [...new Set(group.flatMap(f => f.entry.chunks))]
      const records = new Map(ids.map((id, i) => [id, i]))
      const found = await this.parts.index.blobRecords(ids)
      const out: DataWant[] = []
      for (const file of group) {
        if (file.entry.chunks.length === 0) {
          await this.finishSoon(file)
          continue
        }
        let offset = 0
        for (const id of file.entry.chunks) {
          const record = found[records.get(id)!]
          if (record == null) throw new KithError('BLOB_MISSING', `blob ${id.slice(0, 12)}… (data) is not in this node's backup index; was the snapshot forgotten?`)
          if (record.kind !== 'data') throw new KithError('BLOB_OPEN_FAILED', `blob ${id.slice(0, 12)}… is a ${record.kind} blob, not a data blob`)
          const wanted = this.wanted.get(id)
          if (wanted != null) {
            wanted.places.push({ file, offset })
          } else {
            const want = { id, record, places: [{ file, offset }] }
            this.wanted.set(id, want)
            out.push(want)
          }
          offset += record.size - SEAL_OVERHEAD
        }
        if (offset !== file.entry.size) throw new KithError('FILE_VERIFY_FAILED', `${JSON.stringify(file.dest)}: the snapshot says ${file.entry.size} bytes, its chunks hold ${offset}`)
      }
      if (out.length > 0) yield out
    }
  }

  /** A blob's plaintext (verified) written to each of its places; a file whose last chunk this is goes to be finished. */
  async write (want: DataWant, plaintext: Uint8Array): Promise<void> {
    if (plaintext.length !== want.record.size - SEAL_OVERHEAD) {
      throw new KithError('FILE_VERIFY_FAILED', `blob ${want.id.slice(0, 12)}… holds ${plaintext.length} bytes, not the ${want.record.size - SEAL_OVERHEAD} the index says`)
    }
    // places added while this one writes are written too: it leaves `wanted` only once the last is
    for (let i = 0; i < want.places.length; i++) {
      const { file, offset } = want.places[i]!
      if (file.fd == null) {
        file.fd = createNoFollow(file.partial, 0o600)
        this.started.add(file)
      }
      const fd = await file.fd
      await writeAt(fd, plaintext, offset)
      file.written += plaintext.length
      this.progress(plaintext.length)
      if (--file.left === 0) await this.finishSoon(file)
    }
    this.wanted.delete(want.id)
  }

  /**
   * Queues a file written whole for finish(), FINISHING_AT_ONCE at a time in
   * order: the next files are written meanwhile. Waits only while more than
   * WAITING_TO_FINISH are queued.
   */
  private async finishSoon (file: FileJob): Promise<void> {
    if (this.finishFailure != null) throw this.finishFailure
    this.toFinish.push(file)
    this.startFinishing()
    if (this.toFinish.length > WAITING_TO_FINISH) await new Promise<void>(resolve => this.roomToWait.push(resolve))
    if (this.finishFailure != null) throw this.finishFailure
  }

  /** Starts finishing queued files while turns are free; after a failure, none (abandon() removes their partials). */
  private startFinishing (): void {
    while (this.finishFailure == null && this.finishing.size < FINISHING_AT_ONCE && this.toFinish.length > 0) {
      const file = this.toFinish.shift()!
      this.started.delete(file)
      const finish: Promise<void> = this.finish(file)
        .catch(err => { this.finishFailure ??= err })
        .finally(() => {
          this.finishing.delete(finish)
          this.startFinishing()
        })
      this.finishing.add(finish)
    }
    // writers waiting for room go on once there is (or to meet the failure)
    while (this.roomToWait.length > 0 && (this.toFinish.length <= WAITING_TO_FINISH || this.finishFailure != null)) this.roomToWait.shift()!()
  }

  /** A file written whole: its length checked, given its mode and mtime, made durable, then placed (absent or whole, never part). */
  private async finish ({ dest, partial, entry, written, fd: made }: FileJob): Promise<void> {
    const fd = await (made ?? createNoFollow(partial, 0o600))
    try {
      if (written !== entry.size) throw new KithError('FILE_VERIFY_FAILED', `${JSON.stringify(dest)}: the snapshot says ${entry.size} bytes, its chunks hold ${written}`)
      await fchmodFd(fd, entry.mode)
      await futimesFd(fd, seconds(entry.mtime), seconds(entry.mtime))
      await fsyncFd(fd)
    } catch (err) {
      await closeFd(fd).catch(() => {})
      await rm(partial, { force: true })
      throw err
    }
    await closeFd(fd)
    await checkUnder(this.options.out, dirname(dest))
    await placeFile(partial, dest, false)
    this.counts.files++
    this.counts.bytes += entry.size
  }

  /** After a failure: the partials of files begun and not finished are removed (nothing writes to them any more). */
  async abandon (): Promise<void> {
    for (const file of this.started) {
      const fd = await file.fd!.catch(() => null)
      if (fd != null) await closeFd(fd).catch(() => {})
      await rm(file.partial, { force: true })
    }
    this.started.clear()
  }

  /** Waits for every file queued and being finished; throws the first failure. */
  async settle (): Promise<void> {
    // a queued file is being finished whenever a turn is free, until a failure
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
  // folders first, in order (parents before children); then links and the files' places, a few at once
  for (const item of items) if (item.entry.type === 'dir') await restorer.item(item)
  const files = await inTurn(items.filter(i => i.entry.type !== 'dir'), PREPARING_AT_ONCE, async item => await restorer.item(item))
  // then every file's blobs, many per request from all hosts at once, each written where it goes as it comes
  const getter = new BlobGetter<DataWant>({
    parts,
    budget: restorer.budget,
    ...(options.signal != null ? { signal: options.signal } : {}),
    write: async (want, plaintext) => { await restorer.write(want, plaintext) }
  })
  let failure: unknown = null
  await getter.run(restorer.wants(files.filter(f => f !== null))).catch(err => { failure = err })
  // files still being finished end (placed, or their partial removed) before the restore reports
  await restorer.settle().catch(err => { failure ??= err })
  if (failure != null) {
    await restorer.abandon()
    throw failure
  }
  const dirs = items.filter(i => i.entry.type === 'dir').sort((a, b) => b.segments.length - a.segments.length)
  for (const dir of dirs) await restorer.finishDir(dir)
  restorer.progress(0)
  const { files: placed, links, bytes, skipped } = restorer.counts
  return { snapshot: record, files: placed, dirs: dirs.length, links, bytes, skipped }
}
