import { EventEmitter } from 'node:events'
import { KithError } from '../../errors.ts'
import { realClock, TokenBucket, type Clock } from '../token-bucket.ts'
import {
  BACKLOG_FRACTION, BURST_SECONDS, DEFAULT_CLASS_WEIGHTS, DEFAULT_PRIORITY_WEIGHTS, FLOOR_BURST_SECONDS,
  FLOOR_SLOW_RATIO, MAX_ETA_SEGMENTS, MAX_FLOOR_SHARE, MAX_SLICE, MIN_SLICE, RATE_WINDOW_MS, SLICE_MS
} from './constants.ts'
import { RateMeter } from './rate-meter.ts'
import { allocate, type Claim } from './share.ts'
import { activeRule, capAt, checkRate, checkSchedule, nextChange } from './time-of-day.ts'
import {
  PRIORITIES, TRAFFIC_CLASSES,
  type Direction, type FloorEvent, type FloorReport, type FloorState, type FlowInit, type FlowStats, type LaneStats,
  type Limits, type LimitsUpdate, type Priority, type Rate, type SchedulerStats, type TrafficClass
} from './types.ts'

/**
 * The bandwidth scheduler: every byte this node serves or fetches is asked
 * for with `flow.take(bytes)` before it moves. Per direction ("lane") it
 * holds a global token bucket (the cap in force, after the time-of-day
 * schedule), a token bucket per capped peer, and in front of them a weighted
 * fair queue:
 *
 *   1. floors: a flow served less than its reserved floor goes first
 *      (reservations are admitted against the caps, see reserveFloors);
 *   2. classes: start-time fair queueing over byte slices, weights 8:2:1 by
 *      default (friend, foaf, public; backup 2, service 8);
 *   3. within a class, the same over flows, weighted by priority (64:8:1).
 *
 * A take is granted in slices of ~10 ms at the applicable cap, each slice
 * queued anew, so flows interleave finely and a change of caps, weights or
 * priority applies to the very next slice. A flow whose peer is out of
 * tokens is skipped (its tag is not advanced; it does not bank credit: tags
 * restart at the current virtual time). With no cap in the way, a take
 * returns at once and only counts bytes.
 */
export interface Flow {
  readonly id: number
  readonly direction: Direction
  readonly peer: string | undefined
  readonly class: TrafficClass
  readonly priority: Priority
  readonly closed: boolean
  /**
   * Resolves when `bytes` may move (send them right after). `peer`, for
   * flows that move bytes with several peers, names the one this take is
   * for. Rejects with the signal's reason on abort, FLOW_CLOSED on close.
   */
  take: (bytes: number, signal?: AbortSignal, peer?: string) => Promise<void>
  /** Takes effect for the next slice, waiting takes included. */
  setPriority: (priority: Priority) => void
  /** bytes/s, 0 for none */
  setFloor: (floor: Rate) => void
  /** The floor's standing, or null without one. */
  floor: () => FloorReport | null
  stats: () => FlowStats
  /** Rejects waiting takes with FLOW_CLOSED and frees the flow's reservation. */
  close: () => void
}

export interface SchedulerInit {
  /** @default realClock */
  clock?: Clock
  limits?: LimitsUpdate
}

const RESOLVED = Promise.resolve()

interface Pending {
  remaining: number
  peer: string | undefined
  resolve: () => void
  reject: (err: unknown) => void
  signal: AbortSignal | undefined
  onAbort: (() => void) | undefined
}

interface ClassNode {
  /** finish tag of the class's last slice, in the lane's virtual time */
  finish: number
  /** the class's own virtual time, for its flows' tags */
  v: number
  readonly flows: Set<FlowImpl>
  readonly meter: RateMeter
}

class Lane {
  readonly direction: Direction
  readonly bucket: TokenBucket
  /** the global cap in force */
  cap: Rate = Infinity
  readonly peerBuckets = new Map<string, TokenBucket>()
  readonly flows = new Set<FlowImpl>()
  readonly classes: Record<TrafficClass, ClassNode>
  /** virtual time: start tag of the latest fair-queue slice */
  v = 0
  /** takes queued */
  waiting = 0
  wake: AbortController | undefined
  wakeAt = Infinity
  pumping = false
  again = false
  readonly peerMeters = new Map<string, RateMeter>()

