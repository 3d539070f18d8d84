import { mkdtemp, rm, mkdir } from 'node:fs/promises'
import { rmSync } from 'node:fs'
import { tmpdir, cpus, loadavg } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createTestnet, waitFor, NODE, KITH, type Testnet, type TestNode } from '../test/helpers/testnet.ts'
import { useBundle } from '../test/helpers/bundle-setup.ts'
import { reachabilityBench, summarise, type ReachRow } from './reachability.ts'
import { schedulerBench } from './scheduler.ts'
import { cliBench } from './cli.ts'
import { exposeBench } from './expose.ts'
import { downloadsBench } from './downloads.ts'
import { backupBench } from './backup.ts'
import { proxyBench } from './proxy.ts'
import { smallFilesBench } from './smallfiles.ts'
import { DAEMON_ENV, DAEMON_STARTUP_FLAGS } from '../src/services/daemon-heap.ts'
import { RECONNECT_MAX_MS } from '../src/services/presence.ts'
import { RESERVE_RETRY_MAX_MS } from '../src/services/reachability.ts'
import { JsonChild, killChildren, perfDuring, run, peakRss, resetPeakRss, currentRss, cpuSeconds, threadCpuSeconds, threadSleeps, writeRandomFile, median, mbps, fmt, table, MiB, MB } from './lib.ts'

/**
 * `npm run bench`: how fast kith moves a file between friends, next to
 * ceilings measured in the same run on the same machine.
 *
 *   npm run bench [-- --section ceilings|fetch|multi|smallfiles|reachability|scheduler|cli|expose|downloads|backup|proxy|transfer ...]
 *
 * Sections (default: all; `transfer` is ceilings, fetch and multi):
 *   ceilings  (a) raw TCP socket, (b) one plain libp2p 3 stream in kith's
 *             configuration; each between two processes on 127.0.0.1, the
 *             receiver writing to a file on disk
 *   fetch     share a file (chunk + seal + store), then one friend fetches it
 *             from its owner; peak memory (VmHWM) of both daemons
 *   multi     one friend fetches it from three friends at once (the owner and
 *             two friends who fetched it before), uncapped and with each
 *             source capped by `kith start --max-upload`
 *   smallfiles BENCH_SMALL_FILES (100,000) files of 4 KiB shared and fetched
 *             whole by a friend, against `tar | tar` of the same tree;
 *             files per second, peak RSS and the longest event-loop stall of
 *             both daemons (bench/smallfiles.ts)
 *   cli       how fast `kith status`, `friends`, `transfers`, `--help` answer,
 *             from the checkout and from the package installed into a temp
 *             prefix, against a bare Node request to the same API; the
 *             daemon's time to start (bench/cli.ts)
 *   expose    a 1 GiB HTTP response through `kith connect` against one plain
 *             libp2p stream, and a small request's latency against a direct
 *             one (bench/expose.ts)
 *   downloads a file from nginx with `kith get` (and the HTTP engine alone) at 1 and 8
 *             connections against curl and aria2c -x8 -s8, and 8 against 1
 *             under nginx's limit_rate 10m (bench/downloads.ts;
 *             BENCH_LIMITED_MIB, 128, for that file)
 *   backup    a BENCH_SIZE_MIB mixed tree backed up to two friends, changed by 1%,
 *             backed up again and restored, against restic to a local
 *             repository; peak RSS of each daemon (bench/backup.ts)
 *   proxy     a file from nginx with curl through the daemon's local proxy
 *             (origin only; cache off, and kept in the cache) against curl
 *             straight from nginx, a bare Node HTTP relay and a Node TCP
 *             relay, with each one's CPU ms/MB; the same with nginx's
 *             limit_rate per connection; streaming time to first byte; the
 *             qos floor with friends capped below it; the offload to two
 *             friends (bench/proxy.ts; BENCH_PROXY_MIB, 256)
 * `fetch` and `multi` always measure ceiling (b), the figure they are compared to;
 * `fetch` also measures (c), kith's per-chunk work alone on a plain stream
 * (bench/chunk-path-peer.ts: read, seal, hash; verify, open, write, hash the
 * file), so the gap between (b) and a fetch splits into what any encrypted,
 * verified fetch to disk costs and what kith's own machinery adds. (c) runs
 * just before each 1-source fetch (the owner stopped meanwhile), and each
 * fetch is taken over that run: the ratio to (c) is the median of those.
 *
 * Environment: BENCH_RUNS (3) runs per figure, the median is reported;
 * BENCH_SIZE_MIB (1024) file size; BENCH_CAP_MB per-source cap in MB/s (default:
 * a quarter of the 1-source fetch's rate, so the caps, not the fetcher, bind)
 * for the capped run; BENCH_CPU_PROF=DIR writes a V8 CPU profile of every kith
 * daemon into DIR (daemons are then stopped cleanly instead of killed);
 * BENCH_PIN=1 runs the sending end of the ceilings and the owner on core 0, the
 * receiving end and the 1-source fetcher on core 1 (taskset), so each side's
 * CPU ms/MB is measured without the other's on its core.
 * BENCH_PERF=DIR records both ends of each (c) run and of each 1-source fetch
 * with Linux `perf record -g` and prints where their CPU went, per MB, by
 * stage (bench/perf-stages.ts; with BENCH_SOURCES=1 kith's own stages are
 * told apart too).
 * The daemons run the bundle an installed kith runs (bundle.ts, built at the
 * start); BENCH_SOURCES=1 runs the checkout's sources instead.
 * MB/s means 10^6 bytes per second, as in DESIGN.md.
 */
