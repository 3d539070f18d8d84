import { createHash, type Hash } from 'node:crypto'
import { constants } from 'node:fs'
import { lstat, open, readdir, stat, type FileHandle } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { pipe } from 'it-pipe'
import type { AbortOptions } from '@libp2p/interface'
import { KithError } from '../errors.ts'
import { CHUNK_SIZE, MAX_CHUNK_SIZE, MAX_CHUNKS, MAX_ENTRIES, MAX_FILE_SIZE, MIN_CHUNK_SIZE } from './constants.ts'
import { checkPath, chunkCount, chunkLength, comparePaths, type ManifestEntry, type ManifestFile } from './manifest.ts'
import { chunkId, sealChunk, type SealKeys } from './seal.ts'

/**
 * Turns a file or folder into sealed chunks and manifest entries.
 *
 * A folder is walked first, without reading any content: entries are sorted by
 * the UTF-8 bytes of their paths (the manifest order, whose indexes the chunks
 * are sealed at), and the entry count and the chunk count implied by the sizes
 * are checked against the manifest limits before a byte is read. Then each file
 * flows through read -> seal -> store one chunk at a time, so memory stays at a
 * few chunks whatever the size of the share.
 *
 * Symlinks, sockets, devices and names a manifest can't carry are skipped and
 * reported, never followed: a share holds exactly what lies inside its folder.
 * A file that changes while it is read fails with SOURCE_CHANGED rather than
 * yield a manifest that matches no version of it.
 */

/** Where sealed chunks go; a ChunkStore is one. */
export interface ChunkSink {
  put: (id: string, sealed: Uint8Array) => Promise<unknown>
}

export interface ChunkSourceInit extends AbortOptions {
  keys: SealKeys
  /** The manifest version these chunks are sealed for. */
  version: number
  store: ChunkSink
  /** @default CHUNK_SIZE (1 MiB) */
  chunkSize?: number
}

export interface SkippedEntry {
  path: string
  reason: string
}

export interface ChunkResult {
  /** Sorted, ready for `createManifest`. */
  entries: ManifestEntry[]
  chunkSize: number
  chunkCount: number
  totalSize: number
  skipped: SkippedEntry[]
}

interface Planned {
  path: string
  /** Absolute path on disk; absent for folders. */
  source?: string
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
        planned.push({ path, size: 0, executable: false, mtimeMs: info.mtimeMs })
        pending.push(path)
      } else if (info.isFile()) {
        if (info.size > MAX_FILE_SIZE) throw tooMany(`a file of ${info.size} bytes (${path}), more than ${MAX_FILE_SIZE}`)
        chunks += chunkCount(info.size, chunkSize)
        if (chunks > MAX_CHUNKS) throw tooMany(`more than ${MAX_CHUNKS} chunks of ${chunkSize} bytes`)
        planned.push({ path, source: full, size: info.size, executable: (info.mode & 0o111) !== 0, mtimeMs: info.mtimeMs })
      } else {
        skipped.push({ path, reason: info.isSymbolicLink() ? 'a symbolic link; links are not followed' : 'not a regular file or folder' })
      }
      if (planned.length > MAX_ENTRIES) throw tooMany(`more than ${MAX_ENTRIES} files and folders`)
    }
  }
  return planned.sort((a, b) => comparePaths(a.path, b.path))
}

/** Reads exactly `size` bytes in chunk-sized pieces; fails if the file is shorter or longer. */
async function * readChunks (handle: FileHandle, path: string, size: number, chunkSize: number, options: AbortOptions): AsyncGenerator<Buffer> {
  const count = chunkCount(size, chunkSize)
  for (let index = 0; index < count; index++) {
    options.signal?.throwIfAborted()
    const want = chunkLength(size, chunkSize, index)
    const buffer = Buffer.allocUnsafe(want)
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

/** Seals each plaintext chunk at its position, feeding the whole-file hash on the way. */
function sealStage (keys: SealKeys, version: number, file: number, whole: Hash) {
  return async function * (source: AsyncIterable<Buffer>): AsyncGenerator<{ id: string, sealed: Uint8Array }> {
    let index = 0
    for await (const plaintext of source) {
      whole.update(plaintext)
      const sealed = sealChunk(keys, { shareId: keys.shareId, version, file, index: index++ }, plaintext)
      yield { id: chunkId(sealed), sealed }
    }
  }
}

async function chunkFile (item: Planned, file: number, init: ChunkSourceInit, chunkSize: number, followLinks: boolean): Promise<ManifestFile> {
  let handle: FileHandle
  try {
    // Inside a folder, a file swapped for a link since the walk is refused, not followed.
    handle = await open(item.source!, followLinks ? constants.O_RDONLY : constants.O_RDONLY | constants.O_NOFOLLOW)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ELOOP') throw changed(item.path, 'it became a link')
    throw unreadable(item.path, err)
  }
  try {
    const before = await handle.stat()
    if (!before.isFile() || before.size !== item.size || before.mtimeMs !== item.mtimeMs) throw changed(item.path, 'it was modified')
    const whole = createHash('sha256')
    const chunks: string[] = []
    await pipe(
      readChunks(handle, item.path, item.size, chunkSize, init),
      sealStage(init.keys, init.version, file, whole),
      async (source) => {
        for await (const { id, sealed } of source) {
          await init.store.put(id, sealed)
          chunks.push(id)
        }
      }
    )
    const after = await handle.stat()
    if (after.size !== before.size || after.mtimeMs !== before.mtimeMs) throw changed(item.path, 'it was modified')
    return { type: 'file', path: item.path, size: item.size, executable: item.executable, sha256: whole.digest('hex'), chunks }
  } finally {
    await handle.close()
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
  try {
    info = await stat(source) // the source itself may be a link the user chose
  } catch (err) {
    throw unreadable(source, err)
  }
  const skipped: SkippedEntry[] = []
  let planned: Planned[]
  let followLinks = false
  if (info.isDirectory()) {
    planned = await plan(source, skipped, chunkSize, init)
  } else if (info.isFile()) {
    const path = basename(source)
    checkPath(path)
    if (info.size > MAX_FILE_SIZE || chunkCount(info.size, chunkSize) > MAX_CHUNKS) {
      throw tooMany(`a file of ${info.size} bytes, more than ${Math.min(MAX_FILE_SIZE, MAX_CHUNKS * chunkSize)}`)
    }
    planned = [{ path, source, size: info.size, executable: (info.mode & 0o111) !== 0, mtimeMs: info.mtimeMs }]
    followLinks = true
  } else {
    throw new KithError('SOURCE_UNREADABLE', `${JSON.stringify(source)} is neither a file nor a folder`)
  }

  const entries: ManifestEntry[] = []
  let chunkTotal = 0
  let totalSize = 0
  for (const [file, item] of planned.entries()) {
    init.signal?.throwIfAborted()
    if (item.source === undefined) {
      entries.push({ type: 'dir', path: item.path })
      continue
    }
    const entry = await chunkFile(item, file, init, chunkSize, followLinks)
    chunkTotal += entry.chunks.length
    totalSize += entry.size
    entries.push(entry)
  }
  return { entries, chunkSize, chunkCount: chunkTotal, totalSize, skipped }
}
