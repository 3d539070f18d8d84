import { RATE_WINDOW_MS } from '../../../transfer/scheduler/index.ts'
import { DEADLINE_MARGIN, FLOOR_GRACE_MS } from './constants.ts'

/**
 * Deadlines of a pull with a floor (qos above 1; docs/proxy.md, "The
 * friend swarm"). The client must get chunk `next` by `floorDue()`, when
 * what it got in order falls under qos B/s (the measure pull.ts's starved()
 * uses), and each chunk after it qos B/s later. A friend takes only the
 * chunks it brings by their deadlines at the rate it gave so far; the
 * origin takes the ones before them, which friends would bring late,
 * when their deadline comes near. Pure arithmetic, so the policy is
 * tested apart from the network.
 */

/**
 * When bytes given to the client in order (`given`: [time, bytes], oldest
 * first) fall under `qos` B/s unless more come: while the pull is younger
 * than a rate window, its rate is over its age (from FLOOR_GRACE_MS on);
 * after, over the last window, whose bytes leave it oldest first. What
 * came early, faster than the floor, is time friends may use.
 */
export function floorDue (given: ReadonlyArray<readonly [number, number]>, now: number, started: number, qos: number): number {
  const since = now - RATE_WINDOW_MS
  let held = 0
  for (const [at, n] of given) if (at > since) held += n
  const young = started + Math.max(FLOOR_GRACE_MS, held * 1000 / qos)
  if (now - started < RATE_WINDOW_MS && young < started + RATE_WINDOW_MS) return young
  const need = qos * RATE_WINDOW_MS / 1000
  if (held < need) return now
  for (const [at, n] of given) {
    if (at <= since) continue
    held -= n
    if (held < need) return at + RATE_WINDOW_MS
  }
  return now
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
