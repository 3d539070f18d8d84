import { spawn, execFile, execFileSync } from 'node:child_process'
import { promisify } from 'node:util'
import { accessSync, constants, readFileSync } from 'node:fs'
import { cp, mkdir, mkdtemp, rm } from 'node:fs/promises'
import { cpus, loadavg, tmpdir } from 'node:os'
import { delimiter, dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { TestNode, NODE, KITH } from '../test/helpers/testnet.ts'
import { buildBundle } from '../test/helpers/bundle-setup.ts'
import { bundle } from '../bundle.ts'
import { cpuSeconds, currentRss, fmt, median, MB, table } from './lib.ts'

/**
 * The cli section of `npm run bench` (`--section cli`), also runnable alone:
 * `node bench/cli.ts`.
 *
 *   start     a daemon's time to start: `kith start` spawned to its start-up
 *             line, in a new home (identity and database made), again in
 *             the same home, and so with the compile cache off;
 *             BENCH_CLI_STARTS (3) of each, from the checkout's sources and
 *             from the bundle an installed kith runs (bundle.ts), in turns. Beside the wall time, the CPU
 *             time (user + system) the daemon used up to that line, from its
 *             /proc/PID/stat (the re-execution keeps the pid, so both passes
 *             count; a test run starts ~110 daemons, so this is most of its
 *             CPU), and its resident memory (VmRSS) 5 s after the same-home
 *             start: an idle daemon's size (issue 18's target: 100 MB)
 *   commands  `kith status`, `friends`, `transfers` and `--help` against that
 *             daemon, spawned to exit, from the checkout (TypeScript, Node
 *             stripping its types) and from the package installed (npm pack
 *             of the bundle built into a temp folder, `npm install -g` into
 *             a temp prefix, once per run: what users run; `installed` in
 *             the table), next to a bare Node 24 process that
 *             reads the same api.json and api.token and makes one request to
 *             the same API: the floor any Node client has. Target: each
 *             command within 3x that floor. Every command runs with Node's
 *             compile cache warm (primed by an unmeasured round) and cold
 *             (an empty cache each run: the first run after an install or a
 *             cleaned temp folder), and `status` also with the cache off
 *             (NODE_DISABLE_COMPILE_CACHE=1), which shows what the cache saves;
 *             the installed `kith status` also as a shell runs it (the
 *             prefix's bin/kith, its `#!` line handing over to the package's
 *             Node 24)
 *   hand-over `kith status` run as a shell runs it (bin/kith.js's `#!` line),
 *             PATH without node_modules (npm run puts node_modules/.bin, and
 *             so Node 24, first), when the shell's `node` is another one (an
 *             older Node used to start only to hand over); and that Node
 *             bare; and `npx kith status` (npm exec, as the README shows it)
 *
 * BENCH_CLI_PARTS=start measures the daemon starts alone (a minute, not
 * several: no package is built or installed).
 *
 * Each figure is the median of BENCH_CLI_RUNS (10) runs, taken in rounds (one
 * run of every figure per round) so load from other work spreads evenly; the
 * ratios, not the milliseconds, are what compare between runs on a shared
 * machine. Beside wall time, the CPU time (user + system) of each command and
 * the processes it started, from this process's children times in
 * /proc/self/stat (Linux only), and its ratio to the bare request's: under
 * heavy load from other work, wall times stretch with the run queue while CPU
 * time barely moves.
 */
const RUNS = Math.max(1, Math.round(Number(process.env.BENCH_CLI_RUNS ?? 10)))
const STARTS = Math.max(1, Math.round(Number(process.env.BENCH_CLI_STARTS ?? 3)))
/** BENCH_CLI_PARTS=start: the daemon starts only (no package install, no commands) */
const START_ONLY = process.env.BENCH_CLI_PARTS === 'start'
const TARGET = 3
/** the thin commands the target is for */
const COMMANDS = [['status'], ['friends'], ['transfers'], ['--help']]

type Log = (message: string) => void

/** The node's compile cache goes to os.tmpdir() unless NODE_COMPILE_CACHE says otherwise: TMPDIR picks it. */
type Cache = 'warm' | 'cold' | 'off'

interface Figure {
  name: string
  /** which kith: the checkout's TypeScript or the installed package's JavaScript */
  from: 'checkout' | 'installed' | ''
  command: string
  args: string[]
  cache: Cache | null
  env?: NodeJS.ProcessEnv
  target: boolean
  wall: number[]
  cpu: number[]
}

/** CPU seconds (user + system) of this process's waited-for children so far; NaN off Linux. */
function childrenCpu (): number {
  try {
    const stat = readFileSync('/proc/self/stat', 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // cutime and cstime, in USER_HZ (100) ticks
    return (Number(fields[13]) + Number(fields[14])) / 100
  } catch {
    return NaN
  }
}

async function timed (command: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ ms: number, cpuMs: number }> {
  // from the checkout, where npx finds kith
  const cwd = dirname(dirname(KITH))
  const cpuBefore = childrenCpu()
  const started = performance.now()
  const proc = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env, cwd })
  let out = ''
  proc.stdout.on('data', (d: Buffer) => { out += d.toString() })
  proc.stderr.on('data', (d: Buffer) => { out += d.toString() })
  const code = await new Promise<number | null>(resolve => proc.once('close', code => resolve(code)))
  const ms = performance.now() - started
  if (code !== 0) throw new Error(`${command} ${args.join(' ')} exited with ${code}: ${out.slice(-2000)}`)
  return { ms, cpuMs: (childrenCpu() - cpuBefore) * 1000 }
}

