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
import type { BigIntStats } from 'node:fs'
import { lstat, open, readdir, readlink } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { createHash } from 'node:crypto'
import { KithError, asKithError } from '../../errors.ts'
import { BACKUP_CDC_SIZES, cdcCut, cdcRead, cdcWindowSize } from '../../transfer/cdc.ts'
import { BufferPool } from '../../transfer/buffer-pool.ts'
import { AUDIT_LEAF_SIZE, auditRoot, leafSizeOf, type AuditLeafSize } from './audit-tree.ts'
import { PUT_BATCH_BYTES, fullBatch, takeBatch } from './batch.ts'
import { blobId, sealBlob, sealedSize } from './blob.ts'
import { ByteBudget } from './budget.ts'
import type { RunFiles } from './file-cache.ts'
import type { BlobKind, SnapshotRecord } from './owner-index.ts'
import { unlessBusy, type BackupParts } from './parts.ts'
import type { PutStatus } from './protocol.ts'
import { encodeSnapshot, type SnapshotStats } from './snapshot.ts'
import { encodeTree, micros, type TreeEntry } from './tree.ts'

/**
 * Sealed bytes of blobs not yet on enough hosts, at most: the owner's memory
 * bound for placing (each copy shares one buffer). The walk waits for room.
 * Two put-many batches: one out, the next gathering.
 */
const IN_FLIGHT_BYTES = 2 * PUT_BATCH_BYTES
/**
 * Sealed blobs' buffers kept for the next ones once placed: a fresh buffer of
 * 128 KiB or more is mapped and faulted in page by page (the daemon's malloc
 * threshold, daemon-heap.ts). IN_FLIGHT_BYTES holds about this many blobs of
 * 1 MiB. Smaller blobs are sealed into buffers of their own (from malloc's
 * heap), so that none takes a kept buffer a bigger one needs.
 */
const SEALED_KEPT = 8
const SEALED_REUSED_FROM = 128 * 1024
/**
 * put-many requests in flight to one host (a host serves 8 requests of one
 * owner at once): the first leaves at once, a further one only full.
 */
const REQUESTS_PER_HOST = 3
/** How often progress is reported, ms. */
const PROGRESS_EVERY_MS = 250
/** Blob needs written to the index in batches of this many. */
const NEEDS_BATCH = 512
/** Chunking windows kept for the next file once one is read (more may be in use while files are read at once). */
const WINDOWS_KEPT = 2
/**
 * Entries of one folder looked at at once, and bytes of files read at once
 * (a file bigger than this is read alone): small files' lstats, reads and
 * index look-ups overlap instead of each waiting on the last.
 */
const ENTRIES_AT_ONCE = 16
const READ_BUDGET = 1024 * 1024

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

/** A blob sealed and being placed: on `hosts` (confirmed), asked of `trying` hosts now. */
interface Placing {
  id: string
  kind: BlobKind
  sealedId: string
  /** a buffer of the sealed pool's, given back (and, over the pool's max, freed) when the blob ends: read nothing of it after `dispatch` */
  sealed: Uint8Array
  /** its sealed size, for what runs after it ended (an index write queued behind another host's) */
  size: number
  root: string
  auditLeaf: AuditLeafSize
  hosts: string[]
  /** hosts not asked yet, in rendezvous order */
  candidates: string[]
  trying: number
}

/** One host's put-many queue. */
interface HostQueue {
  waiting: Placing[]
  inFlight: number
}

/**
 * Places blobs on hosts, many per request: each host has a queue, and a
 * put-many leaves as soon as fewer than REQUESTS_PER_HOST are in flight to
 * that host, carrying whatever waits (so requests grow when the host is the
 * bottleneck, and a slow walk is not held back). Each answer's confirmed
 * blobs go into the index in one LevelDB batch.
 */
