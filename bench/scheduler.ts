import { writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { BandwidthScheduler, type Flow, type Priority, type TrafficClass } from '../src/transfer/scheduler/index.ts'
import { ApiClient } from '../src/services/api/client.ts'
import { createTestnet, waitFor, type TestNode } from '../test/helpers/testnet.ts'
import { fmt, median, table, MiB, MB } from './lib.ts'

/**
 * The scheduler section of `npm run bench` (`--section scheduler`), also
 * runnable alone: `node bench/scheduler.ts`.
 *
 *   shares   in process, real clock: under a 10 MB/s cap, backlogged flows of
 *            each class (friend urgent / normal / background, foaf, public)
 *            for BENCH_SCHED_SECONDS; achieved shares against the weights
 *            (classes 8:2:1, priorities 64:8:1 within friends)
 *   caps     real daemons: a friend fetches BENCH_SCHED_MIB under (1) its own
 *            `kith limits set --down` cap, (2) the source's per-peer
 *            `--peer --up` cap; achieved rate while chunks arrive against the
 *            cap (target: within 5 %), and the ETA the transfer reported every
 *            250 ms against when the bytes actually finished
 *
 * Env: BENCH_SCHED_CAP_MB (10), BENCH_SCHED_MIB (48), BENCH_SCHED_SECONDS (6).
 */
const CAP_MB = Number(process.env.BENCH_SCHED_CAP_MB ?? 10)
const SIZE = Math.round(Number(process.env.BENCH_SCHED_MIB ?? 48) * MiB)
const SECONDS = Number(process.env.BENCH_SCHED_SECONDS ?? 6)
const CAP_TARGET = 0.05
/** takes each flow keeps waiting, of TAKE bytes: like the fetcher's 2 requests per source, 1 MiB chunks */
const TAKERS = 2
const TAKE = MiB

type Log = (message: string) => void

async function sleep (ms: number): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, ms))
}

/** Shares of backlogged flows under a cap, measured after a 1 s warm-up. */
async function shares (log: Log): Promise<string[][]> {
  const cap = CAP_MB * MB
  const bandwidth = new BandwidthScheduler({ limits: { upload: cap } })
  const specs: Array<{ name: string, class: TrafficClass, priority: Priority }> = [
    { name: 'friend urgent', class: 'friend', priority: 'urgent' },
    { name: 'friend normal', class: 'friend', priority: 'normal' },
    { name: 'friend background', class: 'friend', priority: 'background' },
    { name: 'foaf normal', class: 'foaf', priority: 'normal' },
    { name: 'public normal', class: 'public', priority: 'normal' }
  ]
  const cw = bandwidth.limits().classWeights
  const pw = bandwidth.limits().priorityWeights
  const classTotal = cw.friend + cw.foaf + cw.public
  const friendTotal = pw.urgent + pw.normal + pw.background
  const expected = (s: typeof specs[number]): number => s.class === 'friend' ? cw.friend / classTotal * pw[s.priority] / friendTotal : cw[s.class] / classTotal
  const controller = new AbortController()
  const counts = specs.map(() => ({ base: 0 }))
  const flows: Flow[] = specs.map((s, i) => bandwidth.flow({ direction: 'up', peer: `peer-${i}`, class: s.class, priority: s.priority }))
  log(`scheduler shares: ${specs.length} backlogged flows under a ${CAP_MB} MB/s cap for ${SECONDS} s`)
  // each flow keeps TAKERS takes waiting, as a sender with a few requests in flight does
  // (a flow with nothing queued between one take resolving and the next loses turns: it is not backlogged)
  const loops = flows.flatMap(flow => Array.from({ length: TAKERS }, async () => {
    while (!controller.signal.aborted) {
      await flow.take(TAKE, controller.signal).catch(() => {})
    }
  }))
  await sleep(1000)
  // bytes granted (slice by slice), not takes finished: a 1 MiB take would quantise the small shares
  counts.forEach((c, i) => { c.base = flows[i]!.stats().bytes })
  const t0 = performance.now()
  await sleep(SECONDS * 1000)
  const ms = performance.now() - t0
  const moved = counts.map((c, i) => flows[i]!.stats().bytes - c.base)
  controller.abort()
  await Promise.all(loops)
  bandwidth.close()
  const total = moved.reduce((a, b) => a + b, 0)
  const rows = specs.map((s, i) => {
    const share = moved[i]! / total
    return [`share: ${s.name}`, `${fmt(share * 100, 2)} %`, `${fmt(expected(s) * 100, 2)} %`, `${fmt((share / expected(s) - 1) * 100, 1)} %`]
  })
  for (const cls of ['friend', 'foaf', 'public'] as const) {
    const got = specs.reduce((sum, s, i) => sum + (s.class === cls ? moved[i]! : 0), 0) / total
    const want = cw[cls] / classTotal
    rows.push([`share: class ${cls}`, `${fmt(got * 100, 2)} %`, `${fmt(want * 100, 2)} %`, `${fmt((got / want - 1) * 100, 1)} %`])
  }
  const rate = total / (ms / 1000)
  rows.push(['cap accuracy (in process)', `${fmt(rate / MB, 3)} MB/s`, `${fmt(CAP_MB, 3)} MB/s`, `${fmt((rate / cap - 1) * 100, 2)} %`])
  return rows
}

