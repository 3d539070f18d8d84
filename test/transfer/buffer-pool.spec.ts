import { describe, expect, it } from 'vitest'
import { BufferPool, freeNow } from '../../src/transfer/buffer-pool.ts'

describe('buffer pool', () => {
  it('hands a given-back buffer out again, and only once', () => {
    const pool = new BufferPool(2)
    const a = pool.take(1000)
    expect(a.length).toBe(1000)
    pool.give(a.subarray(10)) // any view of it
    const b = pool.take(800)
    expect(b.buffer).toBe(a.buffer)
    expect(b.length).toBe(800)
    pool.give(b)
    pool.give(b) // twice: ignored
    const c = pool.take(1000)
    const d = pool.take(1000)
    expect(c.buffer).toBe(a.buffer)
    expect(d.buffer).not.toBe(a.buffer)
  })

  it('ignores buffers it did not make, keeps at most max and frees the rest, and makes a bigger one when needed', () => {
    const pool = new BufferPool(1)
    pool.give(Buffer.alloc(4096))
    const a = pool.take(100)
    const b = pool.take(100)
    pool.give(a)
    pool.give(b) // over max: freed at once
    expect((b.buffer as ArrayBuffer).detached).toBe(true)
    expect((a.buffer as ArrayBuffer).detached).toBe(false)
    const small = pool.take(50)
    expect(small.buffer).toBe(a.buffer)
    pool.give(small)
    const big = pool.take(5000) // the kept one is too small
    expect(big.buffer).not.toBe(a.buffer)
    expect(big.length).toBe(5000)
  })

  it('hands out a kept buffer big enough even when the last one given back is too small (blobs of many sizes)', () => {
    const pool = new BufferPool(4)
    const big = pool.take(4000)
    const small = pool.take(100)
    pool.give(big)
    pool.give(small)
    expect(pool.take(3000).buffer).toBe(big.buffer)
    expect(pool.take(50).buffer).toBe(small.buffer)
  })

  it('freeNow gives back a buffer of its own at once, and leaves views into larger ones alone', () => {
    const own = Buffer.allocUnsafeSlow(64 * 1024).fill(7)
    freeNow(own)
    expect(own.buffer.detached).toBe(true)
    expect(own.length).toBe(0)
    freeNow(own) // again: nothing to do
    const whole = Buffer.alloc(1000, 1)
    const view = whole.subarray(0, 500)
    freeNow(view)
    freeNow(whole.subarray(500))
    expect(whole.buffer.detached).toBe(false)
    expect(whole[999]).toBe(1)
    // Node's shared pool behind small Buffers
    const pooled = Buffer.from('abc')
    freeNow(pooled)
    expect(pooled.toString()).toBe('abc')
  })
})