const HERE = dirname(fileURLToPath(import.meta.url))
const TCP_PEER = join(HERE, 'tcp-peer.ts')
const STREAM_PEER = join(HERE, 'stream-peer.ts')
const CHUNK_PATH_PEER = join(HERE, 'chunk-path-peer.ts')

const TARGET_ONE_SOURCE = 0.8
const TARGET_CAPPED = 0.9
const TARGET_MEMORY = 200 * MB

function envInt (name: string, fallback: number): number {
  const raw = process.env[name]
  if (raw == null || raw === '') return fallback
  const value = Number(raw)
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} wants a positive number; got ${JSON.stringify(raw)}`)
  return value
}

const SECTIONS = ['ceilings', 'fetch', 'multi', 'smallfiles', 'reachability', 'scheduler', 'cli', 'expose', 'downloads', 'backup', 'proxy'] as const
type Section = typeof SECTIONS[number]

function parseArgs (argv: string[]): Set<Section> {
  const picked = new Set<Section>()
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === '-h' || arg === '--help') {
      console.log('usage: npm run bench [-- --section ceilings|fetch|multi|smallfiles|reachability|scheduler|cli|expose|downloads|backup|proxy|transfer ...]\nenv: BENCH_RUNS=3 BENCH_SIZE_MIB=1024 BENCH_CAP_MB=15 BENCH_CPU_PROF=DIR BENCH_LIMITED_MIB=128 BENCH_SMALL_FILES=100000 BENCH_PIN=1 BENCH_PERF=DIR')
      process.exit(0)
    }
    let value: string | undefined
    if (arg === '--section' || arg === '-s') value = argv[++i]
    else if (arg.startsWith('--section=')) value = arg.slice('--section='.length)
    else throw new Error(`unknown argument ${JSON.stringify(arg)}; try --help`)
    for (const name of (value ?? '').split(',').filter(Boolean)) {
      if (name === 'all') SECTIONS.forEach(s => picked.add(s))
      else if (name === 'transfer') (['ceilings', 'fetch', 'multi'] as const).forEach(s => picked.add(s))
      else if ((SECTIONS as readonly string[]).includes(name)) picked.add(name as Section)
      else throw new Error(`unknown section ${JSON.stringify(name)}; sections: ${SECTIONS.join(', ')}, transfer (ceilings, fetch, multi), all`)
    }
  }
  return picked.size === 0 ? new Set(SECTIONS) : picked
}

function usageError (err: unknown): never {
  console.error(`bench: ${(err as Error).message}`)
  process.exit(2)
}

const sections = (() => { try { return parseArgs(process.argv.slice(2)) } catch (err) { return usageError(err) } })()
const [RUNS, SIZE, CAP_MB] = (() => {
  try {
    return [Math.round(envInt('BENCH_RUNS', 3)), Math.round(envInt('BENCH_SIZE_MIB', 1024) * MiB), envInt('BENCH_CAP_MB', 0)] as const
  } catch (err) { return usageError(err) }
})()
/** 1-source fetches: two at least with `multi`, whose helpers f1 and f2 are two of them */
const ONE_SOURCE_RUNS = Math.max(RUNS, sections.has('multi') ? 2 : 1)
const CPU_PROF = process.env.BENCH_CPU_PROF
const PERF = process.env.BENCH_PERF
/** JS function names in /tmp/perf-PID.map, which `perf` reads (BENCH_PERF) */
const PERF_NODE_OPTIONS = '--perf-basic-prof-only-functions --interpreted-frames-native-stack'
/** NODE_OPTIONS the daemons start with: a V8 CPU profile each (BENCH_CPU_PROF), JS names for perf (BENCH_PERF) */
const DAEMON_OPTIONS = [CPU_PROF != null ? `--cpu-prof --cpu-prof-dir=${CPU_PROF}` : '', PERF != null ? PERF_NODE_OPTIONS : ''].filter(o => o !== '').join(' ')
/** BENCH_PIN=1: each end of a transfer on a core of its own (taskset), so what one side costs is not hidden by the other's */
const PIN = process.env.BENCH_PIN === '1'

/** `command args` run on core `core` under BENCH_PIN, else as it is. */
function pinned (core: number, command: string, args: string[]): [string, string[]] {
  return PIN ? ['taskset', ['-c', String(core), command, ...args]] : [command, args]
}

/** Moves a running daemon (all its threads) to core `core` under BENCH_PIN. */
async function pinProcess (pid: number | undefined, core: number): Promise<void> {
  if (!PIN || pid == null) return
  const r = await run('taskset', ['-a', '-p', '-c', String(core), String(pid)])
  if (r.code !== 0) throw new Error(`taskset failed: ${r.stderr.trim()}`)
}
let perfRecords = 0

/** With BENCH_PERF, `perf record` of `procs` while `work` runs, then where each one's CPU went per MB moved. */
async function perfWhile<T> (phase: string, procs: Array<[pid: number, name: string]>, work: () => Promise<T>): Promise<T> {
  if (PERF == null) return await work()
  const file = join(PERF, `${++perfRecords}-${phase}.data`)
  return await perfDuring(file, procs, SIZE / MB, work, stages => { log(`where the CPU went, ${phase} (CPU ms/MB, perf samples in ${file}):\n${stages}`) })
}

/** a share or fetch slower than 2 MB/s (plus a minute) is taken as stuck */
const SLOW_MS = 60_000 + SIZE / 2e6 * 1000

function log (message: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}\n`)
}

// ---------------------------------------------------------------------------
// results

