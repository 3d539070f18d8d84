import type { FileHandle } from 'node:fs/promises'
import { KithError } from '../../../errors.ts'
import { CACHE_BUDGET, MAX_BLOCK, MIN_BLOCK } from './constants.ts'
import type { HashCursor } from './hash-cursor.ts'
import { RangeSet } from './ranges.ts'

/**
 * The write-back cache: each connection gathers the pieces it receives
 * (undici hands over up to 64 KiB at a time) into a batch of its own, written
 * with one positioned writev once it holds a block's worth, or when the
 * connection's bytes stop being contiguous, or when it ends. Fewer, larger
 * writes at few places instead of one small random write per piece. The
 * pieces are written as they came, not copied into a block first: copying
 * cost a memcpy of every byte and 16 MiB of blocks that outlived the
 * download until a full collection.
 *
 * Each connection has at most two batches: one is written while the other
 * fills, so the socket is read during the write. Memory stays within the
 * budget whatever the connection count: a batch is the budget shared out (at
 * most MAX_BLOCK, at least MIN_BLOCK, plus the piece that filled it), and a
 * connection whose second batch is full waits for its write before it reads
 * more from its socket: that is the backpressure, the kernel's TCP window
 * then slows the server.
 *
 * `done` holds what has been written (not yet necessarily on the disk: see
 * the control file's boot id in control-file.ts).
 */
export class WriteCache {
  readonly done: RangeSet
  readonly blockSize: number
  private readonly fh: FileHandle
  private readonly hash: HashCursor

  constructor (fh: FileHandle, connections: number, hash: HashCursor, done = new RangeSet(), budget = CACHE_BUDGET) {
    this.fh = fh
    this.hash = hash
    this.done = done
    this.blockSize = Math.max(MIN_BLOCK, Math.min(MAX_BLOCK, Math.floor(budget / (2 * Math.max(1, connections)))))
  }

  /** a gatherer for one connection */
  gatherer (): Gatherer {
    return new Gatherer(this)
  }

  /** @internal writes `pieces`, contiguous, at `offset` in full */
  async write (offset: number, pieces: Buffer[]): Promise<void> {
    let at = offset
    let rest = pieces
    // a write may be short (rarely, on regular files): go on from where it stopped
    while (rest.length > 0) {
      const { bytesWritten } = await this.fh.writev(rest, at).catch((err: unknown) => { throw fsError(err, 'the partial file') })
      if (bytesWritten === 0) throw new Error('write wrote nothing')
      at += bytesWritten
      rest = after(rest, bytesWritten)
    }
    this.done.add(offset, at)
    for (const piece of pieces) {
      this.hash.written(offset, piece)
      offset += piece.length
    }
    this.hash.follow(this.fh, this.done.prefix)
  }
}

/** what of `pieces` is left after its first `n` bytes */
function after (pieces: Buffer[], n: number): Buffer[] {
  let i = 0
  while (i < pieces.length && n >= pieces[i]!.length) n -= pieces[i++]!.length
  const rest = pieces.slice(i)
  if (n > 0) rest[0] = rest[0]!.subarray(n)
  return rest
}

export class Gatherer {
  private readonly cache: WriteCache
  /** the batch filling: contiguous pieces from `start` */
  private pieces: Buffer[] = []
  private start = 0
  private size = 0
  /** the batch being written */
  private writing: Promise<void> | null = null

  constructor (cache: WriteCache) {
    this.cache = cache
  }

  /** Adds `chunk`, the bytes at `offset` (kept, not copied: it must not change); resolves once the gatherer may take more. */
  async push (offset: number, chunk: Buffer): Promise<void> {
    if (chunk.length === 0) return
    if (this.size > 0 && this.start + this.size !== offset) await this.flush()
    if (this.size === 0) this.start = offset
    this.pieces.push(chunk)
    this.size += chunk.length
    if (this.size >= this.cache.blockSize) await this.send()
  }

  /** Writes what it holds (the bytes are good whatever stopped the connection), and waits for every write. */
  async flush (): Promise<void> {
    if (this.size > 0) await this.send()
    await this.writing
  }

  /** Starts writing the filling batch, after the previous write ends; the next batch fills meanwhile. */
  private async send (): Promise<void> {
    await this.writing
    const pieces = this.pieces
    this.pieces = []
    this.size = 0
    this.writing = this.cache.write(this.start, pieces)
    // a failed write surfaces at the next send or flush
    this.writing.catch(() => {})
  }
}

/** A file system error met while writing as a KithError where it has one (a full disk, a link in the way). */
export function fsError (err: unknown, path: string): unknown {
  const code = (err as NodeJS.ErrnoException).code
  if (code === 'ELOOP') return new KithError('DESTINATION_LINK', `${JSON.stringify(path)} is a symbolic link; kith never writes through one`)
  if (code === 'ENOSPC') return new KithError('DISK_FULL', `no space left to write ${path}; free some, then resume`)
  return err
}