interface Sample { at: number, done: number, eta: number | null, state: string }

/** One capped fetch: achieved rate while chunks arrive, and the reported ETAs against the actual finish. */
async function cappedFetch (fetcher: TestNode, target: string, dest: string): Promise<{ rate: number, etaErrors: number[], etaAbs: number[], seconds: number }> {
  const api = await ApiClient.forHome(fetcher.home)
  const { transfer } = await fetcher.json('fetch', target, '-o', dest, '--detach')
  const samples: Sample[] = []
  // waitFor retries on a throw, so a failed fetch ends the wait with its record instead
  const last = await waitFor(async () => {
    const t = (await api.get<{ transfer: { doneBytes: number, eta: number | null, state: string, error: unknown } }>(`/v1/transfers/${transfer.id as string}`)).transfer
    samples.push({ at: performance.now(), done: t.doneBytes, eta: t.eta, state: t.state })
    return t.state === 'done' || t.state === 'failed' ? t : undefined
  }, 'the capped fetch', 60_000 + SIZE / (CAP_MB * MB) * 3000, 250)
  if (last.state === 'failed') throw new Error(`the capped fetch failed: ${JSON.stringify(last.error)}`)
  // the bytes are all in when doneBytes first reaches the size (assembly follows)
  const end = samples.find(s => s.done >= SIZE)!
  const window = samples.filter(s => s.state === 'running' && s.done >= SIZE * 0.1 && s.done <= SIZE * 0.9)
  const first = window[0]!
  const final = window.at(-1)!
  const rate = (final.done - first.done) / ((final.at - first.at) / 1000)
  const etaErrors: number[] = []
  const etaAbs: number[] = []
  for (const s of window) {
    if (s.eta == null) continue
    const actual = (end.at - s.at) / 1000
    etaAbs.push(Math.abs(s.eta - actual))
    etaErrors.push(Math.abs(s.eta - actual) / actual)
  }
  return { rate, etaErrors, etaAbs, seconds: (end.at - samples[0]!.at) / 1000 }
}

