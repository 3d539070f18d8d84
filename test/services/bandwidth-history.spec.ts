import { describe, it, expect } from 'vitest'
import { BandwidthHistory } from '../../src/services/engine/bandwidth-history.ts'
import { BandwidthScheduler, ManualClock, TRAFFIC_CLASSES } from '../../src/transfer/scheduler/index.ts'
import { waitFor } from '../helpers/testnet.ts'

/**
 * The daemon's last hour of bandwidth (src/services/engine/bandwidth-history.ts)
 * over a real bandwidth scheduler on a manual clock: bytes taken through real
 * flows become rates per direction and class, interval by interval.
 */
const WALL = Date.UTC(2026, 0, 1, 12)

function setup (spanMs = 60 * 60_000): { clock: ManualClock, scheduler: BandwidthScheduler, history: BandwidthHistory } {
  const clock = new ManualClock(WALL)
  const scheduler = new BandwidthScheduler({ clock })
  return { clock, scheduler, history: new BandwidthHistory({ counters: scheduler, clock, intervalMs: 10_000, spanMs }) }
}

describe('bandwidth history', () => {
  it('turns the scheduler\'s counters into rates per direction and class, oldest first, with the interval in progress last', async () => {
    const { clock, scheduler, history } = setup()
    const fetch = scheduler.flow({ direction: 'down', class: 'friend' })
    const backup = scheduler.flow({ direction: 'up', class: 'backup' })
    await fetch.take(50_000)
    await backup.take(20_000)
    await clock.advance(10_000)
    history.sample()
    await fetch.take(100_000)
    await clock.advance(10_000)
    history.sample()
    await backup.take(3_000)
    await clock.advance(2_000)

    const view = history.view()
    expect(JSON.parse(JSON.stringify(view))).toEqual(view)
    expect(view).toMatchObject({ intervalMs: 10_000, now: WALL + 22_000, classes: TRAFFIC_CLASSES, at: [WALL + 10_000, WALL + 20_000, WALL + 22_000], ms: [10_000, 10_000, 2_000] })
    expect(view.down.friend).toEqual([5_000, 10_000, 0])
    expect(view.down.total).toEqual([5_000, 10_000, 0])
    expect(view.up.backup).toEqual([2_000, 0, 1_500])
    expect(view.up.total).toEqual([2_000, 0, 1_500])
    for (const dir of ['up', 'down'] as const) {
      expect(Object.keys(view[dir]).sort()).toEqual(['total', ...TRAFFIC_CLASSES].sort())
      for (const values of Object.values(view[dir])) expect(values).toHaveLength(3)
    }
    // reading the interval in progress does not close it
    await clock.advance(8_000)
    history.sample()
    expect(history.view().up.backup).toEqual([2_000, 0, 300])
  })

  it('folds an interval in progress shorter than a tenth into the last closed one: no spike, and rate × ms is still the bytes', async () => {
    const { clock, scheduler, history } = setup()
    const flow = scheduler.flow({ direction: 'down', class: 'public' })
    await clock.advance(10_000)
    history.sample()
    await clock.advance(100)
    await flow.take(5_250)
    await clock.advance(400)
    // 5,250 bytes in 0.5 s alone would be 10,500 B/s
    const view = history.view()
    expect(view).toMatchObject({ at: [WALL + 10_500], ms: [10_500] })
    expect(view.down.public).toEqual([500])
    // a second in: on its own
    await clock.advance(500)
    expect(history.view()).toMatchObject({ at: [WALL + 10_000, WALL + 11_000], ms: [10_000, 1_000], down: { public: [0, 5_250] } })
  })

  it('keeps an hour in a fixed ring: the oldest intervals go, the newest stay', async () => {
    const { clock, scheduler, history } = setup()
    const flow = scheduler.flow({ direction: 'up', class: 'public' })
    for (let i = 1; i <= 400; i++) {
      await flow.take(i * 10)
      await clock.advance(10_000)
      history.sample()
    }
    const view = history.view()
    expect(view.at).toHaveLength(360)
    expect(view.at[0]).toBe(WALL + 41 * 10_000)
    expect(view.at.at(-1)).toBe(WALL + 400 * 10_000)
    // i * 10 bytes in 10 s is i bytes/s: intervals 41 to 400
    expect(view.up.public[0]).toBe(41)
    expect(view.up.public.at(-1)).toBe(400)
  })

  it('counts a class that first moves bytes late, and takes a counter that starts again from zero as new bytes', async () => {
    const clock = new ManualClock(WALL)
    let scheduler = new BandwidthScheduler({ clock })
    const history = new BandwidthHistory({ counters: { moved: (dir, cls) => scheduler.moved(dir, cls) }, clock, intervalMs: 10_000 })
    await scheduler.flow({ direction: 'down', class: 'friend' }).take(1_000_000)
    await clock.advance(10_000)
    history.sample()
    await scheduler.flow({ direction: 'down', class: 'service' }).take(40_000)
    await clock.advance(10_000)
    history.sample()
    // a new scheduler counts from zero: less than the last reading
    scheduler.close()
    scheduler = new BandwidthScheduler({ clock })
    await scheduler.flow({ direction: 'down', class: 'friend' }).take(30_000)
    await clock.advance(10_000)
    history.sample()
    const view = history.view()
    expect(view.down.service).toEqual([0, 4_000, 0])
    expect(view.down.friend).toEqual([100_000, 0, 3_000])
    expect(view.down.total).toEqual([100_000, 4_000, 3_000])
  })

  it('samples on its own timer once started, and not after it is stopped', async () => {
    const scheduler = new BandwidthScheduler()
    const history = new BandwidthHistory({ counters: scheduler, intervalMs: 20 })
    history.start()
    try {
      await scheduler.flow({ direction: 'up', class: 'friend' }).take(1_000)
      await waitFor(() => history.view().at.length >= 3, 'three intervals', 5_000, 10)
    } finally {
      history.stop()
    }
    const before = history.view()
    // every byte is in some interval, once: the rates over the intervals' whole milliseconds add up to the
    // 1,000 bytes within 2% (a full-suite run at load 16 gave 1,008.6 from these 20 ms timer intervals)
    const moved = before.up.friend.reduce((sum, r, i) => sum + r * before.ms[i]! / 1000, 0)
    expect(moved).toBeGreaterThan(980)
    expect(moved).toBeLessThan(1_020)
    // three intervals' time with the timer stopped: no interval closes (only the one in progress grows)
    await new Promise(resolve => setTimeout(resolve, 60))
    expect(history.view().at).toHaveLength(before.at.length)
    scheduler.close()
  })
})
