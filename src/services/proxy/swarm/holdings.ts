import { open, stat } from 'node:fs/promises'
import { KithError } from '../../../errors.ts'
import { sublevel, type Database, type Sublevel } from '../../../peer/database.ts'
import { MAX_SWARM_CHUNKS, SWARM_CHUNK_SIZE } from './constants.ts'
import { chunkCount, chunkSpan, signHashList, validatorSchema, type HashList, type SignedHashList } from './hash-list.ts'

/**
 * What this node holds whole and verified, for friends who ask (docs/proxy.md,
 * "The friend swarm"): one record per content hash (LevelDB sublevel
 * `swarm-index`), naming the file it is in (the proxy's cache file, or
 * where `kith get` placed it; no copy), that file's size and mtime when it
 * was recorded, and the hash list this node signed for it; and keys to find
 * records by URL and by file (sublevel `swarm-keys`), written in the same
 * batch. Records stay on disk, not in memory (files `kith get` fetched add
 * up over time): a friend's question reads the records of its URLs only,
 * and only the few in use are kept decoded. Files are checked lazily: a
 * record whose file changed or vanished (another size or mtime) is dropped
 * when noticed, when friends ask, when its list or a chunk is read; never
 * offered or served before. So `count` may include such records until then.
 */
export const HOLDING_RECORD_VERSION = 1

/** records kept decoded for the questions and runs of chunks under way (each has its hash list) */
const DECODED_RECORDS = 16
/** in `swarm-keys`: the keys are whole (written with their records, or rebuilt from them once) */
const KEYS_VERSION_KEY = 'v'
const KEYS_VERSION = 1

export interface HoldingRecord {
  v: typeof HOLDING_RECORD_VERSION
  hash: string
  urls: string[]
  etag: string | null
  lastModified: string | null
  length: number
  path: string
  /** whole milliseconds: what utimes can set back, so a file touched and set back reads as unchanged, as rsync -t would leave it */
  mtimeMs: number
  /** the signed hash list, base64 (LevelDB's values are JSON) */
  body: string
  sig: string
}

/** What a friend hears about one holding. */
export interface Holding {
  hash: string
  length: number
  etag: string | null
  lastModified: string | null
}

export interface RecordInit {
  urls: readonly string[]
  etag: string | null
  lastModified: string | null
  /** SHA-256 of the whole file, hex */
  hash: string
  /** the chunks' hashes, concatenated (ChunkHasher) */
  chunks: Uint8Array
  path: string
  length: number
}

export class SwarmIndex {
  private readonly db: Database
  private readonly level: Sublevel<HoldingRecord>
  private readonly keys: Sublevel<number>
  private readonly secretKey: Uint8Array
  /** the last records read, by hash, oldest first */
  private readonly decoded = new Map<string, HoldingRecord>()
  /** changes one after the other: the count and the keys stay true under concurrent records and drops */
  private tail: Promise<unknown> = Promise.resolve()
  private held = 0
  /** drops so far: a record read while one ran is not kept decoded (it may be the one dropped) */
  private drops = 0

  private constructor (db: Database, secretKey: Uint8Array) {
    this.db = db
    this.level = sublevel<HoldingRecord>(db, 'swarm-index')
    this.keys = sublevel<number>(db, 'swarm-keys')
    this.secretKey = secretKey
  }

  /**
   * The index in `db`. No file is looked at and no record read: records are
   * only counted (once, a database from before the keys gets them made).
   */
  static async open (db: Database, secretKey: Uint8Array): Promise<SwarmIndex> {
    const index = new SwarmIndex(db, secretKey)
    if (await index.keys.get(KEYS_VERSION_KEY) !== KEYS_VERSION) await index.rebuildKeys()
    for await (const _ of index.level.keys()) index.held++
    return index
  }

  /** records held, including any whose file changed and that no question noticed yet */
  get count (): number {
    return this.held
  }