  constructor (direction: Direction, clock: Clock) {
    this.direction = direction
    this.bucket = new TokenBucket(Infinity, { clock, burstSeconds: BURST_SECONDS })
    const node = (): ClassNode => ({ finish: 0, v: 0, flows: new Set(), meter: new RateMeter() })
    this.classes = { friend: node(), foaf: node(), public: node(), backup: node(), service: node() }
  }

  peerCap (peer: string | undefined): Rate {
    if (peer === undefined) return Infinity
    return this.peerBuckets.get(peer)?.limit ?? Infinity
  }
}

class FlowImpl implements Flow {
  readonly id: number
  readonly direction: Direction
  readonly peer: string | undefined
  readonly class: TrafficClass
  readonly label: string | undefined
  priority: Priority
  closed = false
  readonly queue: Pending[] = []
  /** finish tag of its last slice, in its class's virtual time */
  finish = 0
  wanted: Rate
  reserved: Rate = 0
  state: FloorState = 'ok'
  credit = 0
  creditAt: number
  /** since when takes have been waiting, if they are */
  queuedSince: number | undefined
  /** ms spent with takes waiting, over the rate window */
  readonly waited = new RateMeter()
  readonly meter = new RateMeter()
  readonly created: number
  private readonly scheduler: BandwidthScheduler

  constructor (scheduler: BandwidthScheduler, id: number, init: Required<Omit<FlowInit, 'peer' | 'label'>> & Pick<FlowInit, 'peer' | 'label'>, now: number) {
    this.scheduler = scheduler
    this.id = id
    this.direction = init.direction
    this.peer = init.peer
    this.class = init.class
    this.priority = init.priority
    this.label = init.label
    this.wanted = init.floor
    this.created = now
    this.creditAt = now
  }

  // not async: the unlimited path hands back one shared resolved promise
  take (bytes: number, signal?: AbortSignal, peer?: string): Promise<void> {
    return this.scheduler.take(this, bytes, signal, peer)
  }

  setPriority (priority: Priority): void {
    this.scheduler.setPriority(this, priority)
  }

  setFloor (floor: Rate): void {
    this.scheduler.setFloor(this, floor)
  }

  floor (): FloorReport | null {
    return this.scheduler.floorReport(this)
  }

  stats (): FlowStats {
    return this.scheduler.flowStats(this)
  }

  close (): void {
    this.scheduler.closeFlow(this)
  }
}

function checkWeights<K extends string> (given: Partial<Record<K, number>> | undefined, keys: readonly K[], base: Record<K, number>, what: string): Record<K, number> {
  const out = { ...base }
  if (given === undefined) return out
  if (given === null || typeof given !== 'object') throw new KithError('BAD_REQUEST', `${what} are an object of weights`)
  for (const [key, value] of Object.entries(given)) {
    if (!keys.includes(key as K)) throw new KithError('BAD_REQUEST', `${JSON.stringify(key)} is not one of the ${what} (${keys.join(', ')})`)
    if (typeof value !== 'number' || !(value > 0) || !Number.isFinite(value)) throw new KithError('BAD_REQUEST', `${what}: ${key} must be a positive number, not ${JSON.stringify(value)}`)
    out[key as K] = value
  }
  return out
}

function nullable (rate: Rate): Rate | null {
  return Number.isFinite(rate) ? rate : null
}

export class BandwidthScheduler extends EventEmitter<{ floor: [FloorEvent] }> {
  private readonly clock: Clock
  private readonly wall: () => number
  private config: Limits
  private readonly lanes: Record<Direction, Lane>
  private nextId = 1
  /** wall-clock ms of the next schedule change, if any */
  private changeAt: number | undefined
  private rule = -1
  private closed = false

