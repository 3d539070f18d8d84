import { MAX_MANY_BLOBS } from './wire.ts'

/**
 * A put-many or get-many carries about this many sealed bytes at most (a
 * host takes up to MAX_MANY_BYTES): small enough that three requests in
 * flight per host keep the owner's memory bounded, large enough that a
 * request costs little per blob.
 */
export const BATCH_BYTES = 2 * 1024 * 1024

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