  /**
   * Records a file held whole and verified; its hash list is signed now.
   * What friends would refuse is not recorded: validators that are not
   * short printable ASCII, an empty file, one over MAX_SWARM_CHUNKS chunks.
   */
  async record (init: RecordInit): Promise<void> {
    if (!validatorSchema.safeParse(init.etag).success || !validatorSchema.safeParse(init.lastModified).success) return
    if (init.length === 0 || chunkCount(init.length) > MAX_SWARM_CHUNKS) return
    const s = await stat(init.path)
    if (s.size !== init.length) return
    const list: HashList = { hash: init.hash, length: init.length, chunkSize: SWARM_CHUNK_SIZE, chunks: init.chunks, etag: init.etag, lastModified: init.lastModified, urls: [...init.urls] }
    const signed = signHashList(list, this.secretKey)
    const record: HoldingRecord = {
      v: HOLDING_RECORD_VERSION, hash: init.hash, urls: [...init.urls], etag: init.etag, lastModified: init.lastModified, length: init.length, path: init.path, mtimeMs: Math.trunc(s.mtimeMs),
      body: Buffer.from(signed.body).toString('base64'), sig: Buffer.from(signed.sig).toString('base64')
    }
    await this.serial(async () => {
      // one version per URL class: an older one of the same class goes, and so does this hash held elsewhere before
      for (const url of record.urls) {
        for (const hash of await this.hashesBy('u', url)) await this.dropNow(hash)
      }
      await this.dropNow(record.hash)
      await this.db.batch([
        { type: 'put', sublevel: this.level, key: record.hash, value: record },
        ...keysOf(record).map(key => ({ type: 'put' as const, sublevel: this.keys, key, value: 1 }))
      ] as never)
      this.held++
      this.remember(record)
    })
  }

  /** Forgets whatever is held in `path` (the cache evicted or replaced it). */
  async forget (path: string): Promise<void> {
    await this.serial(async () => {
      for (const hash of await this.hashesBy('p', path)) await this.dropNow(hash)
    })
  }

  /** The holdings of a URL class whose files are still as recorded. */
  async holdings (urls: readonly string[]): Promise<Holding[]> {
    const hashes = new Set<string>()
    for (const url of urls) for (const hash of await this.hashesBy('u', url)) hashes.add(hash)
    const out: Holding[] = []
    for (const hash of hashes) {
      const record = await this.current(hash)
      if (record != null) out.push({ hash: record.hash, length: record.length, etag: record.etag, lastModified: record.lastModified })
    }
    return out
  }

  /** The signed hash list of a holding, or null when it is not held (any longer). */
  async list (hash: string): Promise<SignedHashList | null> {
    const record = await this.current(hash)
    if (record == null) return null
    return { body: Buffer.from(record.body, 'base64'), sig: Buffer.from(record.sig, 'base64') }
  }

  /**
   * The lengths of chunks `index` to `index + count - 1` of a holding, or
   * null when it is not held (any longer) or a chunk is past its end.
   */
  async lengths (hash: string, index: number, count: number): Promise<number[] | null> {
    const record = await this.get(hash)
    if (record == null) return null
    if (index < 0 || count < 1 || index + count > chunkCount(record.length)) return null
    if (await this.current(hash) == null) return null
    return Array.from({ length: count }, (_, i) => { const [first, end] = chunkSpan({ length: record.length, chunkSize: SWARM_CHUNK_SIZE }, index + i); return end - first })
  }

  /**
   * Chunks `index` to `index + count - 1` of a holding, read from its file,
   * opened once for them all, the next chunk read while the last one is
   * sent. Throws SWARM_NOT_HELD when the file changed or vanished: the
   * open file's size and mtime are checked against the record, so a file
   * replaced or rewritten since is never read as the old one.
   */
  async * read (hash: string, index: number, count: number): AsyncGenerator<Uint8Array> {
    const record = await this.get(hash)
    const file = record == null ? null : await open(record.path, 'r').catch(() => null)
    if (record == null || file == null) throw new KithError('SWARM_NOT_HELD', 'this node does not hold that file any longer')
    try {
      const s = await file.stat()
      if (s.size !== record.length || Math.trunc(s.mtimeMs) !== record.mtimeMs) {
        await this.drop(hash)
        throw new KithError('SWARM_NOT_HELD', 'the file changed since this node offered it')
      }
      const readChunk = async (i: number): Promise<Uint8Array> => {
        const [first, end] = chunkSpan({ length: record.length, chunkSize: SWARM_CHUNK_SIZE }, i)
        const bytes = Buffer.allocUnsafe(end - first)
        const { bytesRead } = await file.read(bytes, 0, bytes.length, first)
        if (bytesRead !== bytes.length) throw new KithError('SWARM_NOT_HELD', 'the file was cut short since this node offered it')
        return bytes
      }
      let next = readChunk(index)
      for (let i = index; i < index + count; i++) {
        const bytes = await next
        if (i + 1 < index + count) {
          next = readChunk(i + 1)
          // awaited next turn; marked handled for when the asker stops taking first (close waits for the read)
          next.catch(() => {})
        }
        yield bytes
      }
    } finally {
      await file.close()
    }
  }

