import { describe, it, expect } from 'vitest'
import { deadline, floorDue, friendRun, type FriendPick } from '../../../src/services/proxy/swarm/deadline.ts'
import { DEADLINE_MARGIN, FLOOR_CREDIT_MS, FLOOR_GRACE_MS } from '../../../src/services/proxy/swarm/constants.ts'

/**
 * The floor's deadlines (deadline.ts): when the client needs each chunk,
 * and which chunks a friend takes at its rate. The pull that uses them,
 * with real friends, is in swarm.spec.ts and proxy-swarm.spec.ts; the
 * friends' share at a floor is a row of `bench/run.ts --section proxy`.
 */
const MiB = 1024 * 1024
const MB = 1e6

describe('the floor\'s deadlines', () => {
  it('dues the next chunk on the floor\'s schedule, with at most FLOOR_CREDIT_MS to spare for bytes that came early', () => {
    // nothing given yet: the first chunk at FLOOR_GRACE_MS; 4 MB given at 8 MB/s: half a second later
    expect(floorDue(0, 100, 0, 8 * MB)).toBe(FLOOR_GRACE_MS)
    expect(floorDue(4 * MB, 600, 0, 8 * MB)).toBe(FLOOR_GRACE_MS + 500)
    // far ahead of the schedule: only FLOOR_CREDIT_MS of it counts
    expect(floorDue(80 * MB, 1000, 0, 8 * MB)).toBe(1000 + FLOOR_CREDIT_MS)
    // behind it: due already (in the past)
    expect(floorDue(8 * MB, 9000, 0, 8 * MB)).toBe(FLOOR_GRACE_MS + 1000)
  })

  const pick = (over: Partial<FriendPick>): FriendPick => ({
    todo: [...Array(32).keys()], next: 0, end: 32, max: 4, size: () => MiB, qos: 7 * MB, due: 1000, now: 1000, rate: 2 * MB, queued: 0, ...over
  })

  it('gives the next chunk at `due`, each after it qos B/s later', () => {
    expect(deadline(pick({}), 0)).toBe(1000)
    expect(deadline(pick({}), 4)).toBeCloseTo(1000 + 4 * MiB * 1000 / (7 * MB))
  })

  it('lets a friend slower than the floor take only chunks it brings in time, leaving the ones before to the origin', () => {
    // 2 MB/s with one chunk in hand: another after ~1 s (x DEADLINE_MARGIN), while the floor needs one every 0.15 s: chunk 11
    // on, the ones before left to the origin; a second chunk in the same run would come too late for chunk 12
    const first = Math.ceil(DEADLINE_MARGIN * 2 * MiB * 1000 / (2 * MB) / (MiB * 1000 / (7 * MB)))
    expect(first).toBe(11)
    expect(friendRun(pick({ queued: MiB }))).toEqual([first])
    // the more it has in hand, the further ahead it takes; time to spare (a later `due`) brings it nearer
    expect(friendRun(pick({ queued: 2 * MiB }))).toEqual([16])
    expect(friendRun(pick({ queued: MiB, due: 1500 }))[0]).toBeLessThan(first)
    // nothing it can bring in time in the window: nothing
    expect(friendRun(pick({ queued: 20 * MiB }))).toEqual([])
  })

  it('lets a friend faster than the floor take the lowest run, in one request, up to max, consecutive', () => {
    const fast = { rate: 100 * MB, due: 2000 }
    expect(friendRun(pick(fast))).toEqual([0, 1, 2, 3])
    expect(friendRun(pick({ ...fast, todo: [0, 1, 3, 4] }))).toEqual([0, 1])
    expect(friendRun(pick({ ...fast, todo: [5, 6, 17], end: 7 }))).toEqual([5, 6])
    // the client due now: even a fast friend can't bring the next chunk by then (the origin takes it), the rest it can
    expect(friendRun(pick({ rate: 100 * MB }))).toEqual([1, 2, 3, 4])
  })
})
