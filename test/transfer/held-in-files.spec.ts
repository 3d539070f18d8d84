import { mkdir, readdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Level } from 'level'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { MIN_CHUNK_SIZE, PARTIAL_SUFFIX } from '../../src/transfer/constants.ts'
import { openChunkStore, type ChunkStore } from '../../src/transfer/chunk-store.ts'
import { chunkSource } from '../../src/transfer/chunker.ts'
import { ShareAssembly, sharePartialPath, targetList } from '../../src/transfer/assemble.ts'
import { createManifest, type Manifest, type ManifestFile } from '../../src/transfer/manifest.ts'
import { deriveSealKeys, generateShareId, generateShareKey } from '../../src/transfer/seal.ts'
import { keypair, pseudoRandom, sealedSink, tempDir } from './helpers.ts'

/**
 * Chunks held in fetched files, where a fetch's assembly and the store meet:
 * placing a file while friends ask for its chunks, pausing while a file is
 * being placed, a user who replaces or deletes a fetched file, and two
 * fetches of the same share. (Found in review; each failed before its fix.)
 */
const CS = MIN_CHUNK_SIZE
const owner = keypair(4)
const OWNER = 'owner-peer'
const shareId = generateShareId()
const keys = deriveSealKeys(generateShareKey(), shareId)

let dir: string
let out: string
let cleanup: () => Promise<void>
let db: Level
let source: ChunkStore
let manifest: Manifest

beforeEach(async () => {
  ({ dir, cleanup } = await tempDir())
  out = join(dir, 'out')
  await mkdir(out)
  db = new Level(join(dir, 'db'))
  source = await openChunkStore({ dir: join(dir, 'chunks'), db: db.sublevel('source') })
  await mkdir(join(dir, 'f'))
  await writeFile(join(dir, 'f', 'a.bin'), pseudoRandom(3 * CS + 7, 'a'))
  const { entries } = await chunkSource(join(dir, 'f'), { keys, version: 1, store: sealedSink(source), chunkSize: CS })
  manifest = createManifest({ ...owner, shareId, version: 1, name: 'f', chunkSize: CS, entries }).manifest
})

afterEach(async () => {
  await db.close()
  await cleanup()
})

/** The fetching node's store: empty, with the share's keys. */
async function fetcherStore (): Promise<ChunkStore> {
  return await openChunkStore({ dir: join(dir, 'fetcher-chunks'), db: db.sublevel('fetcher'), keys: async (s, o) => s === shareId && o === OWNER ? keys : undefined })
}

const entry = (): ManifestFile => manifest.entries.find(e => e.type === 'file') as ManifestFile
const fileIndex = (): number => manifest.entries.findIndex(e => e.type === 'file')

function assembly (store: Pick<ChunkStore, 'get' | 'has' | 'put' | 'putInFile' | 'moveInFile'>, dest: string, partialKey: string): ShareAssembly {
  return new ShareAssembly({ store, keys, owner: OWNER, manifest, targets: targetList([{ file: fileIndex(), dest }]), partialKey })
}

/** A fetch of the whole file into `out/a.bin`, done: its chunks are held there. */
async function fetchWhole (): Promise<{ store: ChunkStore, dest: string }> {
  const store = await fetcherStore()
  const dest = join(out, 'a.bin')
  const a = assembly(store, dest, 't1')
  for (const id of a.wanted()) await a.put(id, await source.get(id))
  await a.finish()
  return { store, dest }
}

/** A store whose putInFile for the last chunk waits at a gate; `entered` resolves when it gets there. */
function gatedLastRecord (store: ChunkStore): { store: ChunkStore, entered: Promise<void>, release: () => void } {
  const entered = Promise.withResolvers<void>()
  const gate = Promise.withResolvers<void>()
  const last = entry().chunks.at(-1)
  return {
    store: {
      ...store,
      get: store.get.bind(store),
      has: store.has.bind(store),
      moveInFile: store.moveInFile.bind(store),
      putInFile: async (id, sealed, ref) => {
        if (id === last) {
          entered.resolve()
          await gate.promise
        }
        return await store.putInFile(id, sealed, ref)
      }
    },
    entered: entered.promise,
    release: () => { gate.resolve() }
  }
}

