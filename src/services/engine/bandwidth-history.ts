import { realClock, type Clock } from '../../transfer/token-bucket.ts'
import { TRAFFIC_CLASSES, type Direction, type TrafficClass } from '../../transfer/scheduler/index.ts'
import { BANDWIDTH_HISTORY_MS, BANDWIDTH_SAMPLE_MS } from './constants.ts'

/**
 * The daemon's bandwidth over its last hour, per direction and traffic class,
 * for the dashboard's plot (`GET /v1/bandwidth/history`, docs/api.md): the
 * page draws the hour before it was opened, not only what it sees itself.
 *
 * Every `intervalMs` a timer reads the scheduler's byte counters (bytes
 * granted in all, per direction and class) and keeps what each moved since
 * the last reading in a ring of fixed slots: an hour of 10 s intervals is 360
 * slots of 10 numbers and 2 times, 35 kB, allocated once; a tick makes no
 * objects (0.3 µs, under a byte of heap a tick over a million ticks) and the
 * timer does not keep the process alive. Interval lengths come from the
 * monotonic clock; wall-clock times are made only in the answer, for display.
 */

/** What the history reads: the bandwidth scheduler's `moved`. */
export interface ByteCounters {
  moved: (direction: Direction, cls: TrafficClass) => number
}

type Series = Record<'total' | TrafficClass, number[]>

/** The answer of `GET /v1/bandwidth/history`; arrays are oldest first, one entry per interval. */
export interface BandwidthHistoryView {
  /** how often an interval closes, ms */
  intervalMs: number
  /** the daemon's wall clock at the answer, ms since the epoch */
  now: number
  classes: readonly TrafficClass[]
  /**
   * wall-clock ms at the end of each interval; the last ends `now`: the
   * interval in progress, or, while that is under a tenth of `intervalMs`,
   * the last closed one and it together (a few ms alone would make a spike)
   */
  at: number[]
  /** each interval's length, ms (monotonic) */
  ms: number[]
  /** bytes/s averaged over each interval, in all and per class */
  up: Series
  down: Series
}

export interface BandwidthHistoryInit {
  counters: ByteCounters
  /** @default realClock (now for lengths, wall for display) */
  clock?: Pick<Clock, 'now' | 'wall'>
  /** @default BANDWIDTH_SAMPLE_MS */
  intervalMs?: number
  /** how far back it keeps @default BANDWIDTH_HISTORY_MS */
  spanMs?: number
}

const DIRECTIONS: readonly Direction[] = ['up', 'down']
const CLASSES = TRAFFIC_CLASSES.length
/** numbers per slot: each class of 'up', then each of 'down' */
const WIDTH = DIRECTIONS.length * CLASSES

export class BandwidthHistory {
  readonly intervalMs: number
  private readonly counters: ByteCounters
  private readonly now: () => number
  private readonly wall: () => number
  private readonly slots: number
  /** monotonic ms at the end of each slot's interval */
  private readonly ends: Float64Array
  private readonly spans: Float64Array
  /** bytes moved in each slot's interval, WIDTH a slot */
  private readonly bytes: Float64Array
  /** the counters at the last reading */
  private readonly last = new Float64Array(WIDTH)
  private lastAt: number
  /** slots filled, and the one written next */
  private filled = 0
  private next = 0
  private timer: NodeJS.Timeout | undefined
  private readonly tick = (): void => { this.sample() }

  constructor (init: BandwidthHistoryInit) {
    this.counters = init.counters
    const clock = init.clock ?? realClock
    this.now = clock.now
    this.wall = clock.wall ?? (() => Date.now())
    this.intervalMs = init.intervalMs ?? BANDWIDTH_SAMPLE_MS
    this.slots = Math.max(1, Math.ceil((init.spanMs ?? BANDWIDTH_HISTORY_MS) / this.intervalMs))
    this.ends = new Float64Array(this.slots)
    this.spans = new Float64Array(this.slots)
    this.bytes = new Float64Array(this.slots * WIDTH)
    for (let i = 0; i < WIDTH; i++) this.last[i] = this.counter(i)
    this.lastAt = this.now()
  }

  /** Samples every `intervalMs` until `stop`. */
  start (): void {
    if (this.timer !== undefined) return
    this.timer = setInterval(this.tick, this.intervalMs)
    this.timer.unref()
  }

  stop (): void {
    clearInterval(this.timer)
    this.timer = undefined
  }

  /** Closes the interval in progress into the ring (the timer calls it; tests call it on a manual clock). */
  sample (): void {
    const now = this.now()
    this.read(this.bytes, this.next * WIDTH, true)
    this.ends[this.next] = now
    this.spans[this.next] = now - this.lastAt
    this.lastAt = now
    this.next = (this.next + 1) % this.slots
    if (this.filled < this.slots) this.filled++
  }

  /** The kept intervals and the one in progress, as rates (BandwidthHistoryView). */
  view (): BandwidthHistoryView {
    const now = this.now()
    const wall = this.wall()
    const view: BandwidthHistoryView = { intervalMs: this.intervalMs, now: Math.round(wall), classes: TRAFFIC_CLASSES, at: [], ms: [], up: series(), down: series() }
    const put = (end: number, exact: number, bytes: Float64Array, offset: number): void => {
      // rates over the length given, so that rate × ms is the bytes moved
      const span = Math.round(exact)
      view.at.push(Math.round(wall - (now - end)))
      view.ms.push(span)
      for (let d = 0; d < DIRECTIONS.length; d++) {
        const lane = view[DIRECTIONS[d]!]
        let total = 0
        for (let c = 0; c < CLASSES; c++) {
          const moved = bytes[offset + d * CLASSES + c]!
          total += moved
          lane[TRAFFIC_CLASSES[c]!].push(perSecond(moved, span))
        }
        lane.total.push(perSecond(total, span))
      }
    }
    const progress = now - this.lastAt
    const fold = progress < this.intervalMs / 10 && this.filled > 0
    const closed = fold ? this.filled - 1 : this.filled
    for (let k = 0; k < closed; k++) {
      const slot = (this.next - this.filled + k + this.slots) % this.slots
      put(this.ends[slot]!, this.spans[slot]!, this.bytes, slot * WIDTH)
    }
    const recent = new Float64Array(WIDTH)
    this.read(recent, 0, false)
    if (fold) {
      const slot = (this.next - 1 + this.slots) % this.slots
      for (let i = 0; i < WIDTH; i++) recent[i]! += this.bytes[slot * WIDTH + i]!
      put(now, this.spans[slot]! + progress, recent, 0)
    } else if (progress >= 1) {
      put(now, progress, recent, 0)
    }
    return view
  }

  /** What each counter moved since the last reading, into `into` at `offset`; with `advance`, this reading becomes the last. */
  private read (into: Float64Array, offset: number, advance: boolean): void {
    for (let i = 0; i < WIDTH; i++) {
      const total = this.counter(i)
      const before = this.last[i]!
      // a counter below its last reading started again from zero: all it holds is new
      into[offset + i] = total >= before ? total - before : total
      if (advance) this.last[i] = total
    }
  }

  private counter (i: number): number {
    return this.counters.moved(DIRECTIONS[Math.floor(i / CLASSES)]!, TRAFFIC_CLASSES[i % CLASSES]!)
  }
}

function series (): Series {
  const out = { total: [] } as unknown as Series
  for (const cls of TRAFFIC_CLASSES) out[cls] = []
  return out
}

function perSecond (bytes: number, ms: number): number {
  return ms > 0 ? Math.round(bytes * 1000 / ms) : 0
}
