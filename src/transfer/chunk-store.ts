import { randomBytes } from 'node:crypto'
import { constants } from 'node:fs'
import { lstat, mkdir, open, readdir, rename, rm, unlink, type FileHandle } from 'node:fs/promises'
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
 * CHUNK_CORRUPT (CHUNK_NOT_FOUND if its file is gone), so it gets fetched again.
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
  /**
   * The caller checked chunkId(sealed) === id just now and hands the buffer
   * over (nothing changes it before `put` resolves; the store keeps no
   * reference after): it is written as it is, not copied and hashed a
   * second time.
   */
  verified?: boolean
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
   * chunk isn't held (or its own file is gone: then it forgets it),
   * CHUNK_CORRUPT (and forgets it) if its file is damaged, or (held in a
   * file) that file changed or its keys are unknown.
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
  /** index changes waiting for the batch being written (see commit) */
  private readonly changes: Change[] = []
  private writing: Promise<void> | undefined
  /** files that hold chunks, open for reading while chunks are read from them in a row */
  private readonly handles = new ReadHandles()
  /** index rows read or written lately (see `row`) */
  private readonly rows = new RowCache()
  /** `seenOf` calls under way, by path (see `seen`) */
  private readonly looking = new Map<string, Promise<FileSeen | undefined>>()

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

  /**
   * The index row of `id`, from the rows read or written lately if there: a
   * chunk asked HAVE and then served (GET), found absent by a fetch and then
   * recorded in its file, or recorded and then moved with its placed file,
   * costs one database read, not two or three. Every index change goes
   * through `drain`, which updates the cache, and a read that a change
   * overtook is not kept, so it answers as the database does.
   */
  private async row (id: string): Promise<ChunkRecord | undefined> {
    const cached = this.rows.get(id)
    if (cached !== undefined) return cached ?? undefined
    const epoch = this.rows.epoch
    const record = await this.index.get(id)
    if (this.rows.epoch === epoch) this.rows.set(id, record ?? null)
    return record
  }

  /**
   * `seenOf(path)`, shared by the calls that ask while one is under way: a
   * HAVE asks `has` of many chunks of one file at once, and they all get
   * the answer of one lstat made meanwhile instead of one each.
   */
  private async seen (path: string): Promise<FileSeen | undefined> {
    let looking = this.looking.get(path)
    if (looking === undefined) {
      looking = seenOf(path).finally(() => { this.looking.delete(path) })
      this.looking.set(path, looking)
    }
    return await looking
  }

  private path (id: string): string {
    return join(this.dir, id.slice(0, 2), id)
  }

  /**
   * Index changes go through here, so the stats row never races. Changes
   * asked for while a batch is being written wait and go together in the
   * next one (a group commit): a fetch records one chunk per chunk it writes,
   * and many small files would otherwise cost one database write each. Each
   * caller holds its chunk's lock until its own change is written, so a batch
   * never holds two changes of one chunk. A batch that fails fails every
   * change in it, and the stats stay as they were.
   */
  private async commit (id: string, record: ChunkRecord | undefined, previous: ChunkRecord | undefined): Promise<void> {
    await this.write({ id, record, previous, stats: true })
  }

  /** A row change that leaves the stats as they are (a chunk held in a file moved, or seen again). */
  private async rewrite (id: string, record: ChunkRecord): Promise<void> {
    await this.write({ id, record, previous: undefined, stats: false })
  }

  private async write (change: Omit<Change, 'done'>): Promise<void> {
    const done = Promise.withResolvers<void>()
    this.changes.push({ ...change, done })
    if (this.writing === undefined) {
      this.writing = this.drain().finally(() => { this.writing = undefined })
    }
    await done.promise
  }

  private async drain (): Promise<void> {
    while (this.changes.length > 0) {
      const changes = this.changes.splice(0, MAX_BATCH)
      let next = this.current
      const ops: any[] = []
      for (const c of changes) {
        if (c.stats) {
          if (c.previous !== undefined) next = add(next, weight(c.previous), -1)
          if (c.record !== undefined) next = add(next, weight(c.record), 1)
        }
        ops.push(c.record !== undefined
          ? { type: 'put', sublevel: this.index, key: c.id, value: c.record }
          : { type: 'del', sublevel: this.index, key: c.id })
      }
      if (changes.some(c => c.stats)) ops.push({ type: 'put', sublevel: this.meta, key: 'stats', value: next })
      try {
        await this.db.batch(ops)
      } catch (err) {
        this.rows.changed(changes.map(c => c.id))
        for (const c of changes) c.done.reject(err)
        continue
      }
      this.rows.changed(changes.map(c => c.id), changes.map(c => c.record ?? null))
      this.current = next
      for (const c of changes) c.done.resolve()
    }
  }

  async put (id: string, sealed: Uint8Array, options: PutOptions = {}): Promise<boolean> {
    const sync = options.sync ?? this.sync
    checkId(id)
    checkSealedSize(sealed)
    // Copied first, unless handed over: the caller's buffer may change while we wait on the disk (the fetcher reuses its frames).
    const bytes = options.verified === true ? sealed : Buffer.from(sealed)
    if (options.verified !== true) verifySealed(id, bytes)
    return await this.locks.run(id, async () => {
      if (await this.row(id) !== undefined) return false
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
      const held = await this.row(id)
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
    const unique = [...new Set(ids)]
    unique.forEach(checkId)
    this.handles.forget(from)
    // many at once, so their rows go in a few batches rather than one write per chunk
    for (let at = 0; at < unique.length; at += MAX_BATCH) {
      await Promise.all(unique.slice(at, at + MAX_BATCH).map(async id => {
        await this.locks.run(id, async () => {
          const record = await this.row(id)
          if (record?.file?.path !== from) return
          const file: FileRef = { ...record.file, path: to }
          if (seen !== undefined) file.seen = seen
          else delete file.seen
          await this.rewrite(id, { ...record, file })
        })
      }))
    }
  }

  async has (id: string): Promise<boolean> {
    checkId(id)
    const record = await this.row(id)
    if (record === undefined) return false
    if (record.file === undefined) return true
    // a file the user deleted or replaced holds nothing (get drops the row when asked)
    const now = await this.seen(record.file.path)
    if (now === undefined) return false
    const seen = record.file.seen
    if (seen === undefined || (seen.size === now.size && seen.mtimeMs === now.mtimeMs)) return true
    // a handle kept open from before the change would read the file as it was
    this.handles.forget(record.file.path)
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
      const again = await this.row(id)
      if (again?.file?.path === record.file!.path) await this.rewrite(id, { ...again, file: { ...again.file, seen: now } })
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
    const plaintext = this.scratch.take(size - SEAL_OVERHEAD)
    try {
      const read = await this.handles.use(ref.path, async handle => {
        let at = 0
        while (at < plaintext.length) {
          const { bytesRead } = await handle.read(plaintext, at, plaintext.length - at, ref.offset + at)
          if (bytesRead === 0) return false
          at += bytesRead
        }
        return true
      })
      if (read !== true) return undefined
      const nonce = Buffer.from(ref.nonce, 'hex')
      for (const keys of ring) {
        const sealed = resealChunkParts(keys, ref.position, plaintext, nonce)
        if (chunkId(sealed) === id) return sealed
      }
      return undefined
    } finally {
      // the plaintext is not needed once sealed again (or given up on)
      this.scratch.give(plaintext)
    }
  }

  async get (id: string): Promise<Uint8Array> {
    const parts = await this.getParts(id)
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts)
  }

  async getParts (id: string): Promise<Uint8Array[]> {
    checkId(id)
    const record = await this.row(id)
    if (record === undefined) throw new KithError('CHUNK_NOT_FOUND', `chunk ${id.slice(0, 12)}… is not in this store`)
    const bytes = await this.readVerified(id, record)
    if (bytes !== undefined) return bytes
    // Look again under the lock before dropping: a delete or put may have raced us.
    return await this.locks.run(id, async () => {
      const again = await this.row(id)
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
      // gone is not found, bytes that are not it are corrupt: a backup host tells its owner which
      const gone = await lstat(this.path(id)).then(() => false, (err: NodeJS.ErrnoException) => { if (err.code === 'ENOENT') return true; throw err })
      await rm(this.path(id), { force: true })
      if (gone) throw new KithError('CHUNK_NOT_FOUND', `chunk ${id.slice(0, 12)}… was indexed but its file is gone; it was dropped and will be fetched again when needed. If this repeats, check the disk`)
      throw new KithError('CHUNK_CORRUPT', `chunk ${id.slice(0, 12)}… was damaged on disk; it was dropped and will be fetched again when needed. If this repeats, check the disk`)
    })
  }

  async delete (id: string): Promise<boolean> {
    checkId(id)
    return await this.locks.run(id, async () => {
      const record = await this.row(id)
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


/** Index changes in one database batch, at most. */
const MAX_BATCH = 256

/** Index rows cached: the ids of one HAVE (MAX_HAVE_IDS), a few hundred KB. */
const MAX_CACHED_ROWS = 4096

/**
 * Index rows by id, null for an id not indexed; the oldest go first past
 * MAX_CACHED_ROWS. Rows are never changed in place (a change writes a new
 * object), so a cached one can be handed out as it is. `epoch` moves at every
 * batch written or failed, so a read that began before one is not kept.
 */
class RowCache {
  private readonly rows = new Map<string, ChunkRecord | null>()
  epoch = 0

  get (id: string): ChunkRecord | null | undefined {
    return this.rows.get(id)
  }

  set (id: string, record: ChunkRecord | null): void {
    this.rows.delete(id)
    this.rows.set(id, record)
    if (this.rows.size > MAX_CACHED_ROWS) this.rows.delete(this.rows.keys().next().value!)
  }

  /** A batch of changes to `ids` was written (`records`, their new rows) or failed (forgotten). */
  changed (ids: string[], records?: Array<ChunkRecord | null>): void {
    this.epoch++
    ids.forEach((id, i) => {
      if (records !== undefined) this.set(id, records[i]!)
      else this.rows.delete(id)
    })
  }
}

interface Change {
  id: string
  /** the new row; undefined deletes it */
  record: ChunkRecord | undefined
  previous: ChunkRecord | undefined
  /** whether the change counts in the stats row */
  stats: boolean
  done: PromiseWithResolvers<void>
}

/** How long a read handle stays open, at most, once opened. */
export const READ_HANDLE_MS = 1_000
/** Read handles kept open at once. */
const MAX_READ_HANDLES = 16

interface Opened {
  handle: FileHandle
  dev: number
  ino: number
}

interface OpenFile {
  opened: Promise<Opened | undefined>
  users: number
  /** no new reads; closed once its last reader is done */
  retired: boolean
}

/**
 * Files holding chunks, kept open while their chunks are read one after
 * another (a GET of a big file reads many from the same file): a read costs
 * one lstat of the path rather than an open, a stat and a close. The lstat
 * must find the very file the handle has open (same device and inode), so a
 * file deleted or replaced under its path is seen at once, as with an open
 * per read; bytes changed in place fail the chunk's hash either way. A handle
 * is closed READ_HANDLE_MS after it was opened (once nothing reads through
 * it), so no file is held open for long. Opened as before: never through a
 * symlink, never blocking on a FIFO, regular files only.
 */
class ReadHandles {
  private readonly files = new Map<string, OpenFile>()

  /** Runs `task` with an open handle on `path`; undefined if there is no regular file there. */
  async use<T> (path: string, task: (handle: FileHandle) => Promise<T>): Promise<T | undefined> {
    const kept = this.files.get(path)
    if (kept !== undefined) {
      const now = await lstat(path).catch(() => undefined)
      const opened = await kept.opened.catch(() => undefined)
      if (now === undefined || !now.isFile()) {
        this.retire(path, kept)
        return undefined
      }
      if (opened !== undefined && !kept.retired && opened.dev === now.dev && opened.ino === now.ino) {
        return await this.run(kept, opened.handle, task)
      }
      this.retire(path, kept)
    }
    const file: OpenFile = { opened: openRegular(path), users: 0, retired: false }
    this.files.set(path, file)
    setTimeout(() => { this.retire(path, file) }, READ_HANDLE_MS).unref()
    this.trim()
    file.users++
    let opened: Opened | undefined
    try {
      opened = await file.opened
    } catch (err) {
      this.release(path, file, true)
      throw err
    }
    if (opened === undefined) {
      this.release(path, file, true)
      return undefined
    }
    file.users--
    return await this.run(file, opened.handle, task)
  }

  private async run<T> (file: OpenFile, handle: FileHandle, task: (handle: FileHandle) => Promise<T>): Promise<T> {
    file.users++
    try {
      return await task(handle)
    } finally {
      file.users--
      if (file.retired) this.closeIfIdle(file)
    }
  }

  private release (path: string, file: OpenFile, retire: boolean): void {
    file.users--
    if (retire) this.retire(path, file)
  }

  /** The next read of `path` opens it again. */
  forget (path: string): void {
    const file = this.files.get(path)
    if (file !== undefined) this.retire(path, file)
  }

  private retire (path: string, file: OpenFile): void {
    if (this.files.get(path) === file) this.files.delete(path)
    if (file.retired) return
    file.retired = true
    this.closeIfIdle(file)
  }

  private closeIfIdle (file: OpenFile): void {
    if (file.users > 0) return
    file.opened.then(async opened => { await opened?.handle.close() }).catch(() => {})
  }

  /** Retires the least recently opened past MAX_READ_HANDLES; an idle one closes at once. */
  private trim (): void {
    for (const [path, file] of this.files) {
      if (this.files.size <= MAX_READ_HANDLES) break
      this.retire(path, file)
    }
  }
}

/** A read handle on the regular file at `path`, or undefined if there is none (or it can't be read). */
async function openRegular (path: string): Promise<Opened | undefined> {
  let handle: FileHandle
  try {
    // not through a symlink, and never blocking on a FIFO the user put there
    handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
  } catch (err) {
    if (GONE.has((err as NodeJS.ErrnoException).code ?? '')) return undefined
    throw err
  }
  try {
    const info = await handle.stat()
    if (info.isFile()) return { handle, dev: info.dev, ino: info.ino }
  } catch (err) {
    await handle.close()
    throw err
  }
  await handle.close()
  return undefined
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
