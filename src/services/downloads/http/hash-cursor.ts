import { createHash, type Hash } from 'node:crypto'
import type { FileHandle } from 'node:fs/promises'
import { HASH_READ_BLOCK } from './constants.ts'

/**
 * SHA-256 of the file, computed in file order: bytes written right where the
 * hash has reached are hashed from memory as they are written (all of them
 * with one connection; the first connection's with several); the rest is read
 * back from the file at the end, from the page cache as a rule.
 */
export class HashCursor {
  private readonly hash: Hash = createHash('sha256')
  private at = 0

  /** `data` was just written at `offset` */
  written (offset: number, data: Buffer): void {
    if (offset !== this.at) return
    this.hash.update(data)
    this.at += data.length
  }

  /** reads what was not hashed on the way, up to `size`; the hex digest */
  async finish (fh: FileHandle, size: number, signal: AbortSignal): Promise<string> {
    const buffer = Buffer.allocUnsafe(HASH_READ_BLOCK)
    while (this.at < size) {
      signal.throwIfAborted()
      const { bytesRead } = await fh.read(buffer, 0, Math.min(buffer.length, size - this.at), this.at)
      if (bytesRead === 0) throw new Error(`the partial file ended at ${this.at} of ${size} bytes while hashing`)
      this.hash.update(buffer.subarray(0, bytesRead))
      this.at += bytesRead
    }
    return this.hash.digest('hex')
  }
}
