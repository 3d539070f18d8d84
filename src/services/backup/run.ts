/**
 * `kith backup run`: one snapshot of some paths (docs/backup.md, Run and restore).
 *
 * The walk reads every file once, cuts it with the keyed chunker, and ids
 * each chunk (keyed HMAC). A chunk the index already has on enough hosts is
 * not sealed or sent again, whichever file or snapshot it came from: that is
 * the deduplication, and the resumption after a kill (each host's copy is in
 * the index the moment the host confirms it, never before). A new chunk is
 * sealed and put on the hosts it lacks, a few at a time, while the walk goes
 * on. Each folder's listing becomes tree blobs once its entries are known,
 * bottom up; the signed snapshot blob comes last, after every blob it needs
 * is placed, and only then is the snapshot in the index.
 */
import { createReadStream, type BigIntStats } from 'node:fs'
import { lstat, readdir, readlink } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { createHash } from 'node:crypto'
import { KithError, asKithError } from '../../errors.ts'
import { cdcChunks } from '../../transfer/cdc.ts'
import { auditRoot } from './audit-tree.ts'
import { blobId, sealBlob } from './blob.ts'
import type { BlobKind, SnapshotRecord } from './owner-index.ts'
import { unlessBusy, type BackupParts } from './parts.ts'
import { encodeSnapshot, type SnapshotStats } from './snapshot.ts'
import { encodeTree, micros, type TreeEntry } from './tree.ts'

/**
 * Blobs sealed and being placed at once, each to its hosts in parallel: each
 * holds up to 8 MiB (plaintext and sealed), and asks each host at most once
 * at a time (a host serves 8 requests of one owner at once).
 */
const PLACING = 6
/** How often progress is reported, ms. */
const PROGRESS_EVERY_MS = 250
/** Blob needs written to the index in batches of this many. */
const NEEDS_BATCH = 512
/** Bytes read from a file at a time. */
const READ_SIZE = 1024 * 1024

export interface RunOptions {
  /** absolute paths */
  paths: string[]
  /** peer ids of the hosts to place on */
  hosts: string[]
  /** copies of each blob @default 2 */
  replicas: number
  label: string | null
  signal?: AbortSignal
  onProgress?: (progress: RunProgress) => void
}

export interface RunProgress {
  /** plaintext bytes read so far, of `totalBytes` (what a first look at the paths found) */
  doneBytes: number
  totalBytes: number
  files: number
  /** sealed bytes sent to hosts (every copy counted) */
  sentBytes: number
}

export interface RunResult {
  snapshot: SnapshotRecord
  /** blobs the snapshot needs, and of them those sealed and placed by this run */
  blobs: number
  newBlobs: number
  sentBytes: number
  /** bytes read from files: files unchanged since a run read them are not read again */
  readBytes: number
  /** what was left out, and why (sockets, unreadable files...) */
  skipped: Array<{ path: string, reason: string }>
}

/** A host's order for one blob (rendezvous hashing): blobs spread evenly, and a blob's hosts stay stable. */
function hostOrder (hosts: string[], id: string): string[] {
  const score = (host: string): string => createHash('sha256').update(host).update(id).digest('hex')
  return [...hosts].sort((a, b) => score(a) < score(b) ? -1 : 1)
}

class Placer {
  private readonly parts: BackupParts
  private readonly options: RunOptions
  private readonly seq: number
  private readonly seen = new Set<string>()
  private readonly running = new Set<Promise<void>>()
  private needs: Array<[string, BlobKind]> = []
  /** hosts that refused or failed during this run, and why: not asked again */
  private readonly dropped = new Map<string, string>()
  private failure: unknown = null
  newBlobs = 0
  sentBytes = 0

  constructor (parts: BackupParts, options: RunOptions, seq: number) {
    this.parts = parts
    this.options = options
    this.seq = seq
  }

  get blobs (): number { return this.seen.size }

