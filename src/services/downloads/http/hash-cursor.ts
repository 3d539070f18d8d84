import { createHash, type Hash } from 'node:crypto'
import type { FileHandle } from 'node:fs/promises'
import { HASH_READ_BLOCK } from './constants.ts'

/**
 * SHA-256 of the file, computed in file order while it downloads: bytes
 * written right where the hash has reached are hashed from memory as they
 * are written; bytes written ahead of it (other connections' pieces) are
 * read back from the file (the page cache, as a rule) once everything
 * before them is written, in the background (`follow`). So with the pieces
 * handed out in file order (segments.ts), little is left to hash when the
 * last byte arrives (`finish`).
 */
export class HashCursor {
  private readonly hash: Hash = createHash('sha256')
  private at = 0
  /** how far the file holds every byte (follow's latest word) */
  private target = 0
  private buffer: Buffer | null = null
  /** the background read-back, while it runs */
  private reading: Promise<void> | null = null
  private failed: unknown = null
  private stopped = false

  /** `data` was just written at `offset` */
  written (offset: number, data: Buffer): void {
    if (offset !== this.at || this.reading != null) return
    this.hash.update(data)
    this.at += data.length
  }

  /** The file holds every byte before `prefix`: hashes up to there from `fh`, in the background. */
  follow (fh: FileHandle, prefix: number): void {
    this.target = Math.max(this.target, prefix)
    if (this.reading != null || this.stopped || this.target <= this.at) return
    this.reading = this.readBehind(fh).catch((err: unknown) => { this.failed ??= err }).finally(() => { this.reading = null })
  }

  /** Stops the background read-back (before the file is closed); resolves once it has stopped. */
  async stop (): Promise<void> {
    this.stopped = true
    await this.reading
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

  private async readBehind (fh: FileHandle): Promise<void> {
    while (this.at < this.target && !this.stopped) await this.readBlock(fh, this.target)
  }

  private async readBlock (fh: FileHandle, end: number): Promise<void> {
    this.buffer ??= Buffer.allocUnsafe(HASH_READ_BLOCK)
    const { bytesRead } = await fh.read(this.buffer, 0, Math.min(this.buffer.length, end - this.at), this.at)
    if (bytesRead === 0) throw new Error(`the partial file ended at ${this.at} of ${end} bytes while hashing`)
    this.hash.update(this.buffer.subarray(0, bytesRead))
    this.at += bytesRead
  }
}
