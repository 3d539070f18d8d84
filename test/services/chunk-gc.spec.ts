import { mkdir, writeFile, readFile, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { bytesSublevel, openDatabase, sublevel, type Database } from '../../src/peer/database.ts'
import { openChunkStore, type ChunkStore } from '../../src/transfer/chunk-store.ts'
import { assembleShare } from '../../src/transfer/assemble.ts'
import { decodeManifest, type Manifest } from '../../src/transfer/manifest.ts'
import { chunkId, deriveSealKeys } from '../../src/transfer/seal.ts'
import { ShareBook, type MyShare } from '../../src/services/files/share-book.ts'
import { ChunkCollector, type Pin } from '../../src/services/engine/collector.ts'
import { liveChunks } from '../../src/services/files/live-chunks.ts'
import type { Transfer } from '../../src/services/files/transfers.ts'
import { expectCodeAsync, keypair, pseudoRandom, tempDir } from '../transfer/helpers.ts'

/**
 * The chunk collector against a real chunk store, real LevelDB and real
 * signed manifests made by the share book: which chunks go after a re-share,
 * an unshare, a cancelled or superseded fetch and a revoked friend, and that
 * a sweep racing a share or a fetch never takes a chunk they rely on.
 */
const MiB = 1024 * 1024
const me = keypair(1)
const friendKeys = keypair(2)
const FRIEND = '12D3KooWFriendPeerIdForTheseTestsOnly'

type Record = Pick<Transfer, 'id' | 'owner' | 'shareId' | 'version' | 'path' | 'state'>

function ids (manifest: Manifest, under = ''): Set<string> {
  const out = new Set<string>()
  for (const e of manifest.entries) {
    if (e.type === 'file' && (under === '' || e.path.startsWith(under + '/'))) for (const id of e.chunks) out.add(id)
  }
  return out
}

function union (...sets: Array<Set<string>>): Set<string> {
  return new Set(sets.flatMap(s => [...s]))
}

function minus (a: Set<string>, b: Set<string>): Set<string> {
  return new Set([...a].filter(x => !b.has(x)))
}

async function held (store: ChunkStore): Promise<Set<string>> {
  const out = new Set<string>()
  for await (const { id } of store.list()) out.add(id)
  return out
}

async function sizeOf (store: ChunkStore, set: Set<string>): Promise<number> {
  let n = 0
  for (const id of set) n += (await store.get(id)).length
  return n
}

/** A share as the book made it, with its signed manifest in base64 (as a friend saves it) */
type Made = MyShare & { manifest: string }

function decodeMine (share: Made, owner = me.publicKey): Manifest {
  return decodeManifest(Buffer.from(share.manifest, 'base64'), { owner })
}

/** A promise and its resolver, to hold one side of a race still. */
function gate (): { wait: Promise<void>, open: () => void } {
  let open!: () => void
  const wait = new Promise<void>(resolve => { open = resolve })
  return { wait, open }
}

/** Yields to the event loop until `check` holds (every step here is local I/O: a few ms). */
async function until (check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 5))
  }
}

