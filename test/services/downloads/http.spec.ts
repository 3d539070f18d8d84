import { spawn } from 'node:child_process'
import { randomBytes, createHash } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type AddressInfo, type Socket } from 'node:net'
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { KithError } from '../../../src/errors.ts'
import type { DownloadProgress, DownloadResult, DownloadSettings } from '../../../src/services/downloads/addon.ts'
import { httpAddon } from '../../../src/services/downloads/http/index.ts'
import { CACHE_BUDGET, MAX_BLOCK, MIN_BLOCK } from '../../../src/services/downloads/http/constants.ts'
import { makeDispatcher } from '../../../src/services/downloads/http/dispatcher.ts'
import { HashCursor } from '../../../src/services/downloads/http/hash-cursor.ts'
import { Planner } from '../../../src/services/downloads/http/segments.ts'
import { WriteCache } from '../../../src/services/downloads/http/write-cache.ts'
import { RangeSet } from '../../../src/services/downloads/http/ranges.ts'
import { backoffMs, parseRetryAfter } from '../../../src/services/downloads/http/retry.ts'
import { BandwidthScheduler } from '../../../src/transfer/scheduler/index.ts'
import { startConnectProxy } from '../../helpers/connect-proxy.ts'
import { startDnsServer } from '../../helpers/dns-server.ts'
import { startFaultServer, type Fault, type FaultServer } from '../../helpers/fault-server.ts'
import { needsNginx, startNginx, type Nginx } from '../../helpers/nginx.ts'
import { describeNeeding } from '../../helpers/needs.ts'
import { NODE, waitFor } from '../../helpers/testnet.ts'

/**
 * The HTTP download engine driven directly, as the queue drives it: a real
 * bandwidth scheduler flow behind ctx.take, a temp partial and state folder,
 * against real nginx and against a fault server of the test's own.
 */

