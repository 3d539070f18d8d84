import { createHash } from 'node:crypto'
import { mkdir, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { Level } from 'level'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { MIN_CHUNK_SIZE, PACKED_FILE_MAX } from '../../src/transfer/constants.ts'
import { openChunkStore, type ChunkStore } from '../../src/transfer/chunk-store.ts'
import { chunkSource } from '../../src/transfer/chunker.ts'
import { assembleShare, sharePartialPath, ShareAssembly, targetList, type ShareTargets } from '../../src/transfer/assemble.ts'
import { createManifest, packHash, type Manifest, type ManifestFile } from '../../src/transfer/manifest.ts'
import { chunkId, deriveSealKeys, generateShareId, generateShareKey, sealChunk } from '../../src/transfer/seal.ts'
import { expectCodeAsync, keypair, packingSink, pseudoRandom, tempDir } from './helpers.ts'

/**
 * Small files packed into shared chunks at share time (manifest.ts format 2,
 * chunker.ts) and cut from them while fetching (assemble.ts), on a real
 * chunk store and real files.
 */
const CS = MIN_CHUNK_SIZE
const owner = keypair(7)
const OWNER_PEER = 'owner-peer-id'

/** name -> size: pack boundaries at CS = 64 KiB */
const TREE: Record<string, number> = {
  'a/1.txt': 100,
  'a/2.txt': 30 * 1024,
  'a/3.txt': 30 * 1024, // 100 + 60 KiB: still pack 0
  'a/4.txt': 5 * 1024, // over: opens pack 1
  'b/big.bin': CS + 1, // bigger than a chunk, among small ones: chunked as before
  'b/c.txt': 7,
  'b/empty': 0, // nothing to fetch: never packed
  'b/exact.bin': CS, // exactly a chunk: a pack of its own
  'c/last.txt': 1
}

describe('packs of small files', () => {
  let dir: string
  let cleanup: () => Promise<void>
  let db: Level
  let ownerStore: ChunkStore
  let manifest: Manifest
  const shareId = generateShareId()
  const keys = deriveSealKeys(generateShareKey(), shareId)

  beforeEach(async () => {
    ({ dir, cleanup } = await tempDir())
    db = new Level(join(dir, 'db'))
    ownerStore = await openChunkStore({ dir: join(dir, 'owner-chunks'), db: db.sublevel('owner') })
    for (const [name, size] of Object.entries(TREE)) {
      await mkdir(join(dir, 'src', name, '..'), { recursive: true })
      await writeFile(join(dir, 'src', name), pseudoRandom(size, name))
    }
    const result = await chunkSource(join(dir, 'src'), { keys, version: 1, store: packingSink(ownerStore), chunkSize: CS })
    manifest = createManifest({ ...owner, shareId, version: 1, name: 'tree', chunkSize: CS, entries: result.entries, packs: result.packs }).manifest
  })

  afterEach(async () => {
    await db.close()
    await cleanup()
  })

  const file = (path: string): ManifestFile => manifest.entries.find(e => e.path === path) as ManifestFile
  const targets = (root: string, only?: (path: string) => boolean): ShareTargets => targetList(manifest.entries.flatMap((e, i) =>
    e.type === 'file' && (only?.(e.path) ?? true) ? [{ file: i, dest: join(root, ...e.path.split('/')) }] : []))
  const makeDirs = async (root: string): Promise<void> => {
    for (const d of ['a', 'b', 'c']) await mkdir(join(root, d), { recursive: true })
  }
  async function expectTree (root: string, names = Object.keys(TREE)): Promise<void> {
    for (const name of names) expect((await readFile(join(root, name))).equals(pseudoRandom(TREE[name]!, name)), name).toBe(true)
  }

  it('packs consecutive small files up to the chunk size; empty and big files stay out', () => {
    expect(PACKED_FILE_MAX).toBeGreaterThanOrEqual(CS)
    expect(manifest.packs.map(p => p.size)).toEqual([100 + 60 * 1024, 5 * 1024 + 7, CS, 1])
    expect(['a/1.txt', 'a/2.txt', 'a/3.txt', 'a/4.txt', 'b/c.txt', 'b/exact.bin', 'c/last.txt'].map(p => file(p).pack))
      .toEqual([{ index: 0, offset: 0 }, { index: 0, offset: 100 }, { index: 0, offset: 100 + 30 * 1024 }, { index: 1, offset: 0 },
        { index: 1, offset: 5 * 1024 }, { index: 2, offset: 0 }, { index: 3, offset: 0 }])
    expect(file('b/empty')).toMatchObject({ chunks: [] })
    expect(file('b/empty').pack).toBeUndefined()
    expect(file('b/big.bin').pack).toBeUndefined()
    expect(file('b/big.bin').chunks).toHaveLength(2)
    expect(manifest.chunkCount).toBe(6)
    for (const path of ['a/1.txt', 'a/3.txt']) expect(file(path).chunks).toEqual([manifest.packs[0]!.id])
  })

  it('fetches: each pack checked, then its files cut, verified and placed', async () => {
    const out = join(dir, 'out')
    await makeDirs(out)
    // with the share's keys: big.bin's chunks are held in the file they were written to
    const fetcher = await openChunkStore({ dir: join(dir, 'fetcher-chunks'), db: db.sublevel('fetcher'), keys: async () => keys })
    const assembly = new ShareAssembly({ store: fetcher, keys, owner: OWNER_PEER, manifest, targets: targets(out), partialKey: 't' })
    const wanted = assembly.wanted()
    expect(wanted).toHaveLength(6)
    for (const id of wanted) await assembly.put(id, await ownerStore.get(id))
    await assembly.finish()
    await expectTree(out)
    // the packs are kept sealed (friends are served from them); nothing else is left beside the files
    for (const pack of manifest.packs) expect(await fetcher.has(pack.id)).toBe(true)
    expect((await readdir(join(out, 'a'))).sort()).toEqual(['1.txt', '2.txt', '3.txt', '4.txt'])
    // the store's reader cuts packed files too
    const again = join(dir, 'again')
    await assembleShare({ store: fetcher, keys, manifest, root: again })
    await expectTree(again)
  })

  it('runs its collection every so many files placed, packed or not', async () => {
    const out = join(dir, 'out')
    await makeDirs(out)
    const fetcher = await openChunkStore({ dir: join(dir, 'fetcher-chunks'), db: db.sublevel('fetcher'), keys: async () => keys })
    const placed: number[] = []
    const assembly = new ShareAssembly({
      store: fetcher,
      keys,
      owner: OWNER_PEER,
      manifest,
      targets: targets(out),
      partialKey: 't',
      collect: () => { placed.push(Object.keys(TREE).filter(name => existsSync(join(out, name))).length) },
      collectEvery: 3
    })
    for (const id of assembly.wanted()) await assembly.put(id, await ownerStore.get(id))
    await assembly.finish()
    await expectTree(out)
    // 9 files placed (7 packed, big.bin as its chunks came, the empty one at the end): a collection after every 3rd.
    // A file counts as placed once its record is written, and another file may reach the disk meanwhile (big.bin's
    // record is awaited while a pack's files are cut), so the disk may show one or two more than the count.
    expect(placed).toHaveLength(3)
    placed.forEach((onDisk, n) => { expect(onDisk).toBeGreaterThanOrEqual(3 * (n + 1)) })
  })

  it('takes two copies of a pack arriving at once (two sources, or the store and a source): its files are written once', async () => {
    const out = join(dir, 'out')
    await makeDirs(out)
    const fetcher = await openChunkStore({ dir: join(dir, 'fetcher-chunks'), db: db.sublevel('fetcher'), keys: async () => keys })
    const assembly = new ShareAssembly({ store: fetcher, keys, owner: OWNER_PEER, manifest, targets: targets(out, p => p.startsWith('a/')), partialKey: 't' })
    const pack = await ownerStore.get(manifest.packs[0]!.id)
    await Promise.all([assembly.put(manifest.packs[0]!.id, pack), assembly.put(manifest.packs[0]!.id, pack)])
    await expectTree(out, ['a/1.txt', 'a/2.txt', 'a/3.txt'])
    expect(assembly.wanted()).toEqual([manifest.packs[1]!.id])
  })

  it('writes the files of two packs at once; the packs that came meanwhile wait, sealed, for their turn', async () => {
    const out = join(dir, 'out')
    await makeDirs(out)
    const fetcher = await openChunkStore({ dir: join(dir, 'fetcher-chunks'), db: db.sublevel('fetcher'), keys: async () => keys })
    const filesOf = (pack: string): string[] => manifest.entries.flatMap(e => e.type === 'file' && e.pack !== undefined && e.chunks[0] === pack ? [join(out, e.path)] : [])
    // a pack's sealed copy is stored once its turn has come, before its files are written: how many have begun and not ended then
    const begun: string[] = []
    let most = 0
    const store = {
      get: fetcher.get.bind(fetcher),
      has: fetcher.has.bind(fetcher),
      putInFile: fetcher.putInFile.bind(fetcher),
      moveInFile: fetcher.moveInFile.bind(fetcher),
      put: async (...args: Parameters<ChunkStore['put']>) => {
        begun.push(args[0])
        most = Math.max(most, begun.filter(pack => !filesOf(pack).every(f => existsSync(f))).length)
        return await fetcher.put(...args)
      }
    }
    const only = (path: string): boolean => path !== 'b/big.bin' && path !== 'b/empty'
    const assembly = new ShareAssembly({ store, keys, owner: OWNER_PEER, manifest, targets: targets(out, only), partialKey: 't' })
    const packs = manifest.packs.map(p => p.id)
    expect(packs).toHaveLength(4)
    // all four at once, as from a source's stream when the disk is the slower
    await Promise.all(packs.map(async id => { await assembly.put(id, await ownerStore.get(id)) }))
    expect(begun.sort()).toEqual([...packs].sort())
    expect(most).toBe(2)
    await assembly.finish()
    await expectTree(out, Object.keys(TREE).filter(only))
  })

  it('refuses a bit-flipped pack before any file is cut from it, and one that hashes right but is not the pack', async () => {
    const out = join(dir, 'out')
    await makeDirs(out)
    const fetcher = await openChunkStore({ dir: join(dir, 'fetcher-chunks'), db: db.sublevel('fetcher') })
    const pack = manifest.packs[0]!
    const flipped = Buffer.from(await ownerStore.get(pack.id))
    flipped[flipped.length >> 1]! ^= 0x08
    const assembly = new ShareAssembly({ store: fetcher, keys, owner: OWNER_PEER, manifest, targets: targets(out) })
    // what a source sends for the id: the fetcher blames it
    await expectCodeAsync(assembly.put(pack.id, flipped), 'CHUNK_HASH_MISMATCH')
    // bytes that match their id but were not sealed as this pack (another pack's)
    const other = await ownerStore.get(manifest.packs[1]!.id)
    await expectCodeAsync(new ShareAssembly({ store: fetcher, keys, owner: OWNER_PEER, manifest, targets: targets(out) }).accept(pack.id, other), 'CHUNK_DECRYPT_FAILED')
    expect(chunkId(other)).not.toBe(pack.id)
    expect(await readdir(join(out, 'a'))).toEqual([])
    expect(await fetcher.has(pack.id)).toBe(false)
  })

  it('a run after a kill cuts the files left from the packs it kept, fetching nothing again', async () => {
    const out = join(dir, 'out')
    await makeDirs(out)
    const fetcher = await openChunkStore({ dir: join(dir, 'fetcher-chunks'), db: db.sublevel('fetcher') })
    const first = new ShareAssembly({ store: fetcher, keys, owner: OWNER_PEER, manifest, targets: targets(out), partialKey: 't' })
    // pack 0 arrives and its files are placed; then the run stops (as a kill would end it) with the rest not fetched
    await first.put(manifest.packs[0]!.id, await ownerStore.get(manifest.packs[0]!.id))
    await first.close()
    await expectTree(out, ['a/1.txt', 'a/2.txt', 'a/3.txt'])
    // a kill between keeping the pack and placing every file of it: one of its files is not there
    await rm(join(out, 'a', '2.txt'))
    // the next run targets the files not in place (transfers.ts compares what is there)
    const placed = new Set(['a/1.txt', 'a/3.txt'])
    const second = new ShareAssembly({ store: fetcher, keys, owner: OWNER_PEER, manifest, targets: targets(out, p => !placed.has(p)), partialKey: 't' })
    const held = new Set<string>()
    for (const id of second.wanted()) if (await fetcher.has(id)) held.add(id)
    expect([...held]).toEqual([manifest.packs[0]!.id])
    await second.fill({ held })
    // what is left to fetch: every chunk but the kept pack
    expect(second.wanted().sort()).toEqual([...manifest.packs.slice(1).map(p => p.id), ...file('b/big.bin').chunks].sort())
    for (const id of second.wanted()) await second.put(id, await ownerStore.get(id))
    await second.finish()
    await expectTree(out)
  })

  const partialOf = (root: string, path: string, key = 't'): string =>
    sharePartialPath(join(root, ...path.split('/')), key, manifest.entries.findIndex(e => e.path === path))

  it('takes over the partial of a packed file a killed run left; refuses a link planted as one, writing nothing through it', async () => {
    const fetcher = await openChunkStore({ dir: join(dir, 'fetcher-chunks'), db: db.sublevel('fetcher') })
    const pack = await ownerStore.get(manifest.packs[0]!.id)
    const out = join(dir, 'out')
    await makeDirs(out)
    // longer than the file, and other bytes: cut to the file and written over
    await writeFile(partialOf(out, 'a/2.txt'), Buffer.alloc(40 * 1024, 1))
    await new ShareAssembly({ store: fetcher, keys, owner: OWNER_PEER, manifest, targets: targets(out, p => p.startsWith('a/')), partialKey: 't' }).put(manifest.packs[0]!.id, pack)
    await expectTree(out, ['a/1.txt', 'a/2.txt', 'a/3.txt'])
    expect((await readdir(join(out, 'a'))).sort()).toEqual(['1.txt', '2.txt', '3.txt'])

    const other = join(dir, 'other')
    await makeDirs(other)
    const victim = join(dir, 'victim')
    await writeFile(victim, 'not yours')
    await symlink(victim, partialOf(other, 'a/3.txt'))
    const assembly = new ShareAssembly({ store: fetcher, keys, owner: OWNER_PEER, manifest, targets: targets(other, p => p.startsWith('a/')), partialKey: 't' })
    await expectCodeAsync(assembly.put(manifest.packs[0]!.id, pack), 'DESTINATION_LINK')
    expect(await readFile(victim, 'utf8')).toBe('not yours')
    // none of the pack's files placed, the partials it wrote removed, the link left as it was
    expect(await readdir(join(other, 'a'))).toEqual([partialOf(other, 'a/3.txt').split('/').pop()])
  })

  it('leaves a file in the way of a packed one as it is; the verified file waits in its partial', async () => {
    const fetcher = await openChunkStore({ dir: join(dir, 'fetcher-chunks'), db: db.sublevel('fetcher') })
    const out = join(dir, 'out')
    await makeDirs(out)
    await writeFile(join(out, 'a', '2.txt'), 'the user wrote this meanwhile')
    const assembly = new ShareAssembly({ store: fetcher, keys, owner: OWNER_PEER, manifest, targets: targets(out, p => p.startsWith('a/')), partialKey: 't' })
    await expectCodeAsync(assembly.put(manifest.packs[0]!.id, await ownerStore.get(manifest.packs[0]!.id)), 'DESTINATION_EXISTS')
    expect(await readFile(join(out, 'a', '2.txt'), 'utf8')).toBe('the user wrote this meanwhile')
    expect((await readFile(partialOf(out, 'a/2.txt'))).equals(pseudoRandom(TREE['a/2.txt']!, 'a/2.txt'))).toBe(true)
  })

  it('refuses a packed file whose bytes do not hash to its sha256 (an owner that packed other bytes), writing nothing', async () => {
    const bytes = pseudoRandom(100, 'x')
    const claimed = createHash('sha256').update('other bytes').digest()
    const sealed = sealChunk(keys, { shareId, fileHash: packHash([claimed]), index: 0 }, bytes)
    const id = chunkId(sealed)
    const bad = createManifest({
      ...owner,
      shareId,
      version: 2,
      name: 'bad',
      chunkSize: CS,
      entries: [{ type: 'file', path: 'a/x.txt', size: 100, executable: false, sha256: claimed.toString('hex'), chunks: [id], pack: { index: 0, offset: 0 } }],
      packs: [id]
    }).manifest
    const fetcher = await openChunkStore({ dir: join(dir, 'fetcher-chunks'), db: db.sublevel('fetcher') })
    const out = join(dir, 'out')
    await makeDirs(out)
    const assembly = new ShareAssembly({ store: fetcher, keys, owner: OWNER_PEER, manifest: bad, targets: targetList([{ file: 0, dest: join(out, 'a', 'x.txt') }]), partialKey: 't' })
    await expectCodeAsync(assembly.put(id, sealed), 'FILE_VERIFY_FAILED')
    expect(await readdir(join(out, 'a'))).toEqual([])
  })
})
