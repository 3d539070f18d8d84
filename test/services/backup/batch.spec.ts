import { describe, expect, it } from 'vitest'
import { BATCH_BYTES, PUT_BATCH_BYTES, fullBatch, takeBatch } from '../../../src/services/backup/batch.ts'
import { MAX_MANY_BLOBS } from '../../../src/services/backup/wire.ts'

describe('takeBatch: what one put-many or get-many carries', () => {
  const size = (n: number): number => n

  it('takes from the front up to BATCH_BYTES, leaving the rest waiting in order', () => {
    const half = BATCH_BYTES / 2
    const waiting = [half, half, 1, 5]
    expect(takeBatch(waiting, size)).toEqual([half, half])
    expect(waiting).toEqual([1, 5])
    expect(takeBatch(waiting, size)).toEqual([1, 5])
    expect(waiting).toEqual([])
    expect(takeBatch(waiting, size)).toEqual([])
  })

  it('takes one item bigger than BATCH_BYTES alone, never none', () => {
    const waiting = [BATCH_BYTES * 3, 1]
    expect(takeBatch(waiting, size)).toEqual([BATCH_BYTES * 3])
    expect(waiting).toEqual([1])
  })

  it('takes up to the limit it is given: a put-many carries PUT_BATCH_BYTES', () => {
    const waiting = [BATCH_BYTES, BATCH_BYTES, 1]
    expect(takeBatch([...waiting], size)).toEqual([BATCH_BYTES])
    expect(PUT_BATCH_BYTES).toBe(2 * BATCH_BYTES)
    expect(takeBatch(waiting, size, PUT_BATCH_BYTES)).toEqual([BATCH_BYTES, BATCH_BYTES])
    expect(waiting).toEqual([1])
  })

  it('takes at most MAX_MANY_BLOBS items however small', () => {
    const waiting = new Array<number>(MAX_MANY_BLOBS + 10).fill(1)
    expect(takeBatch(waiting, size)).toHaveLength(MAX_MANY_BLOBS)
    expect(waiting).toHaveLength(10)
  })
})

describe('fullBatch: whether a further request may leave now', () => {
  const size = (n: number): number => n

  it('is true from BATCH_BYTES waiting, or MAX_MANY_BLOBS items, and not below', () => {
    expect(fullBatch([], size)).toBe(false)
    expect(fullBatch([BATCH_BYTES - 2, 1], size)).toBe(false)
    expect(fullBatch([BATCH_BYTES - 2, 1, 1], size)).toBe(true)
    expect(fullBatch([BATCH_BYTES * 3], size)).toBe(true)
    expect(fullBatch(new Array<number>(MAX_MANY_BLOBS - 1).fill(1), size)).toBe(false)
    expect(fullBatch(new Array<number>(MAX_MANY_BLOBS).fill(1), size)).toBe(true)
  })

  it('is full at the limit it is given', () => {
    expect(fullBatch([BATCH_BYTES], size, PUT_BATCH_BYTES)).toBe(false)
    expect(fullBatch([BATCH_BYTES, BATCH_BYTES], size, PUT_BATCH_BYTES)).toBe(true)
  })
})
