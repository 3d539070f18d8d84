/**
 * Named limits of the transfer engine.
 */

/** Chunk streams one connection may have open at once; each serves GETs one after another. */
export const MAX_INBOUND_CHUNK_STREAMS = 16

/** How often the bandwidth history closes an interval (bandwidth-history.ts): 360 points an hour. */
export const BANDWIDTH_SAMPLE_MS = 10_000

/** How far back the bandwidth history reaches: the dashboard's plot is of the last hour. */
export const BANDWIDTH_HISTORY_MS = 60 * 60_000