interface Row {
  figure: string
  /** median MB/s, or for memory rows MB */
  value: number
  unit: 'MB/s' | 'MB' | 's' | 'ms/MB'
  samples: number[]
  ratio?: number
  of?: string
  target?: string
  met?: boolean
  note?: string
}

const rows: Row[] = []

function add (row: Row): void {
  rows.push(row)
  const ratio = row.ratio != null ? `, ${fmt(row.ratio, 2)} of ${row.of}` : ''
  log(`=> ${row.figure}: ${fmt(row.value, decimals(row.unit))} ${row.unit}${ratio}${row.target != null ? ` (target ${row.target})` : ''}`)
}

// ---------------------------------------------------------------------------
// ceilings

/** mainCpuMs: the main thread's CPU alone, mainSleeps the times it went idle, from (c)'s ends (NaN from the others) */
interface PeerReport { bytes: number, ms: number, peakRss: number, cpuMs: number, mainCpuMs?: number, mainSleeps?: number }

type CeilingKind = 'tcp' | 'stream' | 'chunk-path'

async function ceilingRun (kind: CeilingKind, src: string, dir: string): Promise<{ mbps: number, sender: number, receiver: number, senderLoad: number, receiverLoad: number, cpuMs: number, senderCpuMs: number, receiverCpuMs: number, senderMainMs: number, receiverMainMs: number, senderSleeps: number, receiverSleeps: number }> {
  const out = join(dir, `ceiling-${kind}.out`)
  const script = { tcp: TCP_PEER, stream: STREAM_PEER, 'chunk-path': CHUNK_PATH_PEER }[kind]
  // the plain stream runs in the daemon's heap configuration (as `kith start` does)
  const flags = kind === 'tcp' ? [] : DAEMON_STARTUP_FLAGS
  // with BENCH_PERF, (c)'s ends run as the daemons do (JS names for perf) and its sender waits until perf is attached
  const profiled = PERF != null && kind === 'chunk-path'
  const env = kind === 'tcp' ? {} : profiled ? { ...DAEMON_ENV, NODE_OPTIONS: PERF_NODE_OPTIONS, BENCH_SEND_ON_SIGNAL: '1' } : DAEMON_ENV
  // with BENCH_PIN each end has a core of its own: the receiver (as the fetcher) core 1, the sender (as the owner) core 0
  const recv = new JsonChild(...pinned(1, NODE, [...flags, script, 'recv', out]), env)
  let send: JsonChild | undefined
  try {
    const hello = await recv.next<{ port?: number, addr?: string }>(60_000)
    const sender = send = new JsonChild(...pinned(0, NODE, [...flags, script, 'send', String(kind === 'tcp' ? hello.port : hello.addr), src]), env)
    const both = async (): Promise<[PeerReport, PeerReport]> => await Promise.all([recv.next<PeerReport>(), sender.next<PeerReport>()])
    let r: PeerReport
    let s: PeerReport
    if (profiled) {
      await sender.next(60_000)
      ;[r, s] = await perfWhile(kind, [[sender.pid, 'send'], [recv.pid, 'recv']], async () => {
        sender.proc.kill('SIGUSR2')
        return await both()
      })
    } else {
      [r, s] = await both()
    }
    if (r.bytes !== SIZE) throw new Error(`${kind} ceiling: the receiver got ${r.bytes} of ${SIZE} bytes`)
    return { mbps: mbps(r.bytes, r.ms), sender: s.peakRss, receiver: r.peakRss, senderLoad: s.cpuMs / r.ms, receiverLoad: r.cpuMs / r.ms, cpuMs: s.cpuMs + r.cpuMs, senderCpuMs: s.cpuMs, receiverCpuMs: r.cpuMs, senderMainMs: s.mainCpuMs ?? NaN, receiverMainMs: r.mainCpuMs ?? NaN, senderSleeps: s.mainSleeps ?? NaN, receiverSleeps: r.mainSleeps ?? NaN }
  } finally {
    await Promise.all([recv.kill(), send?.kill()])
    await rm(out, { force: true })
  }
}

type CeilingResult = Awaited<ReturnType<typeof ceilingRun>>

/** A ceiling's runs, each logged as it ends; `add` reports their median. */
class CeilingRuns {
  readonly runs: CeilingResult[] = []
  private readonly loads: string[] = []
  private readonly kind: CeilingKind
  private readonly label: string
  private readonly src: string
  private readonly dir: string
  /** runs to be made, for the log */
  private readonly of: number

  constructor (kind: CeilingKind, label: string, src: string, dir: string, of: number) {
    this.kind = kind
    this.label = label
    this.src = src
    this.dir = dir
    this.of = of
  }

  async measure (): Promise<CeilingResult> {
    const r = await ceilingRun(this.kind, this.src, this.dir)
    const load = `${fmt(r.senderLoad, 2)}/${fmt(r.receiverLoad, 2)}, both ends ${cpuPerMb(r.cpuMs)} (send ${fmt(r.senderCpuMs / (SIZE / MB), 1)}, recv ${fmt(r.receiverCpuMs / (SIZE / MB), 1)})`
    this.runs.push(r)
    this.loads.push(load)
    log(`${this.label} run ${this.runs.length}/${this.of}: ${fmt(r.mbps)} MB/s; CPU load send/recv ${load}`)
    return r
  }

  add (): number {
    const samples = this.runs.map(r => r.mbps)
    const value = median(samples)
    add({ figure: this.label, value, unit: 'MB/s', samples, note: `peak RSS send/recv ${fmt(Math.max(...this.runs.map(r => r.sender)) / MB)}/${fmt(Math.max(...this.runs.map(r => r.receiver)) / MB)} MB; CPU load send/recv ${this.loads[samples.indexOf(value)] ?? this.loads.join(' ')}` })
    return value
  }
}

