import { createHash, type Hash } from 'node:crypto'
import { constants } from 'node:fs'
import { lstat, open, readdir, realpath, stat, type FileHandle } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { pipe } from 'it-pipe'
import type { AbortOptions } from '@libp2p/interface'
import { KithError } from '../errors.ts'
import { CHUNK_SIZE, MAX_CHUNK_SIZE, MAX_CHUNKS, MAX_ENTRIES, MAX_FILE_SIZE, MIN_CHUNK_SIZE, PACKED_FILE_MAX } from './constants.ts'
import { checkPath, chunkCount, chunkLength, comparePaths, packHash, type ManifestEntry, type ManifestFile } from './manifest.ts'
import { freeNow } from './buffer-pool.ts'
import { chunkId, sealChunkParts, type ChunkPosition, type SealKeys } from './seal.ts'
import type { FileSeen } from './chunk-store.ts'

/**
 * Turns a file or folder into sealed chunks and manifest entries.
 *
 * A folder is walked first, without reading any content: entries are sorted by
 * the UTF-8 bytes of their paths (the manifest order), and the entry count and
 * the chunk count implied by the sizes are checked against the manifest limits
 * before a byte is read. Then each file is read twice through one open handle:
 * once to hash it, because chunks are sealed at (share id, whole-file sha256,
 * index) (seal.ts), and once more flowing read -> seal -> store one chunk at a
 * time. Memory stays at a few chunks whatever the size of the share.
 *
 * Sealing at the file's content rather than at the manifest version and the
 * file's place in the entry list means a file left unchanged between versions
 * of a share seals to the same chunks with the same ids: they are already in
 * the store, and friends who hold them need not fetch them again.
 *
 * Symlinks, sockets, devices and names a manifest can't carry are skipped and
 * reported, never followed: a share holds exactly what lies inside its folder.
 * A file that changes while it is read fails with SOURCE_CHANGED rather than
 * yield a manifest that matches no version of it: its size and mtime are
 * checked before, between and after the two passes, its length while each pass
 * reads, and the second pass hashes the file again and must get the same
 * sha256 as the first (which catches a same-size rewrite within one mtime
 * tick). Chunks already stored when such a change is caught are left in the
 * store, referenced by no manifest.
 *
 * Small files (1 byte to PACKED_FILE_MAX) are packed when the sink can keep
 * sealed chunks (`putPack`): each is read once, whole, through one handle
 * (its size and mtime checked before and after, its length while read), and
 * consecutive ones in manifest order are concatenated into one chunk of up
 * to the chunk size, sealed at `packHash` of their hashes (manifest.ts). A
 * pack's plaintext lies in many files, so the sink keeps it sealed rather
 * than pointing at a file: a copy of the small files' bytes, bought for one
 * chunk (one request, one verification, one store row) per pack instead of
 * per file.
 */

/** Where a chunk's plaintext lies on disk, and the position it is sealed at. */
export interface ChunkPlace {
  /** the shared file, links resolved */
  path: string
  offset: number
  position: ChunkPosition
  /** the file's size and mtime as read (checked unchanged around both passes) */
  seen: FileSeen
}

/**
 * Where sealed chunks go: a ChunkStore keeps the sealed bytes (`put`) or only
 * where their plaintext lies (`putInFile`, as kith does for its own shares).
 */
export interface ChunkSink {
  /**
   * `sealed` in pieces (joined in order): a sink that only records where the
   * chunk lies needs no copy. The sink keeps nothing of the pieces once its
   * promise settles: the chunker then frees them (`freeNow`).
   */
  put: (id: string, sealed: Uint8Array[], place: ChunkPlace) => Promise<unknown>
  /** Keeps a sealed pack of small files (see the module doc); without it, nothing is packed. */
  putPack?: (id: string, sealed: Uint8Array[]) => Promise<unknown>
}

