import { describe, it, expect } from 'vitest'
import { TokenBucket } from '../../src/transfer/token-bucket.ts'
import { ManualClock, type FloorEvent } from '../../src/transfer/scheduler/index.ts'
import { backlog, measure, MB, off, setup, shares } from './scheduler-helpers.ts'

describe('token bucket, synchronous side', () => {
  it('is ready, goes into debt, and says how long the debt takes to pay', async () => {
    const clock = new ManualClock()
    const bucket = new TokenBucket(1000, { clock, burstSeconds: 0.1 })
    expect(bucket.ready()).toBe(true)
    bucket.consume(600) // 100 in the bucket, 500 of debt
    expect(bucket.ready()).toBe(false)
    expect(bucket.waitMs()).toBeCloseTo(500)
    await clock.advance(500)
    expect(bucket.ready()).toBe(true)
  })

  it('never lets anything through at rate 0, and forgets an old debt when a limit comes back', () => {
    const clock = new ManualClock()
    const bucket = new TokenBucket(0, { clock })
    expect(bucket.ready()).toBe(false)
    expect(bucket.waitMs()).toBe(Infinity)
    bucket.setRate(Infinity)
    bucket.consume(1e9)
    bucket.setRate(1000)
    expect(bucket.ready()).toBe(true)
  })
})