  /** The record of `hash` if its file is still as recorded; dropped otherwise. */
  private async current (hash: string): Promise<HoldingRecord | null> {
    const record = await this.get(hash)
    if (record == null) return null
    const s = await stat(record.path).catch(() => null)
    if (s != null && s.size === record.length && Math.trunc(s.mtimeMs) === record.mtimeMs) return record
    await this.drop(hash)
    return null
  }

  /** The record of `hash`, from the few kept decoded or from LevelDB; null when there is none (or of another version). */
  private async get (hash: string): Promise<HoldingRecord | null> {
    const kept = this.decoded.get(hash)
    if (kept != null) {
      this.remember(kept)
      return kept
    }
    const drops = this.drops
    const record = await this.level.get(hash)
    if (record?.v !== HOLDING_RECORD_VERSION || record.hash !== hash) return null
    if (drops === this.drops) this.remember(record)
    return record
  }

  private remember (record: HoldingRecord): void {
    this.decoded.delete(record.hash)
    this.decoded.set(record.hash, record)
    if (this.decoded.size > DECODED_RECORDS) this.decoded.delete(this.decoded.keys().next().value!)
  }

  /** Hashes recorded under a URL ('u') or a file ('p'). */
  private async hashesBy (kind: 'u' | 'p', value: string): Promise<string[]> {
    const prefix = `${kind}\0${value}\0`
    const hashes: string[] = []
    for await (const key of this.keys.keys({ gte: prefix, lt: `${kind}\0${value}\x01` })) hashes.push(key.slice(prefix.length))
    return hashes
  }

  private async drop (hash: string): Promise<void> {
    await this.serial(async () => { await this.dropNow(hash) })
  }

  /** Drops `hash`'s record and its keys; within serial. */
  private async dropNow (hash: string): Promise<void> {
    this.drops++
    this.decoded.delete(hash)
    const record = await this.level.get(hash)
    if (record == null) return
    await this.db.batch([
      { type: 'del', sublevel: this.level, key: hash },
      ...(record.v === HOLDING_RECORD_VERSION ? keysOf(record) : []).map(key => ({ type: 'del' as const, sublevel: this.keys, key }))
    ] as never)
    // and once it is gone: a read that began meanwhile is not kept either
    this.drops++
    this.decoded.delete(hash)
    this.held--
  }

  private async serial (task: () => Promise<void>): Promise<void> {
    const run = this.tail.then(task, task)
    this.tail = run.catch(() => {})
    await run
  }

  /**
   * The keys of every record, made once for a database written before
   * they existed (records of another version are dropped).
   */
  private async rebuildKeys (): Promise<void> {
    const ops: Array<{ type: 'put' | 'del', sublevel: Sublevel<unknown>, key: string, value?: unknown }> = []
    for await (const [hash, record] of this.level.iterator()) {
      if (record?.v !== HOLDING_RECORD_VERSION || record.hash !== hash) ops.push({ type: 'del', sublevel: this.level as Sublevel<unknown>, key: hash })
      else for (const key of keysOf(record)) ops.push({ type: 'put', sublevel: this.keys as Sublevel<unknown>, key, value: 1 })
    }
    ops.push({ type: 'put', sublevel: this.keys as Sublevel<unknown>, key: KEYS_VERSION_KEY, value: KEYS_VERSION })
    await this.db.batch(ops as never)
  }
}

/** A record's keys in `swarm-keys`: by each URL and by its file, NUL-separated (neither a URL nor a path holds a NUL). */
function keysOf (record: HoldingRecord): string[] {
  return [...record.urls.map(url => `u\0${url}\0${record.hash}`), `p\0${record.path}\0${record.hash}`]
}
