import { setFlagsFromString } from 'node:v8'

/**
 * How the daemon's memory is tuned, in one place: `kith start` (bin/kith.js)
 * applies it, and so does the benchmark's plain-stream ceiling, so that the
 * ceiling is measured in the same configuration as kith.
 *
 * Startup flags (heap sizes can't change once V8 runs, so `kith start`
 * re-executes itself with them, same pid):
 * - `--max-semi-space-size=4`: a small young generation (4 MiB semi-spaces,
 *   not 16). Measured on a 512 MiB fetch: peak RSS 300 -> 250 MB fetching and
 *   255 -> 200 MB serving, idle 173 -> 154 MB, for ~7% more CPU per MB.
 * - `--expose-gc`: `releaseMemoryWhenQuiet` (below) asks for a collection.
 *
 * Runtime flags (set before the daemon starts work):
 * - `--external-memory-accounted-in-global-limit`: ArrayBuffers count against
 *   V8's global heap limit instead of its external-memory soft limit. A libp2p
 *   stream makes a few MiB of short-lived buffers per MiB moved (Noise output,
 *   frames, plaintext); counted the default way, they start a full
 *   mark-compact of the whole heap every ~25 MB, and V8's concurrent marking
 *   then costs as much CPU as the transfer. Measured: one plain libp2p stream
 *   (tcp + noise + yamux) 165 -> 280 MB/s, receiver 6.2 -> 3.0 CPU ms/MB; a
 *   kith fetch 20-24 -> 18 CPU ms/MB (owner + fetcher); fetcher peak RSS
 *   about 20 MB higher.
 * - `--heap-growing-percent=100`: after each full collection the next one is
 *   due at twice the size that survived, instead of V8's own factor (here
 *   about 1.5: a 43 MB limit for a 28 MB heap). A serving daemon's global
 *   size swings by tens of MB with the buffers in flight (many already dead,
 *   waiting for a scavenge), so with the tight limit it ran 7-8
 *   mark-compacts a second (`--trace-incremental-marking`: 70-84 MB against
 *   a limit of 53-70 MB) and its GC threads took a third of a core. Measured,
 *   1 GiB from one friend, A/B interleaved: 103-109 -> 117-130 MB/s, owner +
 *   fetcher 15.3-16.3 -> 12.1-13.6 CPU ms/MB; peak RSS owner 195-205 ->
 *   201-222 MB, fetcher 248-254 -> 256-283 MB. An owner idle after serving
 *   kept more garbage until its next collection (155-157 -> 181-184 MB
 *   resident); `releaseMemoryWhenQuiet` below now runs one.
 *
 * These flags are V8's, so they are set only on the Node major kith ships
 * with (24): an unknown flag is ignored with a warning.
 */
export const DAEMON_STARTUP_FLAGS = ['--max-semi-space-size=4', '--expose-gc']

/**
 * Environment the daemon starts with (a variable the user set wins):
 * - `MALLOC_MMAP_THRESHOLD_=131072` (glibc; others ignore it): allocations of
 *   128 KiB and more, such as the 1 MiB buffers of chunks, are mapped and
 *   unmapped one by one, so freed ones go back to the system. By default glibc
 *   raises that threshold after the first such buffer is freed and serves the
 *   next ones from its heap, which then never shrinks. Measured on a 512 MiB
 *   share and fetch: the owner's resident memory before the fetch 154-247 ->
 *   137-140 MB, its peak 204-248 -> 187-189 MB; CPU per MB unchanged.
 * - `MALLOC_TRIM_THRESHOLD_=8388608` (glibc): up to 8 MiB free at the top of
 *   its heap is kept rather than given back. Setting the mmap threshold fixes
 *   the trim threshold at its default, 128 KiB, so the heap shrank after
 *   every collection and the next buffers of Noise, yamux and the ciphers
 *   (64 KiB each) faulted it in again, page by page (13-16 µs a fault on the
 *   bench machine). Measured, `--section backup` with same-run restic:
 *   256 MiB, owner 34-35 -> 21 CPU ms/MB backing up and hosts 20-21 -> 13-14,
 *   kith over restic 6.8-6.9 -> 4.6 (restore 8.8-9.3 -> 6.1); page faults per
 *   MB 388-560 -> 110 on the owner; peak RSS owner 214-242 -> 222 MB, hosts
 *   172-190 -> 182-186 MB. 96 MiB: owner 36-44 -> 26-32, peak 206-213 ->
 *   218-224 MB. Fetch's figures were not measured again.
 * - `UV_THREADPOOL_SIZE=16` (libuv; 4 by default): file system calls and
 *   LevelDB run on this pool. Fetching many small files keeps fsyncs (a few
 *   ms each) on it, and with 4 threads every other file and database call
 *   of the fetch queued behind them. Measured, 2,000 files of 4 KiB fetched
 *   on a loaded machine: 126 -> 173 files/s; idle RSS unchanged within noise.
 * - `MALLOC_ARENA_MAX=1` (glibc): one heap for all threads, not an arena per
 *   thread that allocates (the libuv pool's, V8's workers). Each arena keeps
 *   what its threads freed, so a download left ~12 MB in thread arenas on top
 *   of the main heap's. Measured, `--section downloads` (1 GiB from nginx),
 *   2 interleaved pairs on a quiet machine (7 December): `kith get` at 8
 *   connections peak 151 / 159 -> 144 / 141 MB, the engine alone 144 / 146
 *   -> 129 / 129 MB; CPU 2.85 / 3.10 -> 2.50 / 2.63 ms/MB (no cost seen:
 *   glibc's per-thread caches take most small allocations without the lock).
 *   Libp2p fetches and shares: no change beyond the noise (helpers F and O,
 *   at load 14-30: owner ~7 MB less, fetcher's peak within noise).
 */
