import { spawn, type ChildProcess } from 'node:child_process'
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { createReadStream, existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, dirname, join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { DAEMON_ENV, DAEMON_STARTUP_FLAGS } from '../src/services/daemon-heap.ts'
import { needsNginx, startNginx } from '../test/helpers/nginx.ts'
import { freePort } from '../test/helpers/servers.ts'
import { createTestnet, KITH, NODE, type Testnet, type TestNode } from '../test/helpers/testnet.ts'
import { cpuSeconds, currentRss, threadCpuSeconds, threadSchedMs, fmt, JsonChild, MB, MiB, mbps, median, peakRss, PERF_STAGES, resetPeakRss, run, table, writeRandomFile } from './lib.ts'

/**
 * The downloads section of `npm run bench` (`--section downloads`): a file
 * served by a real nginx on 127.0.0.1, fetched by kith's HTTP engine with 1
 * and 8 connections, next to curl and aria2c (-x8 -s8) in the same run, on
 * the same machine, to the same disk:
 *
 *   uncapped   BENCH_SIZE_MIB (1024) MiB from nginx; MB/s (median of
 *              BENCH_RUNS, 3) and each one's ratio to aria2c's; peak RSS.
 *              Target: `kith get` at 8 connections >= 0.9 of aria2c, peak
 *              RSS <= 150 MB.
 *   limited    the origin limited to 10 MB/s per connection, a smaller file
 *              (BENCH_LIMITED_MIB, 128): `kith get` at 8 connections
 *              against 1. Target: >= 6x. nginx's http `limit_rate` can't
 *              be that origin: it is per request and lets the first
 *              second's worth through at once, so kith's 1 MiB pieces (one
 *              request each) passed almost unlimited (29x one connection).
 *              The limited origin is nginx's stream module in front of the
 *              http server (`proxy_download_rate 10m`: per TCP connection,
 *              as a link per connection would be); Debian's
 *              libnginx-mod-stream, else these rows are left out.
 *
 * The files (served and downloaded) are in /dev/shm (tmpfs) where there is
 * one, BENCH_DL_DIR to choose: on a disk shared with other work, the
 * kernel's writeback of dirty pages sets everyone's rate (dd managed 120 MB/s
 * here while others wrote), not the downloaders.
 *
 * Two ceilings in the same run show what any Node process gets: a plain
 * node:net socket and an undici request, each on one connection, dropping
 * the bytes (bench/http-drain.ts); kith's rows give their ratio to the
 * undici one (and to curl's).
 *
 * Between the undici ceiling and the engine, three stages on 8 connections,
 * each adding one part of the engine to the one before (bench/http-stages.ts):
 * undici alone (8 ranges, bodies dropped), + the scheduler's take per chunk,
 * + the write-back cache and its positioned writes. Then "engine alone" adds
 * pieces in file order and the control file (no checksum is asked for, so no
 * SHA-256, as aria2c and curl compute none), and "kith get" the daemon
 * around it. Each row gives its CPU per MB (all its threads), which
 * the load of other work on the machine skews less than its rate (curl's
 * and aria2c's polled every 20 ms: a lower bound), and nginx's: small, as on
 * loopback the kernel does most of both ends' TCP work in the receiver's
 * system calls, so a row's own CPU is nearly all the machine spends on it.
 *
 * After each `kith get` the bench waits for the daemon to be idle and gives
 * the CPU that took ("after it was done"): the proxy's swarm reads and hashes
 * every placed file to offer it to friends (src/services/proxy/swarm/), and
 * would otherwise run during the next tool's measurement.
 *
 * kith is measured twice: `kith get` through a real daemon (the queue, the
 * scheduler flow, the checksum and the move into place; the time is the
 * download record's, created to done, so the CLI's own start is not in it;
 * peak RSS is the daemon's, reset before each run), and its HTTP engine
 * alone in a process of its own (test/helpers/http-get.ts), which shows
 * what the engine costs without the daemon around it. Every download's file
 * is checked against the source's SHA-256. Peak RSS of curl and aria2c is
 * VmHWM read from /proc every 20 ms until they exit (a lower bound).
 *
 * BENCH_DL_ROWS=get,engine runs only the rows whose names hold one of these
 * words, with curl, aria2c and the undici ceiling (the ratios).
 *
 * BENCH_PERF=DIR records each kith row with Linux `perf record -g` (every
 * thread, the kernel included: the daemon while it downloads, a stage's or
 * the engine's process from its start) and logs where its CPU went per MB
 * (bench/perf-stages.ts; run from the sources, BENCH_SOURCES=1, for kith's
 * own stages by file).
 */
const HERE = dirname(fileURLToPath(import.meta.url))
const GET = join(HERE, '..', 'test', 'helpers', 'http-get.ts')
const DRAIN = join(HERE, 'http-drain.ts')
const STAGES = join(HERE, 'http-stages.ts')
const PERF_DIR = process.env.BENCH_PERF
const TARGET_RATIO = 0.9
/** Debian's libnginx-mod-stream: the limited origin */
const STREAM_MODULE = '/usr/lib/nginx/modules/ngx_stream_module.so'
const LIMITED_RATE = '10m'
const LIMITED_ONE = `kith get, 1 connection, origin ${LIMITED_RATE} per connection`
const LIMITED_EIGHT = `kith get, 8 connections, origin ${LIMITED_RATE} per connection`
const UNDICI = 'ceiling: undici request, 1 connection, body dropped'
const TARGET_RSS = 150 * MB
const TARGET_LIMITED = 6

type Log = (message: string) => void

/**
 * rssBefore: the daemon's resident memory when the download started (what the download adds is peakRss - rssBefore);
 * serverCpuMs: nginx's CPU (master and workers) during the run;
 * mainCpuMs: kith's main thread's, the event loop every byte passes (what limits the engine);
 * mainShare: over the download's own time (the record's created -> done), the share that thread was
 * on a core, and the share it was ready to run but waited for one (its run queue); the rest it slept
 */
interface Sample { ms: number, peakRss: number, cpuMs?: number, mainCpuMs?: number, mainShare?: { run: number, wait: number }, rssBefore?: number, afterCpuMs?: number, serverCpuMs?: number }

export interface DownloadsRow { figure: string, value: number, unit: 'MB/s' | 'MB' | 'x', samples: number[], ratio?: number, of?: string, target?: string, met?: boolean, note?: string }

async function sha256 (path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

/** Runs a command to its exit, polling its VmHWM and CPU time (the last poll's: a lower bound); rejects on a non-zero exit. */
async function timed (command: string, args: string[]): Promise<Sample> {
  const started = performance.now()
  const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  let peakRss = 0
  let cpu = 0
  const poll = setInterval(() => {
    readFile(`/proc/${child.pid}/status`, 'utf8').then(s => {
      const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(s)
      if (m != null) peakRss = Math.max(peakRss, Number(m[1]) * 1024)
    }, () => {})
    void cpuSeconds(child.pid).then(c => { if (c > cpu) cpu = c })
  }, 20)
  const code = await new Promise<number | null>(resolve => child.once('close', resolve))
  clearInterval(poll)
  const ms = performance.now() - started
  if (code !== 0) throw new Error(`${command} exited with ${code}: ${stderr.slice(-2000)}`)
  return { ms, peakRss, cpuMs: cpu * 1000 }
}

/** nginx's CPU seconds so far, master and workers */
async function nginxCpu (dir: string): Promise<number> {
  const master = Number((await readFile(join(dir, 'nginx.pid'), 'utf8')).trim())
  const workers = (await readFile(`/proc/${master}/task/${master}/children`, 'utf8').catch(() => '')).trim().split(/\s+/).filter(Boolean).map(Number)
  let sum = 0
  for (const pid of [master, ...workers]) sum += await cpuSeconds(pid)
  return sum
}

/**
 * The main thread's schedstat (time on a core, time waiting for one) every 20 ms, each reading with its
 * Date.now(), until `stop`; `share(from, to)` is each over the readings that span [from, to]
 */
function watchMainThread (pid: number | undefined): { stop: () => void, share: (from: number, to: number) => { run: number, wait: number } } {
  const readings: Array<{ at: number, run: number, wait: number }> = []
  const read = (): void => { void threadSchedMs(pid).then(ms => { readings.push({ at: Date.now(), ...ms }) }) }
  read()
  const timer = setInterval(read, 20)
  return {
    stop: () => { clearInterval(timer); read() },
    share: (from, to) => {
      const first = readings.findLast(r => r.at <= from) ?? readings[0]!
      const last = readings.find(r => r.at >= to) ?? readings.at(-1)!
      const span = last.at - first.at
      return { run: (last.run - first.run) / span, wait: (last.wait - first.wait) / span }
    }
  }
}

/** `kith get` through the daemon; the record's created -> updated (done) is the time */
async function kithGet (node: TestNode, url: string, out: string, connections: number): Promise<Sample> {
  await resetPeakRss(node.pid)
  const rssBefore = await currentRss(node.pid)
  const cpu = await cpuSeconds(node.pid)
  const main = await threadCpuSeconds(node.pid)
  const sched = watchMainThread(node.pid)
  const perf = PERF_DIR != null ? await perfAttached(node.pid!, `get-${connections}-${basename(new URL(url).pathname, '.bin')}`) : null
  const r = await run(NODE, [KITH, '--home', node.home, 'get', url, '-o', out, '--connections', String(connections), '--json']).finally(() => { perf?.proc.kill('SIGINT'); sched.stop() })
  if (r.code !== 0) throw new Error(`kith get failed (${r.code}): ${r.stderr.trim()}`)
  const id = (JSON.parse(r.stdout.split('\n')[0]!) as { id: string }).id
  const { downloads } = await node.json<{ downloads: Array<{ id: string, created: number, updated: number, state: string }> }>('downloads')
  const record = downloads.find(d => d.id === id)
  if (record?.state !== 'done') throw new Error(`kith get ${url}: the download ended ${JSON.stringify(record)}`)
  const ms = record.updated - record.created
  const sample = { ms, peakRss: await peakRss(node.pid), cpuMs: ((await cpuSeconds(node.pid)) - cpu) * 1000, mainCpuMs: ((await threadCpuSeconds(node.pid)) - main) * 1000, mainShare: sched.share(record.created, record.updated), rssBefore }
  if (perf != null) await perfStages(perf.proc, perf.file, `kith get, ${connections} connections`, (await stat(out)).size / MB)
  return { ...sample, afterCpuMs: await settle(node.pid) }
}

/**
 * Waits until the daemon is idle again (under 20 ms of CPU in 500 ms, or 60
 * s), so the work it does after a download is done (the proxy's swarm
 * hashes a placed file to offer it to friends) is not measured as the next
 * tool's; returns the CPU ms that took.
 */
async function settle (pid: number | undefined): Promise<number> {
  const start = await cpuSeconds(pid)
  const deadline = performance.now() + 60_000
  let last = start
  while (performance.now() < deadline) {
    await new Promise(resolve => setTimeout(resolve, 500))
    const now = await cpuSeconds(pid)
    if (now - last < 0.02) break
    last = now
  }
  return (last - start) * 1000
}

/** a Node process receiving the file and dropping it (bench/http-drain.ts): the ceiling of anything built on Node */
async function drain (mode: 'net' | 'undici', url: string, size: number): Promise<Sample> {
  const child = new JsonChild(NODE, [DRAIN, mode, url])
  const r = await child.next<{ bytes: number, ms: number, peakRss: number }>()
  if (r.bytes < size) throw new Error(`${mode} drain got ${r.bytes} of ${size} bytes`)
  return { ms: r.ms, peakRss: r.peakRss }
}

/** one stage of the engine, in a process of its own started as the daemon is (bench/http-stages.ts) */
async function stage (mode: 'drain' | 'take' | 'write', url: string, size: number, out: string, connections: number): Promise<Sample> {
  const command = await perfWrapped(`stage-${mode}`, [...DAEMON_STARTUP_FLAGS, STAGES, mode, url, String(size), String(connections), out])
  const child = new JsonChild(command.command, command.args, DAEMON_ENV)
  const r = await child.next<{ bytes: number, ms: number, peakRss: number, cpuMs: number }>()
  await perfStages(child.proc, command.file, `stage ${mode}`, size / MB)
  if (r.bytes !== size) throw new Error(`stage ${mode} got ${r.bytes} of ${size} bytes`)
  return { ms: r.ms, peakRss: r.peakRss, cpuMs: r.cpuMs }
}

/** `perf record` of the running process `pid` (a daemon) into PERF_DIR/NAME.data, until it is sent SIGINT */
async function perfAttached (pid: number, name: string): Promise<{ proc: ChildProcess, file: string }> {
  await mkdir(PERF_DIR!, { recursive: true })
  const file = join(PERF_DIR!, `${name}.data`)
  const proc = spawn('perf', ['record', '-q', '-F', '999', '-g', '-o', file, '-p', String(pid)], { stdio: 'ignore' })
  // perf attaches to the running process; nothing tells when it has
  await sleep(500)
  return { proc, file }
}

/** Node with `args`; with BENCH_PERF, under `perf record` into PERF_DIR/NAME.data, JS frames named (/tmp/perf-PID.map) */
async function perfWrapped (name: string, args: string[]): Promise<{ command: string, args: string[], file: string | null }> {
  if (PERF_DIR == null) return { command: NODE, args, file: null }
  await mkdir(PERF_DIR, { recursive: true })
  const file = join(PERF_DIR, `${name}.data`)
  return { command: 'perf', args: ['record', '-q', '-F', '999', '-g', '-o', file, '--', NODE, '--perf-basic-prof-only-functions', '--interpreted-frames-native-stack', ...args], file }
}

/** With BENCH_PERF: once `proc` (perf, or the process perf runs) has exited, logs where the row's CPU went */
async function perfStages (proc: ChildProcess, file: string | null, row: string, mb: number): Promise<void> {
  if (file == null) return
  if (proc.exitCode == null && proc.signalCode == null) await once(proc, 'exit')
  const stages = await run(NODE, [PERF_STAGES, file, '--mb', String(mb), '--top', '15'])
  console.error(`downloads: where ${row}'s CPU went (CPU ms/MB, perf samples in ${file}):\n${stages.stdout}${stages.stderr}`)
}

async function kith (url: string, out: string, connections: number, size: number): Promise<Sample> {
  const command = await perfWrapped(`engine-${connections}`, [...DAEMON_STARTUP_FLAGS, GET, url, out, String(connections)])
  const child = new JsonChild(command.command, command.args, DAEMON_ENV)
  const r = await child.next<{ bytes: number, ms: number, peakRss: number, cpuMs: number, mainCpuMs: number }>()
  await perfStages(child.proc, command.file, `the engine alone, ${connections} connections`, size / MB)
  return { ms: r.ms, peakRss: r.peakRss, cpuMs: r.cpuMs, mainCpuMs: r.mainCpuMs }
}

export async function downloadsBench (log: Log, runs: number, sizeBytes: number, limitedBytes: number): Promise<DownloadsRow[]> {
  const missing = needsNginx()
  if (missing != null) throw new Error(missing)
  const work = await mkdtemp(join(process.env.BENCH_DL_DIR ?? (await stat('/dev/shm').then(() => '/dev/shm', () => tmpdir())), 'kith-bench-dl-'))
  const root = join(work, 'www')
  const outDir = join(work, 'out')
  await mkdir(root)
  await mkdir(outDir)
  const rows: DownloadsRow[] = []
  // the limited origin: the stream module relays each TCP connection to the http server's socket at LIMITED_RATE
  const limited = existsSync(STREAM_MODULE) ? { port: await freePort(), socket: join(work, 'http.sock') } : null
  if (limited == null) log(`downloads: ${STREAM_MODULE} missing (apt-get install -y libnginx-mod-stream): the limited rows are left out`)
  const nginx = await startNginx({
    root,
    ...(limited != null
      ? {
          server: `listen unix:${limited.socket};`,
          main: `load_module ${STREAM_MODULE};\nstream { server { listen 127.0.0.1:${limited.port}; proxy_pass unix:${limited.socket}; proxy_download_rate ${LIMITED_RATE}; } }`
        }
      : {})
  })
  let testnet: Testnet | undefined
  try {
    const saved = process.env.NODE_OPTIONS
    // the daemon inherits NODE_OPTIONS when it starts: its JS frames named in /tmp/perf-PID.map, which perf reads
    if (PERF_DIR != null) process.env.NODE_OPTIONS = `${saved ?? ''} --perf-basic-prof-only-functions --interpreted-frames-native-stack`.trim()
    testnet = await createTestnet(['getter']).finally(() => {
      if (saved == null) delete process.env.NODE_OPTIONS
      else process.env.NODE_OPTIONS = saved
    })
    const daemon = testnet.nodes[0]!
    log(`downloads: writing ${sizeBytes / MiB} MiB and ${limitedBytes / MiB} MiB of random data`)
    await writeRandomFile(join(root, 'big.bin'), sizeBytes)
    await writeRandomFile(join(root, 'small.bin'), limitedBytes)
    const want = { big: await sha256(join(root, 'big.bin')), small: await sha256(join(root, 'small.bin')) }

    const out = join(outDir, 'file')
    type Tool = { name: string, file: 'big' | 'small', limited: boolean, writes?: false, go: (url: string) => Promise<Sample> }
    const tools: Tool[] = [
      { name: 'ceiling: node:net socket, 1 connection, bytes dropped', file: 'big', limited: false, writes: false, go: async url => await drain('net', url, sizeBytes) },
      { name: UNDICI, file: 'big', limited: false, writes: false, go: async url => await drain('undici', url, sizeBytes) },
      { name: 'curl', file: 'big', limited: false, go: async url => await timed('curl', ['-sS', '--fail', '-o', out, url]) },
      { name: 'aria2c -x8 -s8', file: 'big', limited: false, go: async url => await timed('aria2c', ['-x8', '-s8', '--file-allocation=none', '--allow-overwrite=true', '--auto-file-renaming=false', '--summary-interval=0', '--console-log-level=warn', '-q', '-d', outDir, '-o', 'file', url]) },
      { name: 'stage 1: undici, 8 connections, bodies dropped', file: 'big', limited: false, writes: false, go: async url => await stage('drain', url, sizeBytes, out, 8) },
      { name: 'stage 2: + scheduler take per chunk', file: 'big', limited: false, writes: false, go: async url => await stage('take', url, sizeBytes, out, 8) },
      { name: 'stage 3: + write-back cache, positioned writes', file: 'big', limited: false, go: async url => await stage('write', url, sizeBytes, out, 8) },
      { name: 'kith get, 1 connection', file: 'big', limited: false, go: async url => await kithGet(daemon, url, out, 1) },
      { name: 'kith get, 8 connections', file: 'big', limited: false, go: async url => await kithGet(daemon, url, out, 8) },
      { name: 'kith engine alone, 1 connection', file: 'big', limited: false, go: async url => await kith(url, out, 1, sizeBytes) },
      { name: 'kith engine alone, 8 connections', file: 'big', limited: false, go: async url => await kith(url, out, 8, sizeBytes) },
      ...(limited != null
        ? [
            { name: LIMITED_ONE, file: 'small', limited: true, go: async url => await kithGet(daemon, url, out, 1) },
            { name: LIMITED_EIGHT, file: 'small', limited: true, go: async url => await kithGet(daemon, url, out, 8) }
          ] satisfies Tool[]
        : [])
    ]
    // BENCH_DL_ROWS (above)
    const only = process.env.BENCH_DL_ROWS?.split(',').filter(Boolean)
    if (only != null && only.length > 0) tools.splice(0, tools.length, ...tools.filter(t => t.name === 'aria2c -x8 -s8' || t.name === UNDICI || t.name === 'curl' || only.some(o => t.name.includes(o))))
    const samples = new Map<string, Sample[]>(tools.map(t => [t.name, []]))
    // rounds: one run of each per round, so load from other work spreads evenly
    for (let round = 1; round <= runs; round++) {
      for (const tool of tools) {
        const url = tool.limited ? `http://127.0.0.1:${limited!.port}/${tool.file}.bin` : `${nginx.url}/${tool.file}.bin`
        await rm(out, { force: true })
        const server = await nginxCpu(nginx.dir)
        const s = { ...await tool.go(url), serverCpuMs: ((await nginxCpu(nginx.dir)) - server) * 1000 }
        const expected = tool.file === 'big' ? sizeBytes : limitedBytes
        const bytes = tool.writes === false ? expected : (await stat(out)).size
        if (tool.writes !== false && (bytes !== expected || await sha256(out) !== want[tool.file])) throw new Error(`${tool.name}: the file is not the source (${bytes} of ${expected} bytes)`)
        samples.get(tool.name)!.push(s)
        log(`downloads round ${round}/${runs}: ${tool.name}: ${fmt(mbps(bytes, s.ms))} MB/s, peak RSS ${fmt(s.peakRss / MB)} MB${s.rssBefore != null ? ` (${fmt(s.rssBefore / MB)} MB before)` : ''}${s.cpuMs != null ? `, CPU ${fmt(s.cpuMs / s.ms, 2)} of a core` : ''}, nginx ${fmt((s.serverCpuMs ?? NaN) / (bytes / MB), 2)} CPU ms/MB`)
      }
      await rm(out, { force: true })
    }
    const rate = (name: string, bytes: number): number[] => samples.get(name)!.map(s => mbps(bytes, s.ms))
    const aria = median(rate('aria2c -x8 -s8', sizeBytes))
    const curl = median(rate('curl', sizeBytes))
    const undici = median(rate(UNDICI, sizeBytes))
    for (const tool of tools.filter(t => !t.limited)) {
      const values = rate(tool.name, sizeBytes)
      const value = median(values)
      const rss = Math.max(...samples.get(tool.name)!.map(s => s.peakRss))
      const before = samples.get(tool.name)!.find(s => s.peakRss === rss)?.rssBefore
      const cpu = median(samples.get(tool.name)!.flatMap(s => s.cpuMs != null ? [s.cpuMs / (sizeBytes / MB)] : []))
      const main = median(samples.get(tool.name)!.flatMap(s => s.mainCpuMs != null ? [s.mainCpuMs / (sizeBytes / MB)] : []))
      const other = median(samples.get(tool.name)!.flatMap(s => s.mainCpuMs != null && s.cpuMs != null ? [(s.cpuMs - s.mainCpuMs) / (sizeBytes / MB)] : []))
      // the daemon's main thread over the download's time: on a core, ready but waiting for one, and (the rest) idle
      const busy = median(samples.get(tool.name)!.flatMap(s => s.mainShare != null ? [s.mainShare.run] : []))
      const waiting = median(samples.get(tool.name)!.flatMap(s => s.mainShare != null ? [s.mainShare.wait] : []))
      const after = median(samples.get(tool.name)!.flatMap(s => s.afterCpuMs != null ? [s.afterCpuMs / (sizeBytes / MB)] : []))
      const server = median(samples.get(tool.name)!.flatMap(s => s.serverCpuMs != null ? [s.serverCpuMs / (sizeBytes / MB)] : []))
      const eight = tool.name === 'kith get, 8 connections'
      const ours = tool.name.startsWith('kith') || tool.name.startsWith('stage')
      rows.push({
        figure: `downloads: ${tool.name}`,
        value,
        unit: 'MB/s',
        samples: values,
        ratio: value / aria,
        of: 'aria2c -x8 -s8',
        ...(eight ? { target: `>= ${TARGET_RATIO} of aria2c (>= ${TARGET_RATIO} of the undici ceiling), peak RSS <= ${TARGET_RSS / MB} MB`, met: value / aria >= TARGET_RATIO && rss <= TARGET_RSS } : {}),
        note: [
          `peak RSS ${fmt(rss / MB)} MB${before != null ? ` (${fmt(before / MB)} MB before it)` : ''}`,
          ...(Number.isFinite(cpu) ? [`CPU ${fmt(cpu, 2)} ms/MB${Number.isFinite(main) ? ` (main thread ${fmt(main, 2)}, other threads ${fmt(other, 2)})` : ''}`] : []),
          ...(Number.isFinite(waiting) ? [`main thread on a core ${fmt(busy * 100)}% of the download, waiting for one ${fmt(waiting * 100)}%, idle ${fmt(Math.max(0, 1 - busy - waiting) * 100)}%`] : []),
          ...(Number.isFinite(after) ? [`then ${fmt(after, 2)} ms/MB after it was done`] : []),
          ...(Number.isFinite(server) ? [`nginx ${fmt(server, 2)} ms/MB`] : []),
          ...(ours ? [`${fmt(value / undici, 2)} of the undici ceiling`, `${fmt(value / curl, 2)} of curl`] : []),
          ...(eight ? [`undici ceiling: ${value / undici >= TARGET_RATIO ? 'met' : 'NOT met'}`] : [])
        ].join('; ')
      })
    }
    if (limited != null && samples.has(LIMITED_ONE) && samples.has(LIMITED_EIGHT)) {
      const one = median(rate(LIMITED_ONE, limitedBytes))
      const eight = median(rate(LIMITED_EIGHT, limitedBytes))
      rows.push({ figure: `downloads: ${LIMITED_ONE}`, value: one, unit: 'MB/s', samples: rate(LIMITED_ONE, limitedBytes) })
      rows.push({ figure: `downloads: ${LIMITED_EIGHT}`, value: eight, unit: 'MB/s', samples: rate(LIMITED_EIGHT, limitedBytes), ratio: eight / one, of: '1 connection', target: `>= ${TARGET_LIMITED}x`, met: eight / one >= TARGET_LIMITED })
    }
    console.log(`\nkith downloads benchmark: ${sizeBytes / MiB} MiB (limited: ${limitedBytes / MiB} MiB) from nginx on 127.0.0.1 to ${outDir.startsWith('/dev/shm') ? 'tmpfs' : 'disk'}, median of ${runs} runs, MB = 10^6 bytes`)
    console.log(table(['figure', 'MB/s', 'ratio', 'target', 'note'], rows.map(r => [r.figure, fmt(r.value), r.ratio != null ? `${fmt(r.ratio, 2)} of ${r.of}` : '', r.target != null ? `${r.target}: ${r.met === true ? 'met' : 'NOT met'}` : '', r.note ?? ''])))
    return rows
  } finally {
    await testnet?.stop()
    await nginx.stop()
    await rm(work, { recursive: true, force: true })
  }
}