  /** Makes sure a blob is placed (now, or soon); returns its id. */
  async place (kind: BlobKind, plaintext: Uint8Array): Promise<string> {
    this.check()
    const id = blobId(this.parts.keys, kind, plaintext)
    if (this.seen.has(id)) return id
    this.seen.add(id)
    this.needs.push([id, kind])
    if (this.needs.length >= NEEDS_BATCH) await this.flushNeeds()
    const record = await this.parts.index.blob(id)
    if (record != null && record.hosts.length >= this.options.replicas) return id
    while (this.running.size >= PLACING) await Promise.race(this.running)
    this.check()
    const job = this.send(id, kind, plaintext).catch(err => { this.failure ??= err })
    const tracked = job.finally(() => { this.running.delete(tracked) })
    this.running.add(tracked)
    return id
  }

  /**
   * True when every one of `ids` (a file's data blobs, from the file cache)
   * is on enough hosts: they are then counted as this snapshot's without
   * reading the file. False sends the caller back to the file.
   */
  async placed (ids: string[]): Promise<boolean> {
    this.check()
    for (const id of ids) {
      if (this.seen.has(id)) continue
      const record = await this.parts.index.blob(id)
      if (record == null || record.kind !== 'data' || record.hosts.length < this.options.replicas) return false
    }
    for (const id of ids) {
      if (this.seen.has(id)) continue
      this.seen.add(id)
      this.needs.push([id, 'data'])
    }
    if (this.needs.length >= NEEDS_BATCH) await this.flushNeeds()
    return true
  }

  /** Waits for every placement under way; throws the first failure. */
  async finish (): Promise<void> {
    await Promise.all(this.running)
    this.check()
    await this.flushNeeds()
  }

  /** Lets placements under way end (after a failure elsewhere) without hiding that failure. */
  async settle (): Promise<void> {
    await Promise.allSettled(this.running)
  }

  private check (): void {
    this.options.signal?.throwIfAborted()
    if (this.failure != null) throw asKithError(this.failure)
  }

  private async flushNeeds (): Promise<void> {
    const batch = this.needs
    this.needs = []
    if (batch.length > 0) await this.parts.index.addNeeds(this.seq, batch)
  }

  private async send (id: string, kind: BlobKind, plaintext: Uint8Array): Promise<void> {
    const { index } = this.parts
    const sealed = sealBlob(this.parts.keys, this.parts.owner, kind, plaintext)
    let record = await index.blob(id)
    // sealing is deterministic: the same blob has the same sealed id, so hosts already listed still hold it
    if (record?.sealedId !== sealed.sealedId) {
      record = { kind, sealedId: sealed.sealedId, size: sealed.sealed.length, root: Buffer.from(auditRoot(sealed.sealed)).toString('hex'), hosts: [] }
      await index.putBlob(id, record)
    }
    const hosts = [...record.hosts]
    const candidates = hostOrder(this.options.hosts, id).filter(host => !hosts.includes(host))
    // the copies still wanted go out at once; a host that fails is replaced by the next candidate
    let recorded = Promise.resolve()
    while (hosts.length < this.options.replicas) {
      const batch = candidates.filter(host => !this.dropped.has(host)).slice(0, this.options.replicas - hosts.length)
      if (batch.length === 0) break
      for (const host of batch) candidates.splice(candidates.indexOf(host), 1)
      await Promise.all(batch.map(async host => {
        try {
          const answer = await unlessBusy(async () => await this.parts.host(host).put(sealed.sealedId, sealed.sealed, this.options.signal), this.options.signal)
          if (answer.stored) this.sentBytes += sealed.sealed.length
          // one index write at a time per blob: addHost reads, then writes the record
          recorded = recorded.catch(() => {}).then(async () => { await index.addHost(id, host) })
          await recorded
          hosts.push(host)
        } catch (err) {
          if (this.options.signal?.aborted === true) throw err
          const error = asKithError(err)
          this.dropped.set(host, `${error.code}: ${error.message}`)
        }
      }))
    }
    if (hosts.length < this.options.replicas) {
      const why = [...this.dropped].map(([host, reason]) => `${host} ${reason}`).join('; ')
      throw new KithError('BACKUP_PLACEMENT_FAILED', `a ${kind} blob is on ${hosts.length} of the ${this.options.replicas} hosts asked${why !== '' ? ` (${why})` : ''}. ` +
        'What was placed is kept: run the backup again once hosts have room or are back, or ask for fewer --replicas')
    }
    this.newBlobs++
  }
}

