import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { join } from 'node:path'
import type { KithLibp2p } from '../../src/peer/node.ts'
import { fetchChunks } from '../../src/transfer/fetcher.ts'
import { BandwidthScheduler } from '../../src/transfer/scheduler/index.ts'
import { learn, makeChunks, openStore, serve, startNode, tempDir, type Chunk, type InProcessSource, type TempStore } from '../helpers/chunks.ts'

/**
 * The fetcher's `beforeReceive` hook with the bandwidth scheduler in it, over
 * real libp2p nodes: the download cap holds across sources, and time spent
 * held back by our own cap earns the sources no strike, even with fault
 * detection set far tighter than the cap.
 */
const CHUNK = 256 * 1024
const COUNT = 8
const MB = 1_000_000

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
    for (const h of holders) await learn(client, h.peerId, h.addrs)
  })

  afterAll(async () => {
    for (const h of holders ?? []) await h.stop()
    await client?.stop()
    await full?.close()
    await tmp?.cleanup()
  })

  it('holds the cap over all sources and strikes none of them for our own throttling', async () => {
    const cap = 0.5 * MB
    const bandwidth = new BandwidthScheduler({ limits: { download: cap } })
    const flow = bandwidth.flow({ direction: 'down' })
    const mine = await openStore(join(tmp.dir, 'capped'))
    try {
      const t0 = performance.now()
      const report = await fetchChunks({
        libp2p: client,
        store: mine.store,
        ids: chunks.map(c => c.id),
        sources: holders.map(h => h.peerId),
        // tighter than the cap allows (each chunk waits ~0.5 s for tokens, a source often twice that,
        // and the cap is half the minimum rate): without the exemption every source would be struck.
        // Loose enough that a loaded machine's own pauses don't look like a stall.
        stallTimeoutMs: 1_000,
        rateWindowMs: 1_000,
        minBytesPerSecond: 2 * cap,
        retryDelayMs: 50,
        beforeReceive: async (bytes, peer, signal) => { await flow.take(bytes, signal, peer.toString()) }
      })
      const seconds = (performance.now() - t0) / 1000
      expect(report.fetchedChunks).toBe(COUNT)
      for (const s of report.sources) expect(s.penalties, JSON.stringify(s)).toEqual([])
      // 2 MiB at 0.5 MB/s is 4.2 s (less the 0.1 s burst)
      expect(COUNT * CHUNK / seconds).toBeLessThan(cap * 1.1)
      const peers = bandwidth.stats().down.peers
      expect(Object.keys(peers).sort()).toEqual(holders.map(h => h.peerId.toString()).sort())
    } finally {
      bandwidth.close()
      await mine.close()
    }
  })
})
