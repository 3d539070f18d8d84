import { randomBytes } from 'node:crypto'
import { constants } from 'node:fs'
import { lstat, mkdir, open, readdir, rename, rm, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import type { AbstractLevel, AbstractSublevel } from 'abstract-level'
import { KithError } from '../errors.ts'
import { syncDir } from '../peer/home.ts'
import { BufferPool } from './buffer-pool.ts'
import { MAX_SEALED_CHUNK_SIZE, PARTIAL_SUFFIX, SEAL_OVERHEAD } from './constants.ts'
import { checkSealedSize, chunkId, isId, resealChunkParts, sealedNonce, sealedSize, verifySealed, type ChunkPosition, type SealKeys } from './seal.ts'

/**
 * The encrypted chunk store: sealed chunks as files, indexed in LevelDB.
 *
 *   <dir>/tmp/<id>.<random>.tmp    writes in flight; emptied on open
 *   <dir>/<id[0..2]>/<id>          one sealed chunk, named by its sha256
 *   db: chunks/<id> -> { size }    the index: a chunk is in the store iff it is here
 *   db: meta/stats  -> { count, bytes }, updated in the same batch as the index
 *
 * A chunk is indexed only after its bytes were checked against its id, written
 * to a temp file, fsynced, renamed into place and its folder fsynced, so a kill
 * at any moment leaves at worst an unindexed file (overwritten by the next put
 * of that id) and never an indexed chunk with bad bytes. Reads verify the hash
 * again; a chunk damaged on disk is dropped from the index and reported as
 * CHUNK_CORRUPT, so it gets fetched again.
 *
 * The store holds ciphertext only and needs no keys: a node can keep chunks
 * for friends without reading them.
 *
 * A chunk can also be held in a file: a shared file or a fetched file already
 * holds the plaintext of its chunks, so instead of a second, sealed copy the index
 * records where the plaintext lies and the nonce it was sealed with
 * (`putInFile`), and `get` seals it again with the share's keys (from
 * `init.keys`) and checks the result against the id, as for any chunk. A file
 * that changed, moved or went away makes its chunks fail that check: they
 * are dropped from the index, and the file itself is never touched. Writing
 * each fetched byte once instead of twice is most of what a fetch costs in
 * CPU beyond the network, and it halves the disk a fetch uses; sharing writes
 * nothing but the index.
 *
 *   db: chunks/<id> -> { size, file: { path, offset, position, owner, nonce, seen? } }
 */

export interface ChunkStoreInit {
  /** Folder for chunk files; created if missing. */
  dir: string
  /**
   * Where the index lives: the daemon hands in a sublevel of its database (or
   * a whole `Level` in tests). The store makes `chunks` and `meta` sublevels
   * under it and never closes it.
   */
  db: AbstractLevel<any, any, any>
  /**
   * fsync each chunk file and its folder before indexing it. Turning this off
   * keeps kill -9 safety (the page cache survives a killed process) but not
   * power-loss safety.
   *
   * @default true
   */
  sync?: boolean
  /**
   * The keys of a share, for chunks held in files (`putInFile`): one, or
   * every key it had, newest first (a share's key changes when its owner
   * removes a friend from it; each is tried until one gives the chunk's id).
   * Undefined or none when they are unknown (say, its owner is no longer a
   * friend), and the chunk then counts as gone. Without it, chunks in files
   * are never readable.
   */
  keys?: (shareId: string, owner: string) => Promise<SealKeys | readonly SealKeys[] | undefined>
  /** Told of every chunk held in a file that `get` found gone (its row then dropped). */
  onDropped?: (id: string, file: FileRef) => void
}

/** Where the plaintext of a chunk held in a file lies. */
export interface FileRef {
  /** absolute path of the file */
  path: string
  /** where the chunk's plaintext starts; it runs for the sealed size minus SEAL_OVERHEAD */
  offset: number
  /** the chunk's place, as sealed */
  position: ChunkPosition
  /** peer id of the share's owner: whose keys seal it */
  owner: string
  /** the 12-byte nonce it was sealed with, hex */
  nonce: string
  /**
   * The file's size and mtime when the chunk was last known to be in it (not
   * for a partial still being written): `has` checks the chunk's bytes again
   * only when they differ.
   */
  seen?: FileSeen
}

export interface FileSeen {
  size: number
  mtimeMs: number
}

export interface PutOptions {
  /** fsync this chunk whatever the store's default */
  sync?: boolean
}

export interface PutInFileOptions {
  /**
   * The caller has just read this chunk at `ref` (sharing a file): a chunk
   * held elsewhere (another file, which may have been renamed or changed
   * since, or a sealed copy, which is then deleted) is pointed here instead.
   * Without it, a chunk already held stays where it is, unless it is held in
   * another fetch's partial.
   *
   * @default false
   */
  replace?: boolean
}

export interface ChunkStoreStats {
  /** chunks held, sealed or in files */
  count: number
  /** bytes of sealed chunk files: what the store itself takes on disk */
  bytes: number
  /** of `count`, the chunks held in files (shared or fetched) rather than sealed */
  inFiles: number
}

export interface ChunkInfo {
  id: string
  /** size of the sealed chunk */
  size: number
  /** held in a file (see `putInFile`): forgetting it frees no disk */
  inFile: boolean
}

export interface ChunkStore {
  /**
   * Stores a sealed chunk under its id. Throws CHUNK_BAD_ID, CHUNK_TOO_LARGE or
   * CHUNK_HASH_MISMATCH, having written nothing, if the bytes don't hash to
   * the id. Resolves true if the chunk is new, false if it was already held.
   */
  put: (id: string, sealed: Uint8Array, options?: PutOptions) => Promise<boolean>
  /**
   * Records that a chunk is held in a file (see the module doc): `sealed` is
   * the chunk as received, already checked against its id, whose plaintext
   * the caller has written at `ref.offset` of `ref.path`. Only its size and
   * nonce are kept. Resolves false, changing nothing, if the chunk is held
   * already: sealed, or in a file that is not a partial. A chunk held in
   * another fetch's partial (`.kith-partial`) is taken over by this file, and
   * with `replace` (sharing) any chunk held elsewhere is.
   */
  putInFile: (id: string, sealed: Uint8Array | Uint8Array[], ref: Omit<FileRef, 'nonce'>, options?: PutInFileOptions) => Promise<boolean>
  /**
   * Points the given chunks that are held in file `from` at file `to`
   * instead (a partial renamed into place). Others are left alone.
   */
  moveInFile: (ids: Iterable<string>, from: string, to: string) => Promise<void>
  /** Held: indexed, and if held in a file, that file is still there. */
  has: (id: string) => Promise<boolean>
  /**
   * The sealed bytes, verified against the id. Throws CHUNK_NOT_FOUND if the
   * chunk isn't held, CHUNK_CORRUPT (and forgets it) if its file is damaged or
   * missing, or (held in a file) that file changed or its keys are unknown.
   */
  get: (id: string) => Promise<Uint8Array>
  /**
   * `get` in pieces that join to the sealed bytes, for a caller that sends
   * them on: a chunk sealed again from its file is not copied into one buffer.
   */
  getParts: (id: string) => Promise<Uint8Array[]>
  /** Resolves true if the chunk was held. A chunk held in a file is only forgotten; the file stays. */
  delete: (id: string) => Promise<boolean>
  /** Every chunk held, in id order. */
  list: () => AsyncGenerator<ChunkInfo>
  stats: () => ChunkStoreStats
}

interface ChunkRecord {
  /** size of the sealed chunk */
  size: number
  file?: FileRef
}

/** What a record adds to the stats. */
function weight (record: ChunkRecord): ChunkStoreStats {
  return record.file !== undefined ? { count: 1, bytes: 0, inFiles: 1 } : { count: 1, bytes: record.size, inFiles: 0 }
}

type Sub<V> = AbstractSublevel<AbstractLevel<any, any, any>, any, string, V>

/** Runs tasks one at a time per key; tasks for other keys run alongside. */
class KeyedMutex {
  private readonly tails = new Map<string, Promise<unknown>>()

  async run<T> (key: string, task: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve()
    const result = previous.then(task, task)
    const tail = result.then(() => {}, () => {})
    this.tails.set(key, tail)
    try {
      return await result
    } finally {
      if (this.tails.get(key) === tail) this.tails.delete(key)
    }
  }
}

function checkId (id: unknown): asserts id is string {
  if (!isId(id)) throw new KithError('CHUNK_BAD_ID', `${JSON.stringify(String(id).slice(0, 80))} is not a chunk id (64 lowercase hex characters)`)
}

class LevelChunkStore implements ChunkStore {
  private readonly dir: string
  private readonly tmp: string
  private readonly db: AbstractLevel<any, any, any>
  private readonly index: Sub<ChunkRecord>
  private readonly meta: Sub<ChunkStoreStats>
  private readonly sync: boolean
  private readonly locks = new KeyedMutex()
  private readonly fanouts = new Set<string>()
  private readonly keys: ChunkStoreInit['keys']
  /** plaintext read from files to be sealed again: about as many as chunks are read at once (READ_AHEAD per GET stream) */
  private readonly scratch = new BufferPool(4)
  private readonly onDropped: ChunkStoreInit['onDropped']
  private current: ChunkStoreStats = { count: 0, bytes: 0, inFiles: 0 }

  constructor (init: ChunkStoreInit) {
    this.dir = init.dir
    this.tmp = join(init.dir, 'tmp')
    this.db = init.db
    this.index = init.db.sublevel<string, ChunkRecord>('chunks', { keyEncoding: 'utf8', valueEncoding: 'json' })
    this.meta = init.db.sublevel<string, ChunkStoreStats>('meta', { keyEncoding: 'utf8', valueEncoding: 'json' })
    this.sync = init.sync ?? true
    this.keys = init.keys
    this.onDropped = init.onDropped
  }

  async open (): Promise<void> {
    await mkdir(this.tmp, { recursive: true, mode: 0o700 })
    // Leftovers of writes a kill interrupted: never indexed, so never needed.
    for (const name of await readdir(this.tmp)) await rm(join(this.tmp, name), { force: true, recursive: true })
    const stats = await this.meta.get('stats')
    if (stats !== undefined) {
      this.current = { count: stats.count, bytes: stats.bytes, inFiles: stats.inFiles ?? 0 }
    } else {
      // A fresh store, or one from before stats were kept: count once.
      for await (const [, record] of this.index.iterator()) this.current = add(this.current, weight(record), 1)
    }
  }

  private path (id: string): string {
    return join(this.dir, id.slice(0, 2), id)
  }

  /** Index changes go through here one at a time, so the stats row never races. */
  private async commit (id: string, record: ChunkRecord | undefined, previous: ChunkRecord | undefined): Promise<void> {
    await this.locks.run('\0index', async () => {
      let next = this.current
      if (previous !== undefined) next = add(next, weight(previous), -1)
      if (record !== undefined) next = add(next, weight(record), 1)
      await this.db.batch([
        record !== undefined
          ? { type: 'put', sublevel: this.index, key: id, value: record }
          : { type: 'del', sublevel: this.index, key: id },
        { type: 'put', sublevel: this.meta, key: 'stats', value: next }
      ])
      this.current = next
    })
  }

  async put (id: string, sealed: Uint8Array, options: PutOptions = {}): Promise<boolean> {
    const sync = options.sync ?? this.sync
    checkId(id)
    checkSealedSize(sealed)
    // Copied first: the caller's buffer may change while we wait on the disk (the fetcher reuses its frames).
    const bytes = Buffer.from(sealed)
    verifySealed(id, bytes)
    return await this.locks.run(id, async () => {
      if (await this.index.get(id) !== undefined) return false
      const fanout = join(this.dir, id.slice(0, 2))
      if (!this.fanouts.has(fanout)) {
        await mkdir(fanout, { recursive: true, mode: 0o700 })
        this.fanouts.add(fanout)
      }
      const tmp = join(this.tmp, `${id}.${randomBytes(6).toString('hex')}.tmp`)
      try {
        const handle = await open(tmp, 'wx', 0o600)
        try {
          await handle.writeFile(bytes)
          if (sync) await handle.sync()
        } finally {
          await handle.close()
        }
        await rename(tmp, this.path(id))
      } catch (err) {
        await rm(tmp, { force: true })
        throw err
      }
      if (sync) await syncDir(fanout)
      await this.commit(id, { size: bytes.length }, undefined)
      return true
    })
  }

  async putInFile (id: string, sealed: Uint8Array | Uint8Array[], ref: Omit<FileRef, 'nonce'>, options: PutInFileOptions = {}): Promise<boolean> {
    checkId(id)
    checkSealedSize(sealed)
    if (!Number.isSafeInteger(ref.offset) || ref.offset < 0) throw new KithError('BAD_REQUEST', `offset ${ref.offset} is not a file position`)
    const file: FileRef = { ...ref, nonce: Buffer.from(sealedNonce(sealed)).toString('hex') }
    return await this.locks.run(id, async () => {
      const held = await this.index.get(id)
      const replace = options.replace === true
        ? held !== undefined && (held.file?.path !== file.path || held.file.offset !== file.offset ||
          held.file.seen?.size !== file.seen?.size || held.file.seen?.mtimeMs !== file.seen?.mtimeMs)
        // held in another fetch's partial: this file takes it over (that fetch may be cancelled; a placed file stays)
        : held?.file !== undefined && held.file.path !== file.path && held.file.path.endsWith(PARTIAL_SUFFIX)
      if (held !== undefined && !replace) return false
      await this.commit(id, { size: sealedSize(sealed), file }, held)
      // a sealed copy this replaces goes (a kill before leaves an unindexed file, as a kill mid-delete does)
      if (held !== undefined && held.file === undefined) await rm(this.path(id), { force: true })
      return true
    })
  }

  async moveInFile (ids: Iterable<string>, from: string, to: string): Promise<void> {
    // placed and complete: its size and mtime from now on say whether it was written to since
    const seen = await seenOf(to)
    for (const id of new Set(ids)) {
      checkId(id)
      await this.locks.run(id, async () => {
        const record = await this.index.get(id)
        if (record?.file?.path !== from) return
        const file: FileRef = { ...record.file, path: to }
        if (seen !== undefined) file.seen = seen
        else delete file.seen
        await this.index.put(id, { ...record, file })
      })
    }
  }

  async has (id: string): Promise<boolean> {
    checkId(id)
    const record = await this.index.get(id)
    if (record === undefined) return false
    if (record.file === undefined) return true
    // a file the user deleted or replaced holds nothing (get drops the row when asked)
    const now = await seenOf(record.file.path)
    if (now === undefined) return false
    const seen = record.file.seen
    if (seen === undefined || (seen.size === now.size && seen.mtimeMs === now.mtimeMs)) return true
    // Written to since: check the chunk's bytes now (get drops it if they changed),
    // so a HAVE answer stays true and a friend is not blamed for a MISSING later.
    try {
      await this.getParts(id)
    } catch (err) {
      const code = (err as KithError).code
      if (code === 'CHUNK_CORRUPT' || code === 'CHUNK_NOT_FOUND') return false
      throw err
    }
    await this.locks.run(id, async () => {
      const again = await this.index.get(id)
      if (again?.file?.path === record.file!.path) await this.index.put(id, { ...again, file: { ...again.file, seen: now } })
    })
    return true
  }

  /** The chunk's bytes (in pieces, in order) if they are whole and match the id, else undefined. */
  private async readVerified (id: string, record: ChunkRecord): Promise<Uint8Array[] | undefined> {
    if (record.file !== undefined) return await this.readInFile(id, record.size, record.file)
    let handle
    try {
      handle = await open(this.path(id), 'r')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    }
    try {
      const { size } = await handle.stat()
      if (size !== record.size || size > MAX_SEALED_CHUNK_SIZE) return undefined
      const bytes = Buffer.allocUnsafe(size)
      const { bytesRead } = await handle.read(bytes, 0, size, 0)
      if (bytesRead !== size || chunkId(bytes) !== id) return undefined
      return [bytes]
    } finally {
      await handle.close()
    }
  }

  /** A chunk held in a file, sealed again; undefined if the file no longer holds it. */
  private async readInFile (id: string, size: number, ref: FileRef): Promise<Uint8Array[] | undefined> {
    const found = await this.keys?.(ref.position.shareId, ref.owner)
    const ring = found === undefined ? [] : Array.isArray(found) ? found : [found as SealKeys]
    if (ring.length === 0) return undefined
    let handle
    try {
      // not through a symlink, and never blocking on a FIFO the user put there
      handle = await open(ref.path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
    } catch (err) {
      if (GONE.has((err as NodeJS.ErrnoException).code ?? '')) return undefined
      throw err
    }
    const plaintext = this.scratch.take(size - SEAL_OVERHEAD)
    try {
      if (!(await handle.stat()).isFile()) return undefined
      let at = 0
      while (at < plaintext.length) {
        const { bytesRead } = await handle.read(plaintext, at, plaintext.length - at, ref.offset + at)
        if (bytesRead === 0) return undefined
        at += bytesRead
      }
      const nonce = Buffer.from(ref.nonce, 'hex')
      for (const keys of ring) {
        const sealed = resealChunkParts(keys, ref.position, plaintext, nonce)
        if (chunkId(sealed) === id) return sealed
      }
      return undefined
    } finally {
      // the plaintext is not needed once sealed again (or given up on)
      this.scratch.give(plaintext)
      await handle.close()
    }
  }

  async get (id: string): Promise<Uint8Array> {
    const parts = await this.getParts(id)
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts)
  }

  async getParts (id: string): Promise<Uint8Array[]> {
    checkId(id)
    const record = await this.index.get(id)
    if (record === undefined) throw new KithError('CHUNK_NOT_FOUND', `chunk ${id.slice(0, 12)}… is not in this store`)
    const bytes = await this.readVerified(id, record)
    if (bytes !== undefined) return bytes
    // Look again under the lock before dropping: a delete or put may have raced us.
    return await this.locks.run(id, async () => {
      const again = await this.index.get(id)
      if (again === undefined) throw new KithError('CHUNK_NOT_FOUND', `chunk ${id.slice(0, 12)}… is not in this store`)
      const retry = await this.readVerified(id, again)
      if (retry !== undefined) return retry
      if (again.file !== undefined && again.file.path.endsWith(PARTIAL_SUFFIX) && await seenOf(again.file.path) === undefined) {
        // a partial being placed (its record moves with it) or removed (collected later): not dropped
        throw new KithError('CHUNK_NOT_FOUND', `chunk ${id.slice(0, 12)}… is in a partial file that is being placed or was removed`)
      }
      await this.commit(id, undefined, again)
      if (again.file !== undefined) {
        this.onDropped?.(id, again.file)
        throw new KithError('CHUNK_CORRUPT', `chunk ${id.slice(0, 12)}… was held in ${again.file.path}, which changed or went away (or its share's key is gone); it was dropped and will be fetched again when needed`)
      }
      await rm(this.path(id), { force: true })
      throw new KithError('CHUNK_CORRUPT', `chunk ${id.slice(0, 12)}… was damaged or missing on disk; it was dropped and will be fetched again when needed. If this repeats, check the disk`)
    })
  }

  async delete (id: string): Promise<boolean> {
    checkId(id)
    return await this.locks.run(id, async () => {
      const record = await this.index.get(id)
      // Unindex first: a kill between the two steps leaves an orphan file, never a dangling index row.
      if (record !== undefined) await this.commit(id, undefined, record)
      if (record?.file !== undefined) return true // the file is not ours
      try {
        await unlink(this.path(id))
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
      }
      return record !== undefined
    })
  }

  async * list (): AsyncGenerator<ChunkInfo> {
    for await (const [id, record] of this.index.iterator()) yield { id, size: record.size, inFile: record.file !== undefined }
  }

  stats (): ChunkStoreStats {
    return { ...this.current }
  }
}


/** Errors opening a chunk's file that mean it no longer holds the chunk. */
const GONE = new Set(['ENOENT', 'ENOTDIR', 'EACCES', 'EPERM', 'EISDIR', 'ELOOP', 'ENXIO'])

/** Size and mtime of a regular file (links not followed), or undefined if there is none at `path`. */
async function seenOf (path: string): Promise<FileSeen | undefined> {
  try {
    const info = await lstat(path)
    return info.isFile() ? { size: info.size, mtimeMs: info.mtimeMs } : undefined
  } catch {
    return undefined
  }
}

function add (a: ChunkStoreStats, b: ChunkStoreStats, sign: 1 | -1): ChunkStoreStats {
  return { count: a.count + sign * b.count, bytes: a.bytes + sign * b.bytes, inFiles: a.inFiles + sign * b.inFiles }
}

/** Opens (creating if needed) a chunk store, clearing writes a kill left behind. */
export async function openChunkStore (init: ChunkStoreInit): Promise<ChunkStore> {
  const store = new LevelChunkStore(init)
  await store.open()
  return store
}