describe('chunks held in fetched files', () => {
  it('a chunk asked for while its file is being placed is not dropped, and is served from the placed file after', async () => {
    const store = await fetcherStore()
    const moving = Promise.withResolvers<void>()
    const gate = Promise.withResolvers<void>()
    const slowMove: ChunkStore = {
      ...store,
      get: store.get.bind(store),
      has: store.has.bind(store),
      putInFile: store.putInFile.bind(store),
      moveInFile: async (ids, from, to) => {
        moving.resolve()
        await gate.promise
        await store.moveInFile(ids, from, to)
      }
    }
    const a = assembly(slowMove, join(out, 'a.bin'), 't1')
    for (const id of a.wanted()) await a.put(id, await source.get(id))
    await moving.promise // placed: the partial is gone, the records still name it
    const first = entry().chunks[0]!
    await expect(store.get(first)).rejects.toMatchObject({ code: 'CHUNK_NOT_FOUND' })
    gate.resolve()
    await a.finish()
    expect(await store.has(first)).toBe(true)
    expect(Buffer.from(await store.get(first))).toEqual(Buffer.from(await source.get(first)))
  })

  it('a fetched file replaced by a folder is dropped, and a second fetch of the share is not upset by it', async () => {
    const { store, dest } = await fetchWhole()
    await rm(dest)
    await mkdir(dest)
    const first = entry().chunks[0]!
    expect(await store.has(first)).toBe(false)
    await expect(store.get(first)).rejects.toMatchObject({ code: 'CHUNK_CORRUPT' })
    await expect(store.get(first)).rejects.toMatchObject({ code: 'CHUNK_NOT_FOUND' })
    await mkdir(join(out, 'other'))
    const b = assembly(store, join(out, 'other', 'a.bin'), 't2')
    await b.fill() // what is gone is left for the fetch
    expect(b.wanted()).toContain(first)
    await b.close()
  })

  it('close() waits for a file its last write completed to be placed, and a resume at once finds it done', async () => {
    const store = await fetcherStore()
    const gated = gatedLastRecord(store)
    const dest = join(out, 'a.bin')
    const ids = entry().chunks
    const a = assembly(gated.store, dest, 't1')
    for (const id of ids.slice(0, -1)) await a.put(id, await source.get(id))
    const last = a.put(ids.at(-1)!, await source.get(ids.at(-1)!))
    await gated.entered
    const closing = a.close()
    gated.release()
    await last
    await closing
    // nothing goes on behind the caller's back: the file is in place and its partial gone
    expect(await readdir(out)).toEqual(['a.bin'])
    for (const id of ids) expect(Buffer.from(await store.get(id))).toEqual(Buffer.from(await source.get(id)))
    // a run resumed at once skips the placed file (as the transfer service does) and finds nothing to do
    const b = new ShareAssembly({ store, keys, owner: OWNER, manifest, targets: targetList([]), partialKey: 't1' })
    expect(b.wanted()).toEqual([])
    await b.finish()
  })

  it('a fetched file the user deleted counts as not held', async () => {
    const { store, dest } = await fetchWhole()
    await rm(dest)
    for (const id of entry().chunks) expect(await store.has(id)).toBe(false)
  })

  it('a chunk another fetch held in its partial is taken over, so it stays served when that fetch is cancelled', async () => {
    const store = await fetcherStore()
    const ids = entry().chunks
    const paused = assembly(store, join(out, 'a.bin'), 't1')
    await paused.put(ids[0]!, await source.get(ids[0]!))
    await paused.close()
    expect((await readdir(out)).filter(name => name.endsWith(PARTIAL_SUFFIX))).toHaveLength(1)
    await mkdir(join(out, 'two'))
    const second = assembly(store, join(out, 'two', 'a.bin'), 't2')
    await second.fill() // chunk 0 comes from the paused fetch's partial
    for (const id of second.wanted()) await second.put(id, await source.get(id))
    await second.finish()
    // the paused fetch is cancelled: its partial goes
    await assembly(store, join(out, 'a.bin'), 't1').abort()
    await rm(sharePartialPath(join(out, 'a.bin'), 't1', fileIndex()), { force: true })
    expect(await readdir(out)).toEqual(['two'])
    for (const id of ids) expect(Buffer.from(await store.get(id))).toEqual(Buffer.from(await source.get(id)))
  })
})
