import { setImmediate as nextTurn } from 'node:timers/promises'

/**
 * Long work on the daemon's one thread, cut into slices: a loop over a
 * friend's manifest of 100,000 files took seconds, and meanwhile nothing
 * else ran on the event loop (the API, the dashboard's events, timers,
 * libp2p's keep-alives). A loop asks `due` as it goes and, once its slice
 * has run SLICE_MS, awaits `pass`, which lets everything waiting run
 * (setImmediate: after timers and I/O) before the next slice starts.
 *
 *   const slices = new Slices()
 *   for (const item of items) {
 *     if (slices.due) await slices.pass()
 *     work(item)
 *   }
 */

/** How long a slice runs before it gives the event loop a turn, ms. */
export const SLICE_MS = 10

export class Slices {
  private started = performance.now()

  /** Whether this slice has run its time. */
  get due (): boolean {
    return performance.now() - this.started >= SLICE_MS
  }

  /** Lets what waits on the event loop run, then starts the next slice. */
  async pass (): Promise<void> {
    await nextTurn()
    this.started = performance.now()
  }
}

/**
 * Runs `steps` (work that yields between its steps) to its end in slices,
 * and returns what it returns.
 */
export async function inSlices<T> (steps: Generator<unknown, T>, slices = new Slices()): Promise<T> {
  for (;;) {
    const step = steps.next()
    if (step.done === true) return step.value
    if (slices.due) await slices.pass()
  }
}

/** Runs `steps` to its end at once (for callers off the daemon's loop, and tests). */
export function atOnce<T> (steps: Generator<unknown, T>): T {
  for (;;) {
    const step = steps.next()
    if (step.done === true) return step.value
  }
}
