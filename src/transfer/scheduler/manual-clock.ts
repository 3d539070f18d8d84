import type { Clock } from '../token-bucket.ts'

interface Timer {
  at: number
  seq: number
  resolve: () => void
}

/**
 * A clock that moves only when told, for deterministic tests and
 * simulations: `sleep` registers a timer, `advance` moves time forward and
 * fires due timers in order, letting every promise reaction run (at the
 * timer's own instant) before the next one fires.
 */
export class ManualClock implements Clock {
  private t = 0
  private seq = 0
  private readonly timers: Timer[] = []
  private readonly wallStart: number

  /** @param wallStart wall-clock ms since the epoch at time 0 (for time-of-day rules) */
  constructor (wallStart = 0) {
    this.wallStart = wallStart
  }

  readonly now = (): number => this.t

  readonly wall = (): number => this.wallStart + this.t

  readonly sleep = async (ms: number, signal?: AbortSignal): Promise<void> => {
    signal?.throwIfAborted()
    await new Promise<void>((resolve, reject) => {
      const timer: Timer = { at: this.t + Math.max(0, ms), seq: this.seq++, resolve: () => {} }
      const onAbort = (): void => {
        const i = this.timers.indexOf(timer)
        if (i >= 0) this.timers.splice(i, 1)
        reject(signal!.reason)
      }
      timer.resolve = () => {
        signal?.removeEventListener('abort', onAbort)
        resolve()
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.timers.push(timer)
    })
  }

  /** Timers waiting to fire. */
  get pending (): number {
    return this.timers.length
  }

  /** Moves time forward by `ms`, firing every timer that falls due on the way. */
  async advance (ms: number): Promise<void> {
    const until = this.t + ms
    await settle()
    while (true) {
      const next = this.earliest()
      if (next === undefined || next.at > until) break
      this.timers.splice(this.timers.indexOf(next), 1)
      this.t = Math.max(this.t, next.at)
      next.resolve()
      await settle()
    }
    this.t = until
    await settle()
  }

  private earliest (): Timer | undefined {
    let best: Timer | undefined
    for (const timer of this.timers) {
      if (best === undefined || timer.at < best.at || (timer.at === best.at && timer.seq < best.seq)) best = timer
    }
    return best
  }
}

/** Lets every queued promise reaction run (setImmediate comes after the whole microtask queue). */
async function settle (): Promise<void> {
  await new Promise<void>(resolve => { setImmediate(resolve) })
}
