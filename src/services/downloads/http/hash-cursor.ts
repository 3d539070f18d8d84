import { createHash, type Hash } from 'node:crypto'
import type { FileHandle } from 'node:fs/promises'
import { HASH_READ_BLOCK } from './constants.ts'

/**
 * SHA-256 of the file, computed in file order while it downloads, from
 * memory as a rule. A block handed over (`offer`) right where the hash has
 * reached is hashed at once; one ahead of it (another connection's piece) is
 * kept until everything before it is hashed, while the bytes kept stay
 * within `aheadBudget` (the pieces are handed out in file order and small
 * enough for that: segments.ts). Bytes it could not keep, and what a resumed
 * partial already held, are read back from the file (the page cache, as a
 * rule) once everything before them is written, in the background
 * (`follow`). So little is left to hash when the last byte arrives
 * (`finish`), and little is read back.
 *
 * The hash state is never saved: a resumed download reads back what its
 * partial holds, from byte 0.
 */
export class HashCursor {
  private readonly hash: Hash = createHash('sha256')
  private readonly aheadBudget: number
  private at = 0
  /** blocks kept ahead of `at`, by offset, each with what frees it */
  private readonly ahead = new Map<number, { data: Buffer, release: () => void }>()
  private aheadBytes = 0
  /** how far the file holds every byte (follow's latest word) */
  private target = 0
  private buffer: Buffer | null = null
  /** the background read-back, while it runs */
  private reading: Promise<void> | null = null
  private failed: unknown = null
  private stopped = false
  /** before this, the bytes came with the partial (a resume): reading them back holds no connection up */
  private readonly resumed: number
  /** bytes hashed from the file rather than from memory (for tests) */
  readBack = 0

  /** `aheadBudget`: bytes ahead of the hash it may keep; `resumed`: the end of what the partial held at the start */
  constructor (aheadBudget = 0, resumed = 0) {
    this.aheadBudget = aheadBudget
    this.resumed = resumed
  }

  /**
   * Resolves once a block at `offset` may go on: at once, unless the hash
   * fell behind and is reading back (what it could not keep) while `offset`
   * is beyond what it may keep. Then the connection waits for the read-back,
   * which needs no network, so the hash catches up and takes the next blocks
   * from memory again instead of chasing the download from the file.
   */
  async room (offset: number): Promise<void> {
    while (this.reading != null && this.at >= this.resumed && offset >= this.at + this.aheadBudget) await this.reading
  }

  /**
   * `data`, the final bytes at `offset`, is being written. True: the cursor
   * keeps it and calls `release` once it is hashed; false: it was hashed now,
   * or it will be read back from the file.
   */
  offer (offset: number, data: Buffer, release: () => void): boolean {
    if (offset === this.at && this.reading == null) {
      this.hash.update(data)
      this.at += data.length
      this.drain()
      return false
    }
    if (offset < this.at || data.length > this.aheadBudget || this.stopped) return false
    // over the budget: the blocks nearest the hash stay, the farthest are let go (read back when it gets there)
    while (this.aheadBytes + data.length > this.aheadBudget) {
      const farthest = Math.max(...this.ahead.keys())
      if (farthest < offset) return false
      const kept = this.ahead.get(farthest)!
      this.ahead.delete(farthest)
      this.aheadBytes -= kept.data.length
      kept.release()
    }
    this.ahead.set(offset, { data, release })
    this.aheadBytes += data.length
    return true
  }

  /** The file holds every byte before `prefix`: hashes up to there (from memory, else from `fh`, in the background). */
  follow (fh: FileHandle, prefix: number): void {
    this.target = Math.max(this.target, prefix)
    if (this.reading != null || this.stopped || this.target <= this.at) return
    this.reading = this.readBehind(fh).catch((err: unknown) => { this.failed ??= err }).finally(() => { this.reading = null })
  }

  /** Stops the background read-back (before the file is closed) and lets every kept block go; resolves once it has stopped. */
  async stop (): Promise<void> {
    this.stopped = true
    await this.reading
    for (const { release } of this.ahead.values()) release()
    this.ahead.clear()
    this.aheadBytes = 0
  }

  /** reads what was not hashed on the way, up to `size`; the hex digest */
  async finish (fh: FileHandle, size: number, signal: AbortSignal): Promise<string> {
    await this.reading
    if (this.failed != null) throw this.failed
    while (this.at < size) {
      signal.throwIfAborted()
      await this.readBlock(fh, size)
    }
    return this.hash.digest('hex')
  }

  /** hashes the kept blocks that now follow on */
  private drain (): void {
    for (let next = this.ahead.get(this.at); next != null; next = this.ahead.get(this.at)) {
      this.ahead.delete(this.at)
      this.aheadBytes -= next.data.length
      this.hash.update(next.data)
      this.at += next.data.length
      next.release()
    }
  }

  private async readBehind (fh: FileHandle): Promise<void> {
    while (this.at < this.target && !this.stopped) await this.readBlock(fh, this.target)
  }

  /** hashes the next bytes: a kept block, else a read of the file up to `end` or the next kept block */
  private async readBlock (fh: FileHandle, end: number): Promise<void> {
    if (this.ahead.has(this.at)) return this.drain()
    let until = end
    for (const offset of this.ahead.keys()) if (offset > this.at && offset < until) until = offset
    this.buffer ??= Buffer.allocUnsafe(HASH_READ_BLOCK)
    const { bytesRead } = await fh.read(this.buffer, 0, Math.min(this.buffer.length, until - this.at), this.at)
    if (bytesRead === 0) throw new Error(`the partial file ended at ${this.at} of ${end} bytes while hashing`)
    this.hash.update(this.buffer.subarray(0, bytesRead))
    this.at += bytesRead
    this.readBack += bytesRead
    this.drain()
  }
}
