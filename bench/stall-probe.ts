import { appendFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { isMainThread } from 'node:worker_threads'

/**
 * How long a daemon's event loop stops answering: loaded into a daemon with
 * `NODE_OPTIONS=--import=<this file>` and `KITH_STALL_DIR=<folder>`, a timer
 * due every TICK_MS notes each time it comes STALL_MS or more late, in
 * <folder>/<pid>.log, as a line "<start, ms since the epoch> <wall ms> <main thread's CPU ms>". While
 * the loop is stopped nothing runs on it: the API, the dashboard's events,
 * timers, libp2p's keep-alives. The CPU figure tells a block of the daemon's
 * own work (CPU close to the wall) from a wait for a core on a loaded machine
 * (CPU far below it).
 */
const TICK_MS = 10
const STALL_MS = 50

export interface Stall {
  /** ms since the epoch */
  at: number
  wallMs: number
  cpuMs: number
}

const dir = process.env.KITH_STALL_DIR
if (dir !== undefined && dir !== '' && isMainThread) {
  const log = stallLog(dir, process.pid)
  let last = performance.now()
  let cpu = process.threadCpuUsage()
  setInterval(() => {
    const now = performance.now()
    const late = now - last - TICK_MS
    if (late >= STALL_MS) {
      const used = process.threadCpuUsage(cpu)
      appendFileSync(log, `${Math.round(performance.timeOrigin + last)} ${Math.round(now - last)} ${Math.round((used.user + used.system) / 1000)}\n`)
    }
    last = now
    cpu = process.threadCpuUsage()
  }, TICK_MS).unref()
}

/** Where the probe in process `pid` logs. */
export function stallLog (dir: string, pid: number): string {
  return join(dir, `${pid}.log`)
}

/** The stalls a probe logged to `file` that began within [from, to] (ms since the epoch), longest first. */
export async function stallsBetween (file: string, from: number, to: number): Promise<Stall[]> {
  const text = await readFile(file, 'utf8').catch(() => '')
  return text.split('\n').filter(line => line !== '').map(line => {
    const [at, wallMs, cpuMs] = line.split(' ').map(Number) as [number, number, number]
    return { at, wallMs, cpuMs }
  }).filter(s => s.at >= from && s.at <= to).sort((a, b) => b.wallMs - a.wallMs)
}