  constructor (init: SchedulerInit = {}) {
    super()
    this.clock = init.clock ?? realClock
    const clock = this.clock
    this.wall = clock.wall ?? (() => Date.now())
    this.lanes = { up: new Lane('up', clock), down: new Lane('down', clock) }
    this.config = {
      upload: Infinity,
      download: Infinity,
      peers: {},
      schedule: [],
      classWeights: { ...DEFAULT_CLASS_WEIGHTS },
      priorityWeights: { ...DEFAULT_PRIORITY_WEIGHTS }
    }
    this.setLimits(init.limits ?? {})
  }

  // ---- configuration

  /** The limits as configured (before the schedule); a copy. */
  limits (): Limits {
    return structuredClone(this.config)
  }

  /** The global caps in force now, after the schedule. */
  caps (): Record<Direction, Rate> {
    this.checkSchedule()
    return { up: this.lanes.up.cap, down: this.lanes.down.cap }
  }

  /**
   * Changes limits while flows run: waiting takes re-evaluate at once, no
   * flow is dropped. Throws BAD_REQUEST (changing nothing) on a bad value.
   */
  setLimits (update: LimitsUpdate): void {
    const next: Limits = structuredClone(this.config)
    if (update.upload !== undefined) next.upload = checkRate(update.upload, 'the upload cap')
    if (update.download !== undefined) next.download = checkRate(update.download, 'the download cap')
    if (update.schedule !== undefined) next.schedule = checkSchedule(update.schedule)
    if (update.peers !== undefined) {
      if (update.peers === null || typeof update.peers !== 'object') throw new KithError('BAD_REQUEST', 'per-peer limits are an object keyed by peer id')
      next.peers = {}
      for (const [peer, limits] of Object.entries(update.peers)) {
        if (peer === '' || limits === null || typeof limits !== 'object') throw new KithError('BAD_REQUEST', 'per-peer limits are { upload?, download? } keyed by peer id')
        next.peers[peer] = {}
        if (limits.upload !== undefined) next.peers[peer].upload = checkRate(limits.upload, `the upload cap for ${peer}`)
        if (limits.download !== undefined) next.peers[peer].download = checkRate(limits.download, `the download cap for ${peer}`)
      }
    }
    next.classWeights = checkWeights(update.classWeights, TRAFFIC_CLASSES, next.classWeights, 'class weights')
    next.priorityWeights = checkWeights(update.priorityWeights, PRIORITIES, next.priorityWeights, 'priority weights')

    const old = this.config
    this.config = next
    for (const lane of Object.values(this.lanes)) {
      // a weight change rescales the lag already queued, so it holds from the next slice on
      for (const cls of TRAFFIC_CLASSES) {
        const node = lane.classes[cls]
        const lag = node.finish - lane.v
        if (lag > 0) node.finish = lane.v + lag * old.classWeights[cls] / next.classWeights[cls]
        for (const flow of node.flows) this.rescale(flow, node, old.priorityWeights[flow.priority], next.priorityWeights[flow.priority])
      }
      const wanted = new Map<string, Rate>()
      for (const [peer, limits] of Object.entries(next.peers)) {
        const cap = lane.direction === 'up' ? limits.upload : limits.download
        if (cap !== undefined && Number.isFinite(cap)) wanted.set(peer, cap)
      }
      for (const [peer, bucket] of lane.peerBuckets) {
        if (!wanted.has(peer)) lane.peerBuckets.delete(peer)
        else bucket.setRate(wanted.get(peer)!)
      }
      for (const [peer, cap] of wanted) {
        if (!lane.peerBuckets.has(peer)) lane.peerBuckets.set(peer, new TokenBucket(cap, { clock: this.clock, burstSeconds: BURST_SECONDS }))
      }
    }
    this.applyCaps()
  }

  /** Sets each lane's cap from the base limits and the schedule, and when to look again. */
  private applyCaps (): void {
    const wall = this.wall()
    const schedule = this.config.schedule
    this.rule = activeRule(schedule, wall)
    this.changeAt = nextChange(schedule, wall)
    for (const lane of Object.values(this.lanes)) {
      const cap = capAt(schedule, lane.direction === 'up' ? this.config.upload : this.config.download, lane.direction, wall)
      if (cap !== lane.cap) {
        lane.cap = cap
        lane.bucket.setRate(cap)
      }
      this.reserveFloors(lane)
      this.pump(lane)
    }
  }

