import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { join } from 'node:path'
import type { PeerId, Stream } from '@libp2p/interface'
import type { KithLibp2p } from '../../src/peer/node.ts'
import { CHUNK_PROTOCOL, MAX_GET_IDS, MAX_GETS_PER_PEER, chunkHandler, encodeRequest, frame } from '../../src/transfer/chunk-protocol.ts'
import { fetchChunks } from '../../src/transfer/fetcher.ts'
import { MAX_INBOUND_CHUNK_STREAMS } from '../../src/services/engine/constants.ts'
import { learn, makeChunks, openStore, startNode, tempDir, until, type Chunk, type TempStore } from '../helpers/chunks.ts'

/**
 * One friend opening hundreds of chunk streams, each a GET it then never
 * reads: the holder, with the daemon's limits (MAX_INBOUND_CHUNK_STREAMS per
 * connection, MAX_GETS_PER_PEER), serves that friend a few GETs at a time,
 * keeps its memory bounded, and another friend's fetch goes through
 * meanwhile.
 */
const CHUNK = 256 * 1024
/** the honest fetch, and each flood GET: 4 MiB (64 chunks checked the same for 0.45 s more CPU, load 17-25) */
const COUNT = 16
// 16 times the streams one connection may hold open: the held ones fill it, and libp2p resets nearly every other
// as it opens (16-26 opened, the rest refused). A thousand, as this test once opened, checked the same for 1.3 s
// more CPU (3.4 s against 2.0, load 11). A multiple of 4 (the waves below)
const FLOOD = 256

describe('a flood of chunk streams from one friend', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let chunks: Chunk[]
  let full: TempStore
  let holder: KithLibp2p
  let hostile: KithLibp2p
  let honest: KithLibp2p
  /** per peer, the GETs sending chunk bytes right now, and the most there ever were at once */
  const serving = new Map<string, { now: Set<AbortSignal>, most: number }>()

  /** Counts a GET as served from its first slice of chunk bytes (ERROR and HAVE answers are a few bytes) until its stream ends. */
  async function watch (bytes: number, peer: PeerId, signal: AbortSignal): Promise<void> {
    if (bytes < 64 * 1024) return
    const key = peer.toString()
    const entry = serving.get(key) ?? { now: new Set(), most: 0 }
    serving.set(key, entry)
    if (entry.now.has(signal)) return
    entry.now.add(signal)
    entry.most = Math.max(entry.most, entry.now.size)
    signal.addEventListener('abort', () => { entry.now.delete(signal) }, { once: true })
  }

  beforeAll(async () => {
    tmp = await tempDir()
    chunks = makeChunks(COUNT, CHUNK)
    full = await openStore(join(tmp.dir, 'seed'), chunks)
    holder = await startNode()
    // as the daemon's transfer engine registers it (services/engine), gate aside
    await holder.handle(CHUNK_PROTOCOL, chunkHandler({ store: full.store, beforeSend: watch }), { maxInboundStreams: MAX_INBOUND_CHUNK_STREAMS })
    hostile = await startNode()
    honest = await startNode()
    for (const node of [hostile, honest]) await learn(node, holder.peerId, holder.getMultiaddrs())
  })

  afterAll(async () => {
    await Promise.all([holder, hostile, honest].map(async n => { await n?.stop() }))
    await full?.close()
    await tmp?.cleanup()
  })

  it('serves the flooding friend a few GETs at a time, stays bounded, and another friend\'s fetch finishes', async () => {
    const request = frame([encodeRequest({ type: 'get', ids: chunks.slice(0, MAX_GET_IDS).map(c => c.id) })])
    const held: Stream[] = []
    let opened = 0
    let refused = 0
    // the GETs, a few at a time (a burst is all reset by libp2p's per-connection count), each read by
    // nobody: its stream is paused, so the holder's sends stall and the GET holds its slot
    const flood = (async () => {
      for (let wave = 0; wave < FLOOD / 4; wave++) {
        await Promise.all(Array.from({ length: 4 }, async () => {
          try {
            const stream = await hostile.dialProtocol(holder.peerId, CHUNK_PROTOCOL)
            stream.pause()
            for (const part of request) stream.send(part)
            held.push(stream)
            opened++
          } catch {
            refused++ // past the per-connection stream limit: reset by libp2p
          }
        }))
      }
    })()
    const rss = process.memoryUsage().rss
    let peak = rss
    const sampler = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss) }, 50)
    const mine = await openStore(join(tmp.dir, 'honest'))
    try {
      // the flooding friend holds every stream it may open before the honest one asks
      await until(() => opened >= MAX_INBOUND_CHUNK_STREAMS, 'the flood to take its streams')
      // BUSY answers back the honest fetch off; had the flood every slot, it would wait out the flood's 30 s send stalls
      const report = await fetchChunks({ libp2p: honest, store: mine.store, ids: chunks.map(c => c.id), sources: [holder.peerId] })
      expect(report.fetchedChunks).toBe(COUNT)
      // it finished while the flood still held its slots: it got slots of its own
      expect(serving.get(hostile.peerId.toString())?.now.size).toBe(MAX_GETS_PER_PEER)
      await flood
      expect(opened + refused).toBe(FLOOD)
      expect(opened).toBeGreaterThan(MAX_GETS_PER_PEER)
      // the flooding friend never had more than its share of GETs served at once: the rest were told BUSY
      expect(serving.get(hostile.peerId.toString())?.most).toBe(MAX_GETS_PER_PEER)
      // memory: a few GETs' send buffers, not a thousand
      expect(peak - rss).toBeLessThan(256 * 1024 * 1024)
    } finally {
      clearInterval(sampler)
      await flood
      for (const stream of held) stream.abort(new Error('test over'))
      await mine.close()
    }
  })
})