async function ceiling (kind: CeilingKind, label: string, src: string, dir: string): Promise<number> {
  const runs = new CeilingRuns(kind, label, src, dir, RUNS)
  for (let i = 0; i < RUNS; i++) await runs.measure()
  return runs.add()
}

// ---------------------------------------------------------------------------
// kith daemons

let testnet: Testnet | undefined

async function startNode (node: TestNode, args: string[] = []): Promise<void> {
  if (DAEMON_OPTIONS === '') {
    await node.start(args)
    return
  }
  // the daemon inherits NODE_OPTIONS at spawn time; CLI commands don't
  const saved = process.env.NODE_OPTIONS
  process.env.NODE_OPTIONS = `${saved ?? ''} ${DAEMON_OPTIONS}`.trim()
  try {
    await node.start(args)
    if (CPU_PROF != null) log(`${node.name} is pid ${node.pid}: its profile is ${CPU_PROF}/CPU.*.${node.pid}.*.cpuprofile`)
  } finally {
    if (saved == null) delete process.env.NODE_OPTIONS
    else process.env.NODE_OPTIONS = saved
  }
}

async function stopNode (node: TestNode): Promise<void> {
  await node.stop()
}

/** Frees the disk a stopped fetcher's chunk store takes; the node is not started again. */
async function dropChunks (node: TestNode): Promise<void> {
  await rm(join(node.home, 'chunks'), { recursive: true, force: true })
}

async function befriend (issuer: TestNode, accepter: TestNode): Promise<void> {
  const file = join(issuer.home, `for-${accepter.name}.invite`)
  await issuer.json('invite', 'create', '--name', accepter.name, '-o', file)
  await accepter.json('invite', 'accept', file)
}

async function waitOnline (node: TestNode, labels: string[]): Promise<void> {
  await waitFor(async () => {
    const { friends } = await node.json<{ friends: Array<{ label: string, link: { online: boolean } }> }>('friends')
    return labels.every(l => friends.find(f => f.label === l)?.link.online === true)
  }, `${node.name} to see ${labels.join(', ')} online`, 60_000, 250)
}

interface FetchResult {
  /** created -> done of the transfer record: what the daemon spent, assembly included */
  transferMs: number
  /** the `kith fetch` command from spawn to exit */
  wallMs: number
  sources: Array<{ label: string, bytes: number }> | undefined
  /** per daemon taking part (sources and fetcher): CPU seconds used during the fetch */
  cpu: Record<string, number>
  /** the same, its main thread alone */
  mainCpu: Record<string, number>
  /** per daemon: the times its main thread went idle during the fetch */
  sleeps: Record<string, number>
  /** per daemon: VmHWM during the fetch (reset just before it), and VmRSS just before */
  peak: Record<string, number>
  before: Record<string, number>
  peakReset: boolean
  /** from the last progress line to 'done': assembling the file (give or take the 250 ms progress interval) */
  assembleMs: number
}

async function fetchOnce (fetcher: TestNode, sources: TestNode[], target: string, dest: string): Promise<FetchResult> {
  const all = [...sources, fetcher]
  let peakReset = true
  const before: Record<string, number> = {}
  const cpu: Record<string, number> = {}
  const mainCpu: Record<string, number> = {}
  const sleeps: Record<string, number> = {}
  for (const n of all) {
    peakReset = (await resetPeakRss(n.pid)) && peakReset
    before[n.name] = await currentRss(n.pid)
    cpu[n.name] = await cpuSeconds(n.pid)
    mainCpu[n.name] = await threadCpuSeconds(n.pid)
    sleeps[n.name] = await threadSleeps(n.pid)
  }
  // progress lines come every 250 ms while chunks arrive, none while the file is assembled
  let lastProgressAt = NaN
  let doneAt = NaN
  const result = await run(NODE, [KITH, '--home', fetcher.home, 'fetch', target, '-o', dest, '--json'], SLOW_MS, (line, at) => {
    const t = JSON.parse(line) as { state: string }
    if (t.state === 'running') lastProgressAt = at
    if (t.state === 'done') doneAt = at
  })
  const peak: Record<string, number> = {}
  for (const n of all) {
    cpu[n.name] = (await cpuSeconds(n.pid)) - cpu[n.name]!
    mainCpu[n.name] = (await threadCpuSeconds(n.pid)) - mainCpu[n.name]!
    sleeps[n.name] = (await threadSleeps(n.pid)) - sleeps[n.name]!
    peak[n.name] = await peakRss(n.pid)
  }
  if (result.code !== 0) throw new Error(`kith fetch ${target} failed (${result.code}): ${result.stderr.trim()}`)
  const lines = result.stdout.trim().split('\n').map(l => JSON.parse(l) as { id: string, state: string, doneBytes: number })
  const last = lines.at(-1)!
  if (last.state !== 'done' || last.doneBytes !== SIZE) throw new Error(`kith fetch ended ${JSON.stringify(last)}`)
  const { transfers } = await fetcher.json<{ transfers: Array<{ id: string, created: number, updated: number, state: string, sources?: Array<{ label: string, bytes: number }> }> }>('transfers')
  const record = transfers.find(t => t.id === last.id)!
  return { transferMs: record.updated - record.created, wallMs: result.ms, assembleMs: doneAt - lastProgressAt, sources: record.sources, cpu, mainCpu, sleeps, peak, before, peakReset }
}