export interface ChunkSourceInit extends AbortOptions {
  keys: SealKeys
  /**
   * The manifest version these chunks are for. Sealing no longer depends on it
   * (chunks are bound to the file's content, so they carry over between
   * versions); kept so callers need not change.
   */
  version: number
  store: ChunkSink
  /** @default CHUNK_SIZE (1 MiB) */
  chunkSize?: number
  /**
   * Takes each entry as soon as it is made, in manifest order, instead of
   * the result's `entries` (then empty): a ManifestWriter, so that a share
   * of many files holds their encodings rather than an object per file. A
   * packed file's `chunks` is empty there: its pack's id is in the result's
   * `packs`, at its `pack.index`.
   */
  entries?: { add: (entry: ManifestEntry) => void }
}

export interface SkippedEntry {
  path: string
  reason: string
}

export interface ChunkResult {
  /** Sorted, ready for `createManifest`; empty when `init.entries` took them. */
  entries: ManifestEntry[]
  /** The packs' ids, by `pack.index` of the entries packed into them. */
  packs: string[]
  chunkSize: number
  chunkCount: number
  totalSize: number
  skipped: SkippedEntry[]
}

/** A file or folder the walk found: its absolute path is made again when it is read, not held for every file of a share. */
interface Planned {
  path: string
  folder: boolean
  size: number
  executable: boolean
  mtimeMs: number
}

function unreadable (path: string, err: unknown): KithError {
  const code = (err as NodeJS.ErrnoException).code ?? 'error'
  return new KithError('SOURCE_UNREADABLE', `can't read ${JSON.stringify(path)} (${code}); check it exists and you may read it`, { cause: err })
}

function changed (path: string, why: string): KithError {
  return new KithError('SOURCE_CHANGED', `${JSON.stringify(path)} changed while it was being shared (${why}); share it again once it is no longer being written`)
}

function tooMany (what: string): KithError {
  return new KithError('MANIFEST_LIMIT', `this share would hold ${what}; share its folders separately`)
}

/** Walks `root` without following links; returns sorted entries, paths relative to root. */
async function plan (root: string, skipped: SkippedEntry[], chunkSize: number, options: AbortOptions): Promise<Planned[]> {
  const planned: Planned[] = []
  let chunks = 0
  const pending: string[] = ['']
  while (pending.length > 0) {
    options.signal?.throwIfAborted()
    const rel = pending.pop()!
    const dir = rel === '' ? root : join(root, rel)
    let names: string[]
    try {
      names = await readdir(dir)
    } catch (err) {
      throw unreadable(rel === '' ? root : rel, err)
    }
    for (const name of names) {
      const path = rel === '' ? name : `${rel}/${name}`
      try {
        checkPath(path)
      } catch (err) {
        skipped.push({ path, reason: (err as KithError).message })
        continue
      }
      const full = join(root, path)
      let info
      try {
        info = await lstat(full)
      } catch (err) {
        // Gone since readdir, or a name that is not valid UTF-8 (Node decoded it lossily).
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
          skipped.push({ path, reason: 'it vanished while the folder was read, or its name is not valid UTF-8' })
          continue
        }
        throw unreadable(path, err)
      }
      if (info.isDirectory()) {
        planned.push({ path, folder: true, size: 0, executable: false, mtimeMs: info.mtimeMs })
        pending.push(path)
      } else if (info.isFile()) {
        if (info.size > MAX_FILE_SIZE) throw tooMany(`a file of ${info.size} bytes (${path}), more than ${MAX_FILE_SIZE}`)
        chunks += chunkCount(info.size, chunkSize)
        if (chunks > MAX_CHUNKS) throw tooMany(`more than ${MAX_CHUNKS} chunks of ${chunkSize} bytes`)
        planned.push({ path, folder: false, size: info.size, executable: (info.mode & 0o111) !== 0, mtimeMs: info.mtimeMs })
      } else {
        skipped.push({ path, reason: info.isSymbolicLink() ? 'a symbolic link; links are not followed' : 'not a regular file or folder' })
      }
      if (planned.length > MAX_ENTRIES) throw tooMany(`more than ${MAX_ENTRIES} files and folders`)
    }
  }
  return planned.sort((a, b) => comparePaths(a.path, b.path))
}

