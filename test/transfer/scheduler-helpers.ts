import { BandwidthScheduler, ManualClock, type Flow, type LimitsUpdate } from '../../src/transfer/scheduler/index.ts'

export const MB = 1_000_000

/** A scheduler on a clock the test moves; `wall` sets the wall-clock time at 0 (for time-of-day rules). */
export function setup (limits: LimitsUpdate = {}, wall = 0): { clock: ManualClock, scheduler: BandwidthScheduler } {
  const clock = new ManualClock(wall)
  const scheduler = new BandwidthScheduler({ clock, limits })
  return { clock, scheduler }
}

export interface Backlog {
  /** bytes granted so far */
  readonly bytes: number
  /** the longest any one take waited, ms */
  readonly maxWait: number
  stop: () => Promise<void>
}

/**
 * Keeps `flow` always wanting more: takes of `size` back to back, as a
 * sender with an endless queue would. Only for capped lanes (an uncapped
 * lane never waits, so under a manual clock this would never yield).
 */
export function backlog (flow: Flow, clock: ManualClock, size = 16 * 1024, peer?: string): Backlog {
  const controller = new AbortController()
  let bytes = 0
  let maxWait = 0
  let stopped = false
  const run = (async () => {
    while (!stopped) {
      const at = clock.now()
      try {
        await flow.take(size, controller.signal, peer)
      } catch (err) {
        if (stopped) return
        throw err
      }
      maxWait = Math.max(maxWait, clock.now() - at)
      bytes += size
    }
  })()
  return {
    get bytes () { return bytes },
    get maxWait () { return maxWait },
    stop: async () => {
      stopped = true
      controller.abort()
      await run
    }
  }
}

/** Bytes each backlog moves while the clock advances `ms`. */
export async function measure (clock: ManualClock, ms: number, backlogs: Backlog[]): Promise<number[]> {
  const before = backlogs.map(b => b.bytes)
  await clock.advance(ms)
  return backlogs.map((b, i) => b.bytes - before[i]!)
}

export function shares (bytes: number[]): number[] {
  const total = bytes.reduce((a, b) => a + b, 0)
  return bytes.map(b => b / total)
}

/** Relative difference. */
export function off (actual: number, expected: number): number {
  return Math.abs(actual - expected) / Math.abs(expected)
}
