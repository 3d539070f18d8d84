import { spawn } from 'node:child_process'
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { needsNginx, startNginx } from '../test/helpers/nginx.ts'
import { NODE, TestNode, threeFriends, waitFor } from '../test/helpers/testnet.ts'
import { ApiClient } from '../src/services/api/client.ts'
import { cpuSeconds, fmt, JsonChild, MiB, MB, mbps, median, table, writeRandomFile } from './lib.ts'
import { streamCeiling } from './expose.ts'

/**
 * The proxy section of `npm run bench` (`--section proxy`): one file served
 * by a real nginx on 127.0.0.1, fetched by curl straight from nginx (the
 * ceiling) and by curl through a real daemon's local proxy, in the same run,
 * on the same machine, to the same tmpfs:
 *
 *   throughput  BENCH_PROXY_MIB (256) MiB, origin only: MB/s, median of
 *               BENCH_RUNS, and the proxy's ratio to direct curl. Target
 *               (issue 15): >= 0.9. Twice: a daemon whose cache is off
 *               (cacheBytes 0: the relay alone), and one with the default
 *               cache, asked for another URL each round (?round=N, which
 *               nginx ignores) so each fetch goes to nginx and is kept,
 *               hashed twice (the whole file, the swarm's 1 MiB chunks) and
 *               written to the cache as a user's first fetch is.
 *               A second ceiling shows what any Node relay gets here: undici
 *               to node:http with stream.pipeline in a process of its own,
 *               nothing else (bench/http-relay.ts; curl from nginx uses
 *               sendfile, a relay copies every byte in and out).
 *               The CPU time (user + system, /proc) the relay and each
 *               daemon spent per MB moved, median.
 *   first byte  service=streaming, `curl -r 0-`: curl's time_starttransfer
 *               through the proxy against straight to nginx (ms, median).
 *   offload     the friend swarm: three daemons (alice, bob, carol, friends
 *               of each other); bob and carol fetch the file through their
 *               proxies, then alice fetches it with qos=1: the percent of
 *               its bytes that came from friends, from nginx's access log
 *               ($body_bytes_sent). Target (issue 15): >= 95%. Its rate is
 *               shown against direct curl and against the proxy from the
 *               origin alone (the same relay to curl, fed by one HTTP
 *               source instead of friends' libp2p streams) and against one
 *               plain libp2p stream between two processes, file to file,
 *               measured right after it (bench/stream-peer.ts), one run.
 *
 * Not measured: the qos floor with friends capped below it (tested in
 * test/integration/proxy-swarm.spec.ts, not benchmarked).
 */
const TARGET_RATIO = 0.9
const TARGET_OFFLOAD = 0.95
const RELAY = join(dirname(fileURLToPath(import.meta.url)), 'http-relay.ts')

type Log = (message: string) => void

interface Curl { ms: number, ttfbMs: number, bytes: number, cpuMsPerMB?: number }

