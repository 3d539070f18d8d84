/**
 * A token bucket for byte rates. A sender takes the bytes it is about to
 * send; when the bucket is empty it waits until enough tokens have dripped
 * in. A take larger than the bucket goes into debt and the next taker waits
 * it off, so large writes need no slicing to keep the average rate, and the
 * limit can change while senders wait.
 */
export interface Clock {
  now: () => number
  sleep: (ms: number, signal?: AbortSignal) => Promise<void>
}

export const realClock: Clock = {
  now: () => performance.now(),
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
    this.refill()
    this.rate = rate
    this.tokens = Math.min(this.tokens, this.capacity())
  }

  private capacity (): number {
    return Number.isFinite(this.rate) ? this.rate * this.burstSeconds : Infinity
  }

  private refill (): void {
    const now = this.clock.now()
    if (Number.isFinite(this.rate)) this.tokens = Math.min(this.capacity(), this.tokens + (now - this.last) * this.rate / 1000)
    this.last = now
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
