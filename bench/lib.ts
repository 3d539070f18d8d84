import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { dirname, join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { createInterface } from 'node:readline'
import { mkdir, open, readFile, writeFile } from 'node:fs/promises'
import { randomFillSync } from 'node:crypto'

/**
 * Small helpers shared by the benchmark: child processes that talk in JSON
 * lines, peak-memory readings from /proc, medians and table formatting.
 */
export const MiB = 1024 * 1024
/** throughput is reported in MB/s, MB = 10^6 bytes (as in DESIGN.md) */
export const MB = 1e6

export function mbps (bytes: number, ms: number): number {
  return ms > 0 ? bytes / MB / (ms / 1000) : NaN
}

export function median (values: number[]): number {
  const sorted = values.filter(v => Number.isFinite(v)).sort((a, b) => a - b)
  if (sorted.length === 0) return NaN
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

/** Every child process the benchmark started, so an exit on error can kill them all. */
const children = new Set<ChildProcess>()

export function killChildren (): void {
  for (const child of children) {
    if (child.exitCode == null && child.signalCode == null) child.kill('SIGKILL')
  }
  children.clear()
}

/**
 * A child process that prints JSON lines on stdout. `next()` resolves with the
 * next parsed line (or rejects if the process exits first).
 */
export class JsonChild {
  readonly proc: ChildProcess
  private readonly queue: unknown[] = []
  private readonly waiters: Array<{ resolve: (v: unknown) => void, reject: (e: Error) => void }> = []
  private exited: Error | null = null
  stderr = ''

  constructor (command: string, args: string[], env: NodeJS.ProcessEnv = {}) {
    this.proc = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } })
    children.add(this.proc)
    this.proc.stderr!.on('data', (d: Buffer) => { this.stderr += d.toString() })
    createInterface({ input: this.proc.stdout! }).on('line', line => {
      let value: unknown
      try { value = JSON.parse(line) } catch { return }
      const waiter = this.waiters.shift()
      if (waiter != null) waiter.resolve(value)
      else this.queue.push(value)
    })
    this.proc.once('exit', (code, signal) => {
      children.delete(this.proc)
      // let the last stdout lines through before failing the waiters
      setTimeout(() => {
        this.exited = new Error(`${args.slice(0, 2).join(' ')} exited with ${code ?? signal}: ${this.stderr.slice(-2000)}`)
        for (const w of this.waiters.splice(0)) w.reject(this.exited)
      }, 50)
    })
  }

  get pid (): number {
    return this.proc.pid!
  }

  async next<T> (timeoutMs = 600_000): Promise<T> {
    if (this.queue.length > 0) return this.queue.shift() as T
    if (this.exited != null) throw this.exited
    return await new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no output from child within ${timeoutMs} ms: ${this.stderr.slice(-2000)}`)), timeoutMs)
      this.waiters.push({
        resolve: v => { clearTimeout(timer); resolve(v as T) },
        reject: e => { clearTimeout(timer); reject(e) }
      })
    })
  }

  async kill (signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const proc = this.proc
    if (proc.exitCode != null || proc.signalCode != null) return
    const exited = new Promise<void>(resolve => proc.once('exit', () => resolve()))
    proc.kill(signal)
    const timer = setTimeout(() => proc.kill('SIGKILL'), 5000)
    await exited
    clearTimeout(timer)
  }
}

/** Runs a command to completion, returning stdout, stderr, exit code and wall time. */
export async function run (command: string, args: string[], timeoutMs = 600_000, onLine?: (line: string, at: number) => void): Promise<{ code: number, stdout: string, stderr: string, ms: number }> {
  const started = performance.now()
  const proc = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  children.add(proc)
  const timer = setTimeout(() => {
    stderr += `\n(killed by the benchmark after ${timeoutMs} ms)`
    proc.kill('SIGKILL')
  }, timeoutMs)
  let stdout = ''
  let stderr = ''
  proc.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  createInterface({ input: proc.stdout }).on('line', line => {
    stdout += line + '\n'
    onLine?.(line, performance.now())
  })
  const code = await new Promise<number>(resolve => proc.once('close', (c, signal) => resolve(c ?? (signal != null ? 1 : 0))))
  clearTimeout(timer)
  children.delete(proc)
  return { code, stdout, stderr, ms: performance.now() - started }
}

/** Peak resident set size (VmHWM) of a process, in bytes; NaN if unreadable. */
export async function peakRss (pid: number | undefined): Promise<number> {
  if (pid == null) return NaN
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8')
    const match = /^VmHWM:\s+(\d+)\s+kB/m.exec(status)
    return match != null ? Number(match[1]) * 1024 : NaN
  } catch {
    return NaN
  }
}

/** Current resident set size (VmRSS) of a process, in bytes; NaN if unreadable. */
export async function currentRss (pid: number | undefined): Promise<number> {
  if (pid == null) return NaN
  try {
    const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(await readFile(`/proc/${pid}/status`, 'utf8'))
    return match != null ? Number(match[1]) * 1024 : NaN
  } catch {
    return NaN
  }
}

/** clock ticks per second of /proc/PID/stat times (USER_HZ; 100 on every Linux in use) */
const USER_HZ = 100

/** CPU time (user + system) a process used so far, in seconds; NaN if unreadable. */
export async function cpuSeconds (pid: number | undefined): Promise<number> {
  return pid == null ? NaN : await statCpuSeconds(`/proc/${pid}/stat`)
}

/** CPU time (user + system) a process's main thread used so far, in seconds: what limits a single-threaded event loop; NaN if unreadable. */
export async function threadCpuSeconds (pid: number | undefined): Promise<number> {
  return pid == null ? NaN : await statCpuSeconds(`/proc/${pid}/task/${pid}/stat`)
}

/**
 * Times a process's main thread went to sleep so far (its voluntary context switches: each an event loop
 * with nothing to do until the next event); NaN if unreadable.
 */
export async function threadSleeps (pid: number | undefined): Promise<number> {
  try {
    return Number(/voluntary_ctxt_switches:\s+(\d+)/.exec(await readFile(`/proc/${pid}/task/${pid}/status`, 'utf8'))?.[1] ?? NaN)
  } catch {
    return NaN
  }
}

/**
 * A process's main thread's time on a core and waiting in the run queue for one so far, in ms
 * (/proc/PID/task/PID/schedstat; the kernel's schedstats): what is left of a span is the time it slept
 * (its event loop idle). NaN if unreadable.
 */
export async function threadSchedMs (pid: number | undefined): Promise<{ run: number, wait: number }> {
  try {
    const [run, wait] = (await readFile(`/proc/${pid}/task/${pid}/schedstat`, 'utf8')).trim().split(' ').map(Number)
    return { run: run! / 1e6, wait: wait! / 1e6 }
  } catch {
    return { run: NaN, wait: NaN }
  }
}

async function statCpuSeconds (path: string): Promise<number> {
  try {
    const stat = await readFile(path, 'utf8')
    // fields after the command name, which is in parentheses and may hold spaces
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) / USER_HZ
  } catch {
    return NaN
  }
}

/** Resets a process's VmHWM to its current RSS (Linux: `echo 5 > /proc/PID/clear_refs`). False if not possible. */
export async function resetPeakRss (pid: number | undefined): Promise<boolean> {
  if (pid == null) return false
  try {
    await writeFile(`/proc/${pid}/clear_refs`, '5')
    return true
  } catch {
    return false
  }
}

/** Own peak RSS in bytes (getrusage ru_maxrss, the same figure as VmHWM). */
export function ownPeakRss (): number {
  return process.resourceUsage().maxRSS * 1024
}

/** CPU milliseconds (user + system) this process used since `since`. */
export function cpuMs (since: NodeJS.CpuUsage): number {
  const used = process.cpuUsage(since)
  return (used.user + used.system) / 1000
}

/** Writes `bytes` of random data to `path`, 8 MiB at a time. */
export async function writeRandomFile (path: string, bytes: number): Promise<void> {
  const fh = await open(path, 'w')
  try {
    const buf = Buffer.allocUnsafe(8 * MiB)
    for (let done = 0; done < bytes;) {
      const n = Math.min(buf.length, bytes - done)
      randomFillSync(buf, 0, n)
      await fh.write(buf, 0, n)
      done += n
    }
  } finally {
    await fh.close()
  }
}

export function fmt (value: number, digits = 0): string {
  return Number.isFinite(value) ? value.toFixed(digits) : '-'
}

export function table (header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map(r => (r[i] ?? '').length)))
  const line = (cells: string[]): string => cells.map((c, i) => i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)).join('  ').trimEnd()
  return [line(header), widths.map(w => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n')
}

/** bench/perf-stages.ts, which reads a `perf record` file into CPU ms/MB per stage */
export const PERF_STAGES = join(dirname(fileURLToPath(import.meta.url)), 'perf-stages.ts')

/**
 * Linux `perf record -g` of `procs` (pid and a name for each) into `file`
 * while `work` runs, then bench/perf-stages.ts's table of where their CPU
 * went per MB of `mb`, handed to `report` (BENCH_PERF).
 */
export async function perfDuring<T> (file: string, procs: Array<[pid: number, name: string]>, mb: number, work: () => Promise<T>, report: (stages: string) => void): Promise<T> {
  await mkdir(dirname(file), { recursive: true })
  const perf = spawn('perf', ['record', '-q', '-F', '499', '-g', '-o', file, '-p', procs.map(([pid]) => pid).join(',')], { stdio: 'ignore' })
  // perf attaches to the running processes; nothing tells when it has
  await sleep(500)
  try {
    return await work()
  } finally {
    perf.kill('SIGINT')
    await once(perf, 'exit')
    const stages = await run(process.execPath, [PERF_STAGES, file, '--mb', String(mb), ...procs.flatMap(([pid, name]) => ['--name', `${pid}=${name}`])])
    report(stages.stdout + stages.stderr)
  }
}
