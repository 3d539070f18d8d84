import { MIN_STEAL_SIZE } from './constants.ts'
import type { Range } from './ranges.ts'

/**
 * Which connection fetches which bytes (aria2's segment logic, simplified).
 *
 * What is left to fetch starts as free ranges. An idle connection takes the
 * first free range whole; with none left, it takes over the second half of
 * the busy range with the most bytes still to come (a slow or stalled
 * connection's range is that one, since it does not shrink). So N
 * connections split one file into N parts by halving, and the fast finish
 * the slow ones' work. A connection that fails gives its unfetched rest back
 * as a free range, for whoever is idle first (itself after its backoff).
 */
export class Segment {
  /** next byte to receive */
  cursor: number
  /** one past the last byte this segment is for; moves down when another connection takes over its tail */
  end: number

  constructor (start: number, end: number) {
    this.cursor = start
    this.end = end
  }

  get remaining (): number {
    return this.end - this.cursor
  }
}

export class Planner {
  private readonly free: Array<[number, number]>
  private readonly active = new Set<Segment>()

  constructor (gaps: readonly Range[]) {
    this.free = gaps.map(([s, e]) => [s, e])
  }

  /** work for an idle connection, or null when nothing is left to take */
  next (minSteal = MIN_STEAL_SIZE): Segment | null {
    const range = this.free.shift()
    if (range != null) return this.track(new Segment(range[0], range[1]))
    let busiest: Segment | undefined
    for (const s of this.active) if (busiest == null || s.remaining > busiest.remaining) busiest = s
    if (busiest == null || busiest.remaining < 2 * minSteal) return null
    const mid = busiest.cursor + Math.floor(busiest.remaining / 2)
    const taken = new Segment(mid, busiest.end)
    busiest.end = mid
    return this.track(taken)
  }

  /** the segment's connection stopped (done, failed or aborted): what it did not fetch is free again */
  release (segment: Segment): void {
    this.active.delete(segment)
    if (segment.cursor >= segment.end) return
    this.free.push([segment.cursor, segment.end])
    this.free.sort((a, b) => a[0] - b[0])
  }

  /** ranges nobody fetches */
  get unassigned (): number {
    return this.free.reduce((sum, [s, e]) => sum + e - s, 0)
  }

  private track (segment: Segment): Segment {
    this.active.add(segment)
    return segment
  }
}
