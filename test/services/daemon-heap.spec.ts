import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { releaseMemoryWhenQuiet } from '../../src/services/daemon-heap.ts'

const MiB = 1024 * 1024

describe('releaseMemoryWhenQuiet', () => {
  beforeEach(() => { vi.useFakeTimers() })
  afterEach(() => { vi.useRealTimers() })

  /** a watch over a rate the test sets, counting collections */
  function watch (): { setRate: (r: number) => void, collections: () => number, stop: () => void } {
    let rate = 0
    let collections = 0
    const w = releaseMemoryWhenQuiet({ rate: () => rate, collect: () => { collections++ }, intervalMs: 1000, quietMs: 3000, minBytes: 64 * MiB })
    return { setRate: r => { rate = r }, collections: () => collections, stop: w.stop }
  }

  it('collects once when a large burst has been quiet long enough, and not while traffic moves', () => {
    const w = watch()
    w.setRate(50 * MiB)
    vi.advanceTimersByTime(10_000) // 500 MiB moved
    expect(w.collections()).toBe(0)
    w.setRate(0)
    vi.advanceTimersByTime(2000)
    expect(w.collections()).toBe(0)
    vi.advanceTimersByTime(1000)
    expect(w.collections()).toBe(1)
    vi.advanceTimersByTime(60_000) // still quiet: nothing more to give back
    expect(w.collections()).toBe(1)
    w.stop()
  })

  it('starts the quiet time again when traffic resumes', () => {
    const w = watch()
    w.setRate(100 * MiB)
    vi.advanceTimersByTime(1000)
    w.setRate(0)
    vi.advanceTimersByTime(2000)
    w.setRate(100 * MiB)
    vi.advanceTimersByTime(1000)
    w.setRate(0)
    vi.advanceTimersByTime(2000)
    expect(w.collections()).toBe(0)
    vi.advanceTimersByTime(1000)
    expect(w.collections()).toBe(1)
    w.stop()
  })

  it('with afterStartMs, collects once that long after the start, at the first quiet reading, burst or not', () => {
    let rate = 0
    let collections = 0
    let afterStart = 0
    const w = releaseMemoryWhenQuiet({ rate: () => rate, collect: () => { collections++ }, collectAfterStart: () => { afterStart++ }, intervalMs: 1000, quietMs: 3000, afterStartMs: 10_000 })
    vi.advanceTimersByTime(9000)
    expect(afterStart).toBe(0)
    rate = 10 * MiB // traffic when it is due: it waits
    vi.advanceTimersByTime(3000)
    expect(afterStart).toBe(0)
    rate = 0
    vi.advanceTimersByTime(1000)
    expect(afterStart).toBe(1)
    vi.advanceTimersByTime(60_000) // once only
    expect(afterStart).toBe(1)
    expect(collections).toBe(0)
    w.stop()
  })

  it('leaves small bursts to V8, and stops reading once stopped', () => {
    const w = watch()
    w.setRate(10 * MiB)
    vi.advanceTimersByTime(2000) // 20 MiB
    w.setRate(0)
    vi.advanceTimersByTime(10_000)
    expect(w.collections()).toBe(0)
    w.setRate(100 * MiB)
    vi.advanceTimersByTime(1000)
    w.stop()
    w.setRate(0)
    vi.advanceTimersByTime(10_000)
    expect(w.collections()).toBe(0)
  })
})
