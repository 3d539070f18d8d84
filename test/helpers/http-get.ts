import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { DownloadSettings } from '../../src/services/downloads/addon.ts'
import { httpAddon } from '../../src/services/downloads/http/index.ts'
import { BandwidthScheduler } from '../../src/transfer/scheduler/index.ts'
import { tuneDaemonHeap } from '../../src/services/daemon-heap.ts'
import { cpuMs, ownPeakRss, threadCpuSeconds } from '../../bench/lib.ts'

/**
 * kith's HTTP engine in a process of its own (for bench/downloads.ts, and for
 * test/services/downloads/http.spec.ts, which kills it with -9): the engine alone, as the queue drives
 * it (a bandwidth scheduler flow, class public, no cap), downloading URL to
 * OUT over CONNECTIONS connections, in the daemon's heap configuration (the
 * parent starts it with DAEMON_STARTUP_FLAGS and DAEMON_ENV), with no
 * checksum to verify (so no SHA-256, as `kith get` without --checksum).
 * Prints one JSON line: bytes, ms, its peak RSS and CPU time (in all, and
 * its main thread's). With STATE_DIR, the control file stays there (else a temp
 * folder, removed).
 *
 *   node test/helpers/http-get.ts URL OUT CONNECTIONS [STATE_DIR]
 */
const [url, out, connections, keptState] = process.argv.slice(2)
if (url == null || out == null || connections == null) throw new Error('usage: node test/helpers/http-get.ts URL OUT CONNECTIONS [STATE_DIR]')

const settings: DownloadSettings = {
  proxy: { http: null, https: null, all: null, noProxy: null },
  ipv6: true,
  dns: [],
  connectTimeoutMs: 30_000,
  readTimeoutMs: 60_000,
  retries: 5,
  maxRetryWaitMs: 60_000
}
tuneDaemonHeap()
const stateDir = keptState ?? await mkdtemp(join(tmpdir(), 'kith-bench-http-'))
const bandwidth = new BandwidthScheduler()
const flow = bandwidth.flow({ direction: 'down', class: 'public' })
const cpu = process.cpuUsage()
const mainCpu = (await threadCpuSeconds(process.pid)) * 1000
const started = performance.now()
const result = await httpAddon.download({ id: 'bench00000000', url: new URL(url), connections: Number(connections), options: {}, hash: false }, {
  partial: out,
  stateDir,
  signal: new AbortController().signal,
  take: async (bytes, signal) => { await flow.take(bytes, signal) },
  progress: () => {},
  settings
})
const ms = performance.now() - started
flow.close()
bandwidth.close()
if (keptState == null) await rm(stateDir, { recursive: true, force: true })
console.log(JSON.stringify({ bytes: result.size, ms, peakRss: ownPeakRss(), cpuMs: cpuMs(cpu), mainCpuMs: (await threadCpuSeconds(process.pid)) * 1000 - mainCpu }))