async function caps (log: Log): Promise<string[][]> {
  const cap = CAP_MB * MB
  const net = await createTestnet(['alice', 'bob'])
  const [alice, bob] = net.nodes as [TestNode, TestNode]
  const rows: string[][] = []
  try {
    const file = join(alice.home, 'for-bob.invite')
    await alice.json('invite', 'create', '--name', 'bob', '-o', file)
    await bob.json('invite', 'accept', file)
    // one file per run: the fetcher keeps the chunks it fetched
    for (const i of [0, 1]) {
      const src = join(alice.home, `sched-${i}.bin`)
      await writeFile(src, randomBytes(SIZE))
      await alice.json('share', src, '--with', 'bob')
    }
    const runs: Array<{ name: string, setup: () => Promise<unknown>, undo: () => Promise<unknown> }> = [
      { name: 'fetcher\'s --down cap', setup: async () => await bob.json('limits', 'set', '--down', `${CAP_MB}MB/s`), undo: async () => await bob.json('limits', 'clear', '--down') },
      { name: 'source\'s per-peer --up cap', setup: async () => await alice.json('limits', 'set', '--peer', 'bob', '--up', `${CAP_MB}MB/s`), undo: async () => await alice.json('limits', 'clear', '--peer', 'bob') }
    ]
    for (const [i, r] of runs.entries()) {
      await r.setup()
      log(`scheduler caps: ${SIZE / MiB} MiB under the ${r.name} of ${CAP_MB} MB/s`)
      const result = await cappedFetch(bob, `alice:sched-${i}.bin`, join(bob.home, `sched-${i}.bin`))
      await r.undo()
      const error = result.rate / cap - 1
      rows.push([`cap accuracy: ${r.name}`, `${fmt(result.rate / MB, 3)} MB/s`, `${fmt(CAP_MB, 3)} MB/s`, `${fmt(error * 100, 2)} %`, Math.abs(error) <= CAP_TARGET ? 'yes' : 'NO', `10-90 % of the bytes; ${fmt(result.seconds, 1)} s in all`])
      rows.push([`ETA error: ${r.name}`, `${fmt(median(result.etaErrors) * 100, 1)} % median`, '', `${fmt(Math.max(...result.etaErrors) * 100, 1)} % max`, '', `abs ${fmt(median(result.etaAbs), 2)} s median, ${fmt(Math.max(...result.etaAbs), 2)} s max over ${result.etaErrors.length} readings (every 250 ms, 10-90 %)`])
    }
  } finally {
    await net.stop()
  }
  return rows
}

/** What a take costs when no cap applies: each resolves at once, with no timer (the test checks that; this times it). */
async function uncappedTake (): Promise<string[]> {
  const bandwidth = new BandwidthScheduler({ limits: { peers: { other: { upload: 1000 } } } })
  const up = bandwidth.flow({ direction: 'up', peer: 'a' })
  const down = bandwidth.flow({ direction: 'down' })
  const n = 200_000
  const t0 = performance.now()
  for (let i = 0; i < n; i++) {
    await up.take(256 * 1024)
    await down.take(256 * 1024, undefined, 'b')
  }
  const ns = (performance.now() - t0) * 1e6 / (2 * n)
  up.close()
  down.close()
  return ['take with no cap on its flow, ns each', fmt(ns), '', '', '', `${2 * n} takes of 256 KiB, another peer capped`]
}

/** Runs both parts and prints their table; returns it too. */
export async function schedulerBench (log: Log = m => process.stderr.write(`[bench] ${m}\n`)): Promise<string> {
  const inProcess = await shares(log)
  const take = await uncappedTake()
  const daemons = await caps(log)
  const text = [
    `\nkith scheduler benchmark: cap ${CAP_MB} MB/s, shares over ${SECONDS} s in process, ${SIZE / MiB} MiB fetched between real daemons; MB = 10^6 bytes`,
    table(['figure', 'achieved', 'configured', 'error', 'met', 'note'], [
      ...inProcess.map(r => [...r, '', '']),
      take,
      ...daemons
    ])
  ].join('\n')
  console.log(text)
  return text
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  try {
    await schedulerBench()
  } catch (err) {
    console.error(`bench failed: ${(err as Error).stack ?? String(err)}`)
    process.exitCode = 1
  }
}