const MiB = 1024 * 1024
const SETTINGS: DownloadSettings = {
  proxy: { http: null, https: null, all: null, noProxy: null },
  ipv6: true,
  dns: [],
  connectTimeoutMs: 5000,
  readTimeoutMs: 5000,
  retries: 3,
  maxRetryWaitMs: 100
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

let dir: string
const bandwidth = new BandwidthScheduler()

beforeAll(async () => { dir = await mkdtemp(join(tmpdir(), 'kith-http-')) })
afterAll(async () => {
  bandwidth.close()
  await rm(dir, { recursive: true, force: true })
})

interface Run {
  partial: string
  stateDir: string
  /** bytes passed to ctx.take */
  taken: number
  progress: DownloadProgress[]
}

let runs = 0
function newRun (): Run {
  const n = ++runs
  return { partial: join(dir, `${n}.partial`), stateDir: join(dir, `${n}.state`), taken: 0, progress: [] }
}

/**
 * Runs the add-on once into `run`'s partial; with `abortAfter`, aborts once that many bytes were taken.
 * `hash` (default true, as for a download with a checksum): the engine returns the file's sha256.
 */
async function download (url: string, run: Run, options: { connections?: number, settings?: Partial<DownloadSettings>, abortAfter?: number, hash?: boolean } = {}): Promise<DownloadResult> {
  const { mkdir } = await import('node:fs/promises')
  await mkdir(run.stateDir, { recursive: true })
  const controller = new AbortController()
  const flow = bandwidth.flow({ direction: 'down', class: 'public' })
  run.taken = 0
  try {
    const parsed = new URL(url)
    httpAddon.check?.(parsed, {})
    return await httpAddon.download({ id: 'a1b2c3d4e5f6', url: parsed, connections: options.connections ?? 4, options: {}, hash: options.hash ?? true }, {
      partial: run.partial,
      stateDir: run.stateDir,
      signal: controller.signal,
      take: async (bytes, signal) => {
        run.taken += bytes
        if (options.abortAfter != null && run.taken > options.abortAfter) controller.abort(new KithError('FETCH_ABORTED', 'paused by the test'))
        await flow.take(bytes, signal)
      },
      progress: p => { run.progress.push(p) },
      settings: { ...SETTINGS, ...options.settings }
    })
  } finally {
    flow.close()
  }
}

async function codeOf (p: Promise<unknown>): Promise<string> {
  return await p.then(() => 'ok', (err: unknown) => (err as KithError).code ?? String(err))
}

describe('HTTP engine parts', () => {
  it('reads Retry-After in both forms and caps backoff', () => {
    expect(parseRetryAfter('3')).toBe(3000)
    const now = Date.parse('Sun, 06 Dec 2026 10:00:00 GMT')
    expect(parseRetryAfter('Sun, 06 Dec 2026 10:00:05 GMT', now)).toBe(5000)
    expect(parseRetryAfter('Sun, 06 Dec 2026 09:00:00 GMT', now)).toBe(0)
    expect(parseRetryAfter('soon')).toBeNull()
    expect(parseRetryAfter('-1')).toBeNull()
    expect(backoffMs(1, 10_000, 30_000)).toBe(10_000)
    for (let attempt = 1; attempt < 40; attempt++) {
      const ms = backoffMs(attempt, 5000)
      expect(ms).toBeGreaterThan(0)
      expect(ms).toBeLessThanOrEqual(5000)
    }
    expect(backoffMs(3, 60_000, null, () => 0)).toBe(500)
  })

  it('keeps ranges merged and splits the busiest segment in halves', () => {
    const set = new RangeSet([[10, 20], [0, 5], [5, 10], [30, 40]])
    expect(set.list()).toEqual([[0, 20], [30, 40]])
    expect(set.gaps(50)).toEqual([[20, 30], [40, 50]])
    expect(set.prefix).toBe(20)
    const planner = new Planner([[0, 8 * MiB]])
    const first = planner.next()!
    const second = planner.next()!
    expect([first.cursor, first.end, second.cursor, second.end]).toEqual([0, 4 * MiB, 4 * MiB, 8 * MiB])
    second.cursor = 8 * MiB - 100 * 1024 // nearly done: nothing left there worth splitting
    expect(planner.next()!.cursor).toBe(2 * MiB)
    planner.release(second)
    expect(planner.unassigned).toBe(100 * 1024)
  })

  it('hands out pieces in file order, then halves the busiest', () => {
    const planner = new Planner([[0, 5 * MiB], [6 * MiB, 8 * MiB]], 2 * MiB)
    const got = [planner.next()!, planner.next()!, planner.next()!, planner.next()!, planner.next()!]
    // the last: none free, so the second half of the first of the busiest (which now ends where it begins)
    expect(got.map(s => [s.cursor, s.end])).toEqual([[0, MiB], [2 * MiB, 4 * MiB], [4 * MiB, 5 * MiB], [6 * MiB, 8 * MiB], [MiB, 2 * MiB]])
    expect(planner.unassigned).toBe(0)
    // pieces double up to the most when requests wait long (piece-timing.ts)
    const growing = new Planner([[0, 64 * MiB]], MiB, 4 * MiB)
    const sizes = [growing.next()!]
    for (let i = 0; i < 3; i++) {
      growing.grow()
      sizes.push(growing.next()!)
    }
    expect(sizes.map(s => s.end - s.cursor)).toEqual([MiB, 2 * MiB, 4 * MiB, 4 * MiB])
    // a grown piece shrinks to the connections' share of what is left, down to the first size, so the
    // last pieces end together and a split near the end cuts a small request, not a 16 MiB one
    const tail = new Planner([[0, 40 * MiB]], MiB, 16 * MiB, 4)
    for (let i = 0; i < 4; i++) tail.grow()
    const tailSizes: number[] = []
    while (tail.unassigned > 0) tailSizes.push(tail.next()!.remaining)
    expect(tailSizes[0]).toBe(10 * MiB)
    expect(tailSizes.slice(1).every((size, i) => size <= tailSizes[i]!)).toBe(true)
    expect(tailSizes.slice(-4, -1)).toEqual([MiB, MiB, MiB])
  })

  it('shares the write-back cache budget out: two blocks per connection, within it whatever the count', async () => {
    const fh = await open(join(dir, 'budget'), 'w')
    try {
      for (const n of [1, 2, 4, 8, 16, 64]) {
        const cache = new WriteCache(fh, n, new HashCursor())
        expect(cache.blockSize).toBeGreaterThanOrEqual(MIN_BLOCK)
        expect(cache.blockSize).toBeLessThanOrEqual(MAX_BLOCK)
        expect(2 * n * cache.blockSize).toBeLessThanOrEqual(CACHE_BUDGET)
      }
    } finally {
      await fh.close()
    }
  })

  it('hashes the file in order whatever order its pieces are written in, from memory when they come in order, resumed or not', async () => {
    // 3 MiB and an odd tail, in 128 KiB pieces written by 4 connections: the hash takes a block written
    // where it stands at once, keeps the ones ahead within its budget, and reads the rest back
    const content = randomBytes(3 * MiB + 4321)
    const piece = 128 * 1024
    const starts = Array.from({ length: Math.ceil(content.length / piece) }, (_, i) => i * piece)
    const shuffled = starts.map((s, i) => [s, (i * 7919) % starts.length] as const).sort((a, b) => a[1] - b[1]).map(([s]) => s)
    async function writeAll (path: string, order: readonly number[], ahead: number, done?: RangeSet): Promise<{ sha256: string, readBack: number }> {
      const fh = await open(path, done != null ? 'r+' : 'w+')
      const hash = new HashCursor(ahead, done?.last)
      try {
        const cache = new WriteCache(fh, 4, hash, done, 256 * 1024)
        const gatherers = [cache.gatherer(), cache.gatherer(), cache.gatherer(), cache.gatherer()]
        // the 4 connections write a piece each at once, a round at a time, as connections fed from one socket
        // each would: left to run free, one of them got over 1 MiB ahead of another at load 14-23, and the
        // in-order case read back what its budget should have kept
        for (let round = 0; round < order.length; round += gatherers.length) {
          await Promise.all(gatherers.map(async (g, n) => {
            const start = order[round + n]
            if (start === undefined) return
            // in socket-sized chunks, as undici hands them over
            for (let at = start; at < Math.min(start + piece, content.length); at += 16 * 1024) {
              await g.push(at, content.subarray(at, Math.min(at + 16 * 1024, start + piece, content.length)))
            }
          }))
        }
        await Promise.all(gatherers.map(async g => { await g.flush() }))
        expect(cache.done.prefix).toBe(content.length)
        return { sha256: await hash.finish(fh, content.length, new AbortController().signal), readBack: hash.readBack }
      } finally {
        await hash.stop()
        await fh.close()
      }
    }
    // in file order (the planner's way), the 4 connections' pieces ahead fit the budget: nothing is read back
    expect(await writeAll(join(dir, 'in-order'), starts, MiB)).toEqual({ sha256: sha(content), readBack: 0 })
    // out of order, with nothing kept, with a budget too small for the spread (some kept, the rest read back), and ample
    for (const ahead of [0, 256 * 1024, 4 * MiB]) {
      expect((await writeAll(join(dir, 'shuffled'), shuffled, ahead)).sha256).toBe(sha(content))
      expect((await writeAll(join(dir, 'reversed'), [...starts].reverse(), ahead)).sha256).toBe(sha(content))
    }
    // nothing kept: all was read back but the last pieces written, the 4 connections' last at once, of which each
    // may find the hash standing at it as it comes (which do depends on the order the writes finish in)
    expect((await writeAll(join(dir, 'reversed'), [...starts].reverse(), 0)).readBack).toBeGreaterThanOrEqual(content.length - 4 * piece)
    // a resume: the partial holds two ranges (the rest is garbage), the control file says so; the held
    // bytes are read back, the new ones kept or read back
    const resumed = join(dir, 'resumed')
    const held: Array<[number, number]> = [[0, MiB + 5], [2 * MiB, 2 * MiB + 3 * piece]]
    const gaps = new RangeSet(held).gaps(content.length).flatMap(([s, e]) => starts.filter(p => p + piece > s && p < e).map(p => Math.max(p, s)))
    for (const ahead of [0, 256 * 1024]) {
      const partial = randomBytes(content.length)
      for (const [s, e] of held) content.copy(partial, s, s, e)
      await writeFile(resumed, partial)
      expect((await writeAll(resumed, [...gaps].reverse(), ahead, new RangeSet(held))).sha256).toBe(sha(content))
      expect(sha(await readFile(resumed))).toBe(sha(content))
    }
  })
})

describeNeeding('HTTP engine against nginx', [needsNginx()], () => {
  let nginx: Nginx
  const content = randomBytes(8 * MiB + 12345)
  beforeAll(async () => {
    const root = join(dir, 'www')
    const { mkdir } = await import('node:fs/promises')
    await mkdir(root)
    await writeFile(join(root, 'file.bin'), content)
    // slow enough for a kill -9 to land mid-download: 1 MiB/s per connection
    nginx = await startNginx({ root, server: `location /slow/ { alias ${root}/; limit_rate 1m; }` })
  })
  afterAll(async () => { await nginx?.stop() })

  it('splits a file over 8 connections, every byte through the scheduler, and returns its sha256', async () => {
    const run = newRun()
    const result = await download(`${nginx.url}/file.bin`, run, { connections: 8 })
    expect(result).toMatchObject({ size: content.length, sha256: sha(content), name: 'file.bin', kind: 'file' })
    // the version fetched, for the proxy's swarm
    expect(result.validators?.etag).toMatch(/^"/)
    expect(sha(await readFile(run.partial))).toBe(sha(content))
    expect(run.taken).toBe(content.length)
    expect(run.progress.at(-1)).toMatchObject({ done: content.length, total: content.length })
    const ranged = (await nginx.accessLog()).filter(l => l.startsWith('206 "bytes='))
    expect(ranged.length).toBeGreaterThanOrEqual(8)
    // the first request asks for its first piece only and is read to its end: its connection is kept, not
    // closed with the rest of the file in flight as an open-ended probe's was
    const probe = ranged.filter(l => l.startsWith('206 "bytes=0-'))
    expect(probe).toHaveLength(1)
    expect(probe[0]).toMatch(/^206 "bytes=0-1048575" 1048576 /)
  })

  it('with no checksum to verify, hashes nothing: no sha256, the same file, also when resumed', async () => {
    const run = newRun()
    expect(await codeOf(download(`${nginx.url}/file.bin`, run, { connections: 8, abortAfter: 3 * MiB, hash: false }))).toBe('FETCH_ABORTED')
    const control = JSON.parse(await readFile(join(run.stateDir, 'http.control.json'), 'utf8')) as { done: Array<[number, number]> }
    const kept = new RangeSet(control.done).size
    expect(kept).toBeGreaterThan(MiB)
    const result = await download(`${nginx.url}/file.bin`, run, { connections: 8, hash: false })
    expect(result).toMatchObject({ size: content.length, name: 'file.bin', kind: 'file' })
    expect(result.sha256).toBeUndefined()
    expect(sha(await readFile(run.partial))).toBe(sha(content))
    expect(run.taken).toBe(content.length - kept)
  })

  it('resumes after an abort and fetches again only the unfinished ranges', async () => {
    const run = newRun()
    expect(await codeOf(download(`${nginx.url}/file.bin`, run, { connections: 4, abortAfter: 3 * MiB }))).toBe('FETCH_ABORTED')
    const control = JSON.parse(await readFile(join(run.stateDir, 'http.control.json'), 'utf8')) as { done: Array<[number, number]> }
    const kept = new RangeSet(control.done).size
    expect(kept).toBeGreaterThan(MiB)
    run.progress.length = 0
    const result = await download(`${nginx.url}/file.bin`, run, { connections: 4 })
    expect(result.sha256).toBe(sha(content))
    expect(sha(await readFile(run.partial))).toBe(sha(content))
    expect(run.taken).toBe(content.length - kept)
    expect(run.progress[0]!.done).toBe(kept)
  })

  it('resumes after kill -9 of the downloading process, fetching again only what the control file lacks', async () => {
    const run = newRun()
    const { mkdir } = await import('node:fs/promises')
    await mkdir(run.stateDir)
    const url = `${nginx.url}/slow/file.bin`
    const child = spawn(NODE, [join(import.meta.dirname, '../../helpers/http-get.ts'), url, run.partial, '4', run.stateDir], { stdio: 'ignore' })
    const controlPath = join(run.stateDir, 'http.control.json')
    try {
      await waitFor(async () => {
        const c = await readFile(controlPath, 'utf8').then(t => JSON.parse(t) as { done: Array<[number, number]> }, () => null)
        return c != null && new RangeSet(c.done).size >= MiB
      }, 'a control file with a MiB done', 20_000, 20)
    } finally {
      child.kill('SIGKILL')
      if (child.exitCode == null && child.signalCode == null) await once(child, 'exit')
    }
    const control = JSON.parse(await readFile(controlPath, 'utf8')) as { done: Array<[number, number]> }
    const kept = new RangeSet(control.done).size
    expect(kept).toBeLessThan(content.length)
    // 8 connections on the 4 ranges left: the idle ones take over halves
    const result = await download(url, run, { connections: 8 })
    expect(result.sha256).toBe(sha(content))
    expect(sha(await readFile(run.partial))).toBe(sha(content))
    expect(run.taken).toBe(content.length - kept)
  })

  it('trusts only the synced ranges of a control file written before a reboot', async () => {
    const run = newRun()
    expect(await codeOf(download(`${nginx.url}/file.bin`, run, { connections: 2, abortAfter: 2 * MiB }))).toBe('FETCH_ABORTED')
    const path = join(run.stateDir, 'http.control.json')
    const control = JSON.parse(await readFile(path, 'utf8')) as { bootId: string, done: Array<[number, number]>, synced: Array<[number, number]> }
    expect(control.synced).toEqual(control.done) // a pause syncs
    // as if the machine went down before the written ranges reached the disk
    await writeFile(path, JSON.stringify({ ...control, bootId: 'another boot', synced: [] }))
    const result = await download(`${nginx.url}/file.bin`, run, { connections: 2 })
    expect(result.sha256).toBe(sha(content))
    expect(run.taken).toBe(content.length)
  })
})

describe('HTTP engine against a faulty server', () => {
  let server: FaultServer
  let faults: (path: string, index: number, range: string | undefined) => Fault | undefined = () => undefined
  const a = randomBytes(3 * MiB + 777)
  const b = randomBytes(a.length)
  beforeAll(async () => {
    server = await startFaultServer((req, index) => faults(req.url ?? '', index, req.headers.range))
  })
  afterAll(async () => { await server?.stop() })

  /** a fresh path holding `content`, with `fault` deciding per request (its index among this path's requests) */
  function serve (content: Buffer, fault: (n: number, range: string | undefined) => Fault | undefined = () => undefined): string {
    const path = `/f${++runs}`
    server.files.set(path, content)
    let n = 0
    const before = faults
    faults = (p, index, range) => p === path ? fault(n++, range) : before(p, index, range)
    return path
  }

  const requests = (path: string): number => server.log.filter(e => e.path === path).length

  it('survives connections dropped mid-piece', async () => {
    const path = serve(a, n => n < 3 ? { kind: 'drop', after: 200 * 1024 } : undefined)
    const run = newRun()
    const result = await download(server.url + path, run, { connections: 3 })
    expect(result.sha256).toBe(sha(a))
    expect(sha(await readFile(run.partial))).toBe(sha(a))
    expect(run.taken).toBe(a.length)
  })

  it('opens no more connections to an origin than the download has', async () => {
    // the engine's N connections are N workers with one request each; uncapped, undici opened a new
    // connection for a worker's next piece when the last one's was not yet marked free (15-16 connections
    // for 8 workers' 1 MiB pieces from nginx). A server of its own: the shared one may still be closing
    // the other tests' connections
    const own = await startFaultServer()
    const content = randomBytes(64 * 1024)
    own.files.set('/f', content)
    const dispatcher = makeDispatcher(SETTINGS, undefined, 2)
    try {
      const bodies = await Promise.all(Array.from({ length: 6 }, async () => await (await request(own.url + '/f', { dispatcher })).body.arrayBuffer()))
      expect(bodies.every(b => Buffer.from(b).equals(content))).toBe(true)
    } finally {
      await dispatcher.destroy()
      await own.stop()
    }
    expect(own.log).toHaveLength(6)
    expect(Math.max(...own.log.map(e => e.open))).toBe(2)
  })

  it('takes a 200 answer to the first Range request as "no ranges": one connection', async () => {
    const path = serve(a, () => ({ kind: 'ignore-range' }))
    const run = newRun()
    const result = await download(server.url + path, run, { connections: 4 })
    expect(result.sha256).toBe(sha(a))
    expect(requests(path)).toBe(1)
  })

  it('starts over on one connection when a later Range request gets 200', async () => {
    const path = serve(a, (n, range) => range != null && !range.startsWith('bytes=0-') ? { kind: 'ignore-range' } : undefined)
    const run = newRun()
    const result = await download(server.url + path, run, { connections: 3 })
    expect(result.sha256).toBe(sha(a))
    expect(sha(await readFile(run.partial))).toBe(sha(a))
  })

  it('restarts cleanly when the file changes at the origin between pieces', async () => {
    let path = ''
    path = serve(a, n => { if (n === 2) server.files.set(path, b); return undefined })
    const run = newRun()
    const result = await download(server.url + path, run, { connections: 3 })
    expect(result.sha256).toBe(sha(b))
    expect(sha(await readFile(run.partial))).toBe(sha(b))
    expect(server.log.some(e => e.path === path && e.ifRange != null && e.status === 200)).toBe(true)
  })

  it('restarts cleanly when the file changed while the download was paused', async () => {
    const path = serve(a)
    const run = newRun()
    expect(await codeOf(download(server.url + path, run, { connections: 2, abortAfter: MiB }))).toBe('FETCH_ABORTED')
    server.files.set(path, b)
    const result = await download(server.url + path, run, { connections: 2 })
    expect(result.sha256).toBe(sha(b))
    expect(sha(await readFile(run.partial))).toBe(sha(b))
  })

  it('waits as Retry-After says, in seconds and as an HTTP-date, on 503 and 429', async () => {
    // an HTTP-date has whole seconds: the next one at least half a second away
    const dateMs = Math.ceil((Date.now() + 500) / 1000) * 1000
    const date = new Date(dateMs).toUTCString()
    const path = serve(a, n => n === 0 ? { kind: 'status', status: 503, retryAfter: '1' } : n === 1 ? { kind: 'status', status: 429, retryAfter: date } : undefined)
    const run = newRun()
    const result = await download(server.url + path, run, { connections: 1, settings: { maxRetryWaitMs: 5000 } })
    expect(result.sha256).toBe(sha(a))
    const [first, second, third] = server.log.filter(e => e.path === path)
    expect(second!.at - first!.at).toBeGreaterThanOrEqual(950)
    expect(third!.wall).toBeGreaterThanOrEqual(dateMs - 50)
  })

  it('gives up after its retries with a stable code', async () => {
    const path = serve(a, () => ({ kind: 'status', status: 429, retryAfter: '0' }))
    expect(await codeOf(download(server.url + path, newRun(), { settings: { retries: 2 } }))).toBe('HTTP_BUSY')
    expect(requests(path)).toBe(3)
    const missing = serve(a, () => ({ kind: 'status', status: 404 }))
    expect(await codeOf(download(server.url + missing, newRun()))).toBe('HTTP_STATUS')
    expect(requests(missing)).toBe(1)
  })

  it('follows redirects, and calls a loop an error', async () => {
    const path = serve(a)
    serve(a, () => ({ kind: 'redirect', to: path }))
    const hop = `/f${runs}`
    const result = await download(`${server.url}${serve(a, () => ({ kind: 'redirect', to: hop }))}`, newRun(), { connections: 2 })
    expect(result.sha256).toBe(sha(a))
    const loopA = `/f${runs + 1}`
    const loopB = `/f${runs + 2}`
    serve(a, () => ({ kind: 'redirect', to: loopB }))
    serve(a, () => ({ kind: 'redirect', to: loopA }))
    expect(await codeOf(download(server.url + loopA, newRun()))).toBe('HTTP_REDIRECT_LOOP')
  })

  it('keeps exactly Content-Length bytes of a server that sends more', async () => {
    const path = serve(a, () => ({ kind: 'extra', extra: 4096 }))
    const run = newRun()
    const result = await download(server.url + path, run, { connections: 3 })
    expect(result).toMatchObject({ size: a.length, sha256: sha(a) })
    expect((await readFile(run.partial)).length).toBe(a.length)
  })

  it('retries a stalled connection after the read timeout', async () => {
    const path = serve(a, n => n === 1 ? { kind: 'stall', after: 64 * 1024 } : undefined)
    const run = newRun()
    const result = await download(server.url + path, run, { connections: 3, settings: { readTimeoutMs: 250 } })
    expect(result.sha256).toBe(sha(a))
  })

  it('gives up on an origin that takes the connection and never finishes the handshake, at the connect timeout', async () => {
    // a TCP server that accepts and says nothing: a TLS handshake with it never ends
    const sockets: Socket[] = []
    const silent = createServer(socket => { sockets.push(socket) })
    silent.listen(0, '127.0.0.1')
    await once(silent, 'listening')
    try {
      const url = `https://127.0.0.1:${(silent.address() as AddressInfo).port}/x.bin`
      // the read timeout is long: only the connect timeout can end it as HTTP_CONNECT_FAILED
      const err = await download(url, newRun(), { settings: { connectTimeoutMs: 200, readTimeoutMs: 60_000, retries: 0 } }).catch((e: unknown) => e)
      expect(err).toMatchObject({ code: 'HTTP_CONNECT_FAILED' })
      expect(sockets).toHaveLength(1)
    } finally {
      for (const socket of sockets) socket.destroy()
      silent.close()
    }
  }, 6000) // undici's own connect timeout is 10 s: a timeout not passed on fails here

  it('downloads an empty file, answered 416 to its Range request', async () => {
    const path = serve(Buffer.alloc(0))
    const run = newRun()
    expect(await download(server.url + path, run)).toMatchObject({ size: 0, sha256: sha(Buffer.alloc(0)) })
    expect(server.log.find(e => e.path === path)!.status).toBe(416)
    expect((await readFile(run.partial)).length).toBe(0)
  })

  it('fetches the rest on one connection when the first range is answered without the size (bytes 0-N/*)', async () => {
    const path = serve(a, () => ({ kind: 'unsized' }))
    const run = newRun()
    const result = await download(server.url + path, run, { connections: 4 })
    expect(result).toMatchObject({ size: a.length, sha256: sha(a) })
    expect(server.log.filter(e => e.path === path).map(e => e.range)).toEqual(['bytes=0-1048575', 'bytes=0-'])
  })

  it('downloads a body of unknown length on one connection', async () => {
    const path = serve(a, () => ({ kind: 'chunked' }))
    const run = newRun()
    const result = await download(server.url + path, run, { connections: 4 })
    expect(result).toMatchObject({ size: a.length, sha256: sha(a) })
  })

  it('goes through the HTTP proxy the settings name, unless NO_PROXY names the host (as curl reads it, CIDR blocks too)', async () => {
    const { url: proxyUrl, tunnels, stop } = await startConnectProxy()
    try {
      const path = serve(a)
      const result = await download(server.url + path, newRun(), { connections: 2, settings: { proxy: { http: proxyUrl, https: null, all: null, noProxy: null } } })
      expect(result.sha256).toBe(sha(a))
      expect(tunnels.length).toBeGreaterThan(0)
      tunnels.length = 0
      await download(server.url + path, newRun(), { connections: 2, settings: { proxy: { http: null, https: null, all: proxyUrl, noProxy: '127.0.0.1' } } })
      expect(tunnels).toEqual([])
      // a CIDR block, which undici's own NO_PROXY matcher does not read: kith routes by no-proxy.ts
      await download(server.url + path, newRun(), { connections: 2, settings: { proxy: { http: null, https: null, all: proxyUrl, noProxy: 'lan.example, 127.0.0.0/8' } } })
      expect(tunnels).toEqual([])
      await download(server.url + path, newRun(), { connections: 2, settings: { proxy: { http: null, https: null, all: proxyUrl, noProxy: '10.0.0.0/8' } } })
      expect(tunnels.length).toBeGreaterThan(0)
      expect(await codeOf(download(server.url + path, newRun(), { settings: { proxy: { http: null, https: null, all: 'socks5://127.0.0.1:1080', noProxy: null } } }))).toBe('PROXY_UNSUPPORTED')
    } finally {
      await stop()
    }
  })

  it('resolves with the DNS servers of the settings, and connects over IPv6 only when allowed', async () => {
    const v6 = await startFaultServer(undefined, '::1')
    const dns = await startDnsServer({ 'files.kith.test': { a: ['127.0.0.1'] }, 'v6only.kith.test': { aaaa: ['::1'] } })
    try {
      const path = serve(a)
      v6.files.set(path, a)
      const port = (u: string): string => new URL(u).port
      const settings = { dns: [dns.address], retries: 0 }
      expect((await download(`http://files.kith.test:${port(server.url)}${path}`, newRun(), { connections: 2, settings })).sha256).toBe(sha(a))
      expect(dns.asked).toContain('files.kith.test 1')
      expect((await download(`http://v6only.kith.test:${port(v6.url)}${path}`, newRun(), { connections: 2, settings })).sha256).toBe(sha(a))
      expect(await codeOf(download(`http://v6only.kith.test:${port(v6.url)}${path}`, newRun(), { settings: { ...settings, ipv6: false } }))).toBe('HTTP_CONNECT_FAILED')
      expect(dns.asked).not.toContain('nowhere.kith.test 28')
    } finally {
      await dns.stop()
      await v6.stop()
    }
  })

  it('refuses URLs that are not http(s) or carry credentials, before any request', () => {
    expect(() => httpAddon.check!(new URL('ftp://example.org/x'), {})).toThrow(expect.objectContaining({ code: 'URL_UNSUPPORTED' }))
    expect(() => httpAddon.check!(new URL('http://me:secret@example.org/x'), {})).toThrow(expect.objectContaining({ code: 'URL_INVALID' }))
  })
})