class Walk {
  readonly stats: SnapshotStats = { files: 0, dirs: 0, links: 0, bytes: 0 }
  readonly skipped: Array<{ path: string, reason: string }> = []
  readBytes = 0
  private readonly placer: Placer
  private readonly parts: BackupParts
  private readonly options: RunOptions
  private readonly total: number
  private lastReport = 0

  constructor (parts: BackupParts, options: RunOptions, placer: Placer, total: number) {
    this.parts = parts
    this.options = options
    this.placer = placer
    this.total = total
  }

  /** The entry for `path`, named `name`, or null when it is skipped. */
  async entry (path: string, name: string): Promise<TreeEntry | null> {
    this.options.signal?.throwIfAborted()
    let info
    try {
      info = await lstat(path, { bigint: true })
    } catch (err) {
      this.skip(path, err)
      return null
    }
    const common = { name, mode: Number(info.mode & 0o7777n), mtime: micros(info.mtimeNs) }
    try {
      if (info.isSymbolicLink()) {
        const target = await readlink(path)
        this.stats.links++
        return { ...common, type: 'symlink', target }
      }
      if (info.isDirectory()) return { ...common, type: 'dir', tree: await this.dir(path) }
      if (info.isFile()) return { ...common, type: 'file', ...await this.file(path, info) }
    } catch (err) {
      // a file or folder that can't be read is left out; anything else (a host, the index, an abort) ends the run
      if (!isSourceError(err)) throw err
      this.skip(path, err)
      return null
    }
    this.skipped.push({ path, reason: 'not a file, folder or link (a socket, a pipe or a device)' })
    return null
  }

  /** A folder's tree blobs, its entries placed first. */
  private async dir (path: string): Promise<string[]> {
    const entries: TreeEntry[] = []
    for (const raw of await readdir(path, { encoding: 'buffer' })) {
      const name = raw.toString('utf8')
      // Node can't name such a file again (it reads names as UTF-8), nor can a tree hold it
      if (!Buffer.from(name, 'utf8').equals(raw)) {
        this.skipped.push({ path: join(path, name), reason: 'its name is not UTF-8 text' })
        continue
      }
      const entry = await this.entry(join(path, name), name)
      if (entry != null) entries.push(entry)
    }
    this.stats.dirs++
    return await this.tree(entries)
  }

  /** Places a listing as tree blobs (cut like file content, so a big folder that changed a little shares blobs). */
  async tree (entries: TreeEntry[]): Promise<string[]> {
    const ids: string[] = []
    for await (const piece of cdcChunks([encodeTree(entries)], this.parts.keys.gear)) ids.push(await this.placer.place('tree', piece))
    return ids
  }

