import { describe, it, expect, beforeAll, afterAll, afterEach, vi } from 'vitest'
import { join } from 'node:path'
import type { KithLibp2p } from '../../src/peer/node.ts'
import type { ChunkHandlerInit } from '../../src/transfer/chunk-protocol.ts'
import { fetchChunks, FetchError, type FetchInit } from '../../src/transfer/fetcher.ts'
import { learn, makeChunks, openStore, serve, startNode, tempDir, type Chunk, type InProcessSource, type TempStore } from '../helpers/chunks.ts'

/**
 * The fetcher measures stalls, slowness and cooldowns on the monotonic
 * clock: a step of the wall clock (NTP, a suspended laptop's catch-up, a user
 * setting the date) must neither cut a source that is moving, nor end a
 * cooldown early, nor hide a source that stalls. The wall clock is stepped
 * here as the system would step it: `Date.now()` jumps, `performance.now()`
 * does not.
 */
const CHUNK = 256 * 1024
/** 4 MiB: the busy source's first GET still outlasts its next two (48 chunks checked the same for 0.4 s more CPU, load 16-20) */
const COUNT = 16
const HOUR = 3600 * 1000

/** Makes `Date.now()` run `offset` ms away from the real wall clock from now on. */
function stepWallClock (offset: number): void {
  const real = Date.now.bind(Date)
  vi.spyOn(Date, 'now').mockImplementation(() => real() + offset)
}

/**
 * Holds this whole process `ms` (its event loop and every timer), asleep in Atomics.wait so the hold costs no CPU,
 * as a long synchronous task or a loaded machine's scheduler would; returns how long it was held.
 */
function holdProcess (ms: number): number {
  const from = performance.now()
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)
  return performance.now() - from
}

/** A beforeSend that sends at about `bytesPerSecond`, and stops at once on abort. */
function pace (bytesPerSecond: number): ChunkHandlerInit['beforeSend'] {
  return async (bytes, _peer, signal) => {
    await new Promise<void>(resolve => {
      const timer = setTimeout(resolve, bytes * 1000 / bytesPerSecond)
      signal.addEventListener('abort', () => { clearTimeout(timer); resolve() }, { once: true })
    })
  }
}

