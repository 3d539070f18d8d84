import type { FileHandle } from 'node:fs/promises'
import { KithError } from '../../../errors.ts'
import { CACHE_BUDGET, MAX_BLOCK, MIN_BLOCK } from './constants.ts'
import type { HashCursor } from './hash-cursor.ts'
import { RangeSet } from './ranges.ts'

/**
 * The write-back cache: each connection gathers the pieces it receives
 * (undici hands over ~16-64 KiB at a time) into one block, written with a
 * single positioned writev once full, or when the connection's bytes stop
 * being contiguous, or when it ends. Fewer, larger writes at few places
 * instead of one small random write per piece.
 *
 * Memory stays within the budget whatever the connection count: each
 * connection's block is the budget shared out (at most MAX_BLOCK, at least
 * MIN_BLOCK), and a connection awaits its block's write before it reads more
 * from its socket, which is the backpressure: the kernel's TCP window then
 * slows the server.
 *
 * `done` holds what has been written (not yet necessarily fsync'ed: the
 * control file is saved only after an fdatasync, see engine.ts).
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
    this.blockSize = Math.max(MIN_BLOCK, Math.min(MAX_BLOCK, Math.floor(budget / Math.max(1, connections))))
  }

  /** a gatherer for one connection */
  gatherer (): Gatherer {
    return new Gatherer(this)
  }

  /** @internal */
  async write (offset: number, buffers: Buffer[], size: number): Promise<void> {
    let at = 0
    // writev may write less than asked (rarely, on regular files): go on from where it stopped
    while (at < size) {
      const rest = at === 0 ? buffers : sliceFrom(buffers, at)
      const { bytesWritten } = await this.fh.writev(rest, offset + at).catch((err: unknown) => { throw fsError(err, 'the partial file') })
      if (bytesWritten === 0) throw new Error('writev wrote nothing')
      at += bytesWritten
    }
    this.done.add(offset, offset + size)
    this.hash.written(offset, buffers)
  }
}

export class Gatherer {
  private start = 0
  private size = 0
  private chunks: Buffer[] = []
  private readonly cache: WriteCache

  constructor (cache: WriteCache) {
    this.cache = cache
  }

  /** Adds `chunk`, the bytes at `offset`; resolves once the gatherer may take more. */
  async push (offset: number, chunk: Buffer): Promise<void> {
    if (this.size > 0 && this.start + this.size !== offset) await this.flush()
    if (this.size === 0) this.start = offset
    this.chunks.push(chunk)
    this.size += chunk.length
    if (this.size >= this.cache.blockSize) await this.flush()
  }

  /** Writes what it holds (the bytes are good whatever stopped the connection). */
  async flush (): Promise<void> {
    if (this.size === 0) return
    const { start, chunks, size } = this
    this.chunks = []
    this.size = 0
    await this.cache.write(start, chunks, size)
  }
}

function sliceFrom (buffers: Buffer[], skip: number): Buffer[] {
  const out: Buffer[] = []
  for (const b of buffers) {
    if (skip >= b.length) { skip -= b.length; continue }
    out.push(skip > 0 ? b.subarray(skip) : b)
    skip = 0
  }
  return out
}

/** A file system error met while writing as a KithError where it has one (a full disk, a link in the way). */
export function fsError (err: unknown, path: string): unknown {
  const code = (err as NodeJS.ErrnoException).code
  if (code === 'ELOOP') return new KithError('DESTINATION_LINK', `${JSON.stringify(path)} is a symbolic link; kith never writes through one`)
  if (code === 'ENOSPC') return new KithError('DISK_FULL', `no space left to write ${path}; free some, then resume`)
  return err
}