  private async file (path: string, info: BigIntStats): Promise<{ size: number, chunks: string[] }> {
    const known = await this.parts.files.chunks(path, info)
    if (known != null && await this.placer.placed(known)) {
      const size = Number(info.size)
      this.stats.files++
      this.stats.bytes += size
      this.report()
      return { size, chunks: known }
    }
    const chunks: string[] = []
    let size = 0
    const stream = createReadStream(path, { highWaterMark: READ_SIZE, ...(this.options.signal != null ? { signal: this.options.signal } : {}) })
    try {
      for await (const chunk of cdcChunks(stream, this.parts.keys.gear)) {
        chunks.push(await this.placer.place('data', chunk))
        size += chunk.length
        this.readBytes += chunk.length
        this.stats.bytes += chunk.length
        this.report()
      }
    } catch (err) {
      stream.destroy()
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'EACCES' || code === 'EPERM' || code === 'EIO') throw new KithError('SOURCE_UNREADABLE', `can't read it (${code})`, { cause: err })
      throw err
    }
    this.stats.files++
    await this.parts.files.remember(path, info, chunks)
    return { size, chunks }
  }

  private skip (path: string, err: unknown): void {
    const code = (err as NodeJS.ErrnoException).code
    this.skipped.push({ path, reason: code === 'ENOENT' ? 'it went away during the backup' : code != null ? `can't read it (${code})` : asKithError(err).message })
  }

  report (force = false): void {
    const now = performance.now()
    if (!force && now - this.lastReport < PROGRESS_EVERY_MS) return
    this.lastReport = now
    this.options.onProgress?.({ doneBytes: this.stats.bytes, totalBytes: Math.max(this.total, this.stats.bytes), files: this.stats.files, sentBytes: this.placer.sentBytes })
  }
}

/** An error of the file system about one path (it has a syscall), or a file found unreadable. */
function isSourceError (err: unknown): boolean {
  if (err instanceof KithError) return err.code === 'SOURCE_UNREADABLE'
  return typeof (err as NodeJS.ErrnoException).syscall === 'string'
}

/** Bytes of regular files under the paths (lstat only): the progress bar's total. */
async function measure (paths: string[], signal?: AbortSignal): Promise<number> {
  let total = 0
  const pending = [...paths]
  while (pending.length > 0) {
    signal?.throwIfAborted()
    const path = pending.pop()!
    const info = await lstat(path).catch(() => null)
    if (info?.isFile() === true) total += info.size
    if (info?.isDirectory() === true) for (const name of await readdir(path).catch(() => [])) pending.push(join(path, name))
  }
  return total
}

export async function runBackup (parts: BackupParts, options: RunOptions): Promise<RunResult> {
  const names = options.paths.map(p => basename(p))
  const twice = names.find((n, i) => names.indexOf(n) !== i)
  if (twice != null) throw new KithError('BAD_REQUEST', `two paths end in ${JSON.stringify(twice)}; a snapshot holds each path by its last name, so back them up in separate runs`)
  const { index } = parts
  const seq = await index.nextSeq()
  // a killed run may have left a partial list of what this seq needs
  await index.clearNeeds(seq)
  const placer = new Placer(parts, options, seq)
  const walk = new Walk(parts, options, placer, await measure(options.paths, options.signal))
  try {
    const entries: TreeEntry[] = []
    for (const [i, path] of options.paths.entries()) {
      const entry = await walk.entry(path, names[i]!)
      if (entry != null) entries.push(entry)
    }
    if (entries.length === 0) throw new KithError('SOURCE_UNREADABLE', `nothing to back up: ${walk.skipped.map(s => `${s.path}: ${s.reason}`).join('; ')}`)
    const tree = await walk.tree(entries)
    // the snapshot names only blobs already placed
    await placer.finish()
    const at = Date.now()
    const snapshotBytes = encodeSnapshot({ owner: parts.owner, seq, at, label: options.label, paths: options.paths, tree, stats: walk.stats }, parts.secretKey)
    const id = await placer.place('snapshot', snapshotBytes)
    await placer.finish()
    const snapshot: SnapshotRecord = { seq, id, created: at, label: options.label, paths: options.paths, tree, stats: { ...walk.stats, blobs: placer.blobs } }
    await index.putSnapshot(snapshot)
    walk.report(true)
    return { snapshot, blobs: placer.blobs, newBlobs: placer.newBlobs, sentBytes: placer.sentBytes, readBytes: walk.readBytes, skipped: walk.skipped }
  } catch (err) {
    await placer.settle()
    throw err
  }
}