  private checkSchedule (): void {
    if (this.changeAt !== undefined && this.wall() >= this.changeAt) this.applyCaps()
  }

  // ---- flows

  flow (init: FlowInit): Flow {
    if (this.closed) throw new KithError('FLOW_CLOSED', 'the bandwidth scheduler is stopped')
    if (init.direction !== 'up' && init.direction !== 'down') throw new KithError('BAD_REQUEST', `a flow's direction is 'up' or 'down', not ${JSON.stringify(init.direction)}`)
    const cls = init.class ?? 'friend'
    if (!TRAFFIC_CLASSES.includes(cls)) throw new KithError('BAD_REQUEST', `a flow's class is one of ${TRAFFIC_CLASSES.join(', ')}, not ${JSON.stringify(cls)}`)
    const priority = init.priority ?? 'normal'
    this.checkPriority(priority)
    const floor = checkRate(init.floor ?? 0, 'a floor')
    const lane = this.lanes[init.direction]
    const flow = new FlowImpl(this, this.nextId++, { direction: init.direction, class: cls, priority, floor, peer: init.peer, label: init.label }, this.clock.now())
    // a new flow starts level with the others: no credit from the past, no debt
    flow.finish = lane.classes[cls].v
    lane.flows.add(flow)
    lane.classes[cls].flows.add(flow)
    if (floor > 0) this.reserveFloors(lane)
    return flow
  }

  private checkPriority (priority: unknown): asserts priority is Priority {
    if (!PRIORITIES.includes(priority as Priority)) throw new KithError('BAD_REQUEST', `a priority is one of ${PRIORITIES.join(', ')}, not ${JSON.stringify(priority)}`)
  }

  /** @internal via Flow */
  setPriority (flow: FlowImpl, priority: Priority): void {
    this.checkPriority(priority)
    if (flow.closed || flow.priority === priority) return
    const lane = this.lanes[flow.direction]
    const weights = this.config.priorityWeights
    this.rescale(flow, lane.classes[flow.class], weights[flow.priority], weights[priority])
    flow.priority = priority
    this.reserveFloors(lane)
    this.pump(lane)
  }

  /** Keeps a flow's place fair when its weight changes: the lag it has queued shrinks or grows by the ratio. */
  private rescale (flow: FlowImpl, node: ClassNode, from: number, to: number): void {
    const lag = flow.finish - node.v
    if (lag > 0 && from !== to) flow.finish = node.v + lag * from / to
  }

  /** @internal via Flow */
  setFloor (flow: FlowImpl, floor: Rate): void {
    flow.wanted = checkRate(floor, 'a floor')
    if (flow.closed) return
    const lane = this.lanes[flow.direction]
    this.reserveFloors(lane)
    this.pump(lane)
  }

  /** @internal via Flow */
  closeFlow (flow: FlowImpl): void {
    if (flow.closed) return
    flow.closed = true
    const lane = this.lanes[flow.direction]
    lane.flows.delete(flow)
    lane.classes[flow.class].flows.delete(flow)
    // the error only when a take waits: its stack costs more than the rest of a close, and most flows close idle
    if (flow.queue.length > 0) {
      const err = new KithError('FLOW_CLOSED', 'the bandwidth flow was closed')
      for (const req of flow.queue.splice(0)) {
        lane.waiting--
        this.settle(req)
        req.reject(err)
      }
    }
    this.dequeued(flow, this.clock.now())
    if (flow.reserved > 0 || flow.wanted > 0) this.reserveFloors(lane)
    this.pump(lane)
  }

  /** Closes every flow (waiting takes reject with FLOW_CLOSED) and stops all timers. */
  close (): void {
    this.closed = true
    for (const lane of Object.values(this.lanes)) {
      for (const flow of [...lane.flows]) this.closeFlow(flow)
      this.disarm(lane)
    }
  }

  // ---- taking bytes

