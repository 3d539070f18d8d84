import { write } from 'node:fs'
import type { FileHandle } from 'node:fs/promises'
import { KithError } from '../../../errors.ts'
import { CACHE_BUDGET, MAX_BLOCK, MIN_BLOCK } from './constants.ts'
import type { HashCursor } from './hash-cursor.ts'
import { RangeSet } from './ranges.ts'

/**
 * The write-back cache: each connection copies the pieces it receives
 * (undici hands over ~16-64 KiB at a time) into a block, written with one
 * positioned write once full, or when the connection's bytes stop being
 * contiguous, or when it ends. Fewer, larger writes at few places instead of
 * one small random write per piece; and the pieces die young, so the garbage
 * collector frees them cheaply (scavenge.ts). Writing the pieces themselves
 * with writev, without the copy, was tried: pieces held for a write outlived
 * two scavenges, moved to V8's old generation and stayed there until a full
 * collection (the buffers' peak 22-40 MB against 13 MB copied, 1 GiB on 8
 * connections).
 *
 * With a hash (a download whose checksum is to be verified), a block is
 * handed to it as its write starts (hash-cursor.ts): hashed at once where the
 * hash has reached, else kept by the hash until it is (within its own
 * budget, HASH_AHEAD), else read back later. Blocks come from one free list
 * and go back to it once written (and hashed), so they are allocated once
 * per download, not once per write.
 *
 * A connection has at most two blocks of its own: one is written while the
 * other fills, so the socket is read during the write. Memory stays within
 * the budget whatever the connection count: the blocks are the budget shared
 * out (at most MAX_BLOCK, at least MIN_BLOCK each), plus what the hash keeps;
 * and a connection whose two blocks are both busy waits for its write before
 * it reads more from its socket: that is the backpressure, the kernel's TCP
 * window then slows the server.
 *
 * `done` holds what has been written (not yet necessarily on the disk: see
 * the control file's boot id in control-file.ts).
 */
export class WriteCache {
  readonly done: RangeSet
  readonly blockSize: number
  private readonly fh: FileHandle
  private readonly hash: HashCursor | null
  /** blocks written and hashed, for the next to fill */
  private readonly free: Buffer[] = []

  /** `hash`: the file's SHA-256 as it is written, or null for none */
  constructor (fh: FileHandle, connections: number, hash: HashCursor | null, done = new RangeSet(), budget = CACHE_BUDGET) {
    this.fh = fh
    this.hash = hash
    this.done = done
    this.blockSize = Math.max(MIN_BLOCK, Math.min(MAX_BLOCK, Math.floor(budget / (2 * Math.max(1, connections)))))
  }

  /** a gatherer for one connection */
  gatherer (): Gatherer {
    return new Gatherer(this)
  }

  /** @internal resolves once a block at `offset` may be written (hash-cursor.ts, room) */
  async room (offset: number): Promise<void> {
    await this.hash?.room(offset)
  }

  /** @internal a block to fill */
  take (): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafe(this.blockSize)
  }

  /** @internal Writes `block`'s first `size` bytes at `offset` in full, hashing them meanwhile; the block is free again once both are done. */
  async write (offset: number, block: Buffer, size: number): Promise<void> {
    const data = block.subarray(0, size)
    let holders = 1
    const release = (): void => { if (--holders === 0) this.free.push(block) }
    if (this.hash?.offer(offset, data, release) === true) holders++
    try {
      await this.put(offset, data)
    } finally {
      release()
    }
    this.hash?.follow(this.fh, this.done.prefix)
  }

  private async put (offset: number, data: Buffer): Promise<void> {
    let at = 0
    // a write may be short (rarely, on regular files): go on from where it stopped
    while (at < data.length) {
      const bytesWritten = await writeAt(this.fh.fd, data, at, offset + at).catch((err: unknown) => { throw fsError(err, 'the partial file') })
      if (bytesWritten === 0) throw new Error('write wrote nothing')
      at += bytesWritten
    }
    this.done.add(offset, offset + data.length)
  }
}

export class Gatherer {
  private readonly cache: WriteCache
  /** the block filling */
  private block: Buffer | null = null
  private start = 0
  private size = 0
  private writing: Promise<void> | null = null

  constructor (cache: WriteCache) {
    this.cache = cache
  }

  /** Adds `chunk`, the bytes at `offset`; resolves once the gatherer may take more. */
  async push (offset: number, chunk: Buffer): Promise<void> {
    if (this.size > 0 && this.start + this.size !== offset) await this.flush()
    let at = 0
    while (at < chunk.length) {
      if (this.size === 0) this.start = offset + at
      this.block ??= this.cache.take()
      const n = chunk.copy(this.block, this.size, at)
      this.size += n
      at += n
      if (this.size === this.block.length) await this.send()
    }
  }

  /** Writes what it holds (the bytes are good whatever stopped the connection), and waits for every write. */
  async flush (): Promise<void> {
    if (this.size > 0) await this.send()
    await this.writing
  }

  /** Starts writing the filling block, after the previous write ends; the next block fills meanwhile. */
  private async send (): Promise<void> {
    await this.writing
    await this.cache.room(this.start)
    const block = this.block!
    const size = this.size
    this.block = null
    this.size = 0
    this.writing = this.cache.write(this.start, block, size)
    // a failed write surfaces at the next send or flush
    this.writing.catch(() => {})
  }
}

/**
 * One positioned write of `data` from `from` on, through fs.write's callback
 * on the handle's descriptor (the handle stays open until every write is
 * done: the engine closes it after the gatherers' flushes). FileHandle.write
 * costs the main thread twice as much per call: 1 GiB to tmpfs in 256 KiB
 * writes, two at a time, 0.19-0.21 CPU ms/MB against 0.09-0.11.
 */
async function writeAt (fd: number, data: Buffer, from: number, position: number): Promise<number> {
  return await new Promise((resolve, reject) => {
    write(fd, data, from, data.length - from, position, (err, written) => { if (err != null) reject(err); else resolve(written) })
  })
}

/** A file system error met while writing as a KithError where it has one (a full disk, a link in the way). */
export function fsError (err: unknown, path: string): unknown {
  const code = (err as NodeJS.ErrnoException).code
  if (code === 'ELOOP') return new KithError('DESTINATION_LINK', `${JSON.stringify(path)} is a symbolic link; kith never writes through one`)
  if (code === 'ENOSPC') return new KithError('DISK_FULL', `no space left to write ${path}; free some: the download goes on by itself once there is room (or \`kith resume\`)`)
  return err
}