/** PATH as a user's shell has it: without the node_modules/.bin that npm run puts first */
const SHELL_PATH = (process.env.PATH ?? '').split(delimiter).filter(dir => dir !== '' && !dir.split(/[\\/]/).includes('node_modules')).join(delimiter)

/** The first program `name` on the shell's PATH, if any. */
function onPath (name: string): string | null {
  for (const dir of SHELL_PATH.split(delimiter)) {
    try {
      accessSync(join(dir, name), constants.X_OK)
      return join(dir, name)
    } catch {}
  }
  return null
}

/** The shell's `node`, and its version, if it is not the Node 24 running this. */
function systemNode (): { path: string, version: string } | null {
  const path = onPath('node')
  if (path == null) return null
  const version = execFileSync(path, ['-p', 'process.versions.node'], { encoding: 'utf8' }).trim()
  return version === process.versions.node ? null : { path, version }
}

/** One request to the API, the way any Node client would make it: no TypeScript, nothing but node:http. */
const BARE_CLIENT = `
const { readFileSync } = require('node:fs'), { join } = require('node:path'), { get } = require('node:http')
const home = process.argv[1]
const { url } = JSON.parse(readFileSync(join(home, 'api.json'), 'utf8'))
const token = readFileSync(join(home, 'api.token'), 'utf8').trim()
get(new URL('/v1/status', url), { headers: { authorization: 'Bearer ' + token } }, res => {
  let body = ''
  res.on('data', d => { body += d })
  res.on('end', () => { if (res.statusCode !== 200) process.exitCode = 1; console.log(body) })
})`

/** A daemon's starts from one kind of program: the checkout's sources, or the bundle a package ships */
interface StartFigures {
  /** wall ms to the start-up line */
  fresh: number[]
  again: number[]
  uncached: number[]
  /** the daemon's CPU ms to its start-up line, the same starts */
  cpu: { fresh: number[], again: number[], uncached: number[] }
  /** MB resident 5 s after each same-home start */
  idleRss: number[]
}

type Program = 'sources' | 'bundle'

interface Starts {
  /** the last daemon started (from the bundle), left running for the commands */
  node: TestNode
  from: Record<Program, StartFigures>
}

/** How long after its start-up line an idle daemon's resident memory is read */
const IDLE_AFTER_MS = 5_000