  /** @internal via Flow */
  take (flow: FlowImpl, bytes: number, signal: AbortSignal | undefined, peerOverride: string | undefined): Promise<void> {
    if (flow.closed) return Promise.reject(new KithError('FLOW_CLOSED', 'the bandwidth flow was closed'))
    if (!(bytes > 0)) return RESOLVED
    this.checkSchedule()
    const lane = this.lanes[flow.direction]
    const peer = peerOverride ?? flow.peer
    if (lane.cap === Infinity && flow.queue.length === 0 && (peer === undefined || !lane.peerBuckets.has(peer))) {
      // nothing to ration: count and go
      this.account(flow, lane, peer, bytes, this.clock.now())
      return RESOLVED
    }
    if (signal?.aborted === true) return Promise.reject(signal.reason)
    return new Promise<void>((resolve, reject) => {
      const req: Pending = { remaining: bytes, peer, resolve, reject, signal, onAbort: undefined }
      if (signal !== undefined) {
        req.onAbort = () => {
          const i = flow.queue.indexOf(req)
          if (i < 0) return
          flow.queue.splice(i, 1)
          lane.waiting--
          this.dequeued(flow, this.clock.now())
          reject(signal.reason)
          this.pump(lane)
        }
        signal.addEventListener('abort', req.onAbort, { once: true })
      }
      if (flow.queue.length === 0) flow.queuedSince = this.clock.now()
      flow.queue.push(req)
      lane.waiting++
      this.pump(lane)
    })
  }

  /** Books the time a flow's takes waited, once none waits any more. */
  private dequeued (flow: FlowImpl, now: number): void {
    if (flow.queue.length > 0 || flow.queuedSince === undefined) return
    flow.waited.add(now - flow.queuedSince, now)
    flow.queuedSince = undefined
  }

  private settle (req: Pending): void {
    if (req.onAbort !== undefined) req.signal!.removeEventListener('abort', req.onAbort)
  }

  /** Grants what the buckets allow, in fair order; then sleeps until more can go. */
  private pump (lane: Lane): void {
    if (lane.pumping) {
      lane.again = true
      return
    }
    lane.pumping = true
    try {
      do {
        lane.again = false
        this.pumpOnce(lane)
      } while (lane.again)
    } finally {
      lane.pumping = false
    }
  }

  private pumpOnce (lane: Lane): void {
    this.checkSchedule()
    const now = this.clock.now()
    while (lane.waiting > 0) {
      const wait = lane.bucket.waitMs()
      if (wait > 0) {
        this.arm(lane, wait, now)
        return
      }
      const pick = this.pickFloor(lane, now) ?? this.pickFair(lane)
      if (pick === undefined) {
        this.arm(lane, this.peerWait(lane), now)
        return
      }
      this.grant(lane, pick.flow, pick.req, pick.floor, now)
    }
    this.disarm(lane)
  }

  /** The first take of `flow` whose peer has tokens. */
  private eligible (lane: Lane, flow: FlowImpl): Pending | undefined {
    for (const req of flow.queue) {
      if (req.peer === undefined) return req
      const bucket = lane.peerBuckets.get(req.peer)
      if (bucket === undefined || bucket.ready()) return req
    }
    return undefined
  }

  private refreshCredit (flow: FlowImpl, now: number): void {
    flow.credit = Math.min(flow.credit + flow.reserved * (now - flow.creditAt) / 1000, flow.reserved * FLOOR_BURST_SECONDS)
    flow.creditAt = now
  }

  /** The eligible flow furthest under its reserved floor, if any is under. */
  private pickFloor (lane: Lane, now: number): { flow: FlowImpl, req: Pending, floor: boolean } | undefined {
    let best: { flow: FlowImpl, req: Pending, floor: boolean } | undefined
    let bestScore = 0
    for (const flow of lane.flows) {
      if (flow.reserved <= 0 || flow.queue.length === 0) continue
      this.refreshCredit(flow, now)
      if (flow.credit <= 0) continue
      const score = flow.credit / flow.reserved
      if (score <= bestScore) continue
      const req = this.eligible(lane, flow)
      if (req === undefined) continue
      best = { flow, req, floor: true }
      bestScore = score
    }
    return best
  }

