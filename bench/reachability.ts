import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { TestNode, waitFor, freePort, NODE, KITH } from '../test/helpers/testnet.ts'
import { netnsUnavailable, createNatTopology, type NatTopology } from '../test/helpers/netns.ts'

/**
 * `npm run bench -- --section reachability`:
 *
 * - loopback: a friend moves (restarts on a new port; the other knows only
 *   its old address) BENCH_MOVES times (default 10): ms from spawning the
 *   mover's daemon (which dials friends before it says it is up) to the friend who stayed put seeing it online (its
 *   'friend:online' event), p50 and p95;
 * - namespaces (root only, test/helpers/netns.ts): A behind NAT restarts
 *   BENCH_MOVES times; ms from spawning A to R (public) seeing A online over a
 *   direct connection, and to B (behind another NAT) seeing A online over
 *   R's relay (A dials B through R on B's reservation), and to B having a
 *   hole-punched direct connection to A (its 'friend:link' event;
 *   /kith/punch/1.0.0, docs/protocols.md).
 */
export interface ReachRow { figure: string, samples: number[], note?: string }

function percentile (values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.ceil(p / 100 * sorted.length) - 1)]!
}

export function summarise (row: ReachRow): string {
  return `${row.figure}: p50 ${percentile(row.samples, 50)} ms, p95 ${percentile(row.samples, 95)} ms over ${row.samples.length} (${row.samples.join(' ')})${row.note != null ? `; ${row.note}` : ''}`
}

/** `kith events` of a node, as a stream of parsed events with their arrival time. */
class Events {
  private readonly proc: ChildProcess
  private waiters: Array<{ match: (e: any) => boolean, resolve: (at: number) => void }> = []
  constructor (node: TestNode) {
    const [cmd, ...pre] = node.netns != null ? ['ip', 'netns', 'exec', node.netns, NODE] : [NODE]
    this.proc = spawn(cmd!, [...pre, KITH, '--home', node.home, 'events'], { stdio: ['ignore', 'pipe', 'ignore'] })
    createInterface({ input: this.proc.stdout! }).on('line', line => {
      const at = Date.now()
      let evt: unknown
      try { evt = JSON.parse(line) } catch { return }
      this.waiters = this.waiters.filter(w => { if (w.match(evt)) { w.resolve(at); return false } return true })
    })
  }

  /** Resolves with the arrival time of the next matching event. */
  next (match: (e: any) => boolean, timeoutMs = 60_000): Promise<number> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('timed out waiting for an event')), timeoutMs)
      this.waiters.push({ match, resolve: at => { clearTimeout(timer); resolve(at) } })
    })
  }

  close (): void { this.proc.kill('SIGKILL') }
}

const online = (label: string) => (e: any): boolean => e?.type === 'friend:online' && e.label === label

async function befriend (issuer: TestNode, accepter: TestNode): Promise<void> {
  const file = join(issuer.home, `for-${accepter.name}.invite`)
  await issuer.json('invite', 'create', '--name', accepter.name, '-o', file)
  await accepter.json('invite', 'accept', file)
}

async function statusOf (n: TestNode): Promise<any> { return await n.json('status') }