/**
 * `kith start` to its start-up line: in a new home, again in the same home,
 * and again without the compile cache; from the checkout's sources and from
 * the bundle an installed kith runs (bundle.ts, built here once into
 * `bundle`), in turns.
 */
async function daemonStarts (log: Log, work: string, bundle: string): Promise<Starts> {
  const empty = (): StartFigures => ({ fresh: [], again: [], uncached: [], cpu: { fresh: [], again: [], uncached: [] }, idleRss: [] })
  const from: Record<Program, StartFigures> = { sources: empty(), bundle: empty() }
  let node: TestNode | undefined
  const time = async (n: TestNode, figures: StartFigures, kind: 'fresh' | 'again' | 'uncached'): Promise<void> => {
    const started = performance.now()
    await n.start()
    figures[kind].push(performance.now() - started)
    figures.cpu[kind].push(await cpuSeconds(n.pid) * 1000)
  }
  for (let i = 0; i < STARTS; i++) {
    for (const program of ['sources', 'bundle'] as const) {
      const figures = from[program]
      // an empty KITH_DIST runs the sources (bin/kith.js)
      const env = { KITH_DIST: program === 'bundle' ? bundle : '' }
      if (node != null) await node.stop()
      const home = join(work, `${program}${i + 1}`)
      // as a user's `kith start`: the daemon re-executes itself with its heap flags
      node = new TestNode(`cli${i + 1}`, home, [], { env, reexec: true })
      await time(node, figures, 'fresh')
      await node.stop()
      const uncached = new TestNode(`cli${i + 1}`, home, [], { env: { ...env, NODE_DISABLE_COMPILE_CACHE: '1' }, reexec: true })
      await time(uncached, figures, 'uncached')
      await uncached.stop()
      await time(node, figures, 'again')
      await new Promise(resolve => setTimeout(resolve, IDLE_AFTER_MS))
      figures.idleRss.push(await currentRss(node.pid) / MB)
      log(`daemon start ${i + 1}/${STARTS} from the ${program}: new home ${fmt(figures.fresh.at(-1)!)} ms (CPU ${fmt(figures.cpu.fresh.at(-1)!)} ms), same home ${fmt(figures.again.at(-1)!)} ms (CPU ${fmt(figures.cpu.again.at(-1)!)} ms, ${fmt(figures.idleRss.at(-1)!)} MB resident ${IDLE_AFTER_MS / 1000} s later), without the compile cache ${fmt(figures.uncached.at(-1)!)} ms (CPU ${fmt(figures.cpu.uncached.at(-1)!)} ms)`)
    }
  }
  return { node: node!, from }
}

/**
 * kith as `npm install -g` puts it, in `work/prefix`: the bundle built
 * from this checkout into a staging folder (not the checkout's dist/, which a
 * package test may be using), packed there without scripts (prepack would
 * build again) and installed from npm's cache where it can. Returns the
 * installed bin/kith.js, and the prefix's bin/kith a shell runs.
 */
async function installPackage (log: Log, work: string): Promise<{ script: string, bin: string }> {
  const root = dirname(dirname(KITH))
  const stage = join(work, 'package')
  const prefix = join(work, 'prefix')
  const started = performance.now()
  const must = async (command: string, args: string[], cwd = work): Promise<string> =>
    (await promisify(execFile)(command, args, { cwd, timeout: 600_000, maxBuffer: 64 * 1024 * 1024 })).stdout
  await bundle(join(stage, 'dist'))
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { files: string[] }
  for (const entry of ['package.json', 'README.md', ...pkg.files.filter(f => !f.startsWith('dist'))]) await cp(join(root, entry), join(stage, entry), { recursive: true })
  const packed = JSON.parse(await must('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', work], stage)) as Array<{ filename: string }>
  await must('npm', ['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', join(work, packed[0]!.filename)])
  log(`installed the package into a temp prefix in ${fmt((performance.now() - started) / 1000, 1)} s`)
  return { script: join(prefix, 'lib', 'node_modules', 'kith', 'bin', 'kith.js'), bin: join(prefix, 'bin', 'kith') }
}

