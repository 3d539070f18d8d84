/**
 * Sets of byte ranges, [start, end), kept sorted and merged: what of a file is
 * safely written, and what is still to fetch.
 */
export type Range = readonly [start: number, end: number]

export class RangeSet {
  private ranges: Array<[number, number]> = []

  constructor (ranges: readonly Range[] = []) {
    for (const [start, end] of ranges) this.add(start, end)
  }

  add (start: number, end: number): void {
    if (end <= start) return
    const out: Array<[number, number]> = []
    let merged: [number, number] = [start, end]
    let placed = false
    for (const r of this.ranges) {
      if (r[1] < merged[0]) out.push(r)
      else if (r[0] > merged[1]) {
        if (!placed) { out.push(merged); placed = true }
        out.push(r)
      } else merged = [Math.min(r[0], merged[0]), Math.max(r[1], merged[1])]
    }
    if (!placed) out.push(merged)
    this.ranges = out
  }

  /** bytes covered */
  get size (): number {
    return this.ranges.reduce((sum, [s, e]) => sum + e - s, 0)
  }

  /** the end of the run of covered bytes from 0 (0 when byte 0 is missing) */
  get prefix (): number {
    const first = this.ranges[0]
    return first != null && first[0] === 0 ? first[1] : 0
  }

  get last (): number {
    return this.ranges.at(-1)?.[1] ?? 0
  }

  list (): Range[] {
    return this.ranges.map(([s, e]) => [s, e] as const)
  }

  /** what of [0, total) is not covered, in order */
  gaps (total: number): Range[] {
    const out: Range[] = []
    let at = 0
    for (const [s, e] of this.ranges) {
      if (s > at) out.push([at, Math.min(s, total)])
      at = Math.max(at, e)
      if (at >= total) break
    }
    if (at < total) out.push([at, total])
    return out.filter(([s, e]) => e > s)
  }
}