  /** Start-time fair queueing: the class with the least start tag, then its flow with the least. */
  private pickFair (lane: Lane): { flow: FlowImpl, req: Pending, floor: boolean } | undefined {
    let best: { flow: FlowImpl, req: Pending, floor: boolean } | undefined
    let bestTag = Infinity
    for (const cls of TRAFFIC_CLASSES) {
      const node = lane.classes[cls]
      const tag = Math.max(lane.v, node.finish)
      if (tag >= bestTag) continue
      let pick: { flow: FlowImpl, req: Pending } | undefined
      let pickTag = Infinity
      for (const flow of node.flows) {
        if (flow.queue.length === 0) continue
        const flowTag = Math.max(node.v, flow.finish)
        if (flowTag > pickTag || (flowTag === pickTag && pick !== undefined && flow.id > pick.flow.id)) continue
        const req = this.eligible(lane, flow)
        if (req === undefined) continue
        pick = { flow, req }
        pickTag = flowTag
      }
      if (pick === undefined) continue
      best = { ...pick, floor: false }
      bestTag = tag
    }
    return best
  }

  private sliceFor (lane: Lane, peer: string | undefined): number {
    const rate = Math.min(lane.cap, lane.peerCap(peer))
    if (!Number.isFinite(rate)) return Infinity
    return Math.min(MAX_SLICE, Math.max(MIN_SLICE, rate * SLICE_MS / 1000))
  }

  private grant (lane: Lane, flow: FlowImpl, req: Pending, floor: boolean, now: number): void {
    const bytes = Math.min(req.remaining, this.sliceFor(lane, req.peer))
    if (!floor) {
      // Floor picks stay outside the fair queue's tags: charged there, a long floor would leave
      // its class in "debt" (starved) after it ends. The floor credit counts every byte instead,
      // so a flow gets max(floor, its fair share of what floors leave), never both.
      const node = lane.classes[flow.class]
      lane.v = Math.max(lane.v, node.finish)
      node.finish = lane.v + bytes / this.config.classWeights[flow.class]
      node.v = Math.max(node.v, flow.finish)
      flow.finish = node.v + bytes / this.config.priorityWeights[flow.priority]
    }
    lane.bucket.consume(bytes)
    if (req.peer !== undefined) lane.peerBuckets.get(req.peer)?.consume(bytes)
    if (flow.reserved > 0) {
      this.refreshCredit(flow, now)
      flow.credit = Math.max(flow.credit - bytes, -flow.reserved * FLOOR_BURST_SECONDS)
    }
    this.account(flow, lane, req.peer, bytes, now)
    req.remaining -= bytes
    if (req.remaining <= 0) {
      flow.queue.splice(flow.queue.indexOf(req), 1)
      lane.waiting--
      this.dequeued(flow, now)
      this.settle(req)
      req.resolve()
    }
  }

  private account (flow: FlowImpl, lane: Lane, peer: string | undefined, bytes: number, now: number): void {
    flow.meter.add(bytes, now)
    lane.classes[flow.class].meter.add(bytes, now)
    if (peer !== undefined) {
      let meter = lane.peerMeters.get(peer)
      if (meter === undefined) lane.peerMeters.set(peer, meter = new RateMeter())
      meter.add(bytes, now)
    }
  }

  /** How long until some waiting take's peer has tokens (Infinity if none ever will at current caps). */
  private peerWait (lane: Lane): number {
    let wait = Infinity
    for (const flow of lane.flows) {
      for (const req of flow.queue) {
        const bucket = req.peer === undefined ? undefined : lane.peerBuckets.get(req.peer)
        wait = Math.min(wait, bucket === undefined ? 0 : bucket.waitMs())
      }
    }
    return wait
  }

  private arm (lane: Lane, ms: number, now: number): void {
    if (this.changeAt !== undefined) ms = Math.min(ms, Math.max(0, this.changeAt - this.wall()))
    if (ms === Infinity) {
      this.disarm(lane)
      return
    }
    const at = now + ms
    if (lane.wake !== undefined && lane.wakeAt <= at) return
    this.disarm(lane)
    const controller = new AbortController()
    lane.wake = controller
    lane.wakeAt = at
    this.clock.sleep(ms, controller.signal).then(() => {
      if (lane.wake !== controller) return
      lane.wake = undefined
      lane.wakeAt = Infinity
      this.pump(lane)
    }, () => {})
  }

