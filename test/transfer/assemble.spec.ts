import { mkdir, readFile, readdir, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Level } from 'level'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { MIN_CHUNK_SIZE } from '../../src/transfer/constants.ts'
import { openChunkStore, type ChunkStore } from '../../src/transfer/chunk-store.ts'
import { chunkSource } from '../../src/transfer/chunker.ts'
import { assembleFile, assembleShare, removePartials, storeReader } from '../../src/transfer/assemble.ts'
import { createManifest, type Manifest, type ManifestFile } from '../../src/transfer/manifest.ts'
import { deriveSealKeys, generateShareId, generateShareKey } from '../../src/transfer/seal.ts'
import { expectCodeAsync, keypair, pseudoRandom, tempDir } from './helpers.ts'

const CS = MIN_CHUNK_SIZE
const owner = keypair(4)

describe('assemble', () => {
  let dir: string
  let out: string
  let cleanup: () => Promise<void>
  let db: Level
  let store: ChunkStore
  let manifest: Manifest
  let data: Buffer
  const shareId = generateShareId()
  const keys = deriveSealKeys(generateShareKey(), shareId)

  beforeEach(async () => {
    ({ dir, cleanup } = await tempDir())
    out = join(dir, 'out')
    await mkdir(out)
    db = new Level(join(dir, 'db'))
    store = await openChunkStore({ dir: join(dir, 'chunks'), db })
    data = pseudoRandom(3 * CS + 99)
    await writeFile(join(dir, 'file.bin'), data)
    const { entries } = await chunkSource(join(dir, 'file.bin'), { keys, version: 2, store, chunkSize: CS })
    manifest = createManifest({ ...owner, shareId, version: 2, name: 'one file', chunkSize: CS, entries }).manifest
  })

  afterEach(async () => {
    await db.close()
    await cleanup()
  })

  const entry = (): ManifestFile => manifest.entries[0] as ManifestFile

  it('writes a verified file and nothing else', async () => {
    await assembleShare({ store, keys, manifest, root: out })
    expect(await readdir(out)).toEqual(['file.bin'])
    expect((await readFile(join(out, 'file.bin'))).equals(data)).toBe(true)
  })

  it('refuses when a chunk is missing, leaving no destination and no partial', async () => {
    await store.delete(entry().chunks[2]!)
    await expectCodeAsync(assembleShare({ store, keys, manifest, root: out }), 'CHUNK_NOT_FOUND')
    expect(await readdir(out)).toEqual([])
  })

  it('refuses when the whole-file hash does not match', async () => {
    const wrong: ManifestFile = { ...entry(), sha256: '00'.repeat(32) }
    await expectCodeAsync(assembleFile(join(out, 'file.bin'), wrong, CS, storeReader(store, keys, manifest, 0)), 'FILE_VERIFY_FAILED')
    expect(await readdir(out)).toEqual([])
  })

  it('refuses a chunk of the wrong length', async () => {
    const read = async (index: number) => index === 1 ? new Uint8Array(CS - 1) : new Uint8Array(CS)
    await expectCodeAsync(assembleFile(join(out, 'file.bin'), entry(), CS, read), 'FILE_VERIFY_FAILED')
    const short: ManifestFile = { ...entry(), chunks: entry().chunks.slice(1) }
    await expectCodeAsync(assembleFile(join(out, 'file.bin'), short, CS, storeReader(store, keys, manifest, 0)), 'FILE_VERIFY_FAILED')
    expect(await readdir(out)).toEqual([])
  })

  it('refuses chunks opened at the wrong place or with the wrong key', async () => {
    // Chunks of one file read as if they were another's (another sha256): the AD does not match.
    const src = join(dir, 'two')
    await mkdir(src)
    await writeFile(join(src, 'a.bin'), pseudoRandom(CS + 1, 'a'))
    await writeFile(join(src, 'b.bin'), pseudoRandom(CS + 1, 'b'))
    const { entries } = await chunkSource(src, { keys, version: 2, store, chunkSize: CS })
    const two = createManifest({ ...owner, shareId, version: 2, name: 'two', chunkSize: CS, entries }).manifest
    const a = two.entries[0] as ManifestFile
    await expectCodeAsync(assembleFile(join(out, 'a.bin'), a, CS, storeReader(store, keys, two, 1)), 'CHUNK_DECRYPT_FAILED')
    // The same chunk ids, but a manifest claiming other content for the file.
    const claimed: Manifest = { ...manifest, entries: [{ ...entry(), sha256: 'ee'.repeat(32) }] }
    await expectCodeAsync(assembleFile(join(out, 'file.bin'), entry(), CS, storeReader(store, keys, claimed, 0)), 'CHUNK_DECRYPT_FAILED')
    // An index that is not a file in the manifest.
    await expectCodeAsync(assembleFile(join(out, 'file.bin'), entry(), CS, storeReader(store, keys, manifest, 1)), 'BAD_REQUEST')
    const stranger = deriveSealKeys(generateShareKey(), shareId)
    await expectCodeAsync(assembleShare({ store, keys: stranger, manifest, root: out }), 'CHUNK_DECRYPT_FAILED')
    expect(await readdir(out)).toEqual([])
  })

  it('opens the same chunks under any version and entry index of the same file', async () => {
    // Chunks are bound to the file's content, not to the manifest version or entry index.
    const later: Manifest = { ...manifest, version: 7, entries: [{ type: 'dir', path: 'added' }, entry()] }
    await assembleFile(join(out, 'file.bin'), entry(), CS, storeReader(store, keys, later, 1))
    expect((await readFile(join(out, 'file.bin'))).equals(data)).toBe(true)
  })

  it('leaves an existing destination alone unless told to overwrite', async () => {
    await writeFile(join(out, 'file.bin'), 'mine')
    await expectCodeAsync(assembleShare({ store, keys, manifest, root: out }), 'DESTINATION_EXISTS')
    expect(await readFile(join(out, 'file.bin'), 'utf8')).toBe('mine')
    expect(await readdir(out)).toEqual(['file.bin'])
    await assembleShare({ store, keys, manifest, root: out, overwrite: true })
    expect((await readFile(join(out, 'file.bin'))).equals(data)).toBe(true)
    expect(await readdir(out)).toEqual(['file.bin'])
  })

  it('never writes through a link in the destination', async () => {
    const folder = await chunkSourceFolder()
    const outside = join(dir, 'outside')
    await mkdir(outside)
    await symlink(outside, join(out, 'sub'))
    await expectCodeAsync(assembleShare({ store, keys, manifest: folder, root: out }), 'DESTINATION_EXISTS')
    expect(await readdir(outside)).toEqual([])
  })

  it('refuses a path leading out of the destination even in a hand-made manifest', async () => {
    const escaping: Manifest = { ...manifest, entries: [{ ...entry(), path: '../escaped.bin' }] }
    await expectCodeAsync(assembleShare({ store, keys, manifest: escaping, root: out }), 'MANIFEST_BAD_PATH')
    expect(await readdir(dir)).not.toContain('escaped.bin')
  })

  it('clears partial files a kill left behind', async () => {
    await writeFile(join(out, '.kith-0123456789abcdef.kith-partial'), 'half')
    await writeFile(join(out, 'keep.kith-partial.txt'), 'not ours')
    expect(await removePartials(out)).toBe(1)
    expect(await readdir(out)).toEqual(['keep.kith-partial.txt'])
  })

  async function chunkSourceFolder (): Promise<Manifest> {
    const src = join(dir, 'src')
    await mkdir(join(src, 'sub'), { recursive: true })
    await writeFile(join(src, 'sub', 'f.txt'), 'inside')
    const { entries } = await chunkSource(src, { keys, version: 2, store, chunkSize: CS })
    return createManifest({ ...owner, shareId, version: 2, name: 'folder', chunkSize: CS, entries }).manifest
  }
})
