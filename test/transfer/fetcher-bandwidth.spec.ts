import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { KithLibp2p } from '../../src/peer/node.ts'
import { fetchChunks } from '../../src/transfer/fetcher.ts'
import { BandwidthScheduler } from '../../src/transfer/scheduler/index.ts'
import { learn, makeChunks, openStore, serve, startNode, tempDir, type Chunk, type InProcessSource, type TempStore } from '../helpers/chunks.ts'

/**
 * The fetcher's `beforeReceive` hook with the bandwidth scheduler in it, over
 * real libp2p nodes: the download cap holds across sources, and time spent
 * held back by our own cap earns the sources no strike, even with fault
 * detection set far tighter than the cap. Nor does time held back by our own
 * store, slower than the network (a disk under load).
 */
const CHUNK = 256 * 1024
const COUNT = 8
const MB = 1_000_000
/**
 * The stall timeout and rate window: long enough for a loaded machine's pauses (at load 20, 1 s windows saw a
 * HAVE unanswered, and 30 B/s before a GET's first chunk), and the hold longer
 */
const WINDOW_MS = 3_000
const HOLD_MS = WINDOW_MS + 500

describe('multi-source fetch under a download cap', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let chunks: Chunk[]
  let full: TempStore
  let client: KithLibp2p
  let holders: InProcessSource[]

  beforeAll(async () => {
    tmp = await tempDir()
    chunks = makeChunks(COUNT, CHUNK)
    full = await openStore(join(tmp.dir, 'seed'), chunks)
    client = await startNode()
    holders = [await serve(full.store), await serve(full.store)]
    // connected before the fetch, so its HAVEs wait on no handshake (the stall timeout bounds a HAVE's answer)
    for (const h of holders) {
      await learn(client, h.peerId, h.addrs)
      await client.dial(h.peerId)
    }
  })

  afterAll(async () => {
    for (const h of holders ?? []) await h.stop()
    await client?.stop()
    await full?.close()
    await tmp?.cleanup()
  })

  it('holds the cap over all sources and strikes none of them for our own throttling', async () => {
    const cap = MB
    const bandwidth = new BandwidthScheduler({ limits: { download: cap } })
    const flow = bandwidth.flow({ direction: 'down' })
    const mine = await openStore(join(tmp.dir, 'capped'))
    // each source's first chunk is held back longer than the stall timeout (as by a cap lowered for a while), then
    // every chunk waits for the cap's tokens
    const held = new Map<string, Promise<void>>()
    let firstReleased = Infinity
    try {
      const report = await fetchChunks({
        libp2p: client,
        store: mine.store,
        ids: chunks.map(c => c.id),
        sources: holders.map(h => h.peerId),
        // tighter than the cap allows (the hold outlasts the stall timeout and a rate window; the cap is half the minimum rate):
        // without the exemption every source would be struck
        stallTimeoutMs: WINDOW_MS,
        rateWindowMs: WINDOW_MS,
        minBytesPerSecond: 2 * cap,
        retryDelayMs: 50,
        beforeReceive: async (bytes, peer, signal) => {
          const key = peer.toString()
          if (!held.has(key)) held.set(key, sleep(HOLD_MS).then(() => { firstReleased = Math.min(firstReleased, performance.now()) }))
          await held.get(key)
          await flow.take(bytes, signal, key)
        }
      })
      // the cap is timed from the end of the first hold: no byte was taken before
      const seconds = (performance.now() - firstReleased) / 1000
      expect(report.fetchedChunks).toBe(COUNT)
      for (const s of report.sources) expect(s.penalties, JSON.stringify(s)).toEqual([])
      // 2 MiB at 1 MB/s is 2.1 s (less the 0.1 s burst)
      expect(COUNT * CHUNK / seconds).toBeLessThan(cap * 1.1)
      const peers = bandwidth.stats().down.peers
      expect(Object.keys(peers).sort()).toEqual(holders.map(h => h.peerId.toString()).sort())
    } finally {
      bandwidth.close()
      await mine.close()
    }
  })

  it('strikes no source while our own store is slower than the network', async () => {
    const mine = await openStore(join(tmp.dir, 'slow-store'))
    // every put waits until the store opens, longer than the stall timeout and a rate window after the first one
    let opened: Promise<void> | undefined
    try {
      const report = await fetchChunks({
        libp2p: client,
        store: {
          has: async id => await mine.store.has(id),
          put: async (id, sealed) => {
            opened ??= sleep(HOLD_MS)
            await opened
            return await mine.store.put(id, sealed)
          }
        },
        ids: chunks.map(c => c.id),
        sources: holders.map(h => h.peerId),
        stallTimeoutMs: WINDOW_MS,
        rateWindowMs: WINDOW_MS,
        retryDelayMs: 50
      })
      expect(opened).toBeDefined()
      expect(report.fetchedChunks).toBe(COUNT)
      for (const s of report.sources) expect(s.penalties, JSON.stringify(s)).toEqual([])
    } finally {
      await mine.close()
    }
  })
})