/** "alice 34% f1 33% f2 33%" of the bytes, when the transfer reports its sources */
function sourceShares (r: FetchResult): string {
  return r.sources?.filter(s => s.bytes > 0).map(s => `${s.label} ${fmt(s.bytes / SIZE * 100)}%`).join(' ') ?? ''
}

/** MB/s while chunks arrive, before the file is assembled from the store */
function chunkPhase (r: FetchResult): number {
  return mbps(SIZE, r.transferMs - r.assembleMs)
}

/** "chunks 14.2 s + 0.3 s to place": until the last chunk arrived (files are written meanwhile), then the last checks and renames */
function phases (r: FetchResult): string {
  return `chunks ${fmt((r.transferMs - r.assembleMs) / 1000, 1)} s + ${fmt(r.assembleMs / 1000, 1)} s to place`
}

/** Seconds and ms/MB are small numbers: one decimal */
function decimals (unit: string): number {
  return unit === 's' || unit === 'ms/MB' ? 1 : 0
}

/** CPU ms both ends spent per MB moved: unlike MB/s, barely moved by other work on the machine */
function cpuPerMb (cpuMs: number): string {
  return `${fmt(cpuMs / (SIZE / MB), 1)} CPU ms/MB`
}

/** CPU seconds per daemon over the transfer's seconds: 1.0 is one core flat out */
function cpuLoad (r: FetchResult, roles: Record<string, string>): string {
  return Object.entries(r.cpu).map(([name, s]) => `${roles[name] ?? name} ${fmt(s / (r.transferMs / 1000), 2)}`).join(' ')
}

/** Runs `work` with `node`'s daemon stopped (SIGSTOP), so its timers and collections take no CPU from `work`. */
async function whileStopped<T> (node: TestNode, work: () => Promise<T>): Promise<T> {
  process.kill(node.pid!, 'SIGSTOP')
  try {
    return await work()
  } finally {
    process.kill(node.pid!, 'SIGCONT')
  }
}

/**
 * The retry caps of a user's daemon (presence redials an offline friend at
 * most every 30 s), not the test daemons' 2 s (TEST_DAEMON_ENV). A fetcher
 * daemon runs only for its own fetch, so while the owner serves one its other
 * friends are offline: with the test caps its presence redialled each of
 * them every 2 s and locate looked each up (DHT queries, record exchanges,
 * address records verified), work a user's daemon does 15 times less often.
 * Variables set in the environment win.
 */
const USER_RETRY_CAPS: Readonly<Record<string, string>> = { KITH_RECONNECT_MAX_MS: String(RECONNECT_MAX_MS), KITH_RESERVE_RETRY_MAX_MS: String(RESERVE_RETRY_MAX_MS) }

/** Runs `work` with `vars` in the environment the daemons started meanwhile inherit (those already set are kept). */
async function withEnv<T> (vars: Readonly<Record<string, string>>, work: () => Promise<T>): Promise<T> {
  const added = Object.keys(vars).filter(name => process.env[name] === undefined)
  for (const name of added) process.env[name] = vars[name]
  try {
    return await work()
  } finally {
    for (const name of added) delete process.env[name]
  }
}