/** The start part's figures, as printed */
function startLines (starts: Starts): string[] {
  return (['sources', 'bundle'] as const).flatMap(program => {
    const f = starts.from[program]
    const figures: Array<[string, number[], number[]]> = [['new home', f.fresh, f.cpu.fresh], ['same home again', f.again, f.cpu.again], ['same home, compile cache off', f.uncached, f.cpu.uncached]]
    const what = program === 'bundle' ? 'from the bundle (an installed kith)' : 'from the sources (a checkout)'
    return [
      `daemon start ${what} (kith start to its start-up line), median of ${STARTS}: ${figures.map(([name, v]) => `${name} ${fmt(median(v))} ms (${v.map(x => fmt(x)).join(' ')})`).join('; ')}`,
      `daemon CPU to its start-up line (user + system) ${what}, median of ${STARTS}: ${figures.map(([name, , cpu]) => `${name} ${fmt(median(cpu))} ms (${cpu.map(x => fmt(x)).join(' ')})`).join('; ')}`,
      `idle daemon ${what}, resident ${IDLE_AFTER_MS / 1000} s after a same-home start, median of ${STARTS}: ${fmt(median(f.idleRss))} MB (${f.idleRss.map(x => fmt(x)).join(' ')}); ratio to issue 18's 100 MB target ${fmt(median(f.idleRss) / 100, 2)}`
    ]
  })
}

function loadLine (load: number): string {
  return `load average (1 min) at the start: ${fmt(load, 1)}${load > cpus().length / 2 ? ': other work was running, so milliseconds are noisy; compare ratios' : ''}`
}

