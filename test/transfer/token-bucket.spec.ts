import { describe, it, expect } from 'vitest'
import { TokenBucket, type Clock } from '../../src/transfer/token-bucket.ts'

/** A clock the test drives: sleeping advances time at once. */
function fakeClock (): Clock & { t: number } {
  const clock = {
    t: 0,
    now: () => clock.t,
    sleep: async (ms: number) => { clock.t += ms }
  }
  return clock
}

describe('token bucket', () => {
  it('does not limit without a rate', async () => {
    const clock = fakeClock()
    const bucket = new TokenBucket(Infinity, { clock })
    for (let i = 0; i < 100; i++) await bucket.take(1 << 20)
    expect(clock.t).toBe(0)
  })

  it('holds the average rate within 1 % over a long run, with large and small takes', async () => {
    const clock = fakeClock()
    const rate = 10_000_000
    const bucket = new TokenBucket(rate, { clock })
    let sent = 0
    for (let i = 0; i < 2000; i++) {
      const n = i % 3 === 0 ? 1 << 20 : 4096 + i
      await bucket.take(n)
      sent += n
    }
    const achieved = sent / (clock.t / 1000)
    expect(Math.abs(achieved - rate) / rate).toBeLessThan(0.01 + rate * 0.1 / sent)
  })

  it('applies a new rate to waiting senders', async () => {
    const clock = fakeClock()
    const bucket = new TokenBucket(1_000_000, { clock })
    await bucket.take(1_000_000) // in debt by ~0.9 s at the old rate
    bucket.setRate(10_000_000)
    const before = clock.t
    await bucket.take(1)
    expect(clock.t - before).toBeLessThan(100)
  })

  it('aborts a waiting take', async () => {
    const bucket = new TokenBucket(1000)
    await bucket.take(10_000)
    const controller = new AbortController()
    const waiting = bucket.take(1, controller.signal)
    controller.abort(new Error('stop'))
    await expect(waiting).rejects.toThrow('stop')
  })
})
