import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { cp } from 'node:fs/promises'
import { join } from 'node:path'
import type { PeerId } from '@libp2p/interface'
import type { KithLibp2p } from '../../src/peer/node.ts'
import type { ChunkStore } from '../../src/transfer/chunk-store.ts'
import { fetchChunks, FetchError, type FetchInit, type FetchReport, type SourceReport } from '../../src/transfer/fetcher.ts'
import { expectCodeAsync } from './helpers.ts'
import {
  learn, makeChunks, openStore, serve, startNode, tempDir, until, SourceProcess, SOURCES_START_TIMEOUT_MS,
  type Chunk, type InProcessSource, type TempStore
} from '../helpers/chunks.ts'

/**
 * Sources joining a running fetch (`discover`, `short`, `recheckMs`), over
 * real libp2p nodes on 127.0.0.1. The slow source serves at 64 KiB/s, so
 * alone it would need over three minutes for the 12 MiB here: a fetch that
 * finishes within the test's timeout did so through the sources that joined.
 * Nothing asserts on speed; every wait is on a condition with a deadline.
 */
const CHUNK = 256 * 1024
const COUNT = 48

function source (report: FetchReport, peer: { toString: () => string }): SourceReport {
  const found = report.sources.find(s => s.peer === peer.toString())
  expect(found, `${peer.toString()} in ${JSON.stringify(report.sources.map(s => s.peer))}`).toBeDefined()
  return found!
}

async function expectAllStored (store: ChunkStore, chunks: Chunk[]): Promise<void> {
  for (const c of chunks) expect(Buffer.from(await store.get(c.id)).equals(c.sealed)).toBe(true)
}

/** 64 KiB/s per stream, in 16 KiB slices; stops waiting when the stream ends. */
const SLOW = {
  sendSlice: 16 * 1024,
  beforeSend: async (bytes: number, _peer: PeerId, signal: AbortSignal) => {
    await new Promise<void>(resolve => {
      const t = setTimeout(resolve, bytes / 64)
      signal.addEventListener('abort', () => { clearTimeout(t); resolve() }, { once: true })
    })
  }
}

/** Slowness detection off: only sources joining can speed the fetch up. */
const PATIENT = { rateWindowMs: 600_000, minBytesPerSecond: 1, stallTimeoutMs: 30_000, retryDelayMs: 50 }

