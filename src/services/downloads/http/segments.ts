import { MIN_STEAL_SIZE } from './constants.ts'
import type { Range } from './ranges.ts'

/**
 * Which connection fetches which bytes (aria2's segment logic, simplified).
 *
 * What is left to fetch starts as free ranges. An idle connection takes the
 * first free bytes, at most `piece` of them (one request each), so the file
 * fills from its start on and its SHA-256, computed in file order, follows
 * the download from memory instead of reading the file back after its end
 * (hash-cursor.ts); `grow` doubles the piece when requests cost too much
 * waiting (constants.ts, MIN_PIECE). A grown piece shrinks back towards
 * the first size near the end, to the connections' share of what is left
 * unassigned, so the last pieces end together: the split below then cuts
 * small requests, not 16 MiB ones (each cut closes the connection with the
 * bytes in flight: 1-7 cut requests and 1.3-23 MB sent twice per GiB with
 * 16 MiB pieces, before). With none
 * free, it takes over the second half of the busy range with the most bytes
 * still to come (a slow or stalled connection's range is that one, since it
 * does not shrink), so the fast finish the slow ones' work. A connection that
 * fails gives its unfetched rest back as a free range, for whoever is idle
 * first (itself after its backoff).
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
  private piece: number
  private readonly firstPiece: number
  private readonly maxPiece: number
  private readonly connections: number

  /**
   * `piece`: the most bytes one segment takes from a free range (Infinity:
   * the range whole), growing up to `maxPiece`; `connections`: how many
   * share the ranges (a grown piece is at most their share of what is left)
   */
  constructor (gaps: readonly Range[], piece = Infinity, maxPiece = piece, connections = 1) {
    this.free = gaps.map(([s, e]) => [s, e])
    this.piece = piece
    this.firstPiece = piece
    this.maxPiece = Math.max(piece, maxPiece)
    this.connections = Math.max(1, connections)
  }

  /** doubles the piece (up to the most): fewer requests, each waited for once */
  grow (): void {
    this.piece = Math.min(this.maxPiece, 2 * this.piece)
  }

  /** work for an idle connection, or null when nothing is left to take */
  next (minSteal = MIN_STEAL_SIZE): Segment | null {
    const range = this.free[0]
    if (range != null) {
      const piece = this.piece > this.firstPiece ? Math.min(this.piece, Math.max(this.firstPiece, Math.ceil(this.unassigned / this.connections))) : this.piece
      const end = Math.min(range[1], range[0] + piece)
      const segment = new Segment(range[0], end)
      if (end === range[1]) this.free.shift()
      else range[0] = end
      return this.track(segment)
    }
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
