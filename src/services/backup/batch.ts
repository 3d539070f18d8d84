import { MAX_MANY_BLOBS } from './wire.ts'

/**
 * A put-many or get-many carries about this many sealed bytes at most (a
 * host takes up to MAX_MANY_BYTES): small enough that three requests in
 * flight per host keep the owner's memory bounded, large enough that a
 * request costs little per blob.
 */
export const BATCH_BYTES = 2 * 1024 * 1024

/**
 * Whether `waiting` fills a whole batch (BATCH_BYTES, or MAX_MANY_BLOBS
 * items). A restore's queue for a host sends its first get-many at once and
 * a further one only full: while one is out, what comes meanwhile gathers
 * into the next. A request costs both ends some 2-5 ms of CPU (a stream, its
 * negotiation, the headers, the host's lookups), and a restore's blobs left
 * one per request (1.02 on average) when every request that could be out
 * went at once. (A backup's put-many stays as it was: held back the same
 * way, the owner took 2-3 times the page faults per MB.)
 */
export function fullBatch<T> (waiting: T[], sizeOf: (item: T) => number): boolean {
  if (waiting.length >= MAX_MANY_BLOBS) return true
  let bytes = 0
  for (const item of waiting) {
    bytes += sizeOf(item)
    if (bytes >= BATCH_BYTES) return true
  }
  return false
}

/**
 * Takes from the front of `waiting` what one put-many or get-many carries:
 * at most MAX_MANY_BLOBS items and BATCH_BYTES of them (one item alone may
 * be bigger).
 */
export function takeBatch<T> (waiting: T[], sizeOf: (item: T) => number): T[] {
  let bytes = 0
  let count = 0
  while (count < waiting.length && count < MAX_MANY_BLOBS && (count === 0 || bytes + sizeOf(waiting[count]!) <= BATCH_BYTES)) {
    bytes += sizeOf(waiting[count]!)
    count++
  }
  return waiting.splice(0, count)
}