describe('multi-source fetch: sources joining while it runs', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let chunks: Chunk[]
  let full: TempStore
  let client: KithLibp2p
  let corrupt: SourceProcess
  let local = 0

  async function fresh (): Promise<TempStore> {
    return await openStore(join(tmp.dir, `local-${local++}`))
  }

  /** Every chunk, fetched by the client into `mine`; `init` names the sources and the case's options. */
  async function fetchAll (mine: TempStore, init: Omit<FetchInit, 'libp2p' | 'store' | 'ids'>): Promise<FetchReport> {
    return await fetchChunks({ libp2p: client, store: mine.store, ids: chunks.map(c => c.id), ...init })
  }

  beforeAll(async () => {
    tmp = await tempDir()
    chunks = makeChunks(COUNT, CHUNK)
    const seed = await openStore(join(tmp.dir, 'seed'), chunks)
    await seed.close()
    await cp(join(tmp.dir, 'seed'), join(tmp.dir, 'proc-corrupt'), { recursive: true })
    corrupt = await SourceProcess.spawn('corrupt', join(tmp.dir, 'proc-corrupt'))
    full = await openStore(join(tmp.dir, 'seed'))
    client = await startNode()
    await learn(client, corrupt.peerId, corrupt.addrs)
  }, SOURCES_START_TIMEOUT_MS)

  afterAll(async () => {
    await client?.stop()
    await corrupt?.stop()
    await full?.close()
    await tmp?.cleanup()
  })

  async function holder (init: Parameters<typeof serve>[1] = {}, store: Pick<ChunkStore, 'getParts' | 'has'> = full.store): Promise<InProcessSource> {
    const h = await serve(store, init)
    await learn(client, h.peerId, h.addrs)
    return h
  }

  /** A slow holder, and whether it has started to send chunk data (more than a HAVE answer). */
  async function slowHolder (): Promise<{ h: InProcessSource, sending: () => boolean }> {
    let sent = 0
    const h = await holder({
      ...SLOW,
      beforeSend: async (bytes, peer, signal) => {
        sent += bytes
        await SLOW.beforeSend(bytes, peer, signal)
      }
    })
    return { h, sending: () => sent > 16 * 1024 }
  }

  it('takes a fast source that discover offers after the start, and reports it joined late', async () => {
    const slow = await holder(SLOW)
    const fast = await holder()
    const mine = await fresh()
    let slowBytes = 0
    const calls: number[] = []
    try {
      const report = await fetchAll(mine, {
        sources: [slow.peerId],
        ...PATIENT,
        discoverIntervalMs: 100,
        onProgress: p => { slowBytes = p.perSource[slow.peerId.toString()]?.bytes ?? 0 },
        progressIntervalMs: 1,
        // nothing to offer until the slow source has delivered a chunk: the fetch is well under way
        discover: () => {
          calls.push(slowBytes)
          return slowBytes > 0 ? [slow.peerId, fast.peerId] : []
        }
      })
      expect(report.fetchedChunks).toBe(COUNT)
      await expectAllStored(mine.store, chunks)
      const s = source(report, slow.peerId)
      const f = source(report, fast.peerId)
      expect(s.joinedAtMs).toBe(0)
      expect(s.chunks).toBeGreaterThan(0)
      expect(f.chunks).toBeGreaterThan(0)
      expect(f.joinedAtMs).toBeGreaterThan(0)
      expect(s.chunks + f.chunks).toBe(COUNT)
      expect(report.sources).toHaveLength(2)
      expect(report.discovery).toMatchObject({ joined: 1, failures: 0 })
      expect(report.discovery!.looks).toBe(calls.length)
      expect(calls.some(b => b === 0)).toBe(true)
    } finally {
      await slow.stop()
      await fast.stop()
      await mine.close()
    }
  })

  it('looks at once when short() says the fetch is short, long before the interval', async () => {
    const { h: slow, sending } = await slowHolder()
    const fast = await holder()
    const mine = await fresh()
    const events: string[] = []
    try {
      const report = await fetchAll(mine, {
        sources: [slow.peerId],
        ...PATIENT,
        // far beyond the test's timeout: only short() can bring the fast source in time
        discoverIntervalMs: 3_600_000,
        short: () => {
          const yes = sending()
          if (yes && !events.includes('short')) events.push('short')
          return yes
        },
        discover: () => {
          events.push('discover')
          return [fast.peerId]
        }
      })
      expect(report.fetchedChunks).toBe(COUNT)
      await expectAllStored(mine.store, chunks)
      expect(events[0]).toBe('short')
      expect(events).toContain('discover')
      expect(source(report, fast.peerId).chunks).toBeGreaterThan(0)
      expect(source(report, fast.peerId).joinedAtMs).toBeGreaterThan(0)
      expect(report.discovery!.joined).toBe(1)
    } finally {
      await slow.stop()
      await fast.stop()
      await mine.close()
    }
  })

  it('looks for a new source when its only one is dropped, instead of failing', async () => {
    const good = await holder()
    const mine = await fresh()
    let calls = 0
    try {
      const report = await fetchAll(mine, {
        sources: [corrupt.peerId],
        retryDelayMs: 50,
        endgameCopies: 1,
        // no timed look within the test: only running out of sources makes one
        discoverIntervalMs: 3_600_000,
        discover: () => {
          calls++
          return [corrupt.peerId, good.peerId]
        }
      })
      expect(report.fetchedChunks).toBe(COUNT)
      await expectAllStored(mine.store, chunks)
      const bad = source(report, corrupt.peerId)
      const g = source(report, good.peerId)
      expect(bad.dropped?.reason).toBe('corrupt')
      expect(bad.chunks).toBe(0)
      expect(g.chunks).toBe(COUNT)
      // it joined once the only source was gone; the dropped one was not taken back
      expect(g.joinedAtMs).toBeGreaterThanOrEqual(bad.dropped!.atMs)
      expect(report.sources).toHaveLength(2)
      expect(report.discovery).toMatchObject({ looks: calls, joined: 1 })
      expect(corrupt.running).toBe(true)
    } finally {
      await good.stop()
      await mine.close()
    }
  })

  it('fails with FETCH_NO_SOURCE after one more look brings nothing new; a dropped source stays dropped', async () => {
    const mine = await fresh()
    let calls = 0
    try {
      const err = await expectCodeAsync(fetchAll(mine, {
        sources: [corrupt.peerId],
        retryDelayMs: 50,
        endgameCopies: 1,
        discoverIntervalMs: 3_600_000,
        discover: () => {
          calls++
          return [corrupt.peerId, client.peerId]
        }
      }), 'FETCH_NO_SOURCE')
      const report = (err as FetchError).report
      expect((err as FetchError).missing).toHaveLength(COUNT)
      expect(report.sources).toHaveLength(1)
      expect(report.dropped.map(d => d.reason)).toEqual(['corrupt'])
      expect(calls).toBe(1)
      expect(report.discovery).toMatchObject({ looks: 1, joined: 0 })

      // no sources at all: one look, then the same error
      const none = await expectCodeAsync(fetchChunks({ libp2p: client, store: mine.store, ids: [chunks[0]!.id], sources: [], discover: () => [] }), 'FETCH_NO_SOURCE')
      expect((none as FetchError).report.discovery).toMatchObject({ looks: 1, joined: 0 })
    } finally {
      await mine.close()
    }
  })

  it('starts from no sources at all and takes what discover names', async () => {
    const good = await holder()
    const mine = await fresh()
    try {
      const report = await fetchAll(mine, { sources: [], discover: () => [good.peerId] })
      expect(report.fetchedChunks).toBe(COUNT)
      expect(source(report, good.peerId)).toMatchObject({ chunks: COUNT })
      await expectAllStored(mine.store, chunks)
    } finally {
      await good.stop()
      await mine.close()
    }
  })

  it('survives a discover that throws, hangs or answers garbage', async () => {
    const slow = await holder(SLOW)
    const fast = await holder()
    const mine = await fresh()
    let call = 0
    const answers: Array<() => unknown> = [
      () => { throw new Error('boom') },
      async () => { throw new Error('async boom') },
      () => null,
      () => 'not a list',
      () => ['12D3KooWnot-a-peer-id', {}, 42, undefined, client.peerId, slow.peerId, slow.peerId],
      // hangs, ignoring its signal: given stallTimeoutMs, then taken as empty
      async () => await new Promise(() => {})
    ]
    try {
      const report = await fetchAll(mine, {
        sources: [slow.peerId],
        ...PATIENT,
        stallTimeoutMs: 2_000,
        discoverIntervalMs: 100,
        discover: (() => {
          const answer = answers[call++]
          return answer !== undefined ? answer() : [fast.peerId, fast.peerId, client.peerId, slow.peerId]
        }) as () => PeerId[]
      })
      expect(report.fetchedChunks).toBe(COUNT)
      await expectAllStored(mine.store, chunks)
      expect(call).toBeGreaterThan(answers.length)
      expect(report.sources.map(s => s.peer).sort()).toEqual([slow.peerId.toString(), fast.peerId.toString()].sort())
      expect(source(report, fast.peerId).chunks).toBeGreaterThan(0)
      expect(report.discovery).toMatchObject({ joined: 1, failures: answers.length })
      expect(report.discovery!.lastFailure).toMatch(/discover: /)
    } finally {
      await slow.stop()
      await fast.stop()
      await mine.close()
    }
  })

  it('asks a source that held nothing again later, and takes the chunks it gained', async () => {
    const { h: slow, sending } = await slowHolder()
    // a friend fetching the same share: empty at first, everything a little later
    const gaining = await openStore(join(tmp.dir, 'gaining'))
    const friend = await holder({}, gaining.store)
    const mine = await fresh()
    try {
      const fetching = fetchAll(mine, {
        sources: [slow.peerId, friend.peerId],
        ...PATIENT,
        discoverIntervalMs: 100,
        recheckMs: 300,
        discover: () => []
      })
      await until(sending, 'the slow source to send chunk data', 30_000)
      for (const c of chunks) await gaining.store.put(c.id, c.sealed)
      const report = await fetching
      expect(report.fetchedChunks).toBe(COUNT)
      await expectAllStored(mine.store, chunks)
      const f = source(report, friend.peerId)
      expect(f.joinedAtMs).toBe(0)
      expect(f.rechecks).toBeGreaterThan(0)
      expect(f.chunks).toBeGreaterThan(0)
      expect(report.discovery!.joined).toBe(0)
    } finally {
      await slow.stop()
      await friend.stop()
      await gaining.close()
      await mine.close()
    }
  })
})