/**
 * Reads exactly `size` bytes in chunk-sized pieces; fails if the file is
 * shorter or longer. With `reuse`, every piece is the same buffer, overwritten
 * by the next read: only for consumers done with a piece before asking for the
 * next.
 */
async function * readChunks (handle: FileHandle, path: string, size: number, chunkSize: number, options: AbortOptions, reuse = false): AsyncGenerator<Buffer> {
  const count = chunkCount(size, chunkSize)
  const shared = reuse && count > 0 ? Buffer.allocUnsafe(Math.min(chunkSize, size)) : undefined
  for (let index = 0; index < count; index++) {
    options.signal?.throwIfAborted()
    const want = chunkLength(size, chunkSize, index)
    const buffer = shared !== undefined ? shared.subarray(0, want) : Buffer.allocUnsafe(want)
    let filled = 0
    while (filled < want) {
      const { bytesRead } = await handle.read(buffer, filled, want - filled, index * chunkSize + filled)
      if (bytesRead === 0) throw changed(path, 'it got shorter')
      filled += bytesRead
    }
    yield buffer
  }
  const { bytesRead } = await handle.read(Buffer.alloc(1), 0, 1, size)
  if (bytesRead !== 0) throw changed(path, 'it got longer')
}

/** First pass: the sha256 of the whole file, read a chunk at a time into one buffer. */
async function hashFile (handle: FileHandle, path: string, size: number, chunkSize: number, options: AbortOptions): Promise<string> {
  const whole = createHash('sha256')
  for await (const piece of readChunks(handle, path, size, chunkSize, options, true)) whole.update(piece)
  return whole.digest('hex')
}

/** Seals each plaintext chunk at its position, feeding the second-pass hash on the way. */
function sealStage (keys: SealKeys, fileHash: string, whole: Hash) {
  return async function * (source: AsyncIterable<Buffer>): AsyncGenerator<{ id: string, sealed: Uint8Array[], position: ChunkPosition }> {
    let index = 0
    for await (const plaintext of source) {
      whole.update(plaintext)
      const position = { shareId: keys.shareId, fileHash, index: index++ }
      const sealed = sealChunkParts(keys, position, plaintext)
      yield { id: chunkId(sealed), sealed, position }
    }
  }
}

/** Opens a file of the walk; inside a folder, a file swapped for a link since the walk is refused, not followed. */
async function openPlanned (item: Planned, source: string, followLinks: boolean): Promise<FileHandle> {
  try {
    return await open(source, followLinks ? constants.O_RDONLY : constants.O_RDONLY | constants.O_NOFOLLOW)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ELOOP') throw changed(item.path, 'it became a link')
    throw unreadable(item.path, err)
  }
}

/** Refuses a file that is no longer what the walk saw (a regular file of that size and mtime). */
async function checkUnchanged (handle: FileHandle, item: Planned): Promise<void> {
  const now = await handle.stat()
  if (!now.isFile() || now.size !== item.size || now.mtimeMs !== item.mtimeMs) throw changed(item.path, 'it was modified')
}