/** `pathRuns`: ceiling (c), measured just before each 1-source fetch (the fetch section) */
async function kith (src: string, streamCeiling: number, pathRuns: CeilingRuns | undefined, work: string): Promise<void> {
  const fetchers = Array.from({ length: ONE_SOURCE_RUNS }, (_, i) => `f${i + 1}`)
  const multi = sections.has('multi') ? Array.from({ length: RUNS }, (_, i) => `m${i + 1}`) : []
  const capped = sections.has('multi') ? Array.from({ length: RUNS }, (_, i) => `c${i + 1}`) : []
  const helpers = ['f1', 'f2']

  log(`starting ${1 + fetchers.length + multi.length + capped.length} kith daemons`)
  testnet = await createTestnet(['alice', ...fetchers, ...multi, ...capped])
  const byName = new Map(testnet.nodes.map(n => [n.name, n]))
  const node = (name: string): TestNode => byName.get(name)!
  const alice = node('alice')
  if (DAEMON_OPTIONS !== '') {
    // restart each daemon with the profiler on
    for (const n of testnet.nodes) { await n.stop(); await startNode(n) }
  }
  for (const name of [...fetchers, ...multi, ...capped]) await befriend(alice, node(name))
  if (sections.has('multi')) {
    for (const helper of helpers) for (const name of [...multi, ...capped]) await befriend(node(helper), node(name))
  }

  // share: read twice (hash, then seal and id each chunk), index where each chunk lies; no copy
  await resetPeakRss(alice.pid)
  const shareCpu = await cpuSeconds(alice.pid)
  const shared = await run(NODE, [KITH, '--home', alice.home, 'share', src, '--with', ...fetchers, ...multi, ...capped, '--json'], SLOW_MS)
  if (shared.code !== 0) throw new Error(`kith share failed: ${shared.stderr}`)
  const shareName = (JSON.parse(shared.stdout) as { share: { name: string } }).share.name
  const sharePeak = await peakRss(alice.pid)
  const shareLoad = ((await cpuSeconds(alice.pid)) - shareCpu) / (shared.ms / 1000)
  add({ figure: 'kith share (hash+seal+index), wall', value: shared.ms / 1000, unit: 's', samples: [shared.ms / 1000], note: `${fmt(mbps(SIZE, shared.ms))} MB/s, no copy of the file kept; owner peak RSS ${fmt(sharePeak / MB)} MB, CPU load ${fmt(shareLoad, 2)}; 1 run` })

  // idle daemons cost CPU on 2 cores: only the ones in use run
  for (const n of testnet.nodes) if (n !== alice) await stopNode(n)

  const dest = (n: TestNode): string => join(work, `fetched-by-${n.name}`)
  const target = `alice:${shareName}`
  const roles: Record<string, string> = { alice: 'owner' }

  // one source
  const one: FetchResult[] = []
  for (const name of fetchers) {
    const f = node(name)
    // (c) and the fetch in turn, so each fetch is compared with a (c) of the same minutes: (c) swung
    // 127-159 MB/s within 7 minutes on a quiet machine. The owner, idle, is stopped meanwhile; no other daemon runs.
    if (pathRuns != null) await whileStopped(alice, async () => await pathRuns.measure())
    await startNode(f)
    await waitOnline(f, ['alice'])
    await pinProcess(alice.pid, 0)
    await pinProcess(f.pid, 1)
    const r = await perfWhile(`fetch-${name}`, [[alice.pid!, 'owner'], [f.pid!, 'fetcher']], async () => await fetchOnce(f, [alice], target, dest(f)))
    one.push(r)
    roles[name] = 'fetcher'
    const pair = pathRuns?.runs.at(-1)
    const perMb = (seconds: number): string => fmt(seconds * 1000 / (SIZE / MB), 1)
    const countPerMb = (count: number): string => fmt(count / (SIZE / MB), 1)
    const ofPath = pair == null
      ? ''
      : `, ${fmt(mbps(SIZE, r.transferMs) / pair.mbps, 2)} of the (c) run before it; CPU ms/MB owner + fetcher ${perMb(r.cpu.alice!)} + ${perMb(r.cpu[name]!)} ` +
        `(main threads ${perMb(r.mainCpu.alice!)} + ${perMb(r.mainCpu[name]!)}) against (c)'s send + recv ${perMb(pair.senderCpuMs / 1000)} + ${perMb(pair.receiverCpuMs / 1000)} ` +
        `(${perMb(pair.senderMainMs / 1000)} + ${perMb(pair.receiverMainMs / 1000)}); main threads idle per MB ${countPerMb(r.sleeps.alice!)} + ${countPerMb(r.sleeps[name]!)} ` +
        `against (c)'s ${countPerMb(pair.senderSleeps)} + ${countPerMb(pair.receiverSleeps)}`
    log(`1-source fetch by ${name}: ${fmt(mbps(SIZE, r.transferMs))} MB/s (transfer)${ofPath}, ${fmt(mbps(SIZE, r.wallMs))} MB/s (command); ` +
      `peak RSS owner ${fmt(r.peak.alice! / MB)} MB (${fmt(r.before.alice! / MB)} before), fetcher ${fmt(r.peak[name]! / MB)} MB (${fmt(r.before[name]! / MB)} before)` +
      `${r.peakReset ? '' : ' (peaks since daemon start)'}; CPU load ${cpuLoad(r, roles)}; ${phases(r)}`)
    await stopNode(f)
    // a helper of the multi-source runs serves the file it fetched from that file: keep both
    if (!(sections.has('multi') && helpers.includes(name))) {
      await rm(dest(f), { recursive: true, force: true })
      await dropChunks(f)
    }
  }
  if (pathRuns != null) {
    pathRuns.add()
    const transfer = one.map(r => mbps(SIZE, r.transferMs))
    const wall = one.map(r => mbps(SIZE, r.wallMs))
    const ownerLoad = median(one.map(r => r.cpu.alice! / (r.transferMs / 1000)))
    const fetcherLoad = median(one.map((r, i) => r.cpu[fetchers[i]!]! / (r.transferMs / 1000)))
    add({ figure: 'kith fetch, 1 source (transfer)', value: median(transfer), unit: 'MB/s', samples: transfer, ratio: median(transfer) / streamCeiling, of: '(b)', target: `>= ${TARGET_ONE_SOURCE}`, met: median(transfer) / streamCeiling >= TARGET_ONE_SOURCE, note: `CPU load owner ${fmt(ownerLoad, 2)}, fetcher ${fmt(fetcherLoad, 2)}; ${phases(one[transfer.indexOf(median(transfer))] ?? one[0]!)}` })
    const ofPath = one.map((r, i) => mbps(SIZE, r.transferMs) / pathRuns.runs[i]!.mbps)
    add({ figure: '  the same against (c)', value: median(transfer), unit: 'MB/s', samples: transfer, ratio: median(ofPath), of: '(c) before it', note: `each fetch over the (c) run just before it: ${ofPath.map(x => fmt(x, 2)).join(' ')}, the median; what kith adds to the chunk path: requests, scheduling, store records, partial files` })
    add({ figure: 'kith fetch, 1 source (command wall)', value: median(wall), unit: 'MB/s', samples: wall, ratio: median(wall) / streamCeiling, of: '(b)' })
    const chunks = one.map(chunkPhase)
    add({ figure: '  until the last chunk arrived', value: median(chunks), unit: 'MB/s', samples: chunks, ratio: median(chunks) / streamCeiling, of: '(b)', note: 'files are written while chunks arrive; the rest is the last checks and renames' })
    const cpu = one.map((r, i) => (r.cpu.alice! + r.cpu[fetchers[i]!]!) * 1000)
    add({ figure: '  CPU, owner + fetcher', value: median(cpu) / (SIZE / MB), unit: 'ms/MB', samples: cpu.map(c => c / (SIZE / MB)), note: 'compare with the CPU ms/MB of (b) above: on 2 shared cores this bounds MB/s' })
    const ownerCpu = one.map(r => r.cpu.alice! * 1000 / (SIZE / MB))
    const fetcherCpu = one.map((r, i) => r.cpu[fetchers[i]!]! * 1000 / (SIZE / MB))
    add({ figure: '  CPU, owner', value: median(ownerCpu), unit: 'ms/MB', samples: ownerCpu, note: `the sending side; compare with send of (b) and (c) above${PIN ? '; each daemon on a core of its own' : ''}` })
    add({ figure: '  CPU, fetcher', value: median(fetcherCpu), unit: 'ms/MB', samples: fetcherCpu, note: 'the receiving side; compare with recv of (b) and (c) above' })
    const senderPeaks = one.map(r => r.peak.alice!)
    const receiverPeaks = one.map((r, i) => r.peak[fetchers[i]!]!)
    const sp = Math.max(...senderPeaks)
    const rp = Math.max(...receiverPeaks)
    const idle = (xs: number[]): string => `${fmt(median(xs) / MB)} MB before the fetch`
    add({ figure: 'peak RSS, sending daemon (owner)', value: sp / MB, unit: 'MB', samples: senderPeaks.map(p => p / MB), target: `<= ${TARGET_MEMORY / MB}`, met: sp <= TARGET_MEMORY, note: `max over runs; ${idle(one.map(r => r.before.alice!))}` })
    add({ figure: 'peak RSS, fetching daemon', value: rp / MB, unit: 'MB', samples: receiverPeaks.map(p => p / MB), target: `<= ${TARGET_MEMORY / MB}`, met: rp <= TARGET_MEMORY, note: `max over runs; ${idle(one.map((r, i) => r.before[fetchers[i]!]!))}` })
  }

  if (!sections.has('multi')) return

  // three sources: alice and two friends who hold the chunks
  for (const h of helpers) await startNode(node(h))
  for (const h of helpers) roles[h] = h
  const sources = [alice, ...helpers.map(node)]
  const multiRun = async (names: string[], label: string): Promise<{ results: FetchResult[], note: string }> => {
    const results: FetchResult[] = []
    for (const name of names) {
      const f = node(name)
      await startNode(f)
      await waitOnline(f, sources.map(n => n.name))
      const r = await fetchOnce(f, sources, target, dest(f))
      results.push(r)
      roles[name] = 'fetcher'
      log(`${label} by ${name}: ${fmt(mbps(SIZE, r.transferMs))} MB/s (transfer); bytes from ${sourceShares(r) || '(not reported)'}; CPU load ${cpuLoad(r, roles)}; ${phases(r)}`)
      await rm(dest(f), { recursive: true, force: true })
      await stopNode(f)
      await dropChunks(f)
    }
    // the run whose speed is the median
    const speeds = results.map(r => mbps(SIZE, r.transferMs))
    const mid = results[speeds.indexOf(median(speeds))] ?? results[0]!
    const shares = sourceShares(mid)
    return { results, note: `run ${results.indexOf(mid) + 1}: ${shares !== '' ? `bytes from ${shares}; ` : ''}CPU load ${cpuLoad(mid, roles)}; ${phases(mid)}` }
  }
  const uncapped = await multiRun(multi, '3-source fetch')
  const uv = uncapped.results.map(r => mbps(SIZE, r.transferMs))
  add({ figure: 'kith fetch, 3 sources (transfer)', value: median(uv), unit: 'MB/s', samples: uv, ratio: median(uv) / streamCeiling, of: '(b)', note: uncapped.note })
  const uc = uncapped.results.map(chunkPhase)
  add({ figure: '  until the last chunk arrived', value: median(uc), unit: 'MB/s', samples: uc, ratio: median(uc) / streamCeiling, of: '(b)' })

  // the same with every source capped. By default the caps sum to 3/4 of what
  // one source moved above, so they, not the fetcher's CPU, are what binds:
  // the figure then shows how well the fetch adds sources up.
  const capMb = CAP_MB > 0 ? CAP_MB : Math.max(1, Math.floor(median(one.map(r => mbps(SIZE, r.transferMs))) / 4))
  const cap = `${capMb}MB/s`
  for (const n of sources) {
    await stopNode(n)
    await startNode(n, ['--max-upload', cap])
  }
  const cappedRuns = await multiRun(capped, `3-source fetch, ${cap} each`)
  const cv = cappedRuns.results.map(r => mbps(SIZE, r.transferMs))
  const sumOfCaps = 3 * capMb
  add({ figure: `kith fetch, 3 sources capped ${capMb} MB/s each`, value: median(cv), unit: 'MB/s', samples: cv, ratio: median(cv) / sumOfCaps, of: `sum of caps (${sumOfCaps})`, target: `>= ${TARGET_CAPPED}`, met: median(cv) / sumOfCaps >= TARGET_CAPPED, note: `${CAP_MB > 0 ? 'caps from BENCH_CAP_MB' : 'caps a quarter of the 1-source rate, so they bind'}; ${cappedRuns.note}` })
  const cc = cappedRuns.results.map(chunkPhase)
  add({ figure: '  until the last chunk arrived', value: median(cc), unit: 'MB/s', samples: cc, ratio: median(cc) / sumOfCaps, of: `sum of caps (${sumOfCaps})` })
}