  private disarm (lane: Lane): void {
    if (lane.wake === undefined) return
    lane.wake.abort()
    lane.wake = undefined
    lane.wakeAt = Infinity
  }

  // ---- floors

  /**
   * Reserves floors against the caps in force: at most MAX_FLOOR_SHARE of
   * the global cap and of each peer's, first come friends, then higher
   * priority, then older flows. What can't be reserved is reported.
   */
  private reserveFloors (lane: Lane): void {
    const floored = [...lane.flows].filter(f => f.wanted > 0 || f.reserved > 0)
    if (floored.length === 0) return
    floored.sort((a, b) => TRAFFIC_CLASSES.indexOf(a.class) - TRAFFIC_CLASSES.indexOf(b.class) ||
      PRIORITIES.indexOf(a.priority) - PRIORITIES.indexOf(b.priority) || a.id - b.id)
    let budget = lane.cap * MAX_FLOOR_SHARE
    const peerBudget = new Map<string, number>()
    const now = this.clock.now()
    for (const flow of floored) {
      const before = flow.state
      const peerLeft = flow.peer === undefined ? Infinity : peerBudget.get(flow.peer) ?? lane.peerCap(flow.peer) * MAX_FLOOR_SHARE
      const reserved = Math.max(0, Math.min(flow.wanted, budget, peerLeft))
      let state: FloorState = 'ok'
      if (reserved < flow.wanted) state = peerLeft < budget ? 'peer-cap' : 'cap'
      this.refreshCredit(flow, now)
      flow.reserved = reserved
      flow.state = state
      if (Number.isFinite(reserved)) budget -= reserved
      if (flow.peer !== undefined && Number.isFinite(peerLeft)) peerBudget.set(flow.peer, peerLeft - reserved)
      if (state !== before) this.emit('floor', { flow: this.flowStats(flow), report: this.floorReport(flow)! })
    }
  }

  /** @internal via Flow */
  floorReport (flow: FlowImpl): FloorReport | null {
    if (flow.wanted <= 0) return null
    const now = this.clock.now()
    const achieved = flow.meter.rate(now)
    let state = flow.state
    // reserved in full, measured over a whole window, not held back by us, and still short: the other side is slow
    if (state === 'ok' && now - flow.created >= RATE_WINDOW_MS && !this.isBacklogged(flow, now) && achieved < flow.wanted * FLOOR_SLOW_RATIO) state = 'slow'
    return { wanted: flow.wanted, reserved: flow.reserved, achieved, state }
  }

  // ---- shares, ETA and stats

  /** Had takes waiting for most of the rate window (or of its life, if shorter). */
  private isBacklogged (flow: FlowImpl, now: number): boolean {
    const window = flow.waited.windowMs
    const span = Math.min(window, now - flow.created)
    if (span <= 0) return flow.queue.length > 0
    const ongoing = flow.queuedSince === undefined ? 0 : now - Math.max(flow.queuedSince, now - window)
    return flow.waited.sum(now) + ongoing >= span * BACKLOG_FRACTION
  }

  /** The rate `flow` is expected to get under `cap`, or null when nothing says (no cap and no history). */
  private predict (flow: FlowImpl, cap: Rate, now: number): Rate | null {
    const lane = this.lanes[flow.direction]
    const flows = [...lane.flows]
    const claims: Claim[] = flows.map(f => ({
      weight: this.config.priorityWeights[f.priority],
      class: f.class,
      peer: f.peer,
      demand: f === flow || this.isBacklogged(f, now) ? Infinity : f.meter.rate(now),
      reserved: f.reserved
    }))
    let rate = allocate(cap, claims, this.config.classWeights, peer => lane.peerCap(peer))[flows.indexOf(flow)] ?? 0
    if (!this.isBacklogged(flow, now)) {
      // not held back by us: it moves as fast as its peers let it, at most its share
      const achieved = flow.meter.rate(now)
      if (achieved > 0) rate = Math.min(rate, achieved)
    }
    return Number.isFinite(rate) ? rate : null
  }

