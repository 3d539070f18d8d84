import { createHash, randomBytes } from 'node:crypto'
import { link, lstat, mkdir, open, readdir, rename, rm, unlink, type FileHandle } from 'node:fs/promises'
import { dirname, join, resolve, sep } from 'node:path'
import type { AbortOptions } from '@libp2p/interface'
import { KithError } from '../errors.ts'
import { syncDir } from '../peer/home.ts'
import { PARTIAL_SUFFIX } from './constants.ts'
import { checkPath, chunkCount, chunkLength, type Manifest, type ManifestFile } from './manifest.ts'
import type { ChunkStore } from './chunk-store.ts'
import { openChunk, type SealKeys } from './seal.ts'

/**
 * Assembling files from verified chunks.
 *
 * A file is written to a hidden sibling of its destination,
 * `.kith-<random>.kith-partial`, checked chunk by chunk for length and as a
 * whole against the manifest's sha256, fsynced, and only then renamed (or,
 * when not overwriting, hard-linked) into place and the folder fsynced. So a
 * destination is either absent (or its previous content) or complete and
 * verified; a kill leaves at most a partial file, which `removePartials`
 * clears. The partial sits in the destination's own folder so the final step
 * is a rename within one filesystem.
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

async function writeAll (handle: FileHandle, data: Uint8Array): Promise<void> {
  let at = 0
  while (at < data.length) {
    const { bytesWritten } = await handle.write(data, at, data.length - at)
    at += bytesWritten
  }
}

async function isPresent (path: string): Promise<boolean> {
  try {
    await lstat(path)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
    throw err
  }
}

/** Moves a verified partial into place, without clobbering unless asked. */
async function place (partial: string, dest: string, overwrite: boolean): Promise<void> {
  if (overwrite) {
    await rename(partial, dest)
    return
  }
  try {
    await link(partial, dest) // atomic: fails with EEXIST rather than replace
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EEXIST') throw exists(dest)
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'EMLINK') throw err
    // A filesystem without hard links: check, then rename (racy only against other local writers).
    if (await isPresent(dest)) throw exists(dest)
    await rename(partial, dest)
    return
  }
  await unlink(partial)
}

/**
 * Writes one file from its chunks to `dest`, verified. Throws
 * FILE_VERIFY_FAILED if a chunk has the wrong length or the whole file the
 * wrong hash, DESTINATION_EXISTS, or whatever the reader throws (such as
 * CHUNK_NOT_FOUND); in every case no destination file is created or changed.
 */
export async function assembleFile (dest: string, entry: ManifestFile, chunkSize: number, read: ChunkReader, options: AssembleOptions = {}): Promise<void> {
  const overwrite = options.overwrite ?? false
  if (entry.chunks.length !== chunkCount(entry.size, chunkSize)) throw verifyFailed(entry.path, 'its chunk list does not match its size')
  if (!overwrite && await isPresent(dest)) throw exists(dest)
  const folder = dirname(dest)
  const partial = join(folder, `.kith-${randomBytes(8).toString('hex')}${PARTIAL_SUFFIX}`)
  const handle = await open(partial, 'wx', entry.executable ? 0o755 : 0o644)
  let closed = false
  try {
    const whole = createHash('sha256')
    for (const [index, id] of entry.chunks.entries()) {
      options.signal?.throwIfAborted()
      const plaintext = await read(index, id)
      const want = chunkLength(entry.size, chunkSize, index)
      if (plaintext.length !== want) throw verifyFailed(entry.path, `chunk ${index} is ${plaintext.length} bytes, not ${want}`)
      whole.update(plaintext)
      await writeAll(handle, plaintext)
    }
    if (whole.digest('hex') !== entry.sha256) throw verifyFailed(entry.path, 'the whole-file sha256 does not match the manifest')
    await handle.sync()
    closed = true
    await handle.close()
    options.signal?.throwIfAborted()
    await place(partial, dest, overwrite)
  } catch (err) {
    if (!closed) await handle.close().catch(() => {})
    await rm(partial, { force: true })
    throw err
  }
  await syncDir(folder)
}

/**
 * A reader for the file at `manifest.entries[file]` that takes sealed chunks
 * from a store (hash-checked there) and opens them at their position: the
 * share, that entry's whole-file sha256, and the chunk's index. Reading fails
 * with BAD_REQUEST if that entry is not a file.
 */
export function storeReader (store: Pick<ChunkStore, 'get'>, keys: SealKeys, manifest: Pick<Manifest, 'shareId' | 'entries'>, file: number): ChunkReader {
  const entry = manifest.entries[file]
  const fileHash = entry?.type === 'file' ? entry.sha256 : undefined
  return async (index, id) => {
    if (fileHash === undefined) throw new KithError('BAD_REQUEST', `entry ${file} of the manifest is not a file, so it has no chunks to read`)
    return openChunk(keys, { shareId: manifest.shareId, fileHash, index }, await store.get(id))
  }
}

/**
 * Resolves `path` under `root` and makes its parent folders, refusing any
 * step that is not a real folder (a link or a file in the way), so nothing is
 * written outside `root` even if the destination already holds links.
 */
async function prepare (root: string, path: string, isDir: boolean): Promise<string> {
  checkPath(path)
  const target = resolve(root, ...path.split('/'))
  if (!target.startsWith(root.endsWith(sep) ? root : root + sep)) {
    throw new KithError('MANIFEST_BAD_PATH', `${JSON.stringify(path)} would land outside the destination folder; it was refused`)
  }
  const segments = path.split('/')
  const folders = isDir ? segments : segments.slice(0, -1)
  let at = root
  for (const segment of folders) {
    at = join(at, segment)
    let info
    try {
      info = await lstat(at)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
      await mkdir(at, { mode: 0o755 }).catch((e: NodeJS.ErrnoException) => { if (e.code !== 'EEXIST') throw e })
      info = await lstat(at)
    }
    if (!info.isDirectory()) {
      throw new KithError('DESTINATION_EXISTS', `${JSON.stringify(at)} is in the way (it is ${info.isSymbolicLink() ? 'a link' : 'not a folder'}); move it away and try again`)
    }
  }
  return target
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
  await mkdir(root, { recursive: true })
  for (const [file, entry] of init.manifest.entries.entries()) {
    init.signal?.throwIfAborted()
    const target = await prepare(root, entry.path, entry.type === 'dir')
    if (entry.type === 'dir') continue
    await assembleFile(target, entry, init.manifest.chunkSize, storeReader(init.store, init.keys, init.manifest, file), init)
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