export async function reachabilityBench (log: (m: string) => void, moves: number): Promise<ReachRow[]> {
  const rows: ReachRow[] = []
  const base = await mkdtemp(join(tmpdir(), 'kith-bench-reach-'))
  const nodes: TestNode[] = []
  const streams: Events[] = []
  let topo: NatTopology | undefined
  try {
    // loopback moves
    const x = new TestNode('stays', join(base, 'x'))
    const y = new TestNode('moves', join(base, 'y'))
    nodes.push(x, y)
    await x.start()
    await y.start()
    await befriend(x, y)
    await waitFor(async () => (await statusOf(x)).friends.online === 1, 'friends online', 20_000, 200)
    const xs = new Events(x)
    streams.push(xs)
    await new Promise(resolve => setTimeout(resolve, 500)) // the events stream is up
    const loop: number[] = []
    const loopStart: number[] = []
    for (let i = 0; i < moves; i++) {
      await y.stop()
      const port = await freePort()
      const seen = xs.next(online('moves'))
      // from the spawn: a daemon dials its friends while it starts, before it prints that it is up
      const spawned = Date.now()
      await y.start(['--listen', `/ip4/127.0.0.1/tcp/${port}`])
      loopStart.push(Date.now() - spawned)
      loop.push((await seen) - spawned)
      log(`loopback move ${i + 1}/${moves}: ${loop.at(-1)} ms`)
    }
    rows.push({ figure: 'loopback: a friend moves to a new port, until the other sees it online', samples: loop, note: `from spawning the moved daemon (its start-up alone: p50 ${percentile(loopStart, 50)} ms)` })

    // namespaces
    const why = await netnsUnavailable()
    if (why != null) {
      log(`namespace figures skipped: ${why}`)
      rows.push({ figure: `namespaces: skipped (${why})`, samples: [] })
      return rows
    }
    topo = await createNatTopology()
    const listen = ['--listen', '/ip4/0.0.0.0/tcp/4001']
    const r = new TestNode('relay', join(base, 'r'), listen, { netns: topo.ns.r })
    const a = new TestNode('alice', join(base, 'a'), listen, { netns: topo.ns.a })
    const b = new TestNode('bob', join(base, 'b'), listen, { netns: topo.ns.b })
    nodes.push(r, a, b)
    await Promise.all([r.start(), a.start(), b.start()])
    await befriend(r, a)
    await befriend(r, b)
    await waitFor(async () => (await statusOf(a)).relays.using.length > 0 && (await statusOf(b)).relays.using.length > 0, 'A and B reserved on R', 60_000, 250)
    await befriend(b, a)
    await waitFor(async () => (await statusOf(b)).friends.online === 2, 'B sees A and R', 30_000, 250)
    const rs = new Events(r)
    const bs = new Events(b)
    streams.push(rs, bs)
    await new Promise(resolve => setTimeout(resolve, 500))
    const direct: number[] = []
    const relayed: number[] = []
    const punched: number[] = []
    const starts: number[] = []
    for (let i = 0; i < moves; i++) {
      await a.stop()
      await waitFor(async () => (await statusOf(b)).friends.online === 1, 'B sees A gone', 30_000, 200)
      const atR = rs.next(online('alice'))
      const atB = bs.next(online('alice'))
      const punchedAtB = bs.next(e => e?.type === 'friend:link' && e.label === 'alice' && e.kind === 'hole-punched')
      const spawned = Date.now()
      await a.start()
      starts.push(Date.now() - spawned)
      const [d, rl, p] = await Promise.all([atR, atB, punchedAtB])
      direct.push(d - spawned)
      relayed.push(rl - spawned)
      punched.push(p - spawned)
      log(`namespace restart ${i + 1}/${moves}: direct to R ${direct.at(-1)} ms, relayed to B ${relayed.at(-1)} ms, hole-punched to B ${punched.at(-1)} ms`)
    }
    rows.push({ figure: 'namespaces: NATed A restarts, until R (public) sees it online, direct', samples: direct, note: `from spawning A (its start-up alone: p50 ${percentile(starts, 50)} ms)` })
    rows.push({ figure: 'namespaces: NATed A restarts, until B (other NAT) sees it online, relayed via R', samples: relayed, note: 'A dials B through R on B\'s reservation' })
    rows.push({ figure: 'namespaces: NATed A restarts, until B has a hole-punched direct connection to A', samples: punched, note: 'B starts the punch ~300 ms after the relayed connection; A knows its public IP from R\'s identify' })
    return rows
  } finally {
    for (const s of streams) s.close()
    for (const n of nodes) await n.kill9().catch(() => {})
    await topo?.destroy()
    await rm(base, { recursive: true, force: true })
  }
}