  /** bytes/s `flow` is expected to get from now on (its share of the caps), or null when unknown. */
  share (flow: Flow): Rate | null {
    const impl = flow as FlowImpl
    if (impl.closed) return null
    this.checkSchedule()
    return this.predict(impl, this.lanes[impl.direction].cap, this.clock.now())
  }

  /**
   * Seconds until `bytesLeft` more bytes of `flow` have moved, from its share
   * of the caps as they will be (time-of-day changes included) against the
   * flows active now; null when unknown (no cap and no history, or nothing
   * moves).
   */
  eta (flow: Flow, bytesLeft: number): number | null {
    if (!(bytesLeft > 0)) return 0
    const impl = flow as FlowImpl
    if (impl.closed) return null
    this.checkSchedule()
    const now = this.clock.now()
    const base = impl.direction === 'up' ? this.config.upload : this.config.download
    const schedule = this.config.schedule
    let wall = this.wall()
    let left = bytesLeft
    let seconds = 0
    for (let i = 0; i < MAX_ETA_SEGMENTS; i++) {
      const rate = this.predict(impl, capAt(schedule, base, impl.direction, wall), now)
      if (rate === null) return i === 0 ? null : seconds
      const change = nextChange(schedule, wall)
      if (change === undefined) return rate > 0 ? seconds + left / rate : null
      const span = (change - wall) / 1000
      if (rate * span >= left) return seconds + left / rate
      left -= rate * span
      seconds += span
      wall = change
    }
    return null
  }

  /** @internal via Flow */
  flowStats (flow: FlowImpl): FlowStats {
    const now = this.clock.now()
    return {
      id: flow.id,
      label: flow.label ?? null,
      direction: flow.direction,
      peer: flow.peer ?? null,
      class: flow.class,
      priority: flow.priority,
      rate: flow.meter.rate(now),
      share: flow.closed ? null : this.predict(flow, this.lanes[flow.direction].cap, now),
      bytes: flow.meter.total,
      waiting: flow.queue.length,
      floor: this.floorReport(flow)
    }
  }

  private laneStats (lane: Lane, now: number): LaneStats {
    const classes = {} as LaneStats['classes']
    // the lane's rate is its classes' sum, not a meter of its own: each meter
    // divides by its own age in its first window, so a lane meter started
    // long before a class's first byte would read below that class
    let total = 0
    for (const cls of TRAFFIC_CLASSES) {
      const node = lane.classes[cls]
      classes[cls] = { rate: node.meter.rate(now), weight: this.config.classWeights[cls], flows: node.flows.size }
      total += classes[cls].rate
    }
    const peers: LaneStats['peers'] = {}
    for (const [peer, meter] of lane.peerMeters) {
      const rate = meter.rate(now)
      if (rate === 0 && !lane.peerBuckets.has(peer)) {
        lane.peerMeters.delete(peer)
        continue
      }
      peers[peer] = { rate, cap: nullable(lane.peerCap(peer)) }
    }
    for (const [peer, bucket] of lane.peerBuckets) peers[peer] ??= { rate: 0, cap: bucket.limit }
    return { cap: nullable(lane.cap), rate: total, classes, peers, waiting: lane.waiting }
  }

  /**
   * Bytes granted in all, since the scheduler was made, in one direction and
   * class: a counter that only grows, read without allocating (the engine's
   * bandwidth history samples it on a timer).
   */
  moved (direction: Direction, cls: TrafficClass): number {
    return this.lanes[direction].classes[cls].meter.total
  }

  /** Rates now per lane, class, peer and flow, the caps in force, and the schedule's state. */
  stats (): SchedulerStats {
    this.checkSchedule()
    const now = this.clock.now()
    return {
      up: this.laneStats(this.lanes.up, now),
      down: this.laneStats(this.lanes.down, now),
      flows: [...this.lanes.up.flows, ...this.lanes.down.flows].map(f => this.flowStats(f)),
      rule: this.rule < 0 ? null : this.rule,
      nextChange: this.changeAt ?? null
    }
  }
}