async function curl (args: string[]): Promise<Curl> {
  const started = performance.now()
  const child = spawn('curl', ['-sS', '--fail', '-w', '%{time_starttransfer} %{size_download}', ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout.on('data', (d: Buffer) => { out += d.toString() })
  child.stderr.on('data', (d: Buffer) => { err += d.toString() })
  const code = await new Promise<number | null>(resolve => child.once('close', resolve))
  const ms = performance.now() - started
  if (code !== 0) throw new Error(`curl ${args.join(' ')} exited with ${code}: ${err}`)
  const [ttfb, bytes] = out.trim().split(' ').map(Number)
  return { ms, ttfbMs: ttfb! * 1000, bytes: bytes! }
}

export async function proxyBench (log: Log, runs: number): Promise<void> {
  const missing = needsNginx()
  if (missing != null) throw new Error(missing)
  const size = Math.round(Number(process.env.BENCH_PROXY_MIB ?? 256) * MiB)
  const work = await mkdtemp(join(process.env.BENCH_DL_DIR ?? (await stat('/dev/shm').then(() => '/dev/shm', () => tmpdir())), 'kith-bench-proxy-'))
  const root = join(work, 'www')
  await mkdir(root)
  const node = new TestNode('proxy', join(work, 'home'))
  await mkdir(node.home, { mode: 0o700 })
  await writeFile(join(node.home, 'config.json'), JSON.stringify({ proxy: { allowPrivateOrigins: true, cacheBytes: 0 } }))
  const keeping = new TestNode('keeping', join(work, 'keeping'))
  await mkdir(keeping.home, { mode: 0o700 })
  await writeFile(join(keeping.home, 'config.json'), JSON.stringify({ proxy: { allowPrivateOrigins: true } }))
  const nginx = await startNginx({ root })
  const relay = new JsonChild(NODE, [RELAY, nginx.url])
  try {
    const relayUrl = (await relay.next<{ url: string }>(30_000)).url
    await node.start()
    await keeping.start()
    log(`proxy: writing ${size / MiB} MiB of random data`)
    await writeRandomFile(join(root, 'big.bin'), size)
    await writeRandomFile(join(root, 'film.mp4'), 8 * MiB)
    const proxy = (await node.json('status')).proxy.url as string
    const keepingProxy = (await keeping.json('status')).proxy.url as string
    const via = (url: string, extra = '', at = proxy): string => `${at}/proxy?url=${encodeURIComponent(url)}${extra}`
    const out = join(work, 'out')
    const samples: Record<string, Curl[]> = { direct: [], relay: [], proxied: [], kept: [], ttfbDirect: [], ttfbProxied: [] }
    // each daemon loads its origin side (undici) with its first request: not in the figures
    for (const at of [proxy, keepingProxy]) await curl(['-o', '/dev/null', via(`${nginx.url}/film.mp4`, '&service=min_rate_data', at)])
    for (let round = 1; round <= runs; round++) {
      for (const [name, url, pid] of [
        ['direct', `${nginx.url}/big.bin`, undefined],
        ['relay', `${relayUrl}/big.bin`, relay.pid],
        ['proxied', via(`${nginx.url}/big.bin`, '&service=min_rate_data'), node.pid],
        ['kept', via(`${nginx.url}/big.bin?round=${round}`, '&service=min_rate_data', keepingProxy), keeping.pid]
      ] as const) {
        await rm(out, { force: true })
        const cpu = await cpuSeconds(pid)
        const s = await curl(['-o', out, url])
        if (s.bytes !== size) throw new Error(`${name}: ${s.bytes} bytes, not ${size}`)
        s.cpuMsPerMB = (await cpuSeconds(pid) - cpu) * 1000 / (size / MB)
        samples[name]!.push(s)
        log(`proxy: round ${round}, ${name}: ${fmt(mbps(size, s.ms))} MB/s${pid != null ? `, ${fmt(s.cpuMsPerMB, 2)} CPU ms/MB` : ''}`)
      }
      samples.ttfbDirect!.push(await curl(['-r', '0-', '-o', '/dev/null', `${nginx.url}/film.mp4`]))
      samples.ttfbProxied!.push(await curl(['-r', '0-', '-o', '/dev/null', via(`${nginx.url}/film.mp4`, '&service=streaming')]))
    }
    await node.kill9()
    await keeping.kill9()
    const swarm = await offload(log, nginx, size, out)
    // the friends' bytes come over libp2p streams: one plain stream between two processes is their ceiling
    const stream = await streamCeiling(join(root, 'big.bin'), work, size)
    log(`proxy: one plain libp2p stream: ${fmt(stream)} MB/s`)
    const rate = (name: string): number => median(samples[name]!.map(s => mbps(size, s.ms)))
    const ttfb = (name: string): number => median(samples[name]!.map(s => s.ttfbMs))
    const cpu = (name: string): string => `${fmt(median(samples[name]!.map(s => s.cpuMsPerMB!)), 2)} ms/MB`
    const direct = rate('direct')
    const nodeRelay = rate('relay')
    const proxied = rate('proxied')
    const kept = rate('kept')
    const ratio = proxied / direct
    console.log(`\nkith local proxy benchmark (${size / MiB} MiB from nginx on 127.0.0.1, median of ${runs}; MB/s = 10^6 B/s):\n${table(
      ['figure', 'value', 'ratio', 'target'],
      [
        ['curl straight from nginx (ceiling)', `${fmt(direct)} MB/s`, '1.00', ''],
        ['curl through a bare Node relay (ceiling 2)', `${fmt(nodeRelay)} MB/s`, fmt(nodeRelay / direct, 2), ''],
        ['  the relay\'s CPU', cpu('relay'), '', ''],
        ['curl through kith proxy, origin only, cache off', `${fmt(proxied)} MB/s`, fmt(ratio, 2), `>= ${TARGET_RATIO} ${ratio >= TARGET_RATIO ? 'met' : 'NOT met'}`],
        ['  the same, against the bare Node relay', '', fmt(proxied / nodeRelay, 2), ''],
        ['  the daemon\'s CPU', cpu('proxied'), '', ''],
        ['curl through kith proxy, origin only, kept in the cache', `${fmt(kept)} MB/s`, fmt(kept / direct, 2), `>= ${TARGET_RATIO} ${kept / direct >= TARGET_RATIO ? 'met' : 'NOT met'}`],
        ['  the same, against the bare Node relay', '', fmt(kept / nodeRelay, 2), ''],
        ['  the daemon\'s CPU', cpu('kept'), '', ''],
        ['first byte, curl -r 0- straight (8 MiB .mp4)', `${fmt(ttfb('ttfbDirect'), 1)} ms`, '', ''],
        ['first byte, curl -r 0- through proxy, service=streaming', `${fmt(ttfb('ttfbProxied'), 1)} ms`, fmt(ttfb('ttfbProxied') / ttfb('ttfbDirect'), 1), ''],
        ['offload at qos=1, 2 friends holding it: bytes from friends', `${fmt(swarm.fromFriends * 100, 1)} %`, fmt(swarm.fromFriends, 3), `>= ${TARGET_OFFLOAD * 100} % ${swarm.fromFriends >= TARGET_OFFLOAD ? 'met' : 'NOT met'}`],
        ['  its rate (curl through alice\'s proxy, one run)', `${fmt(swarm.rate)} MB/s`, fmt(swarm.rate / direct, 2), ''],
        ['  the same, against the proxy origin only (same relay, one source)', '', fmt(swarm.rate / proxied, 2), ''],
        ['one plain libp2p stream, two processes, file to file (ceiling 3)', `${fmt(stream)} MB/s`, fmt(stream / direct, 2), ''],
        ['  the offload\'s rate against it', '', fmt(swarm.rate / stream, 2), '']
      ]
    )}`)
  } finally {
    await node.kill9()
    await keeping.kill9()
    await relay.kill()
    await nginx.stop()
    await rm(work, { recursive: true, force: true })
  }
}

/**
 * Offload at qos=1: bob and carol fetch the file through their proxies
 * (bob from nginx, carol then from bob and nginx), then alice fetches it;
 * nginx's access log says what the origin sent during alice's fetch.
 */
async function offload (log: Log, nginx: Awaited<ReturnType<typeof startNginx>>, size: number, out: string): Promise<{ fromFriends: number, rate: number }> {
  const config = JSON.stringify({ proxy: { allowPrivateOrigins: true, cacheBytes: 2 * size } })
  const { net, alice, bob, carol } = await threeFriends({ before: async node => { await writeFile(join(node.home, 'config.json'), config) } })
  try {
    const proxyOf = async (node: TestNode): Promise<{ url: string, swarm: { held: number } }> => (await (await ApiClient.forHome(node.home)).get<{ proxy: { url: string, swarm: { held: number } } }>('/v1/status')).proxy
    const via = async (node: TestNode): Promise<string> => `${(await proxyOf(node)).url}/proxy?url=${encodeURIComponent(`${nginx.url}/big.bin`)}&qos=1`
    await waitFor(async () => {
      const friends = (await alice.json('friends')).friends as Array<{ link: { online: boolean }, grantsFromThem: string[] }>
      return friends.length === 2 && friends.every(f => f.link.online && f.grantsFromThem.includes('files'))
    }, 'alice sees bob and carol online', 60_000)
    for (const holder of [bob, carol]) {
      await rm(out, { force: true })
      await curl(['-o', out, await via(holder)])
      if ((await proxyOf(holder)).swarm.held !== 1) throw new Error(`${holder.name} does not offer the file it fetched`)
      log(`proxy: ${holder.name} holds the file`)
    }
    const mark = (await nginx.accessLog()).length
    await rm(out, { force: true })
    const got = await curl(['-o', out, await via(alice)])
    if (got.bytes !== size) throw new Error(`offload: ${got.bytes} bytes, not ${size}`)
    const origin = (await nginx.accessLog()).slice(mark).reduce((sum, line) => sum + Number(line.split(' ').at(-3)), 0)
    log(`proxy: offload at qos=1: ${origin} bytes from nginx, ${fmt(mbps(size, got.ms))} MB/s`)
    return { fromFriends: 1 - origin / size, rate: mbps(size, got.ms) }
  } finally {
    await net.stop()
  }
}
