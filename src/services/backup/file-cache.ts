/**
 * What the last runs found in each file, so the next run need not read a
 * file that has not changed (as restic's parent snapshot does): by absolute
 * path, the file's size, mtime, ctime and inode when it was read, and its
 * data blobs. A run trusts an entry only while all four still match and
 * every blob is still placed (a forget may have removed some); else it reads
 * the file again. Kept in the home's LevelDB (sublevel backup-files).
 *
 * Pruned so it holds only files some live snapshot holds: each row carries
 * the seq of the last run that read or trusted it; after a run, the rows
 * under its paths it did not stamp (files deleted or moved) go, and after a
 * forget, rows whose last run is no longer a snapshot go (a file a later run
 * saw would carry that run's seq).
 */
import type { BigIntStats } from 'node:fs'
import { sublevel, type Database, type Sublevel } from '../../peer/database.ts'

/** Files with more chunks are read again each run: their rows would be large (16 384 ids is 1 MiB of JSON). */
export const MAX_CACHED_CHUNKS = 16_384

interface Row {
  size: number
  /** nanoseconds, as decimal text */
  mtime: string
  ctime: string
  ino: string
  chunks: string[]
  /** the seq of the last run that read or trusted it */
  run?: number
}

/** Row writes gathered before one LevelDB batch. */
const WRITE_BATCH = 512

export class FileCache {
  private readonly level: Sublevel<Row>

  constructor (db: Database) {
    this.level = sublevel<Row>(db, 'backup-files')
  }

  /** The data blobs `path` had when it last looked like `info`, or undefined. */
  async chunks (path: string, info: BigIntStats): Promise<string[] | undefined> {
    const row = await this.level.get(path)
    if (row == null) return undefined
    const same = BigInt(row.size) === info.size && row.mtime === info.mtimeNs.toString() && row.ctime === info.ctimeNs.toString() && row.ino === info.ino.toString()
    return same ? row.chunks : undefined
  }

  /** What one run writes: rows it read or trusted, stamped with its seq, a batch at a time. */
  forRun (seq: number): RunFiles {
    return new RunFiles(this.level, seq)
  }

  /** After a forget: rows whose last run is not one of `live` (snapshot seqs) go. */
  async pruneRuns (live: Set<number>): Promise<number> {
    const dead: string[] = []
    for await (const [path, row] of this.level.iterator()) if (row.run == null || !live.has(row.run)) dead.push(path)
    for (let i = 0; i < dead.length; i += WRITE_BATCH) await this.level.batch(dead.slice(i, i + WRITE_BATCH).map(key => ({ type: 'del' as const, key })))
    return dead.length
  }
}

export class RunFiles {
  private readonly level: Sublevel<Row>
  private readonly seq: number
  private pending: Array<[string, Row]> = []

  constructor (level: Sublevel<Row>, seq: number) {
    this.level = level
    this.seq = seq
  }

  /** Remembers what `path`, as `info` shows it before it was read, holds (or still holds: trusted unread). */
  async remember (path: string, info: BigIntStats, chunks: string[]): Promise<void> {
    if (chunks.length > MAX_CACHED_CHUNKS) return
    this.pending.push([path, { size: Number(info.size), mtime: info.mtimeNs.toString(), ctime: info.ctimeNs.toString(), ino: info.ino.toString(), chunks, run: this.seq }])
    if (this.pending.length >= WRITE_BATCH) await this.flush()
  }

  async flush (): Promise<void> {
    const batch = this.pending
    this.pending = []
    if (batch.length > 0) await this.level.batch(batch.map(([key, value]) => ({ type: 'put' as const, key, value })))
  }

  /** After the run: rows at or under its `paths` it did not stamp (their files are gone) go. */
  async prune (paths: string[]): Promise<number> {
    await this.flush()
    const dead: string[] = []
    for (const path of paths) {
      const under = path.endsWith('/') ? path : `${path}/`
      // '0' follows '/': the range holds the path, all under it, and siblings like `path-2`, left alone
      for await (const [key, row] of this.level.iterator({ gte: path, lt: `${under.slice(0, -1)}0` })) {
        if (row.run !== this.seq && (key === path || key.startsWith(under))) dead.push(key)
      }
    }
    for (let i = 0; i < dead.length; i += WRITE_BATCH) await this.level.batch(dead.slice(i, i + WRITE_BATCH).map(key => ({ type: 'del' as const, key })))
    return dead.length
  }
}
