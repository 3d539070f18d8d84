import { DEADLINE_MARGIN, FLOOR_CREDIT_MS, FLOOR_GRACE_MS } from './constants.ts'

/**
 * Deadlines of a pull with a floor (qos above 1; docs/proxy.md, "The
 * friend swarm"). The client must get chunk `next` by `floorDue()`, the
 * floor's schedule, and each chunk after it qos B/s later. A friend takes only the
 * chunks it brings by their deadlines at the rate it gave so far; the
 * origin takes the ones before them, which friends would bring late,
 * when their deadline comes near. Pure arithmetic, so the policy is
 * tested apart from the network.
 */

/**
 * When the client must have the chunk it waits for, having been given
 * `given` bytes in order since the pull `started`: the floor's schedule
 * (qos B/s from FLOOR_GRACE_MS on). Bytes that came early, ahead of it,
 * are time to spare, at most FLOOR_CREDIT_MS (a burst long ago does not
 * excuse a slow stretch now); behind it, the chunk was due already.
 */
export function floorDue (given: number, now: number, started: number, qos: number): number {
  return Math.min(started + FLOOR_GRACE_MS + given * 1000 / qos, now + FLOOR_CREDIT_MS)
}

export interface FriendPick {
  /** free chunks, lowest first */
  todo: readonly number[]
  /** the chunk the client waits for, and the first past the window */
  next: number
  end: number
  /** chunks one request may ask */
  max: number
  /** bytes of chunk i */
  size: (index: number) => number
  /** the floor, B/s, and when chunk `next` is due (floorDue) */
  qos: number
  due: number
  now: number
  /** the friend's rate so far, B/s, and the bytes it has yet to bring of its requests under way */
  rate: number
  queued: number
}

/** When chunk `index` is due: `next` at `due`, each chunk after it qos B/s later. */
export function deadline (pick: Pick<FriendPick, 'next' | 'size' | 'qos' | 'due'>, index: number): number {
  let bytes = 0
  for (let i = pick.next + 1; i <= index; i++) bytes += pick.size(i)
  return pick.due + bytes * 1000 / pick.qos
}

/**
 * The lowest run of consecutive free chunks (at most `max`, before `end`)
 * a friend brings by their deadlines, after what it has in hand, with
 * DEADLINE_MARGIN to spare; empty when it would bring every free one late.
 */
export function friendRun (pick: FriendPick): number[] {
  const run: number[] = []
  let queued = pick.queued
  for (const index of pick.todo) {
    if (index >= pick.end || run.length === pick.max || (run.length > 0 && index !== run.at(-1)! + 1)) break
    const eta = pick.now + DEADLINE_MARGIN * (queued + pick.size(index)) * 1000 / pick.rate
    if (eta > deadline(pick, index)) {
      if (run.length > 0) break
      continue
    }
    run.push(index)
    queued += pick.size(index)
  }
  return run
}