describe('fetch timing across wall clock steps', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let chunks: Chunk[]
  let full: TempStore
  let client: KithLibp2p
  let local = 0
  const holders: InProcessSource[] = []

  async function holder (init: Omit<ChunkHandlerInit, 'store'> = {}): Promise<InProcessSource> {
    const h = await serve(full.store, init)
    holders.push(h)
    await learn(client, h.peerId, h.addrs)
    // connected before the fetch, so its HAVEs wait on no handshake (the stall timeout bounds a HAVE's answer)
    await client.dial(h.peerId)
    return h
  }

  beforeAll(async () => {
    tmp = await tempDir()
    chunks = makeChunks(COUNT, CHUNK)
    full = await openStore(join(tmp.dir, 'seed'), chunks)
    client = await startNode()
  })

  afterEach(async () => {
    vi.restoreAllMocks()
    await Promise.all(holders.splice(0).map(async h => { await h.stop() }))
  })

  afterAll(async () => {
    await client?.stop()
    await full?.close()
    await tmp?.cleanup()
  })

  it('a step forward by an hour neither cuts a moving source nor ends a cooldown early', async () => {
    // answers BUSY to all but one GET at a time, so it cools down after its first answers
    const busy = await holder({ maxConcurrentGets: 1, sendSlice: 16 * 1024, beforeSend: pace(512 * 1024) })
    const steady = await holder({ beforeSend: pace(8 * 1024 * 1024) })
    const mine: TempStore = await openStore(join(tmp.dir, `local-${local++}`))
    let stepped = false
    // when the busy source's cooldown was first seen, and first seen over (monotonic): the fetch may outlast the 15 s
    // cooldown on a loaded machine, and then the cooldown ends on time, not at the step
    let coolingSeen: number | undefined
    let coolingOver: number | undefined
    try {
      const init: FetchInit = {
        libp2p: client,
        store: mine.store,
        ids: chunks.map(c => c.id),
        sources: [busy.peerId, steady.peerId],
        requestsPerSource: 3,
        chunksPerRequest: 2,
        // a BUSY cools its source for 15 s (the longest cooldown): far longer than this fetch
        retryDelayMs: 15_000,
        // a stall and a rate window longer than a starved worker's pause on a loaded machine (the sources run in this
        // process: at load 20 the steady one moved 111 bytes in its first 624 ms and was cut as slow). A step read on
        // the wall clock would still cut it: an hour is past both, and this fetch's 4 MiB over an hour is under the 16 KiB/s floor
        stallTimeoutMs: 10_000,
        rateWindowMs: 5_000,
        // the busy source is slow on purpose (its first GET must outlast the next two, so they find it busy): not a fault here
        slowRatio: 0.01,
        progressIntervalMs: 10,
        onProgress: p => {
          const cooling = p.perSource[busy.peerId.toString()]?.state === 'cooling'
          if (coolingSeen != null && coolingOver == null && !cooling) coolingOver = performance.now()
          if (stepped || !cooling) return
          stepped = true
          coolingSeen = performance.now()
          stepWallClock(HOUR)
        }
      }
      const report = await fetchChunks(init)
      expect(stepped).toBe(true)
      expect(report.fetchedChunks).toBe(COUNT)
      const b = report.sources.find(s => s.peer === busy.peerId.toString())!
      const s = report.sources.find(x => x.peer === steady.peerId.toString())!
      // the step cut nobody as stalled or slow; the busy source may also lose the endgame race for its slow first GET
      // to the steady one (judged on the monotonic clock, whichever way the load moves them: 'sent n of m bytes ...
      // while <steady> delivered the same chunks'), which is no cut of the step's
      expect(s.penalties).toEqual([])
      const cuts = b.penalties.filter(p => p.reason !== 'busy' && !p.message.includes('delivered the same chunks'))
      expect(cuts, `the busy source's penalties: ${JSON.stringify(b.penalties)}`).toEqual([])
      // and the busy source's cooldown did not end at the step: it got its first three requests (two answered BUSY) and
      // no more, unless the fetch outlasted the cooldown (seen over no sooner than ~15 s after it was first seen)
      if (coolingOver == null) expect(b.requests).toBe(3)
      else expect(coolingOver - coolingSeen!).toBeGreaterThan(10_000)
    } finally {
      await mine.close()
    }
  })

  it('a fetch held up longer than its stall timeout (its event loop busy, or not scheduled) cuts no source that kept sending', async () => {
    const sources = [await holder(), await holder()]
    const mine: TempStore = await openStore(join(tmp.dir, `local-${local++}`))
    let held = 0
    let holding = false
    try {
      const report = await fetchChunks({
        libp2p: client,
        store: mine.store,
        ids: chunks.map(c => c.id),
        sources: sources.map(h => h.peerId),
        stallTimeoutMs: 3_000,
        rateWindowMs: 3_000,
        // with the first chunk in and the requests under way, a timer holds this process for longer than the stall
        // timeout and a rate window. Held in a timer, as then the fetcher's own timer runs next, before the bytes
        // that came meanwhile are read
        beforeReceive: async () => {
          if (holding) return
          holding = true
          setTimeout(() => { held = holdProcess(3_500) }, 0)
        }
      })
      expect(held).toBeGreaterThanOrEqual(3_500)
      expect(report.fetchedChunks).toBe(COUNT)
      for (const s of report.sources) expect(s.penalties, JSON.stringify(s)).toEqual([])
    } finally {
      await mine.close()
    }
  })

  it('a hold-up while a HAVE is in flight cuts no source that answered', async () => {
    let held = 0
    let holding = false
    // the source's first `has` (its answer to the fetcher's HAVE) holds this process 3.5 s, longer than the stall
    // timeout: the answer then waits in the socket while the fetcher's timers run first (found by review helper V)
    const store = {
      getParts: full.store.getParts.bind(full.store),
      has: async (id: string) => {
        if (!holding) {
          holding = true
          held = holdProcess(3_500)
        }
        return await full.store.has(id)
      }
    }
    const h = await serve(store)
    holders.push(h)
    await learn(client, h.peerId, h.addrs)
    await client.dial(h.peerId)
    const mine: TempStore = await openStore(join(tmp.dir, `local-${local++}`))
    try {
      const report = await fetchChunks({
        libp2p: client,
        store: mine.store,
        ids: chunks.map(c => c.id),
        sources: [h.peerId],
        stallTimeoutMs: 3_000,
        rateWindowMs: 3_000
      })
      expect(held).toBeGreaterThanOrEqual(3_500)
      expect(report.fetchedChunks).toBe(COUNT)
      for (const s of report.sources) expect(s.penalties, JSON.stringify(s)).toEqual([])
    } finally {
      await mine.close()
    }
  })

  it('a step back by an hour does not hide a source that stalls', async () => {
    // answers HAVE, sends its first chunk of a GET, then nothing
    const sent = new WeakMap<AbortSignal, number>()
    const staller = await holder({
      beforeSend: async (bytes, _peer, signal) => {
        const before = sent.get(signal) ?? 0
        sent.set(signal, before + bytes)
        if (before <= CHUNK) return
        await new Promise<void>(resolve => { signal.addEventListener('abort', () => { resolve() }, { once: true }) })
      }
    })
    const mine: TempStore = await openStore(join(tmp.dir, `local-${local++}`))
    let stepped = false
    try {
      const fetching = fetchChunks({
        libp2p: client,
        store: mine.store,
        ids: chunks.map(c => c.id),
        sources: [staller.peerId],
        requestsPerSource: 1,
        // long enough for the HAVE and the first chunk on a loaded machine (at 1 s, a HAVE went unanswered at load 20)
        stallTimeoutMs: 3_000,
        rateWindowMs: 3_000,
        maxStrikes: 1,
        // the first chunk is in, the source stalls from here on: the wall clock goes back an hour
        beforeReceive: async () => {
          if (stepped) return
          stepped = true
          stepWallClock(-HOUR)
        }
      })
      const outcome = await Promise.race([
        fetching.then(() => 'done', (err: unknown) => err),
        new Promise(resolve => { setTimeout(resolve, 15_000, 'still waiting after 15 s') })
      ])
      expect(stepped).toBe(true)
      expect(outcome).toBeInstanceOf(FetchError)
      expect((outcome as FetchError).code).toBe('FETCH_NO_SOURCE')
      expect((outcome as FetchError).report.dropped[0]?.reason).toBe('stalled')
      expect((outcome as FetchError).report.fetchedChunks).toBe(1)
      fetching.catch(() => {})
    } finally {
      await mine.close()
    }
  })
})
