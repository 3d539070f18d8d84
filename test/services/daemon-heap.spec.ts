import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { releaseMemoryWhenQuiet } from '../../src/services/daemon-heap.ts'
import { NODE } from '../helpers/testnet.ts'

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

describe('holdDuringStart', () => {
  /**
   * In a Node of its own (V8's flags are per process), with V8's natives to
   * read a function's state: held, a hot function is still optimized by
   * Maglev, as unheld. Only TurboFan is held: code that ran hot while Maglev
   * was held too stayed in the baseline tier long after it was given back
   * (holdDuringStart). (TurboFan being held is not told here: a hot loop
   * still reached it through Maglev in this test; a start's memory shows it,
   * `BENCH_CLI_PARTS=start node bench/cli.ts`.)
   */
  it('leaves Maglev on while held', async () => {
    const script = `
      const { holdDuringStart, releaseAfterStart } = await import(${JSON.stringify(new URL('../../src/services/daemon-heap.ts', import.meta.url).href)})
      const data = new Float64Array(100).fill(1.5)
      // a function of its own each (closures of one literal would share its optimized code)
      const make = k => new Function('a', 'let s = 0; for (let i = 0; i < a.length; i++) s += a[i] * ' + k + '; return s')
      const optimized = f => (%GetOptimizationStatus(f) & 16) !== 0
      const run = async (f, calls) => { for (let i = 0; i < calls && !optimized(f); i++) { f(data); if (i % 100 === 0) await new Promise(r => setImmediate(r)) } return optimized(f) }
      const usual = await run(make(2), 20000)
      holdDuringStart()
      const held = await run(make(3), 20000)
      releaseAfterStart()
      console.log(JSON.stringify({ usual, held }))`
    const { stdout } = await promisify(execFile)(NODE, ['--allow-natives-syntax', '--input-type=module', '-e', script])
    expect(JSON.parse(stdout)).toEqual({ usual: true, held: true })
  })

  /** KITH_START_HOLD=0 (an A/B of the hold against a transfer's CPU): nothing is held, so a hot function is optimized as usual. */
  it('holds nothing with KITH_START_HOLD=0', async () => {
    const script = `
      const { holdDuringStart, releaseAfterStart } = await import(${JSON.stringify(new URL('../../src/services/daemon-heap.ts', import.meta.url).href)})
      const data = new Float64Array(100).fill(1.5)
      const hot = a => { let s = 0; for (let i = 0; i < a.length; i++) s += a[i] * 3; return s }
      const optimized = f => (%GetOptimizationStatus(f) & 16) !== 0
      holdDuringStart()
      for (let i = 0; i < 2000 && !optimized(hot); i++) { hot(data); if (i % 100 === 0) await new Promise(r => setImmediate(r)) }
      releaseAfterStart()
      console.log(JSON.stringify({ optimized: optimized(hot) }))`
    const { stdout } = await promisify(execFile)(NODE, ['--allow-natives-syntax', '--input-type=module', '-e', script], { env: { ...process.env, KITH_START_HOLD: '0' } })
    expect(JSON.parse(stdout)).toEqual({ optimized: true })
  })

  /**
   * The young generation: in a Node of its own with the daemon's 4 MiB
   * semi-spaces, objects that all survive (what a start makes) grow it to its
   * most (8 MiB) unless held (6 runs of 6: 8 MiB); held, it grows less, by
   * how much depends on when V8's scavenges fall (20 runs on a quiet machine,
   * 2026-12-07: 2 MiB in 3, 4.25-6.5 MiB in 17, never 8; the first version of
   * this test asked for 2 MiB at most, and failed in CI); released, the same
   * allocation grows it to its most. Fails if V8 stops reading the growth
   * factor at run time: held, it would then reach 8 MiB as it does unheld.
   */
  it('keeps the young generation at its first size until released', async () => {
    const script = `
      const { holdDuringStart, releaseAfterStart } = await import(${JSON.stringify(new URL('../../src/services/daemon-heap.ts', import.meta.url).href)})
      const { getHeapSpaceStatistics } = await import('node:v8')
      const young = () => getHeapSpaceStatistics().find(s => s.space_name === 'new_space').space_size
      const kept = []
      const survive = () => { for (let i = 0; i < 150_000; i++) kept.push({ i, s: 'x' + i }) }
      holdDuringStart()
      survive()
      const held = young()
      releaseAfterStart()
      survive()
      console.log(JSON.stringify({ held, released: young() }))`
    const { stdout } = await promisify(execFile)(NODE, ['--max-semi-space-size=4', '--input-type=module', '-e', script])
    const { held, released } = JSON.parse(stdout) as { held: number, released: number }
    expect(held).toBeLessThan(8 * 1024 * 1024)
    expect(released).toBe(8 * 1024 * 1024)
  })
})