// ---------------------------------------------------------------------------

let work: string | undefined
let interrupted = false

async function cleanup (): Promise<void> {
  killChildren()
  if (testnet != null) {
    // a daemon stopped for (c) (whileStopped) would never act on the SIGTERM that stops it
    for (const n of testnet.nodes) if (n.pid != null) { try { process.kill(n.pid, 'SIGCONT') } catch {} }
    if (CPU_PROF != null) for (const n of testnet.nodes) await n.stop().catch(() => {})
    await testnet.stop().catch(() => {})
    testnet = undefined
  }
  if (work != null) await rm(work, { recursive: true, force: true }).catch(() => {})
  work = undefined
  await removeBundle().catch(() => {})
}

process.on('exit', () => {
  // last resort if something escaped the async clean-up
  killChildren()
  for (const n of testnet?.nodes ?? []) if (n.pid != null) { try { process.kill(n.pid, 'SIGKILL') } catch {} }
  if (testnet?.nodes[0] != null) rmSync(dirname(testnet.nodes[0].home), { recursive: true, force: true })
  if (work != null) rmSync(work, { recursive: true, force: true })
})
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    interrupted = true
    log(`${signal}: cleaning up`)
    cleanup().finally(() => process.exit(130))
  })
}

function report (): void {
  const lines = table(['figure', 'value', 'runs', 'ratio', 'of', 'target', 'met', 'note'], rows.map(r => [
    r.figure,
    `${fmt(r.value, decimals(r.unit))} ${r.unit}`,
    r.samples.map(s => fmt(s, decimals(r.unit))).join(' '),
    r.ratio != null ? fmt(r.ratio, 2) : '',
    r.of ?? '',
    r.target ?? '',
    r.met == null ? '' : r.met ? 'yes' : 'NO',
    r.note ?? ''
  ]))
  console.log(`\nkith transfer benchmark: ${SIZE / MiB} MiB, median of ${RUNS} runs, ${cpus().length} cores, Node ${process.versions.node}, MB = 10^6 bytes`)
  console.log(`load average (1 min) before the benchmark started: ${fmt(loadAtStart, 1)}${loadAtStart > cpus().length / 2 ? ': other work was running, so figures are noisy' : ''}`)
  console.log(lines)
}

