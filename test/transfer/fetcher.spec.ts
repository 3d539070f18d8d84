import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { cp, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import type { PeerId } from '@libp2p/interface'
import type { KithLibp2p } from '../../src/peer/node.ts'
import type { ChunkStore } from '../../src/transfer/chunk-store.ts'
import type { ServedEvent } from '../../src/transfer/chunk-protocol.ts'
import { fetchChunks, FetchError, type FetchInit, type FetchProgress, type FetchReport, type SourceReport } from '../../src/transfer/fetcher.ts'
import { expectCodeAsync } from './helpers.ts'
import {
  learn, makeChunks, openStore, serve, startNode, tempDir, until, SourceProcess, SOURCES_START_TIMEOUT_MS,
  type Chunk, type FaultMode, type InProcessSource, type TempStore
} from '../helpers/chunks.ts'

/**
 * Multi-source fetch over real libp2p nodes on 127.0.0.1. Good holders run
 * in process or as processes; misbehaving holders always run as separate
 * processes (test/helpers/bad-source.ts) so their faults are real: corrupt
 * bytes, HAVE without the chunk, a stall, a 1 B/s trickle.
 */
const CHUNK = 256 * 1024
const COUNT = 48

/**
 * Quick fault detection, so tests stay short (the defaults are for real
 * networks), yet loose enough that a loaded 2-core machine's own pauses don't
 * get the good source dropped.
 */
const FAST: Partial<FetchInit> = { stallTimeoutMs: 2000, rateWindowMs: 1000, retryDelayMs: 50 }

function source (report: FetchReport, peer: { toString: () => string }): SourceReport {
  return report.sources.find(s => s.peer === peer.toString())!
}

async function expectAllStored (store: ChunkStore, chunks: Chunk[]): Promise<void> {
  for (const c of chunks) expect(Buffer.from(await store.get(c.id)).equals(c.sealed)).toBe(true)
}

describe('multi-source fetch', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let chunks: Chunk[]
  let full: TempStore
  let client: KithLibp2p
  const procs = new Map<FaultMode, SourceProcess>()
  let local = 0

  /** A fresh, empty chunk store for one fetch. */
  async function fresh (): Promise<TempStore> {
    return await openStore(join(tmp.dir, `local-${local++}`))
  }

  beforeAll(async () => {
    tmp = await tempDir()
    chunks = makeChunks(COUNT, CHUNK)
    const seed = await openStore(join(tmp.dir, 'seed'), chunks)
    await seed.close()
    const modes: FaultMode[] = ['good', 'corrupt', 'claims', 'stall', 'trickle', 'mute']
    for (const mode of modes) await cp(join(tmp.dir, 'seed'), join(tmp.dir, `proc-${mode}`), { recursive: true })
    // the good holder in a process of its own, as a friend's node is; the five bad ones share one (see SourceProcess)
    const started = (await Promise.all([
      SourceProcess.spawnAll([{ mode: 'good', dir: join(tmp.dir, 'proc-good') }]),
      SourceProcess.spawnAll(modes.filter(mode => mode !== 'good').map(mode => ({ mode, dir: join(tmp.dir, `proc-${mode}`) })))
    ])).flat()
    started.forEach(p => procs.set(p.mode, p))
    full = await openStore(join(tmp.dir, 'seed'))
    client = await startNode()
    for (const p of started) await learn(client, p.peerId, p.addrs)
  }, SOURCES_START_TIMEOUT_MS)

  afterAll(async () => {
    await client?.stop()
    await Promise.all([...procs.values()].map(async p => { await p.stop() }))
    await full?.close()
    await tmp?.cleanup()
  })

  async function holder (init: Parameters<typeof serve>[1] = {}, store: Pick<ChunkStore, 'getParts' | 'has'> = full.store): Promise<InProcessSource> {
    const h = await serve(store, init)
    await learn(client, h.peerId, h.addrs)
    return h
  }

  it('fetches everything from one source, verified, with progress', async () => {
    const served: ServedEvent[] = []
    const h = await holder({ onServed: e => served.push(e) })
    const mine = await fresh()
    const progress: FetchProgress[] = []
    try {
      const report = await fetchChunks({ libp2p: client, store: mine.store, ids: chunks.map(c => c.id), sources: [h.peerId], onProgress: p => progress.push(p), progressIntervalMs: 1 })
      expect(report).toMatchObject({ totalChunks: COUNT, heldChunks: 0, fetchedChunks: COUNT, fetchedBytes: COUNT * CHUNK, dropped: [] })
      expect(source(report, h.peerId)).toMatchObject({ chunks: COUNT, bytes: COUNT * CHUNK, penalties: [] })
      await expectAllStored(mine.store, chunks)
      const gets = served.filter(e => e.type === 'get')
      expect(gets.reduce((n, e) => n + e.ids, 0)).toBe(COUNT)
      expect(progress.at(-1)).toMatchObject({ doneChunks: COUNT, totalChunks: COUNT, doneBytes: COUNT * CHUNK })
      for (let i = 1; i < progress.length; i++) expect(progress[i]!.doneChunks).toBeGreaterThanOrEqual(progress[i - 1]!.doneChunks)
    } finally {
      await h.stop()
      await mine.close()
    }
  })

  it('starts a source\'s next request before its last one ends, so the source does not wait between requests', async () => {
    // as over a far link: a request's first bytes come 100 ms after it, the rest 5 ms a slice (~60 ms for 4 chunks)
    const serving = new Set<AbortSignal>()
    let most = 0
    const h = await holder({
      beforeSend: async (_bytes, _peer, signal) => {
        const first = !serving.has(signal)
        if (first) {
          serving.add(signal)
          most = Math.max(most, serving.size)
          signal.addEventListener('abort', () => serving.delete(signal), { once: true })
        }
        await new Promise(resolve => setTimeout(resolve, first ? 100 : 5))
      }
    })
    const mine = await fresh()
    try {
      const report = await fetchChunks({ libp2p: client, store: mine.store, ids: chunks.map(c => c.id), sources: [h.peerId], requestsPerSource: 1, chunksPerRequest: 4 })
      expect(report.fetchedChunks).toBe(COUNT)
      expect(source(report, h.peerId).requests).toBeGreaterThanOrEqual(COUNT / 4)
      // one request at a time, each begun once the one before ended, would never have the holder serve two;
      // begun early, the next is served beside the last one's end, and no more than twice the limit are open
      expect(most).toBe(2)
      await expectAllStored(mine.store, chunks)
    } finally {
      await h.stop()
      await mine.close()
    }
  })

  it('fetches from three sources, and all of them contribute', async () => {
    const hs = await Promise.all([holder(), holder(), holder()])
    const mine = await fresh()
    try {
      const report = await fetchChunks({ libp2p: client, store: mine.store, ids: chunks.map(c => c.id), sources: hs.map(h => h.peerId) })
      expect(report.fetchedChunks).toBe(COUNT)
      for (const h of hs) expect(source(report, h.peerId).chunks).toBeGreaterThan(0)
      expect(report.sources.reduce((n, s) => n + s.chunks, 0)).toBe(COUNT)
      await expectAllStored(mine.store, chunks)
    } finally {
      await Promise.all(hs.map(async h => { await h.stop() }))
      await mine.close()
    }
  })

  // Content faults are caught by content whatever the timing, so their runs judge timing loosely
  // (a loaded machine can pause a process for a while) and make no endgame copies (so the bad
  // answers must arrive); timing faults get quick detection.
  const LOOSE: Partial<FetchInit> = { stallTimeoutMs: 10_000, rateWindowMs: 10_000, retryDelayMs: 50, endgameCopies: 1 }
  const faults: Array<{ mode: FaultMode, what: string, reason: string[], dropped?: string, options: Partial<FetchInit> }> = [
    { mode: 'corrupt', what: 'sends corrupt bytes', reason: ['corrupt'], dropped: 'corrupt', options: LOOSE },
    { mode: 'claims', what: 'claims chunks it lacks', reason: ['missing'], options: LOOSE },
    { mode: 'stall', what: 'stalls', reason: ['stalled'], options: FAST },
    { mode: 'trickle', what: 'trickles at 1 B/s', reason: ['slow', 'stalled'], options: FAST }
  ]
  for (const { mode, what, reason, dropped, options } of faults) {
    it(`completes from the good source when another one ${what}`, async () => {
      const good = procs.get('good')!
      const bad = procs.get(mode)!
      const mine = await fresh()
      try {
        // the good source's chunks wait until the bad one was asked for one: otherwise a quick good
        // source could finish before the bad one's HAVE came back, and nothing would be shown of it
        const askedBefore = bad.asked
        const beforeReceive = async (_bytes: number, peer: PeerId): Promise<void> => {
          if (peer.equals(good.peerId)) await until(() => bad.asked > askedBefore, `the ${mode} source to be asked for a chunk`)
        }
        const report = await fetchChunks({ libp2p: client, store: mine.store, ids: chunks.map(c => c.id), sources: [bad.peerId, good.peerId], beforeReceive, ...options })
        expect(report.fetchedChunks).toBe(COUNT)
        await expectAllStored(mine.store, chunks)
        const b = source(report, bad.peerId)
        if (process.env.KITH_DEBUG != null) console.log(mode, JSON.stringify(report, null, 1))
        expect(b.chunks).toBe(0)
        expect(b.penalties.some(p => reason.includes(p.reason)), JSON.stringify(b)).toBe(true)
        if (dropped !== undefined) expect(b.dropped?.reason).toBe(dropped)
        if (mode === 'claims') expect(b.missing).toBeGreaterThan(0)
        expect(source(report, good.peerId).chunks).toBe(COUNT)
        expect(bad.running).toBe(true)
      } finally {
        await mine.close()
      }
    })
  }

  it('drops a source that keeps failing, and completes from the rest', async () => {
    const good = procs.get('good')!
    const mine = await fresh()
    try {
      const report = await fetchChunks({
        libp2p: client,
        store: mine.store,
        ids: chunks.map(c => c.id),
        sources: [procs.get('corrupt')!.peerId, procs.get('claims')!.peerId, procs.get('stall')!.peerId, procs.get('trickle')!.peerId, good.peerId],
        ...FAST
      })
      expect(report.fetchedChunks).toBe(COUNT)
      await expectAllStored(mine.store, chunks)
      expect(source(report, good.peerId).chunks).toBe(COUNT)
      for (const mode of ['corrupt', 'claims', 'stall', 'trickle'] as const) {
        expect(source(report, procs.get(mode)!.peerId).chunks).toBe(0)
      }
      expect(report.dropped.map(d => d.peer)).toContain(procs.get('corrupt')!.peerId.toString())
    } finally {
      await mine.close()
    }
  })

  it('gives up on a source that never answers HAVE', async () => {
    const mute = procs.get('mute')!
    const mine = await fresh()
    const other = await fresh()
    try {
      const report = await fetchChunks({ libp2p: client, store: mine.store, ids: chunks.map(c => c.id), sources: [mute.peerId, procs.get('good')!.peerId], ...FAST })
      expect(report.fetchedChunks).toBe(COUNT)
      const err = await expectCodeAsync(fetchChunks({ libp2p: client, store: other.store, ids: chunks.map(c => c.id), sources: [mute.peerId], ...FAST, stallTimeoutMs: 300, maxStrikes: 2, name: peer => peer === mute.peerId.toString() ? 'muriel' : peer }), 'FETCH_NO_SOURCE')
      const m = source((err as FetchError).report, mute.peerId)
      expect(m.dropped?.reason).toBe('stalled')
      // named as the caller names it
      expect(err.message).toContain('Dropped sources: muriel: stalled')
      expect((err as FetchError).missing).toHaveLength(COUNT)
    } finally {
      await mine.close()
      await other.close()
    }
  })

  it('gives up on a source it cannot reach and fetches from the others', async () => {
    const nobody = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
    await learn(client, nobody, [multiaddr('/ip4/127.0.0.1/tcp/1')])
    const h = await holder()
    const mine = await fresh()
    try {
      const report = await fetchChunks({ libp2p: client, store: mine.store, ids: chunks.map(c => c.id), sources: [nobody, h.peerId], ...FAST })
      expect(report.fetchedChunks).toBe(COUNT)
      expect(source(report, nobody).penalties[0]?.reason).toBe('failed')
    } finally {
      await h.stop()
      await mine.close()
    }
  })

  it('duplicates a slow source\'s last chunks in the endgame instead of waiting for them', async () => {
    // 32 KiB/s: its first request alone (4 chunks, 1 MiB) would take 32 s (at 64 KiB/s and 16 s, whole runs at load
    // 36-47 took 18-20 s: the bound measured the machine)
    const slow = await holder({
      sendSlice: 16 * 1024,
      beforeSend: async (bytes, _peer, signal) => { await new Promise(resolve => { const t = setTimeout(resolve, bytes / 32); signal.addEventListener('abort', () => { clearTimeout(t); resolve(undefined) }) }) }
    })
    const fast = await holder()
    const mine = await fresh()
    try {
      // slowness detection is off (huge window, tiny floor): only the endgame can save the day
      const report = await fetchChunks({ libp2p: client, store: mine.store, ids: chunks.map(c => c.id), sources: [slow.peerId, fast.peerId], rateWindowMs: 60_000, minBytesPerSecond: 1, stallTimeoutMs: 60_000 })
      expect(report.fetchedChunks).toBe(COUNT)
      // before the slow source's first request (4 chunks) could have ended (a bound of the test's own making, not a
      // speed): the fast one carried the rest, the slow one's last chunks duplicated (on a loaded machine the slow one
      // may have finished a chunk or two of its 8 s each first)
      expect(report.durationMs).toBeLessThan(32_000)
      expect(source(report, fast.peerId).chunks).toBeGreaterThan(COUNT - 4)
      // it lost the races it had a head start in
      expect(source(report, slow.peerId).penalties.some(p => p.reason === 'slow' || p.reason === 'stalled')).toBe(true)
      await expectAllStored(mine.store, chunks)
    } finally {
      await slow.stop()
      await fast.stop()
      await mine.close()
    }
  })

  it('stops on abort, then resumes fetching only the missing chunks', async () => {
    const first = await holder()
    // the resume asks a second holder, so stragglers of the aborted run can't blur the count
    let servedIds = 0
    const second = await holder({ onServed: e => { if (e.type === 'get') servedIds += e.held + e.missing } })
    const mine = await fresh()
    const controller = new AbortController()
    let puts = 0
    const counting: Pick<ChunkStore, 'has' | 'put'> = {
      has: async id => await mine.store.has(id),
      put: async (id, sealed) => {
        const fresh = await mine.store.put(id, sealed)
        if (++puts === 16) controller.abort()
        return fresh
      }
    }
    try {
      const err = await expectCodeAsync(fetchChunks({ libp2p: client, store: counting, ids: chunks.map(c => c.id), sources: [first.peerId], signal: controller.signal }), 'FETCH_ABORTED')
      expect(err).toBeInstanceOf(FetchError)
      const stored = (await Promise.all(chunks.map(async c => await mine.store.has(c.id)))).filter(Boolean).length
      expect(stored).toBeGreaterThanOrEqual(16)
      expect(stored).toBeLessThan(COUNT)
      expect((err as FetchError).missing).toHaveLength(COUNT - stored)
      expect((err as FetchError).report.fetchedChunks).toBe(stored)

      const report = await fetchChunks({ libp2p: client, store: mine.store, ids: chunks.map(c => c.id), sources: [second.peerId] })
      expect(report).toMatchObject({ totalChunks: COUNT, heldChunks: stored, fetchedChunks: COUNT - stored })
      await until(() => servedIds >= COUNT - stored, 'the holder to log its GETs')
      expect(servedIds).toBe(COUNT - stored)
      await expectAllStored(mine.store, chunks)

      // nothing left to fetch: no request at all
      servedIds = 0
      const again = await fetchChunks({ libp2p: client, store: mine.store, ids: chunks.map(c => c.id), sources: [second.peerId] })
      expect(again).toMatchObject({ heldChunks: COUNT, fetchedChunks: 0 })
      expect(servedIds).toBe(0)
    } finally {
      await first.stop()
      await second.stop()
      await mine.close()
    }
  })

  it('rejects with the local store\'s own error when the store fails: a full disk stays ENOSPC', async () => {
    // /dev/full answers every write with ENOSPC, as a full disk does: the caller tells DISK_FULL by that code
    const h = await holder()
    const mine = await fresh()
    const diskFull: Pick<ChunkStore, 'has' | 'put'> = {
      has: async id => await mine.store.has(id),
      put: async (_id, sealed) => { await writeFile('/dev/full', sealed); return true }
    }
    try {
      const err = await fetchChunks({ libp2p: client, store: diskFull, ids: chunks.map(c => c.id), sources: [h.peerId] }).then(() => null, (e: unknown) => e)
      expect((err as NodeJS.ErrnoException).code).toBe('ENOSPC')
    } finally {
      await h.stop()
      await mine.close()
    }
  })

  it('fails with FETCH_NO_SOURCE naming what nobody holds, after fetching the rest', async () => {
    const partial = await openStore(join(tmp.dir, 'partial'), chunks.slice(2))
    const h = await holder({}, partial.store)
    const liar = procs.get('claims')! // says it holds everything, holds nothing
    const mine = await fresh()
    const extra = randomBytes(32).toString('hex')
    try {
      const ids = [...chunks.map(c => c.id), extra]
      const err = await expectCodeAsync(fetchChunks({ libp2p: client, store: mine.store, ids, sources: [h.peerId, liar.peerId], ...FAST }), 'FETCH_NO_SOURCE')
      expect([...(err as FetchError).missing].sort()).toEqual([chunks[0]!.id, chunks[1]!.id, extra].sort())
      expect(err.message).toContain(chunks[0]!.id.slice(0, 12))
      await expectAllStored(mine.store, chunks.slice(2))
      expect(await mine.store.has(chunks[0]!.id)).toBe(false)
      const report = (err as FetchError).report
      expect(report.fetchedChunks).toBe(COUNT - 2)
      expect(source(report, liar.peerId).missing).toBeGreaterThan(0)
    } finally {
      await h.stop()
      await partial.close()
      await mine.close()
    }
  })

  it('fails with FETCH_NO_SOURCE at once when there are no sources, and skips duplicates', async () => {
    const mine = await fresh()
    try {
      const err = await expectCodeAsync(fetchChunks({ libp2p: client, store: mine.store, ids: [chunks[0]!.id, chunks[0]!.id], sources: [] }), 'FETCH_NO_SOURCE')
      expect((err as FetchError).missing).toEqual([chunks[0]!.id])
      await expectCodeAsync(fetchChunks({ libp2p: client, store: mine.store, ids: ['nope'], sources: [] }), 'CHUNK_BAD_ID')
    } finally {
      await mine.close()
    }
  })

  it('backs off a busy holder without dropping it', async () => {
    const h = await holder({ maxConcurrentGets: 1 })
    const mine = await fresh()
    try {
      const report = await fetchChunks({ libp2p: client, store: mine.store, ids: chunks.map(c => c.id), sources: [h.peerId], requestsPerSource: 3, chunksPerRequest: 2, retryDelayMs: 20 })
      expect(report.fetchedChunks).toBe(COUNT)
      const s = source(report, h.peerId)
      expect(s.dropped).toBeUndefined()
      expect(s.penalties.some(p => p.reason === 'busy')).toBe(true)
    } finally {
      await h.stop()
      await mine.close()
    }
  })
})