class Placer {
  private readonly parts: BackupParts
  private readonly options: RunOptions
  private readonly seq: number
  private readonly seen = new Set<string>()
  private needs: Array<[string, BlobKind]> = []
  private readonly queues = new Map<string, HostQueue>()
  private readonly outstanding = new Set<Placing>()
  private readonly sealedBuffers = new BufferPool(SEALED_KEPT)
  private inFlightBytes = 0
  /** place() calls waiting for room, and finish() calls waiting for the last blob */
  private waiters: Array<() => void> = []
  /** index writes, one after the other (each writes the blobs' hosts as they are then) */
  private writes: Promise<void> = Promise.resolve()
  /** hosts that refused or failed during this run, and why: not asked again */
  private readonly dropped = new Map<string, string>()
  private failure: unknown = null
  newBlobs = 0
  sentBytes = 0
  /** called when hosts confirmed blobs sent: progress moves while reading waits on the hosts */
  onSent: (() => void) | null = null

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
    const size = sealedSize(plaintext.length)
    while (this.inFlightBytes > 0 && this.inFlightBytes + size > IN_FLIGHT_BYTES) {
      await new Promise<void>(resolve => this.waiters.push(resolve))
      this.check()
    }
    const into = size >= SEALED_REUSED_FROM ? this.sealedBuffers.take(size) : Buffer.allocUnsafe(size)
    const sealed = sealBlob(this.parts.keys, this.parts.owner, kind, plaintext, id, into)
    // sealing is deterministic: the same blob has the same sealed id, so hosts already listed still hold it
    const known = record?.sealedId === sealed.sealedId ? record : null
    const blob: Placing = {
      id,
      kind,
      sealedId: sealed.sealedId,
      sealed: sealed.sealed,
      size: sealed.sealed.length,
      // a root kept before keeps its leaf size (4 KiB if it names none); a new one is cut in AUDIT_LEAF_SIZE leaves
      root: known?.root ?? Buffer.from(auditRoot(sealed.sealed, AUDIT_LEAF_SIZE)).toString('hex'),
      auditLeaf: known != null ? leafSizeOf(known) : AUDIT_LEAF_SIZE,
      hosts: [...known?.hosts ?? []],
      candidates: [],
      trying: 0
    }
    blob.candidates = hostOrder(this.options.hosts, id).filter(host => !blob.hosts.includes(host))
    this.inFlightBytes += sealed.sealed.length
    this.outstanding.add(blob)
    this.dispatch(blob)
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
    await this.settle()
    this.check()
    await this.flushNeeds()
  }

  /** Lets placements under way end (after a failure elsewhere) without hiding that failure. */
  async settle (): Promise<void> {
    while (this.outstanding.size > 0) await new Promise<void>(resolve => this.waiters.push(resolve))
    await this.writes
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

  private wake (): void {
    const waiters = this.waiters
    this.waiters = []
    for (const resolve of waiters) resolve()
  }

  /** Asks as many more hosts as the blob still lacks, or ends it: placed, or failed. */
  private dispatch (blob: Placing): void {
    // each host's answer dispatches the blob once its index write is done: the last one ends it
    if (!this.outstanding.has(blob)) return
    const stopped = this.failure != null || this.options.signal?.aborted === true
    while (!stopped && blob.hosts.length + blob.trying < this.options.replicas) {
      const host = blob.candidates.find(h => !this.dropped.has(h))
      if (host == null) break
      blob.candidates.splice(blob.candidates.indexOf(host), 1)
      blob.trying++
      this.queue(host).waiting.push(blob)
      this.pump(host)
    }
    if (blob.trying > 0) return
    if (blob.hosts.length >= this.options.replicas) {
      this.newBlobs++
    } else if (!stopped) {
      const why = [...this.dropped].map(([host, reason]) => `${host} ${reason}`).join('; ')
      this.failure ??= new KithError('BACKUP_PLACEMENT_FAILED', `a ${blob.kind} blob is on ${blob.hosts.length} of the ${this.options.replicas} hosts asked${why !== '' ? ` (${why})` : ''}. ` +
        'What was placed is kept: run the backup again once hosts have room or are back, or ask for fewer --replicas')
    }
    this.outstanding.delete(blob)
    this.inFlightBytes -= blob.size
    // every request that carried it has its answer (or was aborted, its unsent bytes dropped): the next blob is sealed into it
    this.sealedBuffers.give(blob.sealed)
    this.wake()
  }

  private queue (host: string): HostQueue {
    let queue = this.queues.get(host)
    if (queue == null) this.queues.set(host, queue = { waiting: [], inFlight: 0 })
    return queue
  }

  /**
   * Sends what waits for `host`: at once when nothing is in flight to it,
   * otherwise only a full batch, while fewer than REQUESTS_PER_HOST are. A
   * batch held back leaves when the request out comes back: the walk, if it
   * waits for room meanwhile, waits on that request's blobs.
   */
  private pump (host: string): void {
    const queue = this.queue(host)
    if (this.dropped.has(host) || this.failure != null || this.options.signal?.aborted === true) {
      const waiting = queue.waiting.splice(0)
      for (const blob of waiting) blob.trying--
      for (const blob of waiting) this.dispatch(blob)
      return
    }
    while (queue.inFlight < REQUESTS_PER_HOST && queue.waiting.length > 0) {
      if (queue.inFlight > 0 && !fullBatch(queue.waiting, w => w.size, PUT_BATCH_BYTES)) break
      const batch = takeBatch(queue.waiting, w => w.size, PUT_BATCH_BYTES)
      queue.inFlight++
      void this.send(host, batch).finally(() => {
        queue.inFlight--
        this.pump(host)
      })
    }
  }

  private async send (host: string, batch: Placing[]): Promise<void> {
    const { signal } = this.options
    let status: PutStatus[] | null = null
    try {
      status = (await unlessBusy(async () => await this.parts.host(host).putMany(batch.map(b => ({ id: b.sealedId, sealed: b.sealed })), signal), signal)).status
    } catch (err) {
      if (signal?.aborted === true) this.failure ??= err
      const error = asKithError(err)
      this.dropped.set(host, `${error.code}: ${error.message}`)
    }
    const confirmed: Placing[] = []
    for (const [i, blob] of batch.entries()) {
      blob.trying--
      const answer = status?.[i]
      if (answer === 'go' || answer === 'held') {
        blob.hosts.push(host)
        confirmed.push(blob)
        if (answer === 'go') this.sentBytes += blob.size
      } else if (answer === 'full') {
        this.dropped.set(host, 'QUOTA_EXCEEDED: the quota this friend granted you is full')
      }
    }
    if (confirmed.length > 0) this.onSent?.()
    // a host's copy is in the index the moment the host confirms it (and before the blob counts as placed).
    // This write may wait behind another host's for the same blob, whose send then ends the blob and gives
    // its sealed buffer back: it reads only what the blob keeps (size, never sealed.length)
    if (confirmed.length > 0) {
      this.writes = this.writes.then(async () => {
        await this.parts.index.putBlobs(confirmed.map(b => [b.id, { kind: b.kind, sealedId: b.sealedId, size: b.size, root: b.root, auditLeaf: b.auditLeaf, hosts: [...b.hosts] }]))
      }).catch(err => { this.failure ??= err })
      await this.writes
    }
    for (const blob of batch) this.dispatch(blob)
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
  /** the file cache's rows this run reads or trusts */
  readonly files: RunFiles
  /** bytes of the files being read now */
  private readonly reading = new ByteBudget(READ_BUDGET)
  /** chunking windows (cdcRead) of files read before: each file read through the chunker takes one */
  private readonly windows: Buffer[] = []
  private lastReport = 0

  constructor (parts: BackupParts, options: RunOptions, placer: Placer, total: number, seq: number) {
    this.parts = parts
    this.options = options
    this.placer = placer
    this.total = total
    this.files = parts.files.forRun(seq)
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

  /** A folder's tree blobs, its entries placed first (ENTRIES_AT_ONCE looked at together, kept in listing order). */
  private async dir (path: string): Promise<string[]> {
    const names: string[] = []
    for (const raw of await readdir(path, { encoding: 'buffer' })) {
      const name = raw.toString('utf8')
      // Node can't name such a file again (it reads names as UTF-8), nor can a tree hold it
      if (!Buffer.from(name, 'utf8').equals(raw)) {
        this.skipped.push({ path: join(path, name), reason: 'its name is not UTF-8 text' })
        continue
      }
      names.push(name)
    }
    const found: Array<TreeEntry | null> = new Array(names.length).fill(null)
    let next = 0
    let failure: unknown = null
    await Promise.all(Array.from({ length: Math.min(ENTRIES_AT_ONCE, names.length) }, async () => {
      while (failure == null && next < names.length) {
        const i = next++
        try {
          found[i] = await this.entry(join(path, names[i]!), names[i]!)
        } catch (err) {
          failure ??= err
        }
      }
    }))
    if (failure != null) throw failure
    this.stats.dirs++
    return await this.tree(found.filter(entry => entry != null))
  }

  /** Places a listing as tree blobs (cut like file content, so a big folder that changed a little shares blobs). */
  async tree (entries: TreeEntry[]): Promise<string[]> {
    const ids: string[] = []
    for (const piece of cdcCut(encodeTree(entries), this.parts.keys.gear)) ids.push(await this.placer.place('tree', piece))
    return ids
  }

  private async file (path: string, info: BigIntStats): Promise<{ size: number, chunks: string[] }> {
    const known = await this.parts.files.chunks(path, info)
    if (known != null && await this.placer.placed(known)) {
      await this.files.remember(path, info, known)
      const size = Number(info.size)
      this.stats.files++
      this.stats.bytes += size
      this.report()
      return { size, chunks: known }
    }
    const chunks: string[] = []
    let size = 0
    const budget = Math.min(Number(info.size), READ_BUDGET)
    await this.reading.take(budget)
    try {
      for await (const chunk of this.pieces(path, info)) {
        chunks.push(await this.placer.place('data', chunk))
        size += chunk.length
        this.readBytes += chunk.length
        this.stats.bytes += chunk.length
        this.report()
      }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'EACCES' || code === 'EPERM' || code === 'EIO') throw new KithError('SOURCE_UNREADABLE', `can't read it (${code})`, { cause: err })
      throw err
    } finally {
      this.reading.give(budget)
    }
    this.stats.files++
    await this.files.remember(path, info, chunks)
    return { size, chunks }
  }

  /**
   * A file's chunks, each placed before the next is read (the chunker hands
   * out views of its window). One no bigger than the chunker's minimum is
   * one chunk: read whole into a buffer of its size (most files of a tree are
   * small). One that grew past it since lstat is read again, through the chunker.
   */
  private async * pieces (path: string, info: BigIntStats): AsyncGenerator<Uint8Array> {
    const handle = await open(path, 'r')
    let position = 0
    const read = async (into: Uint8Array): Promise<number> => {
      this.options.signal?.throwIfAborted()
      const { bytesRead } = await handle.read(into, 0, into.length, position)
      position += bytesRead
      return bytesRead
    }
    try {
      if (info.size <= BigInt(BACKUP_CDC_SIZES.min)) {
        const buffer = Buffer.allocUnsafe(Number(info.size) + 1)
        let length = 0
        for (let n = -1; n !== 0 && length < buffer.length;) length += (n = await read(buffer.subarray(length)))
        if (length <= BACKUP_CDC_SIZES.min) {
          if (length > 0) yield buffer.subarray(0, length)
          return
        }
        position = 0
      }
      const window = this.windows.pop() ?? Buffer.allocUnsafeSlow(cdcWindowSize())
      try {
        yield * cdcRead(read, this.parts.keys.gear, window)
      } finally {
        if (this.windows.length < WINDOWS_KEPT) this.windows.push(window)
      }
    } finally {
      await handle.close()
    }
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
  const walk = new Walk(parts, options, placer, await measure(options.paths, options.signal), seq)
  placer.onSent = () => { walk.report() }
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
    const snapshot: SnapshotRecord = { seq, id, created: at, label: options.label, paths: options.paths, tree, stats: { ...walk.stats, blobs: placer.blobs }, replicas: options.replicas }
    await index.putSnapshot(snapshot)
    // rows of files under these paths this run did not see (deleted, moved) go
    await walk.files.prune(options.paths)
    walk.report(true)
    return { snapshot, blobs: placer.blobs, newBlobs: placer.newBlobs, sentBytes: placer.sentBytes, readBytes: walk.readBytes, skipped: walk.skipped }
  } catch (err) {
    await placer.settle()
    throw err
  }
}
