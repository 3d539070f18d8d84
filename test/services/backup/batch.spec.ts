import { describe, expect, it } from 'vitest'
import { fullBatch, takeBatch } from '../../../src/services/backup/batch.ts'
import { MAX_MANY_BLOBS } from '../../../src/services/backup/wire.ts'

/** a request's limit, as the run (PUT_LIMIT) and the restore's getter (its LIMIT) give theirs */
const LIMIT = 2 * 1024 * 1024

describe('takeBatch: what one put-many or get-many carries', () => {
  const size = (n: number): number => n

  it('takes from the front up to the limit, leaving the rest waiting in order', () => {
    const half = LIMIT / 2
    const waiting = [half, half, 1, 5]
    expect(takeBatch(waiting, size, LIMIT)).toEqual([half, half])
    expect(waiting).toEqual([1, 5])
    expect(takeBatch(waiting, size, LIMIT)).toEqual([1, 5])
    expect(waiting).toEqual([])
    expect(takeBatch(waiting, size, LIMIT)).toEqual([])
  })

  it('takes one item bigger than the limit alone, never none', () => {
    const waiting = [LIMIT * 3, 1]
    expect(takeBatch(waiting, size, LIMIT)).toEqual([LIMIT * 3])
    expect(waiting).toEqual([1])
  })

  it('takes up to the limit it is given', () => {
    const waiting = [LIMIT, LIMIT, 1]
    expect(takeBatch([...waiting], size, LIMIT)).toEqual([LIMIT])
    expect(takeBatch(waiting, size, 2 * LIMIT)).toEqual([LIMIT, LIMIT])
    expect(waiting).toEqual([1])
  })

  it('takes at most MAX_MANY_BLOBS items however small', () => {
    const waiting = new Array<number>(MAX_MANY_BLOBS + 10).fill(1)
    expect(takeBatch(waiting, size, LIMIT)).toHaveLength(MAX_MANY_BLOBS)
    expect(waiting).toHaveLength(10)
  })
})

describe('fullBatch: whether a further request may leave now', () => {
  const size = (n: number): number => n

  it('is true from the limit in bytes waiting, or MAX_MANY_BLOBS items, and not below', () => {
    expect(fullBatch([], size, LIMIT)).toBe(false)
    expect(fullBatch([LIMIT - 2, 1], size, LIMIT)).toBe(false)
    expect(fullBatch([LIMIT - 2, 1, 1], size, LIMIT)).toBe(true)
    expect(fullBatch([LIMIT * 3], size, LIMIT)).toBe(true)
    expect(fullBatch(new Array<number>(MAX_MANY_BLOBS - 1).fill(1), size, LIMIT)).toBe(false)
    expect(fullBatch(new Array<number>(MAX_MANY_BLOBS).fill(1), size, LIMIT)).toBe(true)
  })

  it('is full at the limit it is given', () => {
    expect(fullBatch([LIMIT], size, 2 * LIMIT)).toBe(false)
    expect(fullBatch([LIMIT, LIMIT], size, 2 * LIMIT)).toBe(true)
  })
})