describe('bandwidth scheduler', () => {
  it('holds a global cap within 1 % over a long run', async () => {
    const { clock, scheduler } = setup({ upload: 10 * MB })
    const a = backlog(scheduler.flow({ direction: 'up', peer: 'a' }), clock, 256 * 1024)
    const b = backlog(scheduler.flow({ direction: 'up', peer: 'b' }), clock, 3000)
    await clock.advance(1000) // past the initial burst
    // 5 s on the manual clock, 500 slices: the error is 0.24 % here (0.22 % over 10 s, 0.06 % over 20 s), the bound 1 %
    const [x, y] = await measure(clock, 5_000, [a, b])
    const rate = (x! + y!) / 5
    expect(Math.abs(rate - 10 * MB) / (10 * MB)).toBeLessThan(0.01)
    await a.stop()
    await b.stop()
  })

  it('shares a contended cap 8:2:1 between classes, within 1 %, and equally within a class', async () => {
    const { clock, scheduler } = setup({ download: 10 * MB })
    const flows = [
      backlog(scheduler.flow({ direction: 'down', class: 'friend' }), clock),
      backlog(scheduler.flow({ direction: 'down', class: 'friend' }), clock, 100_000),
      backlog(scheduler.flow({ direction: 'down', class: 'friend' }), clock, 5000),
      backlog(scheduler.flow({ direction: 'down', class: 'foaf' }), clock),
      backlog(scheduler.flow({ direction: 'down', class: 'public' }), clock, 64 * 1024)
    ]
    await clock.advance(1000)
    // 10 s on the manual clock: the largest error is 0.15 % here (0.035 % over 40 s), the bound 1 %
    const got = shares(await measure(clock, 10_000, flows))
    const friend = got[0]! + got[1]! + got[2]!
    expect(friend).toBeCloseTo(8 / 11, 2)
    expect(Math.abs(friend - 8 / 11) / (8 / 11)).toBeLessThan(0.01)
    expect(Math.abs(got[3]! - 2 / 11) / (2 / 11)).toBeLessThan(0.01)
    expect(Math.abs(got[4]! - 1 / 11) / (1 / 11)).toBeLessThan(0.01)
    for (const i of [0, 1, 2]) expect(Math.abs(got[i]! - friend / 3) / (friend / 3)).toBeLessThan(0.01)
    const stats = scheduler.stats().down
    expect(stats.classes.friend.rate / stats.rate).toBeCloseTo(8 / 11, 1)
    for (const f of flows) await f.stop()
  })

  it('never shows a class faster than its lane, also in the first 2 s of a class that starts after another', async () => {
    const { clock, scheduler } = setup({ download: 1 * MB })
    const check = (): void => {
      const lane = scheduler.stats().down
      const sum = Object.values(lane.classes).reduce((total, c) => total + c.rate, 0)
      expect(lane.rate).toBeCloseTo(sum, 6)
      for (const c of Object.values(lane.classes)) expect(c.rate).toBeLessThanOrEqual(lane.rate)
    }
    // friends move for 1 s, then nothing for 5 s: the lane has moved long before public's first byte
    const friend = backlog(scheduler.flow({ direction: 'down', class: 'friend' }), clock)
    await clock.advance(1000)
    await friend.stop()
    await clock.advance(5000)
    const pub = backlog(scheduler.flow({ direction: 'down', class: 'public' }), clock)
    let moving = false
    for (let t = 0; t < 3000; t += 100) {
      await clock.advance(100)
      check()
      moving ||= scheduler.stats().down.classes.public.rate > 0.5 * MB
    }
    expect(moving).toBe(true)
    // and when friends come back beside it
    const again = backlog(scheduler.flow({ direction: 'down', class: 'friend' }), clock)
    for (let t = 0; t < 3000; t += 100) {
      await clock.advance(100)
      check()
    }
    await again.stop()
    await pub.stop()
  })

  it('makes backups yield to friends\' fetches by their weight (8:2 by default, as set), and gives them all when friends are idle', async () => {
    const { clock, scheduler } = setup({ download: 10 * MB })
    expect(scheduler.limits().classWeights.backup).toBeLessThan(scheduler.limits().classWeights.friend)
    const backup = backlog(scheduler.flow({ direction: 'down', peer: 'host', class: 'backup' }), clock, 256 * 1024)
    await clock.advance(1000)
    // alone, a backup takes the whole cap
    const [alone] = await measure(clock, 10_000, [backup])
    expect(alone! / 10).toBeGreaterThan(9.9 * MB)
    const fetch = backlog(scheduler.flow({ direction: 'down', peer: 'friend', class: 'friend' }), clock)
    await clock.advance(1000)
    // 10 s on the manual clock, then 30 s after the weight changes: the errors are 0.31 % and 0.12 % here (0.044 % over
    // 30 s for the first; the second is 1.2 % over 10 s, its start the old weight's), the bound 1 %
    const got = shares(await measure(clock, 10_000, [fetch, backup]))
    expect(Math.abs(got[1]! - 2 / 10) / (2 / 10)).toBeLessThan(0.01)
    // the weight is the user's: backup=1 against friend=8 is 1/9
    scheduler.setLimits({ classWeights: { backup: 1 } })
    await clock.advance(1000)
    const after = shares(await measure(clock, 30_000, [fetch, backup]))
    expect(Math.abs(after[1]! - 1 / 9) / (1 / 9)).toBeLessThan(0.01)
    expect(scheduler.stats().down.classes.backup).toMatchObject({ weight: 1, flows: 1 })
    await fetch.stop()
    await backup.stop()
  })

  it('gives idle classes\' bandwidth to the busy ones (work conserving)', async () => {
    const { clock, scheduler } = setup({ upload: 10 * MB })
    const foaf = backlog(scheduler.flow({ direction: 'up', class: 'foaf' }), clock)
    const pub = backlog(scheduler.flow({ direction: 'up', class: 'public' }), clock)
    await clock.advance(1000)
    // 10 s on the manual clock (30 before): 9.9992 MB/s in all, the share 5.5e-5 off 2/3
    const [x, y] = await measure(clock, 10_000, [foaf, pub])
    expect((x! + y!) / 10).toBeGreaterThan(9.9 * MB)
    expect(x! / (x! + y!)).toBeCloseTo(2 / 3, 2)
    await foaf.stop()
    await pub.stop()
  })

  it('starves no class and no priority: the least one keeps its weighted share and short waits', async () => {
    const { clock, scheduler } = setup({ upload: 10 * MB })
    const friends = Array.from({ length: 20 }, (_, i) => backlog(scheduler.flow({ direction: 'up', peer: `f${i}`, priority: 'urgent' }), clock))
    const slowFriend = backlog(scheduler.flow({ direction: 'up', peer: 'slow', priority: 'background' }), clock)
    const stranger = backlog(scheduler.flow({ direction: 'up', class: 'public', priority: 'background' }), clock)
    await clock.advance(1000)
    const all = [...friends, slowFriend, stranger]
    // 30 s on the manual clock: the background flow's share is off by 1.8e-5 here (1.3e-5 over 60 s), the bound 5e-5
    const got = await measure(clock, 30_000, all)
    const total = got.reduce((a, b) => a + b, 0)
    // public: 1/9 of the cap however many friends there are
    expect(Math.abs(got[21]! / total - 1 / 9) / (1 / 9)).toBeLessThan(0.01)
    // background among 20 urgent friends: 1/(20*64+1) of the friend class
    const friendClass = total * 8 / 9
    expect(got[20]! / friendClass).toBeCloseTo(1 / 1281, 4)
    expect(got[20]!).toBeGreaterThan(0)
    // its takes wait, but not forever: 16 KiB at ~7 KB/s is ~2.4 s
    expect(slowFriend.maxWait).toBeLessThan(4000)
    expect(stranger.maxWait).toBeLessThan(100)
    for (const f of all) await f.stop()
  })

  it('keeps a floor under contention, charging it to no one but the flows above theirs', async () => {
    const { clock, scheduler } = setup({ upload: 10 * MB })
    const friends = [0, 1, 2].map(i => backlog(scheduler.flow({ direction: 'up', peer: `f${i}` }), clock))
    const floored = scheduler.flow({ direction: 'up', class: 'public', floor: 3 * MB })
    const other = backlog(scheduler.flow({ direction: 'up', class: 'foaf' }), clock)
    const pub = backlog(floored, clock)
    await clock.advance(1000)
    // 10 s and 5 s on the manual clock (30 and 15 before): the floored flow gets 1.0005 of its 3 MB/s here
    // (bound 0.99), the friends 0.80005 of the rest (0.8 ± 0.005), the floor reports 3.0 MB/s (over 2.9)
    const got = await measure(clock, 10_000, [...friends, other, pub])
    const rates = got.map(b => b / 10)
    expect(rates[4]!).toBeGreaterThan(3 * MB * 0.99)
    // the rest (7 MB/s) goes 8:2 to friends and foaf
    const friendRate = rates[0]! + rates[1]! + rates[2]!
    expect(friendRate / (friendRate + rates[3]!)).toBeCloseTo(0.8, 2)
    expect(floored.floor()).toMatchObject({ wanted: 3 * MB, reserved: 3 * MB, state: 'ok' })
    expect(floored.floor()!.achieved).toBeGreaterThan(2.9 * MB)
    // without the floor it falls back to its weighted share, and its class owes nothing for the floor it had
    floored.setFloor(0)
    await clock.advance(1000)
    const after = await measure(clock, 5_000, [...friends, other, pub])
    expect(shares(after)[4]).toBeCloseTo(1 / 11, 2)
    for (const f of [...friends, other, pub]) await f.stop()
  })

  it('reports floors it can\'t reserve (cap, peer cap) and floors a slow peer misses', async () => {
    const { clock, scheduler } = setup({ upload: 10 * MB, peers: { narrow: { upload: 1 * MB } } })
    const events: FloorEvent[] = []
    scheduler.on('floor', evt => events.push(evt))
    const a = scheduler.flow({ direction: 'up', peer: 'a', floor: 5 * MB })
    const b = scheduler.flow({ direction: 'up', peer: 'b', floor: 5 * MB })
    expect(a.floor()).toMatchObject({ reserved: 5 * MB, state: 'ok' })
    // at most 80 % of the cap is reserved
    expect(b.floor()).toMatchObject({ wanted: 5 * MB, reserved: 3 * MB, state: 'cap' })
    expect(events.map(e => [e.flow.id, e.report.state])).toEqual([[b.id, 'cap']])
    const c = scheduler.flow({ direction: 'up', peer: 'narrow', class: 'friend', priority: 'urgent', floor: 2 * MB })
    expect(c.floor()).toMatchObject({ reserved: 0.8 * MB, state: 'peer-cap' })
    // raising the cap makes room: reservations are redone, and the change is told
    scheduler.setLimits({ upload: 100 * MB, peers: {} })
    expect(b.floor()).toMatchObject({ reserved: 5 * MB, state: 'ok' })
    expect(c.floor()).toMatchObject({ reserved: 2 * MB, state: 'ok' })
    expect(events.at(-1)!.report.state).toBe('ok')
    // reserved in full but moving far less, without waiting on us: the other side is slow
    for (let t = 0; t < 30; t++) {
      await a.take(100_000)
      await clock.advance(100)
    }
    expect(a.floor()).toMatchObject({ state: 'slow' })
    expect(off(a.floor()!.achieved, 1 * MB)).toBeLessThan(0.05)
    for (const f of [a, b, c]) f.close()
  })

  it('applies a priority change from the next slice on, waiting takes included', async () => {
    const { clock, scheduler } = setup({ download: 10 * MB })
    const flow = scheduler.flow({ direction: 'down' })
    const a = backlog(flow, clock)
    const b = backlog(scheduler.flow({ direction: 'down' }), clock)
    await clock.advance(1000)
    expect(shares(await measure(clock, 10_000, [a, b]))[0]).toBeCloseTo(0.5, 2)
    flow.setPriority('urgent')
    // within the very next 100 ms, 64:8
    expect(shares(await measure(clock, 100, [a, b]))[0]).toBeGreaterThan(0.85)
    expect(shares(await measure(clock, 10_000, [a, b]))[0]).toBeCloseTo(64 / 72, 2)
    flow.setPriority('background')
    expect(shares(await measure(clock, 100, [a, b]))[0]).toBeLessThan(0.15)
    expect(shares(await measure(clock, 10_000, [a, b]))[0]).toBeCloseTo(1 / 9, 2)
    await a.stop()
    await b.stop()

    // a big take already waiting behind urgent traffic finishes soon after it is raised
    const urgent = backlog(scheduler.flow({ direction: 'down', priority: 'urgent' }), clock)
    const slow = scheduler.flow({ direction: 'down', priority: 'background' })
    let done = false
    void slow.take(2 * MB).then(() => { done = true })
    await clock.advance(1000)
    expect(done).toBe(false) // ~150 KB/s at 1/65
    slow.setPriority('urgent')
    await clock.advance(450)
    expect(done).toBe(true) // 2 MB at 5 MB/s is 0.4 s
    await urgent.stop()
    slow.close()
  })

  it('applies cap changes to waiting takes at once, and holds per-peer caps', async () => {
    const { clock, scheduler } = setup({ upload: 10_000 })
    const flow = scheduler.flow({ direction: 'up', peer: 'a' })
    let done = false
    void flow.take(1 * MB).then(() => { done = true })
    await clock.advance(1000)
    expect(done).toBe(false)
    scheduler.setLimits({ upload: 100 * MB })
    await clock.advance(20)
    expect(done).toBe(true)

    // a per-peer cap binds one peer and leaves the rest to the others
    scheduler.setLimits({ upload: 10 * MB, peers: { a: { upload: 1 * MB } } })
    const a = backlog(flow, clock, 16 * 1024, undefined)
    const b = backlog(scheduler.flow({ direction: 'up', peer: 'b' }), clock)
    await clock.advance(1000)
    // 10 s on the manual clock (30 before): a is 0.058 % off its cap, b 0.015 % off the rest, a's reported rate 0.16 %
    let [x, y] = await measure(clock, 10_000, [a, b])
    expect(Math.abs(x! / 10 - 1 * MB) / MB).toBeLessThan(0.01)
    expect(Math.abs(y! / 10 - 9 * MB) / (9 * MB)).toBeLessThan(0.01)
    expect(scheduler.stats().up.peers.a).toMatchObject({ cap: 1 * MB })
    expect(off(scheduler.stats().up.peers.a!.rate, 1 * MB)).toBeLessThan(0.02)
    // lowering the global cap slows everyone within the next slices
    scheduler.setLimits({ upload: 2 * MB })
    ;[x, y] = await measure(clock, 10_000, [a, b])
    expect(off((x! + y!) / 10, 2 * MB)).toBeLessThan(0.01)
    // dropping the peer cap frees that peer
    scheduler.setLimits({ upload: 8 * MB, peers: {} })
    await clock.advance(1000)
    ;[x, y] = await measure(clock, 10_000, [a, b])
    expect(x! / y!).toBeCloseTo(1, 2)
    await a.stop()
    await b.stop()
  })

  it('switches caps at time-of-day boundaries, waiting takes included, and plans ETAs across them', async () => {
    const start = new Date(2025, 0, 15, 22, 59, 0).getTime() // local time
    const schedule = [{ from: '23:00', to: '07:00', upload: 4 * MB }]
    const { clock, scheduler } = setup({ upload: 1 * MB, schedule }, start)
    expect(scheduler.caps().up).toBe(1 * MB)
    expect(scheduler.stats()).toMatchObject({ rule: null, nextChange: new Date(2025, 0, 15, 23, 0).getTime() })
    const flow = scheduler.flow({ direction: 'up', peer: 'a' })
    const a = backlog(flow, clock)
    await clock.advance(100)
    // 54 MB more at 1 MB/s until 23:00 (~59.9 s), the rest at 4 MB/s
    const eta = scheduler.eta(flow, 59.9 * MB + 40 * MB)!
    expect(eta).toBeCloseTo(59.9 + 10, 0)
    const [before] = await measure(clock, 59_900, [a])
    expect(off(before! / 59.9, 1 * MB)).toBeLessThan(0.01)
    expect(scheduler.caps().up).toBe(4 * MB)
    expect(scheduler.stats().rule).toBe(0)
    const [after] = await measure(clock, 60_000, [a])
    expect(Math.abs(after! / 60 - 4 * MB) / (4 * MB)).toBeLessThan(0.01)
    await a.stop()

    // 07:00: back to the base cap; an "unlimited at night" rule releases a waiting take at its start
    scheduler.setLimits({ upload: 100, schedule: [{ from: '07:00', to: '08:00', upload: Infinity }] })
    let done = false
    void flow.take(10 * MB).then(() => { done = true })
    await clock.advance(new Date(2025, 0, 16, 7, 0).getTime() - clock.wall() - 1000)
    expect(done).toBe(false)
    await clock.advance(1000)
    expect(done).toBe(true)
    expect(scheduler.caps().up).toBe(Infinity)
    flow.close()
  })

  it('predicts time left from the flow\'s share of the caps', async () => {
    const { clock, scheduler } = setup({ download: 9 * MB })
    const friendFlow = scheduler.flow({ direction: 'down', class: 'friend' })
    const publicFlow = scheduler.flow({ direction: 'down', class: 'public' })
    // alone, a flow gets the whole cap
    expect(scheduler.eta(friendFlow, 90 * MB)).toBeCloseTo(10)
    const f = backlog(friendFlow, clock)
    const p = backlog(publicFlow, clock)
    await clock.advance(1000)
    expect(off(scheduler.share(friendFlow)!, 8 * MB)).toBeLessThan(0.01)
    const eta = scheduler.eta(friendFlow, 80 * MB)!
    expect(eta).toBeCloseTo(10, 1)
    const start = friendFlow.stats().bytes
    while (friendFlow.stats().bytes - start < 80 * MB) await clock.advance(10)
    expect(Math.abs((clock.now() - 1000) / 1000 - eta) / eta).toBeLessThan(0.01)
    // the public flow: 1 MB/s while the friend is busy
    expect(scheduler.eta(publicFlow, 10 * MB)).toBeCloseTo(10, 0)
    await f.stop()
    await clock.advance(2500) // a rate window
    // the friend went idle: the public flow now has the cap to itself
    expect(scheduler.eta(publicFlow, 9 * MB)).toBeCloseTo(1, 1)
    await p.stop()
  })

  it('counts a flow that its peer holds back at what it achieves', async () => {
    const { clock, scheduler } = setup({ upload: 10 * MB })
    const slow = scheduler.flow({ direction: 'up', peer: 'slow' })
    const fast = scheduler.flow({ direction: 'up', peer: 'fast' })
    const f = backlog(fast, clock)
    for (let t = 0; t < 30; t++) {
      const taken = slow.take(50_000) // 0.5 MB/s: the peer can't take more
      await clock.advance(100)
      await taken
    }
    expect(off(scheduler.share(slow)!, 0.5 * MB)).toBeLessThan(0.02)
    expect(off(scheduler.share(fast)!, 9.5 * MB)).toBeLessThan(0.02)
    await f.stop()
  })

  // what a take costs in time is printed by `npm run bench -- --section scheduler`, not asserted here
  it('costs nothing without a cap: takes resolve at once, no timer', async () => {
    const { clock, scheduler } = setup({ peers: { other: { upload: 1000 } } })
    const up = scheduler.flow({ direction: 'up', peer: 'a' })
    const down = scheduler.flow({ direction: 'down' })
    let done = false
    void up.take(1e9).then(() => { done = true })
    await Promise.resolve()
    expect(done).toBe(true)
    const n = 10_000
    for (let i = 0; i < n; i++) {
      await up.take(256 * 1024)
      await down.take(256 * 1024, undefined, 'b')
    }
    expect(clock.now()).toBe(0)
    expect(clock.pending).toBe(0)
    expect(up.stats().bytes).toBe(1e9 + n * 256 * 1024)
  })

  it('rejects a waiting take on abort and on close, and refuses bad input', async () => {
    const { scheduler } = setup({ upload: 1000 })
    const flow = scheduler.flow({ direction: 'up' })
    await flow.take(1000) // the first burst; the next one waits
    const controller = new AbortController()
    const aborted = flow.take(1000, controller.signal)
    const closed = flow.take(1000)
    controller.abort(new Error('stop'))
    await expect(aborted).rejects.toThrow('stop')
    flow.close()
    await expect(closed).rejects.toMatchObject({ code: 'FLOW_CLOSED' })
    await expect(flow.take(1)).rejects.toMatchObject({ code: 'FLOW_CLOSED' })
    expect(scheduler.stats().up.waiting).toBe(0)
    expect(() => scheduler.setLimits({ upload: -1 })).toThrow(expect.objectContaining({ code: 'BAD_REQUEST' }))
    expect(() => scheduler.setLimits({ schedule: [{ from: '25:00', to: '07:00' }] })).toThrow(expect.objectContaining({ code: 'BAD_REQUEST' }))
    expect(() => scheduler.setLimits({ classWeights: { friend: 0 } })).toThrow(expect.objectContaining({ code: 'BAD_REQUEST' }))
    expect(() => scheduler.flow({ direction: 'up', priority: 'high' as never })).toThrow(expect.objectContaining({ code: 'BAD_REQUEST' }))
    expect(scheduler.limits().upload).toBe(1000)
  })
})
