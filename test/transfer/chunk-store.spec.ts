import { spawn } from 'node:child_process'
import { readdir, readFile, rm, truncate, writeFile, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Level } from 'level'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { MAX_SEALED_CHUNK_SIZE } from '../../src/transfer/constants.ts'
import { openChunkStore, type ChunkStore } from '../../src/transfer/chunk-store.ts'
import { chunkId } from '../../src/transfer/seal.ts'
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
    expect(listed).toEqual([a, b].map(c => ({ id: c.id, size: c.bytes.length })).sort((x, y) => x.id < y.id ? -1 : 1))
    expect(await files(chunks)).toEqual([a.id, b.id].map(id => `${id.slice(0, 2)}/${id}`).sort())

    expect(await store.delete(a.id)).toBe(true)
    expect(await store.delete(a.id)).toBe(false)
    expect(await store.has(a.id)).toBe(false)
    await expectCodeAsync(store.get(a.id), 'CHUNK_NOT_FOUND')
    expect(store.stats()).toEqual({ count: 1, bytes: 5000, inFiles: 0 })
    expect(await files(chunks)).toEqual([`${b.id.slice(0, 2)}/${b.id}`])
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

  it('detects a truncated or missing chunk file', async () => {
    const a = chunk('a')
    const b = chunk('b')
    await store.put(a.id, a.bytes)
    await store.put(b.id, b.bytes)
    await truncate(join(chunks, a.id.slice(0, 2), a.id), 500)
    await rm(join(chunks, b.id.slice(0, 2), b.id))
    await expectCodeAsync(store.get(a.id), 'CHUNK_CORRUPT')
    await expectCodeAsync(store.get(b.id), 'CHUNK_CORRUPT')
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
