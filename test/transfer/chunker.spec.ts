import { createHash } from 'node:crypto'
import { appendFile, chmod, mkdir, open, readFile, readdir, stat, symlink, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Level } from 'level'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { MAX_CHUNKS, MAX_FILE_SIZE, MIN_CHUNK_SIZE } from '../../src/transfer/constants.ts'
import { openChunkStore, type ChunkStore } from '../../src/transfer/chunk-store.ts'
import { chunkSource, type ChunkSink } from '../../src/transfer/chunker.ts'
import { assembleShare } from '../../src/transfer/assemble.ts'
import { createManifest, decodeManifest, type Manifest, type ManifestFile } from '../../src/transfer/manifest.ts'
import { deriveSealKeys, generateShareId, generateShareKey, openChunk } from '../../src/transfer/seal.ts'
import { expectCodeAsync, keypair, plainEntries, pseudoRandom, sealedSink, tempDir } from './helpers.ts'

const CS = MIN_CHUNK_SIZE
const owner = keypair(3)

describe('chunker', () => {
  let dir: string
  let cleanup: () => Promise<void>
  let db: Level
  let store: ChunkStore
  const shareId = generateShareId()
  const keys = deriveSealKeys(generateShareKey(), shareId)

  beforeEach(async () => {
    ({ dir, cleanup } = await tempDir())
    db = new Level(join(dir, 'db'))
    store = await openChunkStore({ dir: join(dir, 'chunks'), db: db.sublevel('chunks') })
  })

  afterEach(async () => {
    await db.close()
    await cleanup()
  })

  /** Chunk, sign, decode (as a receiver would), assemble into `out`. */
  async function roundTrip (source: string, out: string) {
    const result = await chunkSource(source, { keys, version: 1, store: sealedSink(store), chunkSize: CS })
    const { bytes } = createManifest({ ...owner, shareId, version: 1, name: 'test', chunkSize: CS, entries: result.entries })
    const manifest = decodeManifest(bytes, { owner: owner.publicKey })
    await assembleShare({ store, keys, manifest, root: out })
    return { result, manifest }
  }

  it('round-trips a multi-chunk file', async () => {
    const data = pseudoRandom(3 * CS + 12345)
    await writeFile(join(dir, 'movie.bin'), data)
    const { result, manifest } = await roundTrip(join(dir, 'movie.bin'), join(dir, 'out'))
    expect(result.chunkCount).toBe(4)
    expect(result.totalSize).toBe(data.length)
    expect(store.stats().count).toBe(4)
    expect(manifest.entries.map(e => e.path)).toEqual(['movie.bin'])
    expect((await readFile(join(dir, 'out', 'movie.bin'))).equals(data)).toBe(true)
    // Each stored chunk opens at its position to the matching slice.
    const entry = manifest.entries[0] as ManifestFile
    expect(entry.sha256).toBe(createHash('sha256').update(data).digest('hex'))
    for (const [index, id] of entry.chunks.entries()) {
      const plain = openChunk(keys, { shareId, fileHash: entry.sha256, index }, await store.get(id))
      expect(Buffer.from(plain).equals(data.subarray(index * CS, (index + 1) * CS))).toBe(true)
    }
  })

  it('round-trips a folder, walked in byte order, links skipped', async () => {
    const src = join(dir, 'src')
    await mkdir(join(src, 'sub', 'deeper'), { recursive: true })
    await mkdir(join(src, 'empty'))
    await mkdir(join(src, 'a-b'))
    const files: Record<string, Buffer> = {
      'zero.txt': Buffer.alloc(0),
      'B.txt': Buffer.from('capital B sorts first'),
      'sub/one.bin': pseudoRandom(CS, 'one'),
      'sub/deeper/two.bin': pseudoRandom(2 * CS + 1, 'two'),
      'a-b/x': Buffer.from('x'),
      'run.sh': Buffer.from('#!/bin/sh\necho hi\n')
    }
    for (const [path, data] of Object.entries(files)) await writeFile(join(src, path), data)
    await chmod(join(src, 'run.sh'), 0o755)
    await symlink('/etc/passwd', join(src, 'passwd-link'))
    await writeFile(join(src, 'back\\slash'), 'unshareable name')

    const out = join(dir, 'out')
    const { result, manifest } = await roundTrip(src, out)
    expect(manifest.entries.map(e => `${e.type}:${e.path}`)).toEqual([
      'file:B.txt', 'dir:a-b', 'file:a-b/x', 'dir:empty', 'file:run.sh', 'dir:sub', 'dir:sub/deeper',
      'file:sub/deeper/two.bin', 'file:sub/one.bin', 'file:zero.txt'
    ])
    expect(result.skipped.map(s => s.path).sort()).toEqual(['back\\slash', 'passwd-link'])
    for (const [path, data] of Object.entries(files)) {
      expect((await readFile(join(out, path))).equals(data), path).toBe(true)
    }
    expect((await stat(join(out, 'empty'))).isDirectory()).toBe(true)
    expect((await stat(join(out, 'run.sh'))).mode & 0o111).not.toBe(0)
    expect((await stat(join(out, 'B.txt'))).mode & 0o111).toBe(0)
    expect(await readdir(out)).not.toContain('passwd-link')
  })

  it('seals deterministically: a second run yields the same ids and stores nothing new', async () => {
    await writeFile(join(dir, 'f'), pseudoRandom(2 * CS + 7))
    const first = await chunkSource(join(dir, 'f'), { keys, version: 1, store: sealedSink(store), chunkSize: CS })
    const count = store.stats().count
    const second = await chunkSource(join(dir, 'f'), { keys, version: 1, store: sealedSink(store), chunkSize: CS })
    expect(plainEntries(second.entries)).toEqual(plainEntries(first.entries))
    expect(store.stats().count).toBe(count)
  })

  it('keeps the chunk ids of unchanged files in the next version, so only changes are stored and fetched', async () => {
    const src = join(dir, 'src')
    await mkdir(join(src, 'sub'), { recursive: true })
    const same = pseudoRandom(2 * CS + 5, 'same')
    await writeFile(join(src, 'sub', 'same.bin'), same)
    await writeFile(join(src, 'edited.bin'), pseudoRandom(CS + 1, 'edited v1'))
    const share = async (version: number) => {
      const result = await chunkSource(src, { keys, version, store: sealedSink(store), chunkSize: CS })
      const { bytes } = createManifest({ ...owner, shareId, version, name: 'test', chunkSize: CS, entries: result.entries })
      return decodeManifest(bytes, { owner: owner.publicKey })
    }
    const file = (manifest: Manifest, path: string): ManifestFile => manifest.entries.find(e => e.path === path) as ManifestFile

    const v1 = await share(1)
    const storedV1 = store.stats().count
    expect(storedV1).toBe(3 + 2)

    // v2: one file edited (same size), and a new file that sorts first, so the
    // unchanged file moves to another index in the entry list.
    await writeFile(join(src, 'edited.bin'), pseudoRandom(CS + 1, 'edited v2'))
    await writeFile(join(src, 'a-new.txt'), 'new in v2')
    const v2 = await share(2)
    expect(v1.entries.findIndex(e => e.path === 'sub/same.bin')).not.toBe(v2.entries.findIndex(e => e.path === 'sub/same.bin'))

    expect(file(v2, 'sub/same.bin').chunks).toEqual(file(v1, 'sub/same.bin').chunks)
    const edited1 = file(v1, 'edited.bin').chunks
    const edited2 = file(v2, 'edited.bin').chunks
    expect(edited2.filter(id => edited1.includes(id))).toEqual([])
    // Only the edited file's and the new file's chunks were added.
    expect(store.stats().count).toBe(storedV1 + edited2.length + 1)

    // Both versions assemble from the one store, the unchanged file from the same chunks.
    await assembleShare({ store, keys, manifest: v1, root: join(dir, 'out1') })
    await assembleShare({ store, keys, manifest: v2, root: join(dir, 'out2') })
    expect((await readFile(join(dir, 'out1', 'sub', 'same.bin'))).equals(same)).toBe(true)
    expect((await readFile(join(dir, 'out2', 'sub', 'same.bin'))).equals(same)).toBe(true)
    expect(await readFile(join(dir, 'out2', 'edited.bin'))).toEqual(pseudoRandom(CS + 1, 'edited v2'))
    expect(await readFile(join(dir, 'out1', 'edited.bin'))).toEqual(pseudoRandom(CS + 1, 'edited v1'))
  })

  it('gives files with identical content in one share the same chunks', async () => {
    const src = join(dir, 'src')
    await mkdir(src)
    const data = pseudoRandom(CS + 3, 'twin')
    await writeFile(join(src, 'a.bin'), data)
    await writeFile(join(src, 'b.bin'), data)
    const { result } = await roundTrip(src, join(dir, 'out'))
    const [a, b] = result.entries as ManifestFile[]
    expect(a!.chunks).toEqual(b!.chunks)
    expect(store.stats().count).toBe(2)
    expect((await readFile(join(dir, 'out', 'b.bin'))).equals(data)).toBe(true)
  })

  it('refuses a source beyond the manifest limits before reading it', async () => {
    const put: ChunkSink['put'] = async () => { throw new Error('nothing should be stored') }
    const sparse = async (name: string, size: number): Promise<string> => {
      const handle = await open(join(dir, name), 'w')
      await handle.truncate(size)
      await handle.close()
      return join(dir, name)
    }
    await expectCodeAsync(chunkSource(await sparse('huge', MAX_FILE_SIZE + 1), { keys, version: 1, store: { put } }), 'MANIFEST_LIMIT')
    await expectCodeAsync(chunkSource(await sparse('many', (MAX_CHUNKS + 1) * CS), { keys, version: 1, store: { put }, chunkSize: CS }), 'MANIFEST_LIMIT')
    await mkdir(join(dir, 'folder'))
    await sparse('folder/a', MAX_CHUNKS * CS)
    await sparse('folder/b', 1)
    await expectCodeAsync(chunkSource(join(dir, 'folder'), { keys, version: 1, store: { put }, chunkSize: CS }), 'MANIFEST_LIMIT')
  })

  it('fails with SOURCE_CHANGED if a file grows while it is read', async () => {
    const path = join(dir, 'growing')
    await writeFile(path, pseudoRandom(3 * CS))
    const sink: ChunkSink = { put: async (id, sealed) => { await appendFile(path, 'more'); return store.put(id, Buffer.concat(sealed)) } }
    await expectCodeAsync(chunkSource(path, { keys, version: 1, store: sink, chunkSize: CS }), 'SOURCE_CHANGED')
  })

  it('fails with SOURCE_CHANGED if a file is rewritten in place, same size and mtime, between its two reads', async () => {
    // Only the second pass's hash can catch this: size and mtime are restored.
    const path = join(dir, 'rewritten')
    await writeFile(path, pseudoRandom(3 * CS, 'before'))
    await utimes(path, 1_700_000_000, 1_700_000_000)
    let rewritten = false
    const sink: ChunkSink = {
      put: async (id, sealed) => {
        if (!rewritten) {
          rewritten = true
          const handle = await open(path, 'r+')
          await handle.write(pseudoRandom(CS, 'after'), 0, CS, 2 * CS) // a chunk not yet read
          await handle.close()
          await utimes(path, 1_700_000_000, 1_700_000_000)
        }
        return store.put(id, Buffer.concat(sealed))
      }
    }
    const err = await expectCodeAsync(chunkSource(path, { keys, version: 1, store: sink, chunkSize: CS }), 'SOURCE_CHANGED')
    expect(err.message).toMatch(/differs between two reads/)
  })

  it('reports a missing source and a bad chunk size', async () => {
    await expectCodeAsync(chunkSource(join(dir, 'nope'), { keys, version: 1, store: sealedSink(store) }), 'SOURCE_UNREADABLE')
    await writeFile(join(dir, 'f'), 'x')
    await expectCodeAsync(chunkSource(join(dir, 'f'), { keys, version: 1, store: sealedSink(store), chunkSize: 0 }), 'BAD_REQUEST')
  })

  it('stops when aborted', async () => {
    await writeFile(join(dir, 'f'), pseudoRandom(2 * CS))
    const controller = new AbortController()
    controller.abort()
    await expect(chunkSource(join(dir, 'f'), { keys, version: 1, store: sealedSink(store), chunkSize: CS, signal: controller.signal })).rejects.toThrow(/abort/i)
    expect(store.stats().count).toBe(0)
  })
})
