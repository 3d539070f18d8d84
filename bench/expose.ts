import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { request, type Agent } from 'node:http'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createTestnet, befriend, NODE, type TestNode } from '../test/helpers/testnet.ts'
import { startNginx } from '../test/helpers/nginx.ts'
import { ApiClient } from '../src/services/api/client.ts'
import { DAEMON_ENV, DAEMON_STARTUP_FLAGS } from '../src/services/daemon-heap.ts'
import { JsonChild, run, peakRss, writeRandomFile, median, mbps, fmt, table, MiB, MB } from './lib.ts'

/**
 * The friend services section of `npm run bench` (`--section expose`), also
 * runnable alone: `node bench/expose.ts`.
 *
 *   throughput  a BENCH_EXPOSE_MIB (1024) MiB HTTP response from a real nginx
 *               on alice's side, through bob's `kith connect` port, fetched
 *               by curl to a file on disk; against ceiling (b), the same
 *               bytes over one plain libp2p stream in kith's configuration
 *               between two processes, file to file (bench/stream-peer.ts)
 *   latency     a small request (1 KiB) on a new TCP connection each time
 *               (each one is a new stream through kith), BENCH_EXPOSE_REQUESTS
 *               (200) in a row, median and 95th percentile; against the same
 *               request straight to nginx
 *
 * BENCH_RUNS (3) runs of each throughput figure; the median is reported.
 */
const HERE = dirname(fileURLToPath(import.meta.url))
const STREAM_PEER = join(HERE, 'stream-peer.ts')
const SIZE = Math.round(Number(process.env.BENCH_EXPOSE_MIB ?? 1024) * MiB)
const REQUESTS = Number(process.env.BENCH_EXPOSE_REQUESTS ?? 200)
const RUNS = Number(process.env.BENCH_RUNS ?? 3)

type Log = (message: string) => void

/** ms of one GET on a fresh connection (no agent: no keep-alive), body read to the end */
async function oneRequest (port: number, path: string): Promise<number> {
  const started = performance.now()
  await new Promise<void>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false as unknown as Agent }, res => {
      res.resume()
      res.once('end', () => resolve())
      res.once('error', reject)
    })
    req.once('error', reject)
    req.end()
  })
  return performance.now() - started
}

function percentile (values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!
}

async function latencies (port: number, path: string): Promise<number[]> {
  for (let i = 0; i < 10; i++) await oneRequest(port, path) // warm-up
  const out: number[] = []
  for (let i = 0; i < REQUESTS; i++) out.push(await oneRequest(port, path))
  return out
}

/** One plain libp2p stream between two processes, file to file (bench/stream-peer.ts): MB/s. Also the proxy section's ceiling. */
export async function streamCeiling (src: string, work: string, size = SIZE): Promise<number> {
  const out = join(work, 'ceiling.out')
  const recv = new JsonChild(NODE, [...DAEMON_STARTUP_FLAGS, STREAM_PEER, 'recv', out], DAEMON_ENV)
  let send: JsonChild | undefined
  try {
    const hello = await recv.next<{ addr: string }>(60_000)
    send = new JsonChild(NODE, [...DAEMON_STARTUP_FLAGS, STREAM_PEER, 'send', hello.addr, src], DAEMON_ENV)
    const [r] = await Promise.all([recv.next<{ bytes: number, ms: number }>(), send.next()])
    if (r.bytes !== size) throw new Error(`the stream ceiling got ${r.bytes} of ${size} bytes`)
    return mbps(r.bytes, r.ms)
  } finally {
    await Promise.all([recv.kill(), send?.kill()])
    await rm(out, { force: true })
  }
}

export async function exposeBench (log: Log): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'kith-bench-expose-'))
  const net = await createTestnet(['alice', 'bob'])
  const [alice, bob] = net.nodes as [TestNode, TestNode]
  let nginx: Awaited<ReturnType<typeof startNginx>> | undefined
  try {
    log(`expose: writing ${SIZE / MiB} MiB of random data`)
    await writeRandomFile(join(work, 'big.bin'), SIZE)
    await writeFile(join(work, 'small.txt'), 'x'.repeat(1024))
    nginx = await startNginx({ root: work })
    await befriend(alice, bob)
    const aliceApi = await ApiClient.forHome(alice.home)
    const bobApi = await ApiClient.forHome(bob.home)
    await aliceApi.call('PUT', '/v1/services/bench', { port: nginx.port, to: ['bob'] })
    const { connection } = await bobApi.call<{ connection: { port: number } }>('POST', '/v1/connections', { friend: 'alice', service: 'bench' })

    const ceiling: number[] = []
    const through: number[] = []
    for (let i = 0; i < RUNS; i++) {
      ceiling.push(await streamCeiling(join(work, 'big.bin'), work))
      const dest = join(work, 'through.bin')
      const r = await run('curl', ['-sS', '-o', dest, `http://127.0.0.1:${connection.port}/big.bin`])
      if (r.code !== 0 || (await stat(dest)).size !== SIZE) throw new Error(`curl through kith connect failed: ${r.stderr}`)
      through.push(mbps(SIZE, r.ms))
      await rm(dest, { force: true })
      log(`expose run ${i + 1}/${RUNS}: plain stream ${fmt(ceiling.at(-1)!)} MB/s, through kith connect ${fmt(through.at(-1)!)} MB/s`)
    }
    const peaks = { alice: await peakRss(alice.pid), bob: await peakRss(bob.pid) }

    const direct = await latencies(nginx.port, '/small.txt')
    const viaKith = await latencies(connection.port, '/small.txt')

    const c = median(ceiling)
    const t = median(through)
    console.log(`\nkith friend services benchmark (${SIZE / MiB} MiB response, median of ${RUNS}; ${REQUESTS} small requests, a new connection each):\n` + table(
      ['figure', 'value', 'against', 'ratio'],
      [
        ['ceiling (b): one plain libp2p stream, file to file', `${fmt(c)} MB/s`, '', ''],
        ['nginx -> kith connect -> curl, to a file', `${fmt(t)} MB/s`, 'ceiling (b)', fmt(t / c, 2)],
        ['peak RSS of the daemons (exposing / connecting)', `${fmt(peaks.alice / MB)} / ${fmt(peaks.bob / MB)} MB`, '', ''],
        ['small request straight to nginx, median', `${fmt(median(direct), 2)} ms`, '', ''],
        ['small request through kith connect, median', `${fmt(median(viaKith), 2)} ms`, 'straight', fmt(median(viaKith) / median(direct), 1)],
        ['small request straight to nginx, p95', `${fmt(percentile(direct, 0.95), 2)} ms`, '', ''],
        ['small request through kith connect, p95', `${fmt(percentile(viaKith, 0.95), 2)} ms`, 'straight', fmt(percentile(viaKith, 0.95) / percentile(direct, 0.95), 1)]
      ]))
  } finally {
    await nginx?.stop()
    await net.stop()
    await rm(work, { recursive: true, force: true })
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await exposeBench(message => { process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}\n`) })
}
