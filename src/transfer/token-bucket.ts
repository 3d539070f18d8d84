/**
 * A token bucket for byte rates. A sender takes the bytes it is about to
 * send; when the bucket is empty it waits until enough tokens have dripped
 * in. A take larger than the bucket goes into debt and the next taker waits
 * it off, so large writes need no slicing to keep the average rate, and the
 * limit can change while senders wait.
 */
export interface Clock {
  /** monotonic milliseconds; only differences matter */
  now: () => number
  sleep: (ms: number, signal?: AbortSignal) => Promise<void>
  /**
   * Wall-clock milliseconds since the epoch, for time-of-day rules.
   * @default Date.now
   */
  wall?: () => number
}

export const realClock: Clock = {
  now: () => performance.now(),
  wall: () => Date.now(),
  sleep: async (ms, signal) => await new Promise<void>((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(signal.reason)
      return
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    const onAbort = (): void => {
      clearTimeout(timer)
      reject(signal?.reason)
    }
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}

export class TokenBucket {
  /** bytes per second; Infinity means no limit */
  private rate: number
  /** seconds of rate the bucket holds when idle */
  private readonly burstSeconds: number
  private tokens: number
  private last: number
  private readonly clock: Clock

  constructor (rate = Infinity, options: { burstSeconds?: number, clock?: Clock } = {}) {
    this.clock = options.clock ?? realClock
    this.rate = rate
    this.burstSeconds = options.burstSeconds ?? 0.1
    this.tokens = this.capacity()
    this.last = this.clock.now()
  }

  get limit (): number {
    return this.rate
  }

  setRate (rate: number): void {
    const wasLimited = Number.isFinite(this.rate)
    this.refill()
    this.rate = rate
    // coming out of "no limit", an old debt means nothing: start with a full bucket
    this.tokens = wasLimited ? Math.min(this.tokens, this.capacity()) : this.capacity()
  }

  private capacity (): number {
    return Number.isFinite(this.rate) ? this.rate * this.burstSeconds : Infinity
  }

  private refill (): void {
    const now = this.clock.now()
    if (Number.isFinite(this.rate)) this.tokens = Math.min(this.capacity(), this.tokens + (now - this.last) * this.rate / 1000)
    this.last = now
  }

  /** True when a send may start now: the bucket is not in debt (and the rate is not 0). */
  ready (): boolean {
    if (!Number.isFinite(this.rate)) return true
    if (this.rate <= 0) return false
    this.refill()
    // within half a byte: float rounding must not cost a wake-up
    return this.tokens >= -0.5
  }

  /** Takes `bytes` without waiting; the bucket may go into debt, which later takers wait off. */
  consume (bytes: number): void {
    if (!Number.isFinite(this.rate)) return
    this.refill()
    this.tokens -= bytes
  }

  /** Milliseconds until `ready()`: 0 if it is, Infinity at rate 0. */
  waitMs (): number {
    if (!Number.isFinite(this.rate)) return 0
    if (this.rate <= 0) return Infinity
    this.refill()
    return this.tokens >= -0.5 ? 0 : -this.tokens * 1000 / this.rate
  }

  /** Waits until `bytes` may be sent. */
  async take (bytes: number, signal?: AbortSignal): Promise<void> {
    while (true) {
      if (!Number.isFinite(this.rate)) return
      this.refill()
      if (this.tokens >= 0) {
        this.tokens -= bytes
        return
      }
      // in debt: wait until it is paid off (the rate may change meanwhile)
      await this.clock.sleep(Math.max(1, -this.tokens * 1000 / this.rate), signal)
    }
  }
}
