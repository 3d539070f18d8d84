import { open, stat } from 'node:fs/promises'
import { KithError } from '../../../errors.ts'
import type { Sublevel } from '../../../peer/database.ts'
import { MAX_SWARM_CHUNKS, SWARM_CHUNK_SIZE } from './constants.ts'
import { chunkCount, chunkSpan, signHashList, validatorSchema, type HashList, type SignedHashList } from './hash-list.ts'

/**
 * What this node holds whole and verified, for friends who ask (docs/proxy.md,
 * "The friend swarm"): one record per content hash, naming the file it is
 * in (the proxy's cache file; no copy), that file's size and mtime when it
 * was recorded, and the hash list this node signed for it. A record whose
 * file changed or vanished (another size or mtime) is dropped when noticed:
 * at open, when friends ask, when a chunk is read.
 */
export const HOLDING_RECORD_VERSION = 1

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
  private readonly level: Sublevel<HoldingRecord>
  private readonly secretKey: Uint8Array
  private readonly records = new Map<string, HoldingRecord>()

  private constructor (level: Sublevel<HoldingRecord>, secretKey: Uint8Array) {
    this.level = level
    this.secretKey = secretKey
  }

  /** The index in `level`; records whose file changed while the daemon was down are dropped. */
  static async open (level: Sublevel<HoldingRecord>, secretKey: Uint8Array): Promise<SwarmIndex> {
    const index = new SwarmIndex(level, secretKey)
    for await (const [hash, record] of level.iterator()) {
      if (record?.v !== HOLDING_RECORD_VERSION || record.hash !== hash || !await index.unchanged(record)) await level.del(hash)
      else index.records.set(hash, record)
    }
    return index
  }

  get count (): number {
    return this.records.size
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
    // one version per URL class: an older one of the same class goes
    for (const old of [...this.records.values()]) {
      if (old.hash !== record.hash && old.urls.some(u => record.urls.includes(u))) await this.drop(old.hash)
    }
    await this.level.put(record.hash, record)
    this.records.set(record.hash, record)
  }

  /** Forgets whatever is held in `path` (the cache evicted or replaced it). */
  async forget (path: string): Promise<void> {
    for (const record of [...this.records.values()]) {
      if (record.path === path) await this.drop(record.hash)
    }
  }

  /** The holdings of a URL class whose files are still as recorded. */
  async holdings (urls: readonly string[]): Promise<Holding[]> {
    const out: Holding[] = []
    for (const record of [...this.records.values()]) {
      if (!record.urls.some(u => urls.includes(u))) continue
      if (!await this.unchanged(record)) { await this.drop(record.hash); continue }
      out.push({ hash: record.hash, length: record.length, etag: record.etag, lastModified: record.lastModified })
    }
    return out
  }

  /** The signed hash list of a holding, or null when it is not held (any longer). */
  async list (hash: string): Promise<SignedHashList | null> {
    const record = this.records.get(hash)
    if (record == null) return null
    if (!await this.unchanged(record)) { await this.drop(hash); return null }
    return { body: Buffer.from(record.body, 'base64'), sig: Buffer.from(record.sig, 'base64') }
  }

  /**
   * The lengths of chunks `index` to `index + count - 1` of a holding, or
   * null when it is not held (any longer) or a chunk is past its end.
   */
  async lengths (hash: string, index: number, count: number): Promise<number[] | null> {
    const record = this.records.get(hash)
    if (record == null) return null
    if (index < 0 || count < 1 || index + count > chunkCount(record.length)) return null
    if (!await this.unchanged(record)) { await this.drop(hash); return null }
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
    const record = this.records.get(hash)
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

  private async unchanged (record: HoldingRecord): Promise<boolean> {
    const s = await stat(record.path).catch(() => null)
    return s != null && s.size === record.length && Math.trunc(s.mtimeMs) === record.mtimeMs
  }

  private async drop (hash: string): Promise<void> {
    this.records.delete(hash)
    await this.level.del(hash)
  }
}