async function chunkFile (item: Planned, source: string, init: ChunkSourceInit, chunkSize: number, followLinks: boolean): Promise<ManifestFile> {
  const handle = await openPlanned(item, source, followLinks)
  try {
    // Both passes read through this one handle, so a file replaced by rename
    // in between is not mixed in; writes in place are caught by the checks.
    await checkUnchanged(handle, item)
    // Pass 1: the whole-file hash, which every chunk is sealed at.
    const sha256 = await hashFile(handle, item.path, item.size, chunkSize, init)
    await checkUnchanged(handle, item)
    // Pass 2: read, seal, store; hashed again to prove it read what pass 1 did.
    const again = createHash('sha256')
    const chunks: string[] = []
    await pipe(
      // one buffer for every chunk: each is sealed (into new buffers) before the next is read
      readChunks(handle, item.path, item.size, chunkSize, init, true),
      sealStage(init.keys, sha256, again),
      async (sealedChunks) => {
        for await (const { id, sealed, position } of sealedChunks) {
          try {
            await init.store.put(id, sealed, { path: source, offset: position.index * chunkSize, position, seen: { size: item.size, mtimeMs: item.mtimeMs } })
          } finally {
            // AES-GCM's 64 KiB outputs, made per chunk and read by nothing once put: given back now, not
            // when V8 next collects (a share seals every byte; glibc's heap grew with its rate)
            for (const piece of sealed) freeNow(piece)
          }
          chunks.push(id)
        }
      }
    )
    await checkUnchanged(handle, item)
    if (again.digest('hex') !== sha256) throw changed(item.path, 'its content differs between two reads')
    return { type: 'file', path: item.path, size: item.size, executable: item.executable, sha256, chunks }
  } finally {
    await handle.close()
  }
}

/**
 * Reads a small file whole, once, into `into` at `at` (which has room for one
 * byte more: a file grown since is seen), checking it did not change
 * meanwhile; returns the view of its bytes there.
 */
async function readSmallInto (item: Planned, source: string, followLinks: boolean, into: Buffer, at: number): Promise<Buffer> {
  const handle = await openPlanned(item, source, followLinks)
  try {
    await checkUnchanged(handle, item)
    const end = at + item.size + 1
    let filled = at
    for (;;) {
      const { bytesRead } = await handle.read(into, filled, end - filled, filled - at)
      if (bytesRead === 0) break
      filled += bytesRead
      if (filled - at > item.size) throw changed(item.path, 'it got longer')
    }
    if (filled - at < item.size) throw changed(item.path, 'it got shorter')
    await checkUnchanged(handle, item)
    return into.subarray(at, at + item.size)
  } finally {
    await handle.close()
  }
}

/**
 * Small files gathered into one chunk, sealed and stored once full (see the
 * module doc). Each file is read straight into the pack's one buffer, so a
 * share of many small files makes no buffer per file (100,000 of 4 KiB went
 * through glibc's heap one by one, each freed only when V8 collected it).
 */
class Packer {
  readonly ids: string[] = []
  /** the pack being filled, and a byte more for the read that catches a file grown since the walk */
  private readonly buffer: Buffer
  private hashes: Buffer[] = []
  private bytes = 0
  private readonly init: ChunkSourceInit
  private readonly chunkSize: number
  private readonly putPack: NonNullable<ChunkSink['putPack']>

  constructor (init: ChunkSourceInit, chunkSize: number, putPack: NonNullable<ChunkSink['putPack']>) {
    this.init = init
    this.chunkSize = chunkSize
    this.putPack = putPack
    this.buffer = Buffer.allocUnsafe(chunkSize + 1)
  }

  /** Reads a small file into the pack; returns its sha256, its pack's index and its offset there. */
  async add (item: Planned, source: string, followLinks: boolean): Promise<{ sha256: Buffer, pack: { index: number, offset: number } }> {
    if (this.bytes + item.size > this.chunkSize) await this.flush()
    const offset = this.bytes
    const plaintext = await readSmallInto(item, source, followLinks, this.buffer, offset)
    const sha256 = createHash('sha256').update(plaintext).digest()
    this.hashes.push(sha256)
    this.bytes += item.size
    return { sha256, pack: { index: this.ids.length, offset } }
  }

  /** Seals and stores the pack being filled, if any. */
  async flush (): Promise<void> {
    if (this.hashes.length === 0) return
    const position = { shareId: this.init.keys.shareId, fileHash: packHash(this.hashes), index: 0 }
    // sealed into new buffers: the pack's buffer is free for the next pack once this returns
    const sealed = sealChunkParts(this.init.keys, position, this.buffer.subarray(0, this.bytes))
    const id = chunkId(sealed)
    await this.putPack(id, sealed)
    this.ids.push(id)
    this.hashes = []
    this.bytes = 0
  }
}

