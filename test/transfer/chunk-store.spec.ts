import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { readdir, readFile, rename, rm, stat, truncate, utimes, writeFile, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Level } from 'level'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { MAX_SEALED_CHUNK_SIZE, PARTIAL_SUFFIX } from '../../src/transfer/constants.ts'
import { openChunkStore, type ChunkStore } from '../../src/transfer/chunk-store.ts'
import { chunkId, deriveSealKeys, generateShareId, generateShareKey, sealChunk, type SealKeys } from '../../src/transfer/seal.ts'
import { expectCodeAsync, pseudoRandom, tempDir } from './helpers.ts'

/** Files under `dir`, relative, tmp/ included. */
async function files (dir: string): Promise<string[]> {
  const out: string[] = []
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (entry.isFile()) out.push(join(entry.parentPath, entry.name).slice(dir.length + 1))
  }
  return out.sort()
}

function chunk (seed: string, size = 1000): { id: string, bytes: Buffer } {
  const bytes = pseudoRandom(size, seed)
  return { id: chunkId(bytes), bytes }
}

describe('chunk store', () => {
  let dir: string
  let cleanup: () => Promise<void>
  let db: Level
  let store: ChunkStore
  let chunks: string

  beforeEach(async () => {
    ({ dir, cleanup } = await tempDir())
    chunks = join(dir, 'chunks')
    db = new Level(join(dir, 'db'))
    store = await openChunkStore({ dir: chunks, db: db.sublevel('transfer') })
  })

  afterEach(async () => {
    await db.close()
    await cleanup()
  })

  async function reopen (): Promise<void> {
    await db.close()
    db = new Level(join(dir, 'db'))
    store = await openChunkStore({ dir: chunks, db: db.sublevel('transfer') })
  }

  it('puts, has, gets, lists and deletes', async () => {
    const a = chunk('a')
    const b = chunk('b', 5000)
    expect(await store.has(a.id)).toBe(false)
    expect(await store.put(a.id, a.bytes)).toBe(true)
    expect(await store.put(b.id, b.bytes)).toBe(true)
    expect(await store.has(a.id)).toBe(true)
    expect(Buffer.from(await store.get(a.id)).equals(a.bytes)).toBe(true)
    expect(store.stats()).toEqual({ count: 2, bytes: 6000, inFiles: 0 })
    const listed = []
    for await (const info of store.list()) listed.push(info)
    expect(listed).toEqual([a, b].map(c => ({ id: c.id, size: c.bytes.length, inFile: false })).sort((x, y) => x.id < y.id ? -1 : 1))
    expect(await files(chunks)).toEqual([a.id, b.id].map(id => `${id.slice(0, 2)}/${id}`).sort())

    expect(await store.delete(a.id)).toBe(true)
    expect(await store.delete(a.id)).toBe(false)
    expect(await store.has(a.id)).toBe(false)
    await expectCodeAsync(store.get(a.id), 'CHUNK_NOT_FOUND')
    expect(store.stats()).toEqual({ count: 1, bytes: 5000, inFiles: 0 })
    expect(await files(chunks)).toEqual([`${b.id.slice(0, 2)}/${b.id}`])
  })

  it('records chunks put at once in shared database batches, with exact stats', async () => {
    const many = Array.from({ length: 40 }, (_, i) => chunk(`many-${i}`, 100 + i))
    let batches = 0
    const batch = db.batch.bind(db)
    db.batch = ((...args: Parameters<typeof batch>) => { batches++; return batch(...args) }) as typeof db.batch
    expect(await Promise.all(many.map(async c => await store.put(c.id, c.bytes)))).toEqual(many.map(() => true))
    // one change each would be 40 batches; the first goes alone, the rest wait for it and go together
    expect(batches).toBeGreaterThan(0)
    expect(batches).toBeLessThan(many.length / 2)
    const bytes = many.reduce((sum, c) => sum + c.bytes.length, 0)
    expect(store.stats()).toEqual({ count: 40, bytes, inFiles: 0 })
    await reopen()
    expect(store.stats()).toEqual({ count: 40, bytes, inFiles: 0 })
    for (const c of many) expect(await store.has(c.id)).toBe(true)
  })

  it('stores a chunk once, however often it is put', async () => {
    const a = chunk('a')
    const results = await Promise.all(Array.from({ length: 5 }, async () => store.put(a.id, a.bytes)))
    expect(results.filter(Boolean)).toHaveLength(1)
    expect(await store.put(a.id, a.bytes)).toBe(false)
    expect(store.stats()).toEqual({ count: 1, bytes: 1000, inFiles: 0 })
  })

  it('refuses bytes that do not match the id and changes nothing', async () => {
    const a = chunk('a')
    const b = chunk('b')
    await store.put(b.id, b.bytes)
    const before = await files(chunks)
    await expectCodeAsync(store.put(a.id, b.bytes), 'CHUNK_HASH_MISMATCH')
    const flipped = Buffer.from(a.bytes)
    flipped[500]! ^= 1
    await expectCodeAsync(store.put(a.id, flipped), 'CHUNK_HASH_MISMATCH')
    await expectCodeAsync(store.put(a.id, a.bytes.subarray(0, 999)), 'CHUNK_HASH_MISMATCH')
    expect(await store.has(a.id)).toBe(false)
    expect(await files(chunks)).toEqual(before)
    expect(store.stats()).toEqual({ count: 1, bytes: 1000, inFiles: 0 })
  })

  it('refuses bad ids and sizes', async () => {
    const a = chunk('a')
    for (const bad of ['', 'xyz', a.id.toUpperCase(), a.id.slice(1), `../${a.id.slice(3)}`]) {
      await expectCodeAsync(store.put(bad, a.bytes), 'CHUNK_BAD_ID')
      await expectCodeAsync(store.get(bad), 'CHUNK_BAD_ID')
      await expectCodeAsync(store.has(bad), 'CHUNK_BAD_ID')
      await expectCodeAsync(store.delete(bad), 'CHUNK_BAD_ID')
    }
    const big = Buffer.alloc(MAX_SEALED_CHUNK_SIZE + 1)
    await expectCodeAsync(store.put(chunkId(big), big), 'CHUNK_TOO_LARGE')
    await expectCodeAsync(store.put(chunkId(Buffer.alloc(3)), Buffer.alloc(3)), 'CHUNK_TOO_LARGE')
    expect(await files(chunks)).toEqual([])
  })

  it('detects a chunk damaged on disk, drops it, and takes it again', async () => {
    const a = chunk('a')
    await store.put(a.id, a.bytes)
    const path = join(chunks, a.id.slice(0, 2), a.id)
    const damaged = Buffer.from(a.bytes)
    damaged[10]! ^= 0x40
    await writeFile(path, damaged)
    await expectCodeAsync(store.get(a.id), 'CHUNK_CORRUPT')
    expect(await store.has(a.id)).toBe(false)
    expect(store.stats()).toEqual({ count: 0, bytes: 0, inFiles: 0 })
    expect(await files(chunks)).toEqual([])
    await expectCodeAsync(store.get(a.id), 'CHUNK_NOT_FOUND')
    expect(await store.put(a.id, a.bytes)).toBe(true)
    expect(Buffer.from(await store.get(a.id)).equals(a.bytes)).toBe(true)
  })

  it('detects a truncated chunk file (corrupt) and a missing one (not found), and drops both', async () => {
    const a = chunk('a')
    const b = chunk('b')
    await store.put(a.id, a.bytes)
    await store.put(b.id, b.bytes)
    await truncate(join(chunks, a.id.slice(0, 2), a.id), 500)
    await rm(join(chunks, b.id.slice(0, 2), b.id))
    await expectCodeAsync(store.get(a.id), 'CHUNK_CORRUPT')
    // a file that is gone is not found, not damaged (a backup host's audit answer tells the two apart)
    await expectCodeAsync(store.get(b.id), 'CHUNK_NOT_FOUND')
    expect(store.stats()).toEqual({ count: 0, bytes: 0, inFiles: 0 })
  })

  it('survives a reopen with its index and stats', async () => {
    const a = chunk('a')
    await store.put(a.id, a.bytes)
    await reopen()
    expect(store.stats()).toEqual({ count: 1, bytes: 1000, inFiles: 0 })
    expect(Buffer.from(await store.get(a.id)).equals(a.bytes)).toBe(true)
  })

  it('clears writes a kill left behind, and ignores unindexed files', async () => {
    const a = chunk('a')
    const b = chunk('b')
    await store.put(a.id, a.bytes)
    // A kill mid-write leaves a temp file; a kill between rename and index
    // leaves a whole but unindexed chunk file.
    await writeFile(join(chunks, 'tmp', `${b.id}.000000000000.tmp`), b.bytes.subarray(0, 10))
    await mkdir(join(chunks, b.id.slice(0, 2)), { recursive: true })
    await writeFile(join(chunks, b.id.slice(0, 2), b.id), Buffer.from('not the chunk'))
    await reopen()
    expect(await readdir(join(chunks, 'tmp'))).toEqual([])
    expect(await store.has(b.id)).toBe(false)
    await expectCodeAsync(store.get(b.id), 'CHUNK_NOT_FOUND')
    expect(await store.put(b.id, b.bytes)).toBe(true)
    expect(await readFile(join(chunks, b.id.slice(0, 2), b.id))).toEqual(b.bytes)
    expect(store.stats()).toEqual({ count: 2, bytes: 2000, inFiles: 0 })
  })

  it('keeps a private copy of the bytes it was given', async () => {
    const a = chunk('a')
    const mine = Buffer.from(a.bytes)
    const pending = store.put(a.id, mine)
    mine.fill(0)
    await pending
    expect(Buffer.from(await store.get(a.id)).equals(a.bytes)).toBe(true)
  })

  it('works on a whole Level as well as a sublevel', async () => {
    const other = new Level(join(dir, 'db2'))
    try {
      const s = await openChunkStore({ dir: join(dir, 'chunks2'), db: other, sync: false })
      const a = chunk('a')
      await s.put(a.id, a.bytes)
      expect(await s.has(a.id)).toBe(true)
    } finally {
      await other.close()
    }
  })

  describe('chunks held in files', () => {
    const OWNER = 'owner-peer-id'
    const shareId = generateShareId()
    const keys = deriveSealKeys(generateShareKey(), shareId)
    /** what the resolver knows, by `${shareId}/${owner}` */
    let known: Map<string, SealKeys>
    let asked: Array<[string, string]>
    /** a fetched file holding two chunks: 4096 bytes at 0 and 1000 at 4096 */
    let path: string
    let content: Buffer
    let held: Array<{ id: string, sealed: Uint8Array, offset: number, position: { shareId: string, fileHash: string, index: number } }>

    async function openWithKeys (): Promise<void> {
      await db.close()
      db = new Level(join(dir, 'db'))
      store = await openChunkStore({
        dir: chunks,
        db: db.sublevel('transfer'),
        keys: async (share, owner) => {
          asked.push([share, owner])
          return known.get(`${share}/${owner}`)
        }
      })
    }

    /** Seals `bytes` as chunks of the file `content` whose plaintext lies at their offsets. */
    function sealFile (bytes: Buffer, layout: Array<[offset: number, length: number]>): typeof held {
      const fileHash = createHash('sha256').update(bytes).digest('hex')
      return layout.map(([offset, length], index) => {
        const position = { shareId, fileHash, index }
        const sealed = sealChunk(keys, position, bytes.subarray(offset, offset + length))
        return { id: chunkId(sealed), sealed, offset, position }
      })
    }

    async function putAll (file: string, chunksOfFile: typeof held): Promise<void> {
      for (const c of chunksOfFile) {
        expect(await store.putInFile(c.id, c.sealed, { path: file, offset: c.offset, position: c.position, owner: OWNER })).toBe(true)
      }
    }

    async function listed (): Promise<unknown[]> {
      const out = []
      for await (const info of store.list()) out.push(info)
      return out
    }

    beforeEach(async () => {
      known = new Map([[`${shareId}/${OWNER}`, keys]])
      asked = []
      await openWithKeys()
      await mkdir(join(dir, 'fetched'))
      path = join(dir, 'fetched', 'file.bin')
      content = pseudoRandom(4096 + 1000, 'fetched')
      await writeFile(path, content)
      held = sealFile(content, [[0, 4096], [4096, 1000]])
    })

    it('serves them sealed again, byte for byte, and writes no sealed copy', async () => {
      await putAll(path, held)
      for (const c of held) {
        expect(await store.has(c.id)).toBe(true)
        expect(Buffer.from(await store.get(c.id)).equals(c.sealed)).toBe(true)
        // in pieces for sending, not joined into one buffer
        const parts = await store.getParts(c.id)
        expect(parts.length).toBeGreaterThan(1)
        expect(Buffer.concat(parts).equals(c.sealed)).toBe(true)
        expect(chunkId(parts)).toBe(c.id)
      }
      expect(asked).toContainEqual([shareId, OWNER])
      expect(store.stats()).toEqual({ count: 2, bytes: 0, inFiles: 2 })
      expect(await listed()).toEqual(held.map(c => ({ id: c.id, size: c.sealed.length, inFile: true })).sort((x, y) => x.id < y.id ? -1 : 1))
      expect(await files(chunks)).toEqual([])
      expect((await readFile(path)).equals(content)).toBe(true)
    })

    it('holds a chunk once, sealed or in a file', async () => {
      const [first, second] = held as [typeof held[0], typeof held[0]]
      await putAll(path, [first])
      expect(await store.putInFile(first.id, first.sealed, { path, offset: first.offset, position: first.position, owner: OWNER })).toBe(false)
      expect(await store.put(first.id, first.sealed)).toBe(false) // held in the file already: no sealed copy
      expect(await store.put(second.id, second.sealed)).toBe(true)
      expect(await store.putInFile(second.id, second.sealed, { path, offset: second.offset, position: second.position, owner: OWNER })).toBe(false)
      expect(store.stats()).toEqual({ count: 2, bytes: second.sealed.length, inFiles: 1 })
      expect(await files(chunks)).toEqual([`${second.id.slice(0, 2)}/${second.id}`])
      expect(await listed()).toEqual([
        { id: first.id, size: first.sealed.length, inFile: true },
        { id: second.id, size: second.sealed.length, inFile: false }
      ].sort((x, y) => x.id < y.id ? -1 : 1))
    })

    it('with replace (sharing), points a chunk held elsewhere or sealed at where it was just read, and deletes the sealed copy', async () => {
      const [first, second] = held as [typeof held[0], typeof held[0]]
      // first is held in a file since renamed; second as a sealed copy (kith before shares were held in files)
      const old = join(dir, 'fetched', 'old-name.bin')
      await putAll(old, [first])
      expect(await store.put(second.id, second.sealed)).toBe(true)
      expect(store.stats()).toEqual({ count: 2, bytes: second.sealed.length, inFiles: 1 })
      const at = (c: typeof first) => ({ path, offset: c.offset, position: c.position, owner: OWNER })
      // without replace, both stay where they are
      expect(await store.putInFile(first.id, first.sealed, at(first))).toBe(false)
      expect(await store.putInFile(second.id, second.sealed, at(second))).toBe(false)
      // with it, both move here; the same place again changes nothing
      expect(await store.putInFile(first.id, first.sealed, at(first), { replace: true })).toBe(true)
      expect(await store.putInFile(second.id, second.sealed, at(second), { replace: true })).toBe(true)
      expect(await store.putInFile(second.id, second.sealed, at(second), { replace: true })).toBe(false)
      // the same place with the file's newer size and mtime (shared again after a touch): those are taken
      expect(await store.putInFile(second.id, second.sealed, { ...at(second), seen: { size: content.length, mtimeMs: 1 } }, { replace: true })).toBe(true)
      expect(store.stats()).toEqual({ count: 2, bytes: 0, inFiles: 2 })
      expect(await files(chunks)).toEqual([])
      for (const c of held) expect(Buffer.from(await store.get(c.id)).equals(c.sealed)).toBe(true)
    })

    it('answers has() from the file\'s size and mtime, and checks the bytes again only once they differ', async () => {
      const dropped: string[] = []
      await db.close()
      db = new Level(join(dir, 'db'))
      store = await openChunkStore({
        dir: chunks,
        db: db.sublevel('transfer'),
        keys: async (share, owner) => { asked.push([share, owner]); return known.get(`${share}/${owner}`) },
        onDropped: id => { dropped.push(id) }
      })
      const info = await stat(path)
      for (const c of held) {
        expect(await store.putInFile(c.id, c.sealed, { path, offset: c.offset, position: c.position, owner: OWNER, seen: { size: info.size, mtimeMs: info.mtimeMs } })).toBe(true)
      }
      // unchanged: no read at all
      for (const c of held) expect(await store.has(c.id)).toBe(true)
      expect(asked).toEqual([])
      // touched, same bytes: checked once, then trusted again
      const later = new Date(info.mtimeMs + 5000)
      await utimes(path, later, later)
      for (const c of held) expect(await store.has(c.id)).toBe(true)
      expect(asked.length).toBe(2)
      for (const c of held) expect(await store.has(c.id)).toBe(true)
      expect(asked.length).toBe(2)
      // the first chunk's bytes changed: not held (dropped, and the owner told), the second still is
      const changed = Buffer.from(content)
      changed[10]! ^= 0x01
      await writeFile(path, changed)
      expect(await store.has(held[0]!.id)).toBe(false)
      expect(await store.has(held[1]!.id)).toBe(true)
      expect(dropped).toEqual([held[0]!.id])
      expect(store.stats()).toEqual({ count: 1, bytes: 0, inFiles: 1 })
      expect((await readFile(path)).equals(changed)).toBe(true)
    })

    it('drops a chunk whose file changed, and never touches the file', async () => {
      await putAll(path, held)
      const changed = Buffer.from(content)
      changed[100]! ^= 0x01 // in the first chunk
      await writeFile(path, changed)
      await expectCodeAsync(store.get(held[0]!.id), 'CHUNK_CORRUPT')
      expect(await store.has(held[0]!.id)).toBe(false)
      expect(store.stats()).toEqual({ count: 1, bytes: 0, inFiles: 1 })
      await expectCodeAsync(store.get(held[0]!.id), 'CHUNK_NOT_FOUND')
      expect((await readFile(path)).equals(changed)).toBe(true)
      // the other chunk's bytes are unchanged: still served
      expect(Buffer.from(await store.get(held[1]!.id)).equals(held[1]!.sealed)).toBe(true)
      expect(await files(chunks)).toEqual([])
    })

    it('reads a file replaced under its path as the new file at once, though the old one was open', async () => {
      await putAll(path, held)
      // read once: the store keeps the file open for the reads that follow
      expect(Buffer.from(await store.get(held[1]!.id)).equals(held[1]!.sealed)).toBe(true)
      const other = Buffer.from(content)
      other[4096 + 10]! ^= 0x01 // in the second chunk
      await writeFile(path + '.new', other)
      await rename(path + '.new', path)
      await expectCodeAsync(store.get(held[1]!.id), 'CHUNK_CORRUPT')
      // the first chunk's bytes are the same in the new file: still served
      expect(Buffer.from(await store.get(held[0]!.id)).equals(held[0]!.sealed)).toBe(true)
    })

    it('drops chunks whose file was cut short or went away', async () => {
      await putAll(path, held)
      await truncate(path, 4096 + 500)
      await expectCodeAsync(store.get(held[1]!.id), 'CHUNK_CORRUPT')
      expect(Buffer.from(await store.get(held[0]!.id)).equals(held[0]!.sealed)).toBe(true)
      expect((await readFile(path)).equals(content.subarray(0, 4096 + 500))).toBe(true)
      await rm(path)
      await expectCodeAsync(store.get(held[0]!.id), 'CHUNK_CORRUPT')
      expect(await store.has(held[0]!.id)).toBe(false)
      expect(await store.has(held[1]!.id)).toBe(false)
      expect(store.stats()).toEqual({ count: 0, bytes: 0, inFiles: 0 })
    })

    it("counts a chunk as gone when its share's keys are unknown", async () => {
      await putAll(path, held)
      known.clear() // say, its owner is no longer a friend
      await expectCodeAsync(store.get(held[0]!.id), 'CHUNK_CORRUPT')
      expect(await store.has(held[0]!.id)).toBe(false)
      expect(asked).toContainEqual([shareId, OWNER])
      expect(store.stats()).toEqual({ count: 1, bytes: 0, inFiles: 1 })
      // a store with no resolver at all cannot read them either
      await db.close()
      db = new Level(join(dir, 'db'))
      store = await openChunkStore({ dir: chunks, db: db.sublevel('transfer') })
      await expectCodeAsync(store.get(held[1]!.id), 'CHUNK_CORRUPT')
      expect(store.stats()).toEqual({ count: 0, bytes: 0, inFiles: 0 })
      expect((await readFile(path)).equals(content)).toBe(true)
    })

    it('only forgets a chunk held in a file on delete; the file stays', async () => {
      await putAll(path, held)
      expect(await store.delete(held[0]!.id)).toBe(true)
      expect(await store.delete(held[0]!.id)).toBe(false)
      expect(await store.has(held[0]!.id)).toBe(false)
      await expectCodeAsync(store.get(held[0]!.id), 'CHUNK_NOT_FOUND')
      expect(store.stats()).toEqual({ count: 1, bytes: 0, inFiles: 1 })
      expect((await readFile(path)).equals(content)).toBe(true)
      expect(Buffer.from(await store.get(held[1]!.id)).equals(held[1]!.sealed)).toBe(true)
    })

    it('follows a file moved with moveInFile, and leaves records of other files alone', async () => {
      await putAll(path, held)
      const otherPath = join(dir, 'fetched', 'other.bin')
      const otherContent = pseudoRandom(3000, 'other')
      await writeFile(otherPath, otherContent)
      const other = sealFile(otherContent, [[0, 3000]])
      await putAll(otherPath, other)
      const moved = join(dir, 'fetched', 'moved.bin')
      await rename(path, moved)
      const unknown = chunk('not held').id
      await store.moveInFile([...held.map(c => c.id), other[0]!.id, held[0]!.id, unknown], path, moved)
      for (const c of held) expect(Buffer.from(await store.get(c.id)).equals(c.sealed)).toBe(true)
      expect(Buffer.from(await store.get(other[0]!.id)).equals(other[0]!.sealed)).toBe(true) // still read from other.bin
      expect(await store.has(unknown)).toBe(false)
      expect(store.stats()).toEqual({ count: 3, bytes: 0, inFiles: 3 })
      // moving from a path the records do not name changes nothing
      await store.moveInFile(held.map(c => c.id), path, otherPath)
      for (const c of held) expect(Buffer.from(await store.get(c.id)).equals(c.sealed)).toBe(true)
      // and the move is in the index, not only in memory
      await openWithKeys()
      for (const c of held) expect(Buffer.from(await store.get(c.id)).equals(c.sealed)).toBe(true)
    })

    it('reads each row from the database once: a fetch asks, records and moves it; a friend asks HAVE, then GET', async () => {
      let reads = 0
      class CountingLevel extends Level {
        // every get, of the store's sublevels too, ends in the root's _get (abstract-level)
        async _get (key: unknown, options: unknown): Promise<unknown> {
          reads++
          return await (Level.prototype as any)._get.call(this, key, options)
        }
      }
      await db.close()
      db = new CountingLevel(join(dir, 'db'))
      store = await openChunkStore({ dir: chunks, db: db.sublevel('transfer'), keys: async () => keys })
      reads = 0
      const ids = held.map(c => c.id)
      for (const id of ids) expect(await store.has(id)).toBe(false)
      const partial = join(dir, 'fetched', `.file${PARTIAL_SUFFIX}`)
      await writeFile(partial, content)
      await putAll(partial, held)
      await rename(partial, path)
      await store.moveInFile(ids, partial, path)
      expect(reads).toBe(ids.length)
      for (const id of ids) expect(await store.has(id)).toBe(true)
      for (const c of held) expect(Buffer.from(await store.get(c.id)).equals(c.sealed)).toBe(true)
      expect(reads).toBe(ids.length)
      // what it answered is what the database holds
      await openWithKeys()
      for (const c of held) expect(Buffer.from(await store.get(c.id)).equals(c.sealed)).toBe(true)
    })

    it('keeps inFiles across a reopen, and counts them again without a stats row', async () => {
      await putAll(path, held)
      const a = chunk('a')
      await store.put(a.id, a.bytes)
      expect(store.stats()).toEqual({ count: 3, bytes: 1000, inFiles: 2 })
      await openWithKeys()
      expect(store.stats()).toEqual({ count: 3, bytes: 1000, inFiles: 2 })
      await db.sublevel('transfer').sublevel('meta').del('stats') // a store from before stats were kept
      await openWithKeys()
      expect(store.stats()).toEqual({ count: 3, bytes: 1000, inFiles: 2 })
      for (const c of held) expect(Buffer.from(await store.get(c.id)).equals(c.sealed)).toBe(true)
    })

    it('refuses a bad offset, id or size, changing nothing', async () => {
      const [c] = held as [typeof held[0]]
      const ref = { path, position: c.position, owner: OWNER }
      await expectCodeAsync(store.putInFile(c.id, c.sealed, { ...ref, offset: -1 }), 'BAD_REQUEST')
      await expectCodeAsync(store.putInFile(c.id, c.sealed, { ...ref, offset: 1.5 }), 'BAD_REQUEST')
      await expectCodeAsync(store.putInFile(c.id, c.sealed, { ...ref, offset: Number.NaN }), 'BAD_REQUEST')
      await expectCodeAsync(store.putInFile(c.id.toUpperCase(), c.sealed, { ...ref, offset: 0 }), 'CHUNK_BAD_ID')
      await expectCodeAsync(store.putInFile(c.id, new Uint8Array(3), { ...ref, offset: 0 }), 'CHUNK_TOO_LARGE')
      await expectCodeAsync(store.moveInFile(['xyz'], path, path), 'CHUNK_BAD_ID')
      expect(await store.has(c.id)).toBe(false)
      expect(store.stats()).toEqual({ count: 0, bytes: 0, inFiles: 0 })
    })
  })

  it('loses nothing indexed when its writer is killed -9 mid-put', async () => {
    await db.close()
    const script = fileURLToPath(new URL('./fixtures/put-loop.ts', import.meta.url))
    const child = spawn(process.execPath, [script, dir], { stdio: ['ignore', 'pipe', 'inherit'] })
    const printed: string[] = []
    await new Promise<void>((resolve, reject) => {
      let text = ''
      child.stdout.on('data', (data: Buffer) => {
        text += data.toString()
        const lines = text.split('\n')
        text = lines.pop()!
        printed.push(...lines)
        if (printed.length >= 12) resolve()
      })
      child.on('exit', code => reject(new Error(`writer exited early (${code})`)))
    })
    child.kill('SIGKILL')
    await new Promise(resolve => child.once('close', resolve))

    db = new Level(join(dir, 'db'))
    const reopened = await openChunkStore({ dir: join(dir, 'chunks'), db })
    expect(await readdir(join(dir, 'chunks', 'tmp'))).toEqual([])
    const held: string[] = []
    for await (const { id, size } of reopened.list()) {
      expect(chunkId(await reopened.get(id))).toBe(id)
      expect(size).toBe(256 * 1024)
      held.push(id)
    }
    // Every put that returned is held; at most the one in flight is not.
    for (const id of printed) expect(held).toContain(id)
    expect(held.length - printed.length).toBeLessThanOrEqual(1)
    expect(reopened.stats()).toEqual({ count: held.length, bytes: held.length * 256 * 1024, inFiles: 0 })
  })
})