const loadAtStart = loadavg()[0]!
let removeBundle = async (): Promise<void> => {}
const reachRows: ReachRow[] = []

async function main (): Promise<void> {
  if (loadAtStart > cpus().length / 2) log(`load average is ${fmt(loadAtStart, 1)} on ${cpus().length} cores: other work is running and will skew the figures`)
  work = await mkdtemp(join(tmpdir(), 'kith-bench-'))
  if (CPU_PROF != null) await mkdir(CPU_PROF, { recursive: true })
  if (process.env.BENCH_SOURCES === '1') process.env.KITH_DIST = ''
  else removeBundle = await useBundle()
  log(`the daemons run ${process.env.KITH_DIST ? `the bundle in ${process.env.KITH_DIST}` : 'the sources (BENCH_SOURCES=1)'}`)
  const src = join(work, 'data.bin')
  const transfer = [...sections].some(s => s !== 'smallfiles' && s !== 'reachability' && s !== 'scheduler' && s !== 'cli' && s !== 'expose' && s !== 'downloads' && s !== 'backup' && s !== 'proxy')
  log(`${transfer ? `writing ${SIZE / MiB} MiB of random data; ` : ''}sections: ${[...sections].join(', ')}; ${RUNS} runs each`)
  if (transfer) await writeRandomFile(src, SIZE)
  let streamCeiling = NaN
  try {
    if (sections.has('ceilings')) await ceiling('tcp', 'ceiling (a) raw TCP', src, work)
    if (transfer) streamCeiling = await ceiling('stream', 'ceiling (b) libp2p stream', src, work)
    const pathRuns = sections.has('fetch') ? new CeilingRuns('chunk-path', 'ceiling (c) chunk path on (b)', src, work, ONE_SOURCE_RUNS) : undefined
    const dir = work
    if (sections.has('fetch') || sections.has('multi')) await withEnv(USER_RETRY_CAPS, async () => { await kith(src, streamCeiling, pathRuns, dir) })
    // smallfiles (bench/smallfiles.ts): many small files shared and fetched against tar | tar; prints its own table
    if (sections.has('smallfiles')) await smallFilesBench(log, work, Math.round(envInt('BENCH_SMALL_FILES', 100_000)), CPU_PROF)
    // reachability (bench/reachability.ts): BENCH_MOVES (10) moves per figure
    if (sections.has('reachability')) reachRows.push(...await reachabilityBench(log, Math.round(envInt('BENCH_MOVES', 10))))
    // scheduler (bench/scheduler.ts): shares, cap accuracy, ETA error; prints its own table
    if (sections.has('scheduler')) await schedulerBench(log)
    // cli (bench/cli.ts): commands against a bare request, daemon start; prints its own table
    if (sections.has('cli')) await cliBench(log)
    // expose (bench/expose.ts): a big HTTP response through kith connect against one plain stream, small-request latency; prints its own table
    if (sections.has('expose')) await exposeBench(log)
    // downloads (bench/downloads.ts): kith get and kith's HTTP engine against curl and aria2c from nginx; prints its own table
    if (sections.has('downloads')) await downloadsBench(log, RUNS, SIZE, Math.round(envInt('BENCH_LIMITED_MIB', 128) * MiB))
    // backup (bench/backup.ts): kith backup to two friends against restic to a local repository; prints its own table
    if (sections.has('backup')) await backupBench(log, work, SIZE)
    // proxy (bench/proxy.ts): curl through the local proxy against curl straight from nginx; prints its own table
    if (sections.has('proxy')) await proxyBench(log, RUNS)
  } finally {
    if (transfer) report()
    if (reachRows.length > 0) console.log(`\nkith reachability benchmark (ms):\n${reachRows.map(summarise).join('\n')}`)
  }
}

try {
  await main()
} catch (err) {
  if (!interrupted) console.error(`bench failed: ${(err as Error).stack ?? String(err)}`)
  process.exitCode = 1
} finally {
  await cleanup()
}
