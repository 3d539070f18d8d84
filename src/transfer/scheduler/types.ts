/**
 * Public types of the bandwidth scheduler (see index.ts and docs/scheduler.md).
 */

/** 'up': what this node serves; 'down': what it fetches. */
export type Direction = 'up' | 'down'

/**
 * Whose traffic it is, or what it is for: friend > friend of a friend >
 * anyone else (public content); `backup` is bulk traffic that can wait
 * (backups to and from friends' disks), below interactive fetches;
 * `service` is what friend services carry (a friend's browser on my blog,
 * src/services/expose): a friend's interactive traffic, weighted like their
 * fetches, in a class of its own so it shows apart and can be weighted
 * apart. The scheduler knows a class only as a name with a weight. The
 * order breaks ties and orders floors.
 */
export type TrafficClass = 'friend' | 'foaf' | 'public' | 'backup' | 'service'
export const TRAFFIC_CLASSES: readonly TrafficClass[] = ['friend', 'foaf', 'public', 'backup', 'service']

/** Within a class, who goes first; changeable while a flow runs. */
export type Priority = 'urgent' | 'normal' | 'background'
export const PRIORITIES: readonly Priority[] = ['urgent', 'normal', 'background']

/** Rates are bytes per second; Infinity means no limit, 0 means nothing moves. */
export type Rate = number

/**
 * A time-of-day rule: between `from` (inclusive) and `to` (exclusive), local
 * time, the global caps it names replace the base ones. `to` before `from`
 * wraps past midnight; `from` equal to `to` is all day. The first matching
 * rule wins. Example: unlimited at night,
 * `{ from: '23:00', to: '07:00', upload: Infinity, download: Infinity }`.
 */
export interface ScheduleRule {
  /** 'HH:MM', 00:00 to 24:00 */
  from: string
  to: string
  upload?: Rate
  download?: Rate
}

export interface PeerLimits {
  upload?: Rate
  download?: Rate
}

export interface Limits {
  /** global cap on what this node serves @default Infinity */
  upload: Rate
  /** global cap on what this node fetches @default Infinity */
  download: Rate
  /** per-peer caps, by peer id; they hold whatever the schedule says @default {} */
  peers: Record<string, PeerLimits>
  /** @default [] */
  schedule: ScheduleRule[]
  /** @default DEFAULT_CLASS_WEIGHTS (friend 8, foaf 2, public 1, backup 2, service 8) */
  classWeights: Record<TrafficClass, number>
  /** @default DEFAULT_PRIORITY_WEIGHTS (64:8:1) */
  priorityWeights: Record<Priority, number>
}

/** What `setLimits` takes: any part of Limits; weights may be given in part. `peers` replaces the whole map. */
export type LimitsUpdate = Partial<Omit<Limits, 'classWeights' | 'priorityWeights'>> & {
  classWeights?: Partial<Record<TrafficClass, number>>
  priorityWeights?: Partial<Record<Priority, number>>
}

export interface FlowInit {
  direction: Direction
  /**
   * The peer at the other end, whose per-peer cap applies. A flow that moves
   * bytes with several peers (a multi-source fetch) leaves it out and names
   * the peer on each take instead.
   */
  peer?: string
  /** @default 'friend' */
  class?: TrafficClass
  /** @default 'normal' */
  priority?: Priority
  /** minimum rate asked for, bytes/s; reserved where the caps allow @default 0 */
  floor?: Rate
  /** shown in stats (a transfer id, say) */
  label?: string
}

/**
 * How a flow's floor stands:
 * - `ok`: reserved in full, and (once measured) achieved
 * - `cap`: the global cap (less what other floors hold) can't reserve all of it
 * - `peer-cap`: the peer's cap can't
 * - `slow`: reserved in full, yet the flow moves less without waiting for
 *   bandwidth: its peers or the network are slower (a fetcher adds sources)
 */
export type FloorState = 'ok' | 'cap' | 'peer-cap' | 'slow'

export interface FloorReport {
  /** bytes/s asked */
  wanted: Rate
  /** bytes/s reserved, at most `wanted` */
  reserved: Rate
  /** bytes/s achieved over the rate window */
  achieved: Rate
  state: FloorState
}

export interface FloorEvent {
  flow: FlowStats
  report: FloorReport
}

export interface FlowStats {
  id: number
  label: string | null
  direction: Direction
  peer: string | null
  class: TrafficClass
  priority: Priority
  /** bytes/s achieved over the rate window */
  rate: Rate
  /** bytes/s the scheduler expects to give it from now on; null when unknown (no cap and no history) */
  share: Rate | null
  /** bytes granted in all */
  bytes: number
  /** takes waiting */
  waiting: number
  floor: FloorReport | null
}

/** Caps in stats: null means unlimited (JSON has no Infinity). */
export interface LaneStats {
  /** the global cap in force now (after the schedule) */
  cap: Rate | null
  /** bytes/s: the sum of the classes' rates */
  rate: Rate
  classes: Record<TrafficClass, { rate: Rate, weight: number, flows: number }>
  peers: Record<string, { rate: Rate, cap: Rate | null }>
  /** takes waiting */
  waiting: number
}

export interface SchedulerStats {
  up: LaneStats
  down: LaneStats
  flows: FlowStats[]
  /** index of the schedule rule in force, or null */
  rule: number | null
  /** wall-clock ms of the next schedule change, or null */
  nextChange: number | null
}