/**
 * Chunks, seals and stores a file or a folder, returning the manifest entries.
 * A file becomes one entry named after it; a folder becomes its contents,
 * paths relative to it. Throws MANIFEST_LIMIT before reading any content if
 * the source is beyond what one manifest can hold.
 */
export async function chunkSource (source: string, init: ChunkSourceInit): Promise<ChunkResult> {
  const chunkSize = init.chunkSize ?? CHUNK_SIZE
  if (!Number.isInteger(chunkSize) || chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE) {
    throw new KithError('BAD_REQUEST', `chunk size must be ${MIN_CHUNK_SIZE} to ${MAX_CHUNK_SIZE} bytes, not ${chunkSize}`)
  }
  let info
  let real: string
  try {
    info = await stat(source) // the source itself may be a link the user chose
    real = await realpath(source) // what the store records where chunks lie
  } catch (err) {
    throw unreadable(source, err)
  }
  const skipped: SkippedEntry[] = []
  let planned: Planned[]
  let followLinks = false
  if (info.isDirectory()) {
    planned = await plan(real, skipped, chunkSize, init)
  } else if (info.isFile()) {
    const path = basename(source)
    checkPath(path)
    if (info.size > MAX_FILE_SIZE || chunkCount(info.size, chunkSize) > MAX_CHUNKS) {
      throw tooMany(`a file of ${info.size} bytes, more than ${Math.min(MAX_FILE_SIZE, MAX_CHUNKS * chunkSize)}`)
    }
    planned = [{ path, folder: false, size: info.size, executable: (info.mode & 0o111) !== 0, mtimeMs: info.mtimeMs }]
    followLinks = true
  } else {
    throw new KithError('SOURCE_UNREADABLE', `${JSON.stringify(source)} is neither a file nor a folder`)
  }

  const entries: ManifestEntry[] = []
  const add = init.entries !== undefined ? (entry: ManifestEntry) => { init.entries!.add(entry) } : (entry: ManifestEntry) => { entries.push(entry) }
  let chunkTotal = 0
  let totalSize = 0
  const packer = init.store.putPack !== undefined ? new Packer(init, chunkSize, init.store.putPack) : undefined
  /** packed entries (when kept here) whose pack is not stored yet: their `chunks` are filled in once it is */
  let waiting: ManifestFile[] = []
  const packed = (): void => {
    for (const entry of waiting) entry.chunks = [packer!.ids[entry.pack!.index]!]
    waiting = []
  }
  for (const item of planned) {
    init.signal?.throwIfAborted()
    if (item.folder) {
      add({ type: 'dir', path: item.path })
      continue
    }
    // a lone file is the source itself, links resolved (its name in the share may be a link's)
    const source = followLinks ? real : join(real, item.path)
    totalSize += item.size
    if (packer !== undefined && item.size > 0 && item.size <= Math.min(PACKED_FILE_MAX, chunkSize)) {
      const before = packer.ids.length
      const { sha256, pack } = await packer.add(item, source, followLinks)
      if (packer.ids.length > before) packed()
      const entry: ManifestFile = { type: 'file', path: item.path, size: item.size, executable: item.executable, sha256: sha256.toString('hex'), chunks: [], pack }
      if (init.entries === undefined) waiting.push(entry)
      add(entry)
      continue
    }
    const entry = await chunkFile(item, source, init, chunkSize, followLinks)
    chunkTotal += entry.chunks.length
    add(entry)
  }
  if (packer !== undefined) {
    await packer.flush()
    packed()
  }
  const packs = packer?.ids ?? []
  return { entries, packs, chunkSize, chunkCount: chunkTotal + packs.length, totalSize, skipped }
}
