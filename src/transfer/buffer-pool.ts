/**
 * Large buffers kept for reuse once their holder is done with them, rather
 * than made anew for every chunk. Resident memory while chunks move is mostly
 * buffers that wait for V8's next collection; every one not made is one less.
 *
 * A buffer goes back only through `give`, by the one holder that knows
 * nothing refers to it any more; anything not made by this pool, or given
 * twice, is ignored.
 */
export class BufferPool {
  private readonly free: Buffer[] = []
  /** backing stores handed out and not yet given back */
  private readonly out = new WeakSet<ArrayBufferLike>()
  private readonly max: number

  /** @param max buffers kept at most; more given back are left to the collector */
  constructor (max: number) {
    this.max = max
  }

  /** `size` bytes, of unspecified content, in a buffer of its own (never Node's shared pool): the last kept one big enough, or a new one. */
  take (size: number): Buffer {
    const at = this.free.findLastIndex(b => b.length >= size)
    const whole = at >= 0 ? this.free.splice(at, 1)[0]! : Buffer.allocUnsafeSlow(size)
    this.out.add(whole.buffer)
    return whole.subarray(0, size)
  }

  /** Hands back a buffer from `take`, or any view of it, once nothing uses it. */
  give (view: Uint8Array): void {
    const store = view.buffer
    if (!this.out.delete(store) || this.free.length >= this.max) return
    this.free.push(Buffer.from(store, 0, store.byteLength))
  }
}
