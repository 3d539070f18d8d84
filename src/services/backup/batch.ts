import { MAX_MANY_BLOBS } from './wire.ts'

/**
 * A put-many carries about this many. A request costs both ends a few ms of
 * CPU whatever it carries (a stream, its protocol negotiation and libp2p's
 * peer store update, the headers, the host's two quota batches): put-many
 * of 1 MiB blobs between two nodes in one process, at load 15-20, cost
 * 11.6-15 CPU ms/MB one blob a request, 8.5-13 two, 7.1-9.9 eight (about
 * 4.8 ms a request and 7.7 a MB), so four take most of what eight save.
 */
export const PUT_BATCH_BYTES = 4 * 1024 * 1024

/**
 * Whether `waiting` fills a whole batch (`limit` bytes, or MAX_MANY_BLOBS
 * items). A run's queue for a host sends its first request at once and a
 * further one only full: while one is out, what comes meanwhile gathers into
 * the next. A request costs both ends some 2-5 ms of CPU (a stream, its
 * negotiation, the headers, the host's lookups), and a run's blobs left 4.4
 * a request (352 of 500 put-many carried one blob, in the 256 MiB bench)
 * when every request that could be out went at once.
 */
export function fullBatch<T> (waiting: T[], sizeOf: (item: T) => number, limit: number): boolean {
  if (waiting.length >= MAX_MANY_BLOBS) return true
  let bytes = 0
  for (const item of waiting) {
    bytes += sizeOf(item)
    if (bytes >= limit) return true
  }
  return false
}

/**
 * Takes from the front of `waiting` what one put-many or get-many carries:
 * at most MAX_MANY_BLOBS items and `limit` bytes of them (one item alone may
 * be bigger).
 */
export function takeBatch<T> (waiting: T[], sizeOf: (item: T) => number, limit: number): T[] {
  let bytes = 0
  let count = 0
  while (count < waiting.length && count < MAX_MANY_BLOBS && (count === 0 || bytes + sizeOf(waiting[count]!) <= limit)) {
    bytes += sizeOf(waiting[count]!)
    count++
  }
  return waiting.splice(0, count)
}
