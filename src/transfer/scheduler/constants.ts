import type { Priority, TrafficClass } from './types.ts'

/**
 * Defaults and named limits of the bandwidth scheduler. See docs/scheduler.md.
 */

/**
 * Under contention, bytes go to the classes in this ratio (friends dominate;
 * nobody starves). Backups yield to friends' fetches 2:8 and go on at a
 * fifth of the contended bandwidth. Friend services weigh what friends'
 * fetches weigh: both are a friend waiting on this node, and a page they
 * browse should not crawl behind a file they fetch (nor the other way).
 */
export const DEFAULT_CLASS_WEIGHTS: Readonly<Record<TrafficClass, number>> = { friend: 8, foaf: 2, public: 1, backup: 2, service: 8 }

/**
 * Within a class, bytes go to flows in this ratio. Weighted, not strict: an
 * urgent flow gets 64/65 against a background one, and background never
 * starves (it keeps at least 1/(64+8+1) of its class under any contention).
 */
export const DEFAULT_PRIORITY_WEIGHTS: Readonly<Record<Priority, number>> = { urgent: 64, normal: 8, background: 1 }

/** A take is granted in slices worth about this long at the applicable cap, so limits stay smooth. */
export const SLICE_MS = 10
/** Slices are never smaller than this (at low caps a 10 ms slice would be a few bytes). */
export const MIN_SLICE = 4 * 1024
/** ...nor larger than this. */
export const MAX_SLICE = 1024 * 1024

/** Seconds of the cap a global or per-peer bucket holds when idle (the burst a new sender gets). */
export const BURST_SECONDS = 0.1

/** At most this fraction of a cap (global or per-peer) is reserved for floors, so unreserved flows and classes keep moving. */
export const MAX_FLOOR_SHARE = 0.8
/** Seconds of its floor a flow may bank while it is served less, and catch up on at once. */
export const FLOOR_BURST_SECONDS = 0.1
/** A flow whose achieved rate stays under this fraction of a fully reserved floor, over a whole rate window, is reported `slow`. */
export const FLOOR_SLOW_RATIO = 0.9

/** Span over which achieved rates are measured. */
export const RATE_WINDOW_MS = 2_000
/** Buckets the rate window is cut into. */
export const RATE_BUCKETS = 20
/**
 * A flow that had takes waiting for at least this fraction of the rate
 * window counts as backlogged: limited by the scheduler rather than by its
 * peer, so it would take any share it is given. Waiting a slice or two for
 * its turn (a flow under its share) stays well below.
 */
export const BACKLOG_FRACTION = 0.5

/** Time-of-day boundaries the ETA looks ahead across (a day holds at most two per rule). */
export const MAX_ETA_SEGMENTS = 64