describe('chunk collector', () => {
  let dir: string
  let cleanup: () => Promise<void>
  let db: Database
  let store: ChunkStore
  let shares: ShareBook
  let transfers: Record[]
  let active: boolean
  let gc: ChunkCollector

  /** Shares `path` as FileService does: chunks pinned until the manifest is saved. */
  async function share (path: string, book = shares, keys = me, into = store, pinned?: (pin: Pin) => Promise<void>): Promise<Made> {
    const pin = gc.pin()
    try {
      const { share, manifest } = await book.share({
        source: path,
        with: [],
        secretKey: keys.secretKey,
        publicKey: keys.publicKey,
        store: {
          put: async (id, sealed) => {
            await gc.use(id, pin)
            await pinned?.(pin)
            return await into.put(id, Buffer.concat(sealed), { sync: false })
          }
        }
      })
      return { ...share, manifest: Buffer.from(manifest).toString('base64') }
    } finally {
      pin.release()
    }
  }

  beforeEach(async () => {
    ({ dir, cleanup } = await tempDir())
    db = await openDatabase(join(dir, 'db'))
    store = await openChunkStore({ dir: join(dir, 'chunks'), db: sublevel(db, 'chunk-index'), sync: false })
    shares = new ShareBook(sublevel(db, 'shares'), sublevel(db, 'received-manifests'), bytesSublevel(db, 'share-manifests'), bytesSublevel(db, 'received-manifest-bytes'))
    transfers = []
    active = true
    gc = new ChunkCollector({
      store,
      mark: async () => await liveChunks({
        shares,
        publicKey: me.publicKey,
        transfers: () => transfers,
        friends: {
          get: peer => peer === FRIEND ? { publicKey: Buffer.from(friendKeys.publicKey).toString('base64') } : undefined,
          isActive: peer => peer === FRIEND && active
        }
      })
    })
    gc.start()
  })

  afterEach(async () => {
    await gc.stop()
    await db.close()
    await cleanup()
  })

  async function folder (name: string, files: Array<[string, number]>): Promise<string> {
    const root = join(dir, name)
    for (const [path, size] of files) {
      await mkdir(join(root, path, '..'), { recursive: true })
      await writeFile(join(root, path), pseudoRandom(size, `${name}/${path}`))
    }
    return root
  }

  it('frees an old version\'s changed chunks on re-share, an unshared share, and orphans; never a live chunk', async () => {
    const photos = await folder('photos', [['a.bin', 2 * MiB + 5], ['b.bin', MiB + 3], ['sub/c.txt', 1000]])
    const music = await folder('music', [['x.bin', MiB + 100]])
    const v1 = decodeMine(await share(photos))
    const m = decodeMine(await share(music))
    // a chunk nothing refers to, as a share that failed half-way leaves behind
    const stray = pseudoRandom(5000, 'stray')
    await store.put(chunkId(stray), stray)

    const first = await gc.collect()
    expect(first.freed).toEqual({ chunks: 1, bytes: 5000 })
    expect(await held(store)).toEqual(union(ids(v1), ids(m)))

    // change one file and share again: version 2 keeps the unchanged files' chunks
    await writeFile(join(photos, 'b.bin'), pseudoRandom(MiB + 3, 'photos/b.bin changed'))
    const v2Share = await share(photos)
    expect(v2Share.version).toBe(2)
    const v2 = decodeMine(v2Share)
    const gone = minus(ids(v1), ids(v2))
    expect(gone.size).toBe(2) // b.bin's two chunks
    const goneBytes = await sizeOf(store, gone)
    const second = await gc.collect()
    expect(second.freed).toEqual({ chunks: 2, bytes: goneBytes })
    expect(await held(store)).toEqual(union(ids(v2), ids(m)))

    // unshare music: all of it goes; photos stays whole and still assembles
    await shares.unshare('music')
    const musicBytes = await sizeOf(store, ids(m))
    const third = await gc.collect()
    expect(third.freed).toEqual({ chunks: ids(m).size, bytes: musicBytes })
    expect(await held(store)).toEqual(ids(v2))
    expect(third.store).toEqual({ chunks: ids(v2).size, bytes: store.stats().bytes, inFiles: 0 })
    const out = join(dir, 'out')
    await assembleShare({ store, keys: deriveSealKeys(Buffer.from(v2Share.key, 'base64'), v2.shareId), manifest: v2, root: out })
    expect(await readFile(join(out, 'b.bin'))).toEqual(await readFile(join(photos, 'b.bin')))
    expect(await readFile(join(out, 'a.bin'))).toEqual(await readFile(join(photos, 'a.bin')))

    // nothing left to free
    expect((await gc.collect()).freed).toEqual({ chunks: 0, bytes: 0 })
  })

  describe('friends\' shares I fetched', () => {
    let friendStore: ChunkStore
    let friendShares: ShareBook
    let shared: string

    beforeEach(async () => {
      friendStore = await openChunkStore({ dir: join(dir, 'friend-chunks'), db: sublevel(db, 'friend-index'), sync: false })
      friendShares = new ShareBook(sublevel(db, 'friend-shares'), sublevel(db, 'friend-received'), bytesSublevel(db, 'friend-share-manifests'), bytesSublevel(db, 'friend-received-bytes'))
      shared = await folder('theirs', [['one.bin', MiB + 1], ['sub/two.bin', MiB + 2], ['sub/three.bin', 700]])
    })

    /** The friend shares (again); I pin the manifest as transfers.fetch does, and fetch the chunks of `path`. */
    async function receive (path = ''): Promise<Manifest> {
      const made = await share(shared, friendShares, friendKeys, friendStore)
      const manifest = decodeMine(made, friendKeys.publicKey)
      await shares.saveReceived({ owner: FRIEND, shareId: made.id, version: made.version, wrappedKey: '', received: Date.now() }, Buffer.from(made.manifest, 'base64'))
      for (const id of ids(manifest, path)) await store.put(id, await friendStore.get(id))
      return manifest
    }

    function transfer (id: string, manifest: Manifest, state: Transfer['state'], path = ''): Record {
      const t = { id, owner: FRIEND, shareId: manifest.shareId, version: manifest.version, path, state }
      transfers.push(t)
      return t
    }

    it('keeps what open fetches need and the newest finished version; frees cancelled, superseded and revoked', async () => {
      const v1 = await receive()
      const t1 = transfer('t1', v1, 'running')
      for (const state of ['queued', 'running', 'paused', 'failed', 'done'] as const) {
        t1.state = state
        expect((await gc.collect()).freed.chunks, state).toBe(0)
      }
      expect(await held(store)).toEqual(ids(v1))

      // the friend changes one file; I finish fetching version 2: version 1's old chunks of it go
      await writeFile(join(shared, 'one.bin'), pseudoRandom(MiB + 1, 'one changed'))
      const v2 = await receive()
      transfer('t2', v2, 'running')
      expect((await gc.collect()).freed.chunks).toBe(0) // both in use until v2 is done
      transfers[1]!.state = 'done'
      const superseded = minus(ids(v1), ids(v2))
      expect(superseded.size).toBe(2)
      expect((await gc.collect()).freed.chunks).toBe(2)
      expect(await held(store)).toEqual(ids(v2))

      // revoking the friend: finished fetches are no longer served; an open one keeps its chunks
      await writeFile(join(shared, 'sub', 'three.bin'), pseudoRandom(800, 'three changed'))
      const v3 = await receive('sub')
      const t3 = transfer('t3', v3, 'paused', 'sub')
      active = false
      await gc.collect()
      expect(await held(store)).toEqual(ids(v3, 'sub'))
      // cancelling it frees the rest
      t3.state = 'cancelled'
      const last = await gc.collect()
      expect(await held(store)).toEqual(new Set())
      expect(last.store).toEqual({ chunks: 0, bytes: 0, inFiles: 0 })
    })

    it('keeps only the parts fetched, as of the newest finished version', async () => {
      const v1 = await receive('sub')
      transfer('t1', v1, 'done', 'sub')
      // one.bin's chunks, as a cancelled fetch of it left them: fetched by nothing finished, they go; sub's stay
      const one = minus(ids(v1), ids(v1, 'sub'))
      expect(one.size).toBe(2)
      for (const id of one) await store.put(id, await friendStore.get(id))
      await gc.collect()
      expect(await held(store)).toEqual(ids(v1, 'sub'))

      // version 2 drops sub/three.bin; a finished fetch of v2's one.bin supersedes v1: sub's chunks
      // are kept as of v2, so three.bin's go
      await rm(join(shared, 'sub', 'three.bin'))
      const v2 = await receive('')
      transfer('t2', v2, 'done', 'one.bin')
      const removed = minus(ids(v1), ids(v2))
      expect(removed.size).toBe(1)
      expect((await gc.collect()).freed.chunks).toBe(1)
      expect(await held(store)).toEqual(ids(v2))
    })

    it('names the manifests the live chunks come from, and the others can be pruned', async () => {
      const v1 = await receive()
      transfer('t1', v1, 'done')
      await writeFile(join(shared, 'one.bin'), pseudoRandom(MiB + 1, 'one changed'))
      const v2 = await receive()
      transfer('t2', v2, 'done')
      await writeFile(join(shared, 'one.bin'), pseudoRandom(MiB + 1, 'one changed again'))
      const v3 = await receive()
      transfer('t3', v3, 'paused')
      const key = (m: Manifest): string => `${FRIEND}/${m.shareId}/${m.version}`
      const used = new Set<string>()
      await liveChunks({ shares, publicKey: me.publicKey, transfers: () => transfers, friends: { get: () => ({ publicKey: Buffer.from(friendKeys.publicKey).toString('base64') }), isActive: () => true }, manifestsUsed: used })
      // the open fetch's and the newest finished version's; v1 is superseded
      expect(used).toEqual(new Set([key(v2), key(v3)]))
      // received just now: kept whatever the set says
      expect(await shares.pruneReceived(used, Date.now() - 3600_000)).toBe(0)
      expect(await shares.pruneReceived(used, Date.now() + 1)).toBe(1)
      expect(await shares.getReceived(FRIEND, v1.shareId, v1.version)).toBeUndefined()
      for (const m of [v2, v3]) expect((await shares.getReceived(FRIEND, m.shareId, m.version))?.version).toBe(m.version)
      // and the collector still marks from what is left
      expect((await gc.collect()).freed.chunks).toBeGreaterThan(0)
      expect(await held(store)).toEqual(new Set([...ids(v2), ...ids(v3)]))
    })

    it('deletes nothing when a manifest an open fetch needs is missing', async () => {
      const v1 = await receive()
      transfer('t1', v1, 'done')
      transfers.push({ id: 'lost', owner: FRIEND, shareId: v1.shareId, version: 9, path: '', state: 'paused' })
      const stray = pseudoRandom(3000, 'stray')
      await store.put(chunkId(stray), stray)
      const before = await held(store)
      await expectCodeAsync(gc.collect(), 'INTERNAL')
      expect(gc.status().error?.message).toContain('lost')
      expect(await held(store)).toEqual(before)
    })
  })

  describe('races', () => {
    it('a sweep while a share is being chunked keeps every chunk it wrote', async () => {
      const big = await folder('big', [['a.bin', 3 * MiB], ['b.bin', 3 * MiB], ['c.bin', MiB]])
      const stray = pseudoRandom(4000, 'stray')
      await store.put(chunkId(stray), stray)
      // hold the share after its third chunk, run a whole sweep, then let it go on
      const held3 = gate()
      const third = gate()
      let puts = 0
      const sharing = share(big, shares, me, store, async () => {
        if (++puts === 3) {
          third.open()
          await held3.wait
        }
      })
      await third.wait
      const during = await gc.collect()
      expect(during.freed.chunks).toBe(1) // the stray, nothing of the share
      held3.open()
      const made = await sharing
      const manifest = decodeMine(made)
      expect(await held(store)).toEqual(ids(manifest))
      expect((await gc.collect()).freed.chunks).toBe(0)
      const out = join(dir, 'out')
      await assembleShare({ store, keys: deriveSealKeys(Buffer.from(made.key, 'base64'), made.id), manifest, root: out })
      expect(await readFile(join(out, 'b.bin'))).toEqual(await readFile(join(big, 'b.bin')))
    })

    it('a share saved after the mark looked, before the sweep reached its chunks, keeps them', async () => {
      const big = await folder('big', [['a.bin', 2 * MiB], ['b.bin', MiB + 9]])
      const marked = gate()
      const go = gate()
      const slow = new ChunkCollector({
        store,
        mark: async () => {
          const live = await liveChunks({ shares, publicKey: me.publicKey, transfers: () => [], friends: { get: () => undefined, isActive: () => false } })
          marked.open()
          await go.wait
          return live
        }
      })
      slow.start()
      gc = slow // share() pins through it
      const cycle = slow.collect()
      await marked.wait
      // the mark saw no share; the share is made and saved, and its pin released, before the sweep runs
      const made = await share(big)
      go.open()
      const result = await cycle
      expect(result.freed.chunks).toBe(0)
      expect(result.inUse).toBe(ids(decodeMine(made)).size)
      expect(await held(store)).toEqual(ids(decodeMine(made)))
    })

    it('a fetch looking at a chunk the sweep is deleting waits, and sees it gone', async () => {
      const garbage = pseudoRandom(6000, 'garbage')
      const kept = pseudoRandom(6000, 'kept-by-use')
      const id = chunkId(garbage)
      await store.put(id, garbage)
      await store.put(chunkId(kept), kept)
      const deleting = gate()
      const release = gate()
      const slowStore: ChunkStore = {
        put: store.put.bind(store),
        putInFile: store.putInFile.bind(store),
        moveInFile: store.moveInFile.bind(store),
        has: store.has.bind(store),
        get: store.get.bind(store),
        getParts: store.getParts.bind(store),
        list: () => store.list(),
        stats: () => store.stats(),
        delete: async (x: string) => {
          if (x === id) {
            deleting.open()
            await release.wait
          }
          return await store.delete(x)
        }
      }
      const marked = gate()
      const go = gate()
      const slow = new ChunkCollector({
        store: slowStore,
        mark: async () => {
          marked.open()
          await go.wait
          return new Set()
        }
      })
      slow.start()
      const guarded = slow.guard(store)
      const cycle = slow.collect()
      await marked.wait
      // a fetch that starts after the mark finds one chunk held: that one is kept
      expect(await guarded.has(chunkId(kept))).toBe(true)
      go.open()
      await deleting.wait
      // the other is being deleted: has() waits for the delete and says it is gone
      let answer: boolean | undefined
      void guarded.has(id).then(a => { answer = a })
      await new Promise(resolve => setTimeout(resolve, 20))
      expect(answer).toBeUndefined()
      release.open()
      await until(() => answer !== undefined, 'has() to answer')
      expect(answer).toBe(false)
      const result = await cycle
      expect(result.freed.chunks).toBe(1)
      expect(result.inUse).toBe(1)
      // and the fetch stores it again
      expect(await guarded.put(id, garbage)).toBe(true)
      expect(await store.has(id)).toBe(true)
      await slow.stop()
    })

    it('runs one cycle at a time; calls during a cycle share the next one', async () => {
      const marks: number[] = []
      const first = gate()
      let n = 0
      const counting = new ChunkCollector({
        store,
        mark: async () => {
          marks.push(++n)
          if (n === 1) await first.wait
          return new Set()
        }
      })
      counting.start()
      const a = counting.collect()
      const b = counting.collect()
      const c = counting.collect()
      expect(counting.status().running).toBe(true)
      first.open()
      await Promise.all([a, b, c])
      expect(marks).toEqual([1, 2])
      await counting.stop()
      await expectCodeAsync(counting.collect(), 'INTERNAL')
    })
  })
})