export async function cliBench (log: Log = m => process.stderr.write(`[bench] ${m}\n`)): Promise<string> {
  const load = loadavg()[0]!
  const work = await mkdtemp(join(tmpdir(), 'kith-bench-cli-'))
  let node: TestNode | undefined
  // the bundle the daemon starts compare with the sources: the caller's (bench/run.ts), or one built here
  const built = process.env.KITH_DIST != null && process.env.KITH_DIST !== '' ? null : await buildBundle()
  const bundleDir = built?.dir ?? process.env.KITH_DIST!
  try {
    if (START_ONLY) {
      const starts = await daemonStarts(log, work, bundleDir)
      node = starts.node
      const text = [`\nkith daemon start: ${cpus().length} cores, Node ${process.versions.node}`, loadLine(load), ...startLines(starts)].join('\n')
      console.log(text)
      return text
    }
    const installed = await installPackage(log, work)
    const starts = await daemonStarts(log, work, bundleDir)
    node = starts.node
    const home = node.home
    // the children choose their compile cache through TMPDIR alone
    const env: NodeJS.ProcessEnv = { ...process.env }
    // the checkout's commands run its sources
    delete env.KITH_DIST
    delete env.NODE_COMPILE_CACHE
    delete env.NODE_DISABLE_COMPILE_CACHE
    const warmDir = join(work, 'warm')
    await mkdir(warmDir)

    const figures: Figure[] = [{ name: 'bare Node 24, one request', from: '', command: NODE, args: ['-e', BARE_CLIENT, home], cache: null, target: false, wall: [], cpu: [] }]
    for (const [from, kith] of [['checkout', KITH], ['installed', installed.script]] as const) {
      for (const args of COMMANDS) {
        for (const cache of ['warm', 'cold'] as const) {
          figures.push({ name: `kith ${args.join(' ')}`, from, command: NODE, args: [kith, '--home', home, ...args], cache, target: true, wall: [], cpu: [] })
        }
      }
    }
    figures.push({ name: 'kith status', from: 'checkout', command: NODE, args: [KITH, '--home', home, 'status'], cache: 'off', env: { NODE_DISABLE_COMPILE_CACHE: '1' }, target: false, wall: [], cpu: [] })
    const shell = { PATH: SHELL_PATH }
    for (const cache of ['warm', 'cold'] as const) {
      figures.push({ name: 'kith status from a shell (the prefix\'s bin/kith)', from: 'installed', command: installed.bin, args: ['--home', home, 'status'], cache, env: shell, target: false, wall: [], cpu: [] })
    }
    const other = systemNode()
    if (other != null) {
      figures.push(
        { name: `Node ${other.version} bare (node -e 0)`, from: '', command: other.path, args: ['-e', '0'], cache: null, env: shell, target: false, wall: [], cpu: [] },
        { name: `kith status from a shell, its node ${other.version}`, from: 'checkout', command: KITH, args: ['--home', home, 'status'], cache: 'warm', env: shell, target: false, wall: [], cpu: [] }
      )
    } else {
      log('hand-over: no other Node on PATH outside node_modules; not measured')
    }
    const npx = onPath('npx')
    if (npx != null) figures.push({ name: 'npx kith status', from: 'checkout', command: npx, args: ['kith', '--home', home, 'status'], cache: 'warm', env: shell, target: false, wall: [], cpu: [] })

    const run = async (f: Figure, round: number): Promise<{ ms: number, cpuMs: number }> => {
      const cold = f.cache === 'cold' ? join(work, `cold-${round}`) : null
      if (cold != null) await mkdir(cold)
      try {
        return await timed(f.command, f.args, { ...env, ...f.env, ...(f.cache != null ? { TMPDIR: cold ?? warmDir } : {}) })
      } finally {
        if (cold != null) await rm(cold, { recursive: true, force: true })
      }
    }
    log(`warm-up round (primes the compile cache); then ${RUNS} rounds of ${figures.length} figures`)
    for (const f of figures) await run(f, -1)
    for (let round = 0; round < RUNS; round++) {
      // a different order each round, so no figure always follows the same one
      for (let i = 0; i < figures.length; i++) {
        const f = figures[(i + round) % figures.length]!
        const r = await run(f, round)
        f.wall.push(r.ms)
        f.cpu.push(r.cpuMs)
      }
      log(`round ${round + 1}/${RUNS}: ${figures.map(f => fmt(f.wall.at(-1)!)).join(' ')} ms`)
    }

    const floor = median(figures[0]!.wall)
    const cpuFloor = median(figures[0]!.cpu)
    const rows = figures.map(f => {
      const ratio = median(f.wall) / floor
      return [
        f.name,
        f.from,
        f.cache ?? '',
        fmt(median(f.wall)),
        fmt(ratio, 2),
        f.target ? `<= ${TARGET}` : '',
        f.target ? (ratio <= TARGET ? 'yes' : 'NO') : '',
        fmt(median(f.cpu)),
        fmt(median(f.cpu) / cpuFloor, 2),
        f.wall.map(v => fmt(v)).join(' ')
      ]
    })
    const ranges = (['checkout', 'installed'] as const).map(from => `${from} ${(['warm', 'cold'] as const).map(cache => {
      const ratios = figures.filter(f => f.target && f.from === from && f.cache === cache).map(f => median(f.wall) / floor)
      return `${cache} ${fmt(Math.min(...ratios), 2)} to ${fmt(Math.max(...ratios), 2)}x`
    }).join(', ')}`).join('; ')
    const text = [
      `\nkith CLI benchmark: median of ${RUNS} runs, ${cpus().length} cores, Node ${process.versions.node}; ratio = wall time / the bare request's`,
      loadLine(load),
      ...startLines(starts),
      `the target's commands, ratio range: ${ranges}`,
      table(['figure', 'kith', 'cache', 'ms', 'ratio', 'target', 'met', 'CPU ms', 'CPU ratio', 'runs (ms)'], rows)
    ].join('\n')
    console.log(text)
    return text
  } finally {
    await node?.stop().catch(() => {})
    await rm(work, { recursive: true, force: true })
    await built?.remove()
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  try {
    await cliBench()
  } catch (err) {
    console.error(`bench failed: ${(err as Error).stack ?? String(err)}`)
    process.exitCode = 1
  }
}