export const DAEMON_ENV: Readonly<Record<string, string>> = { MALLOC_MMAP_THRESHOLD_: '131072', MALLOC_TRIM_THRESHOLD_: '8388608', MALLOC_ARENA_MAX: '1', UV_THREADPOOL_SIZE: '16' }

export function tuneDaemonHeap (): void {
  if (process.versions.node.split('.')[0] !== '24') return
  setFlagsFromString('--external-memory-accounted-in-global-limit')
  setFlagsFromString('--heap-growing-percent=100')
}

/** V8's flags for the optimizing compilers held during a start (TurboFan; not Maglev: see holdDuringStart); a user who set one keeps it */
const COMPILER_FLAGS = ['turbofan']
/** The longest the hold waits for the start-up line: a start that runs long (a big home) gets compilers and growth back */
const HELD_AT_MOST_MS = 10_000
/** V8's factor for growing the young generation (its default, 2), and the one held while the daemon starts */
const YOUNG_GROWTH = 2
const YOUNG_GROWTH_HELD = 1
let startHeld: NodeJS.Timeout | null = null

/**
 * Holds V8's optimizing compiler TurboFan off while the daemon starts, and
 * the young generation at its first size; `kith start` (bin/kith.js) calls
 * this, and the start-up line gives both back (`releaseAfterStart`).
 *
 * Compilers: a start runs ~800 modules' top-level code
 * and set-up once each: V8's background threads spent 0.3-0.45 s of CPU
 * optimizing some of it (each start's "V8Worker" threads in
 * /proc/PID/task), which the daemon never ran again, and kept the code. Held
 * off, the workers spend 0.15-0.18 s, the main thread about 0.05 s more (the
 * same code interpreted), and the daemon is 9-11 MB smaller 5 s after its
 * start (110-111 MB resident, was 118-122; 4 interleaved starts each, load
 * 27). From the start-up line on, code that runs hot (a transfer) is
 * optimized as before. Test runs start ~110 daemons.
 *
 * Maglev is not held (it was, with TurboFan, until the stop after): code
 * that ran hot while Maglev was off stayed in the baseline tier long after
 * it was given back. libp2p's receive path (AbstractMessageStream's
 * `dispatchReadBuffer` and `onData`), read every second with V8's natives
 * in bench fetches at load 10-17: in a fetcher started just before its
 * 128 MiB fetch, baseline 20-24 s after its start (the whole fetch) with
 * Maglev held, Maglev 7.4 s after it with TurboFan alone held, 4.4 s with
 * nothing held. `BENCH_SIZE_MIB=128 BENCH_RUNS=2 bench/run.ts --section
 * fetch`, 3 interleaved pairs, load 4-12: fetcher 14.0, 13.9, 16.4 -> 12.6,
 * 12.7, 11.4 CPU ms/MB, owner 8.8, 9.1, 10.5 -> 8.5, 8.6, 8.3. Resident 5 s
 * after a start (`BENCH_CLI_PARTS=start node bench/cli.ts`, 2 interleaved
 * rounds, load 3-18): the bundle 95, 94 MB with both held, 95, 95 with
 * TurboFan alone, 104, 104 with nothing held; CPU to the start-up line
 * within noise.
 *
 * Young generation: V8 grows it (doubling, up to `--max-semi-space-size`)
 * when most of what it holds survives a scavenge, which is all of a start
 * (modules, services, their state), so every start grew it to its 8 MiB
 * (two 4 MiB semi-spaces), which an idle daemon then kept resident: V8
 * shrinks it only in a collection, and an idle daemon runs none. Held at
 * growth factor 1, it grows less (what survives goes to the old generation,
 * as it would after the start anyway; V8 still grows it some: in
 * daemon-heap.spec's allocation, 2-6.5 MiB held against 8 unheld); from the
 * start-up line it grows as before when traffic needs it. Measured,
 * `BENCH_CLI_PARTS=start node bench/cli.ts` against the code before in a
 * clone, 2 interleaved rounds of 2 starts: resident 5 s after a start, the
 * bundle 102-103 -> 95 MB, the sources 117-118 -> 108-109 MB; CPU to the
 * start-up line within noise.
 *
 * `KITH_START_HOLD=0` in the daemon's environment skips the hold, for an A/B.
 */
