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

  /** @param max buffers kept at most; more given back are freed */
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

  /** Hands back a buffer from `take`, or any view of it, once nothing uses it: kept for reuse, or (over `max`) freed at once rather than left for V8 to collect. */
  give (view: Uint8Array): void {
    const store = view.buffer
    if (!this.out.delete(store)) return
    if (this.free.length < this.max) this.free.push(Buffer.from(store, 0, store.byteLength))
    else freeNow(new Uint8Array(store))
  }
}

/**
 * Gives a buffer's memory back to the system now, instead of when V8 next
 * collects it: for a buffer of its own (not a view into a larger one) that
 * the caller made, used, and knows nothing else refers to. Its ArrayBuffer is
 * detached (`transfer(0)`), so any view of it reads as empty from then on.
 *
 * Buffers under 128 KiB live in glibc's heap, which keeps every page a freed
 * one leaves; a daemon moving data makes them faster than V8's collections
 * free them (node:crypto's output per 64 KiB deciphered, for one), so its
 * heap grew by tens of MB with the rate. Freed at once, the next one reuses
 * the same memory.
 */
export function freeNow (buffer: Uint8Array): void {
  const store = buffer.buffer
  if (store instanceof ArrayBuffer && buffer.byteOffset === 0 && buffer.byteLength === store.byteLength && !store.detached) store.transfer(0)
}
