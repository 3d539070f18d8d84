/**
 * What the last runs found in each file, so the next run need not read a
 * file that has not changed (as restic's parent snapshot does): by absolute
 * path, the file's size, mtime, ctime and inode when it was read, and its
 * data blobs. A run trusts an entry only while all four still match and
 * every blob is still placed (a forget may have removed some); else it reads
 * the file again. Kept in the home's LevelDB (sublevel backup-files).
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
}

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

  /** Remembers what `path`, as `info` shows it before it was read, holds. */
  async remember (path: string, info: BigIntStats, chunks: string[]): Promise<void> {
    if (chunks.length > MAX_CACHED_CHUNKS) return
    await this.level.put(path, { size: Number(info.size), mtime: info.mtimeNs.toString(), ctime: info.ctimeNs.toString(), ino: info.ino.toString(), chunks })
  }
}