export function holdDuringStart (): void {
  if (startHeld != null || process.versions.node.split('.')[0] !== '24') return
  if (process.env.KITH_START_HOLD === '0') return
  if (process.execArgv.some(a => /maglev|turbofan|jitless|max-opt|semi-space-growth/.test(a))) return
  for (const flag of COMPILER_FLAGS) setFlagsFromString(`--no-${flag}`)
  setFlagsFromString(`--semi-space-growth-factor=${YOUNG_GROWTH_HELD}`)
  startHeld = setTimeout(releaseAfterStart, HELD_AT_MOST_MS)
  startHeld.unref()
}

/** Gives V8 its optimizing compilers and the young generation's growth back, if `holdDuringStart` held them. */
export function releaseAfterStart (): void {
  if (startHeld == null) return
  clearTimeout(startHeld)
  startHeld = null
  for (const flag of COMPILER_FLAGS) setFlagsFromString(`--${flag}`)
  setFlagsFromString(`--semi-space-growth-factor=${YOUNG_GROWTH}`)
}

export interface QuietWatchInit {
  /** bytes per second moving now, both directions together */
  rate: () => number
  /** runs one full collection; the default asks V8 (`--expose-gc`), and does nothing without it */
  collect?: () => void
  /** how often the rate is read, ms @default 5000 */
  intervalMs?: number
  /** how long traffic must have stopped before collecting, ms @default 10000 */
  quietMs?: number
  /** a burst that moved less than this is left to V8, bytes @default 64 MiB */
  minBytes?: number
  /** also once, this long after the start (ms; at the first quiet reading from then): see below. Absent: never */
  afterStartMs?: number
  /** what runs then, @default V8's last-resort collection (`--expose-gc`) */
  collectAfterStart?: () => void
}

/**
 * Gives memory back once a burst of traffic is over. While chunks move, the
 * buffers in flight end up in V8's old generation, and the flags above let
 * them wait there for a full collection; V8 starts none once the process goes
 * quiet, so a daemon that had moved 1 GiB stayed well above its idle size
 * for as long as it ran. This reads the traffic rate now and then and, when a
 * burst of at least `minBytes` has been quiet for `quietMs`, runs one full
 * collection. Measured 40 s after a 1 GiB fetch: owner 181-184 -> 156 MB
 * resident, fetcher 252-255 -> 238 MB (what stays is mostly glibc's heap,
 * which keeps freed pages; idle before the fetch, both are at ~140 MB).
 *
 * With `afterStartMs`, it also gives back what loading the program left: a
 * daemon holds ~13 MB more after its start than it needs, which no ordinary
 * collection returns (V8 keeps the young generation at the size the start
 * grew it to, and the compiled code of functions that ran once). V8's
 * last-resort collection does (compacting, shrinking the young generation,
 * dropping bytecode not run lately, to be compiled again if it runs again).
 * Measured, an idle daemon: 123 MB resident before it (a minute after its
 * start), 110-111 MB from then on (30 s later); run 4 s after the start
 * instead, 3 of the 13 MB came back within 25 s. It costs 130-180 ms of CPU,
 * once, so it waits for the start to be long over (most test daemons are
 * gone by then).
 */
export function releaseMemoryWhenQuiet (init: QuietWatchInit): { stop: () => void } {
  const intervalMs = init.intervalMs ?? 5_000
  const quietMs = init.quietMs ?? 10_000
  const minBytes = init.minBytes ?? 64 * 1024 * 1024
  const collect = init.collect ?? fullCollection
  let burst = 0
  let quiet = 0
  /** time since the start, while the collection after it is still due */
  let sinceStart: number | null = init.afterStartMs != null ? 0 : null
  const timer = setInterval(() => {
    const rate = init.rate()
    if (sinceStart != null) sinceStart += intervalMs
    if (rate === 0 && sinceStart != null && sinceStart >= init.afterStartMs!) {
      sinceStart = null
      const collectAfterStart = init.collectAfterStart ?? lastResortCollection
      collectAfterStart()
      return
    }
    if (rate > 0) {
      burst += rate * intervalMs / 1000
      quiet = 0
      return
    }
    if (burst === 0) return
    quiet += intervalMs
    if (quiet < quietMs) return
    if (burst >= minBytes) collect()
    burst = 0
  }, intervalMs)
  timer.unref()
  return { stop: () => { clearInterval(timer) } }
}

/** V8's collection of all it can give back (several full collections, compacting; 130-145 ms for an idle daemon); also after a share of many files (files/file-service.ts) */
export function lastResortCollection (): void {
  const gc = (globalThis as { gc?: (options: { type: 'major', execution: 'sync', flavor: 'last-resort' }) => void }).gc
  gc?.({ type: 'major', execution: 'sync', flavor: 'last-resort' })
}

/** One full collection, at once (tens of ms for the daemon's heap), where the daemon exposes `gc` (DAEMON_STARTUP_FLAGS); nothing otherwise. */
export function fullCollection (): void {
  const gc = (globalThis as { gc?: (options: { type: 'major', execution: 'sync' }) => void }).gc
  gc?.({ type: 'major', execution: 'sync' })
}
