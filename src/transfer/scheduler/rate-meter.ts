import { RATE_BUCKETS, RATE_WINDOW_MS } from './constants.ts'

/**
 * Bytes per second over a sliding window, kept as a ring of fixed time
 * buckets: O(1) to add, no allocation, exact under a fake clock.
 */
export class RateMeter {
  private readonly bucketMs: number
  private readonly counts: Float64Array
  /** index (time / bucketMs) of the newest bucket */
  private head = -Infinity
  private first = Infinity
  total = 0

  readonly windowMs: number

  constructor (windowMs = RATE_WINDOW_MS, buckets = RATE_BUCKETS) {
    this.windowMs = windowMs
    this.bucketMs = windowMs / buckets
    this.counts = new Float64Array(buckets)
  }

  private roll (now: number): void {
    const index = Math.floor(now / this.bucketMs)
    if (index <= this.head) return
    const n = this.counts.length
    if (index - this.head >= n) this.counts.fill(0)
    else for (let i = this.head + 1; i <= index; i++) this.counts[i % n] = 0
    this.head = index
  }

  add (bytes: number, now: number): void {
    this.roll(now)
    this.counts[this.head % this.counts.length]! += bytes
    this.total += bytes
    if (this.first === Infinity) this.first = now
  }

  /** bytes/s over the window (or since the first byte, if that is sooner); 0 before any */
  rate (now: number): number {
    if (this.first === Infinity) return 0
    this.roll(now)
    const n = this.counts.length
    const windowStart = (this.head - n + 1) * this.bucketMs
    const since = Math.max(windowStart, this.first)
    const span = Math.max(this.bucketMs, now - since)
    let sum = 0
    for (let i = 0; i < n; i++) sum += this.counts[i]!
    return sum * 1000 / span
  }

  /** What was added over the window (whole buckets: up to one bucket more than the window). */
  sum (now: number): number {
    if (this.first === Infinity) return 0
    this.roll(now)
    let sum = 0
    for (let i = 0; i < this.counts.length; i++) sum += this.counts[i]!
    return sum
  }

  /** True when nothing was added over the whole window. */
  idle (now: number): boolean {
    return this.rate(now) === 0
  }
}
