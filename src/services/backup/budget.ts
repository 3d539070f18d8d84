/**
 * Bytes granted in the order asked (first come, first served), at most
 * `limit` at once, or one grant of any size when nothing is held. A restore
 * takes a blob's size before fetching it and gives it back once written; a
 * run takes a file's size (up to the limit) while it reads it.
 */
export class ByteBudget {
  private readonly limit: number
  private held = 0
  private readonly waiting: Array<{ bytes: number, grant: () => void }> = []

  constructor (limit: number) {
    this.limit = limit
  }

  async take (bytes: number): Promise<void> {
    if (this.waiting.length === 0 && (this.held === 0 || this.held + bytes <= this.limit)) {
      this.held += bytes
      return
    }
    await new Promise<void>(resolve => this.waiting.push({ bytes, grant: resolve }))
  }

  give (bytes: number): void {
    this.held -= bytes
    while (this.waiting.length > 0 && (this.held === 0 || this.held + this.waiting[0]!.bytes <= this.limit)) {
      const next = this.waiting.shift()!
      this.held += next.bytes
      next.grant()
    }
  }
}
