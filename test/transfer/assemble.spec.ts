import { createHash } from 'node:crypto'
import { appendFile, mkdir, readFile, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { Level } from 'level'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { MIN_CHUNK_SIZE } from '../../src/transfer/constants.ts'
import { openChunkStore, type ChunkStore } from '../../src/transfer/chunk-store.ts'
import { chunkSource } from '../../src/transfer/chunker.ts'
import { AheadCopies, assembleFile, assembleShare, FileAssembly, MAX_OPEN_PARTIALS, removePartials, ShareAssembly, sharePartialPath, storeReader, targetList, type ShareTargets } from '../../src/transfer/assemble.ts'
import { createManifest, type Manifest, type ManifestFile } from '../../src/transfer/manifest.ts'
import { deriveSealKeys, generateShareId, generateShareKey } from '../../src/transfer/seal.ts'
import { waitFor } from '../helpers/testnet.ts'
import { expectCodeAsync, keypair, plainEntries, pseudoRandom, sealedSink, tempDir } from './helpers.ts'

const CS = MIN_CHUNK_SIZE
const owner = keypair(4)
/** stands in for the owner's peer id, recorded with chunks held in files */
const OWNER_PEER = 'owner-peer-id'

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
    const { entries } = await chunkSource(join(dir, 'file.bin'), { keys, version: 2, store: sealedSink(store), chunkSize: CS })
    manifest = createManifest({ ...owner, shareId, version: 2, name: 'one file', chunkSize: CS, entries }).manifest
  })

  afterEach(async () => {
    await db.close()
    await cleanup()
  })

  // plain, so tests may spread it (a decoded file's sha256 is a getter)
  const entry = (): ManifestFile => plainEntries(manifest.entries)[0] as ManifestFile

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
    const { entries } = await chunkSource(src, { keys, version: 2, store: sealedSink(store), chunkSize: CS })
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
    await expectCodeAsync(assembleShare({ store, keys, manifest: folder, root: out }), 'DESTINATION_LINK')
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


  it('flushes a file to the disk beside its writes, and places it whole, or removes it on abort mid-flush', async () => {
    // the same chunk everywhere (its length is all a write checks), flushed every 2 chunks
    const chunk = pseudoRandom(CS, 'sync')
    const count = 9
    const options = { syncEvery: 2 * CS }
    const whole = createHash('sha256')
    for (let i = 0; i < count; i++) whole.update(chunk)
    const big: ManifestFile = { type: 'file', path: 'big.bin', size: count * chunk.length, sha256: whole.digest('hex'), chunks: Array.from({ length: count }, (_, i) => i.toString(16).padStart(64, '0')), executable: false }
    // written last chunk first, so every chunk but the last is read back for the hash
    const placed = new FileAssembly(join(out, 'big.bin'), big, chunk.length, options)
    for (let i = count - 1; i >= 0; i--) await placed.write(i, chunk)
    await placed.finish()
    expect((await stat(join(out, 'big.bin'))).size).toBe(count * chunk.length)
    const cut = new FileAssembly(join(out, 'cut.bin'), { ...big, path: 'cut.bin' }, chunk.length, options)
    for (let i = 0; i < count - 1; i++) await cut.write(i, chunk)
    // a flush began at the last chunk, and may be under way: abort waits for it, and leaves nothing
    await cut.abort()
    expect((await readdir(out)).sort()).toEqual(['big.bin'])
  })

  it('hashes chunks written ahead of the prefix from copies kept within their budget, and reads back the rest', async () => {
    const count = 6
    const chunks = Array.from({ length: count }, (_, i) => pseudoRandom(CS, `ahead ${i}`))
    const whole = createHash('sha256')
    for (const chunk of chunks) whole.update(chunk)
    const file: ManifestFile = { type: 'file', path: 'ahead.bin', size: count * CS, sha256: whole.digest('hex'), chunks: chunks.map((_, i) => i.toString(16).padStart(64, '0')), executable: false }
    const ahead = new AheadCopies(2 * CS, 2)
    const assembly = new FileAssembly(join(out, 'ahead.bin'), file, CS, { ahead })
    // the last first: each is ahead of the prefix; the first two fill the budget, the next three are read back
    for (let i = count - 1; i >= 1; i--) {
      await assembly.write(i, chunks[i]!)
      expect(ahead.held).toBe(Math.min(count - i, 2) * CS)
    }
    await assembly.write(0, chunks[0]!)
    expect(ahead.held).toBe(0)
    await assembly.finish()
    expect((await readFile(join(out, 'ahead.bin'))).equals(Buffer.concat(chunks))).toBe(true)
    // given up half-way: its copies go back
    const cut = new FileAssembly(join(out, 'cut.bin'), { ...file, path: 'cut.bin' }, CS, { ahead })
    await cut.write(3, chunks[3]!)
    expect(ahead.held).toBe(CS)
    await cut.abort()
    expect(ahead.held).toBe(0)
    expect((await readdir(out)).sort()).toEqual(['ahead.bin'])
  })

  describe('while fetching (ShareAssembly)', () => {
    /** a folder with two identical files (so their chunks share ids), a bigger one and an empty one */
    async function folder (): Promise<{ manifest: Manifest, contents: Map<string, Buffer> }> {
      const src = join(dir, 'folder')
      await mkdir(src)
      const twin = pseudoRandom(2 * CS + 5, 'twin')
      const contents = new Map([['big.bin', pseudoRandom(4 * CS + 1, 'big')], ['empty', Buffer.alloc(0)], ['twin1', twin], ['twin2', twin]])
      for (const [name, bytes] of contents) await writeFile(join(src, name), bytes)
      const { entries } = await chunkSource(src, { keys, version: 2, store: sealedSink(store), chunkSize: CS })
      return { manifest: createManifest({ ...owner, shareId, version: 2, name: 'f', chunkSize: CS, entries }).manifest, contents }
    }

    const targets = (m: Manifest, only?: (file: number) => boolean): ShareTargets =>
      targetList(m.entries.flatMap((e, file) => e.type === 'file' && (only?.(file) ?? true) ? [{ file, dest: join(out, e.path) }] : []))

    it('writes chunks in any order, each id once for every place it stands, and verifies every file', async () => {
      const { manifest: m, contents } = await folder()
      const assembly = new ShareAssembly({ store, keys, owner: OWNER_PEER, manifest: m, targets: targets(m) })
      const ids = assembly.wanted()
      expect(ids.length).toBe(5 + 3) // big: 5 chunks; the twins share 3
      for (const id of [...ids].reverse()) await assembly.accept(id, await store.get(id))
      await assembly.accept(ids[0]!, await store.get(ids[0]!)) // a late duplicate is ignored
      expect(assembly.wanted()).toEqual([])
      await assembly.finish()
      expect((await readdir(out)).sort()).toEqual([...contents.keys()].sort())
      for (const [name, bytes] of contents) expect((await readFile(join(out, name))).equals(bytes)).toBe(true)
    })

    it('places a file as soon as its last chunk is in', async () => {
      const { manifest: m } = await folder()
      const assembly = new ShareAssembly({ store, keys, owner: OWNER_PEER, manifest: m, targets: targets(m) })
      const twin = (m.entries.find(e => e.path === 'twin1') as ManifestFile).chunks
      for (const id of twin) await assembly.accept(id, await store.get(id))
      await waitFor(async () => (await readdir(out)).includes('twin1') && (await readdir(out)).includes('twin2'), 'the twins placed', 5_000)
      expect((await readdir(out)).filter(n => !n.startsWith('.')).sort()).toEqual(['twin1', 'twin2'])
      await assembly.finish() // the rest comes from the store
      expect((await readdir(out)).sort()).toEqual(['big.bin', 'empty', 'twin1', 'twin2'])
    })

    it('takes what the store already holds (a resumed fetch), and fails strictly on what it lacks', async () => {
      const { manifest: m } = await folder()
      const big = (m.entries.find(e => e.path === 'big.bin') as ManifestFile).chunks
      const sealed = await store.get(big[3]!)
      await store.delete(big[3]!)
      const assembly = new ShareAssembly({ store, keys, owner: OWNER_PEER, manifest: m, targets: targets(m) })
      await assembly.fill()
      expect(assembly.wanted()).toEqual([big[3]])
      const strict = new ShareAssembly({ store, keys, owner: OWNER_PEER, manifest: m, targets: targets(m), partialKey: 'other' })
      await expectCodeAsync(strict.finish(), 'CHUNK_NOT_FOUND')
      await strict.close() // as transfers.ts does after a finish, failed or not: no descriptor left open
      await assembly.accept(big[3]!, sealed)
      await assembly.finish()
      expect((await readFile(join(out, 'big.bin'))).length).toBe(4 * CS + 1)
    })

    it('refuses a chunk that does not open at its place, and leaves no file once aborted', async () => {
      const { manifest: m } = await folder()
      const big = (m.entries.find(e => e.path === 'big.bin') as ManifestFile).chunks
      const assembly = new ShareAssembly({ store, keys, owner: OWNER_PEER, manifest: m, targets: targets(m) })
      await assembly.accept(big[0]!, await store.get(big[0]!))
      expect((await readdir(out)).some(n => n.endsWith('.kith-partial'))).toBe(true)
      const forged = Buffer.from(await store.get(big[1]!))
      forged[40]! ^= 1
      await expectCodeAsync(assembly.accept(big[1]!, forged), 'CHUNK_DECRYPT_FAILED')
      await expectCodeAsync(assembly.accept(big[2]!, await store.get(big[2]!)), 'CHUNK_DECRYPT_FAILED') // stays failed
      await assembly.abort()
      expect(await readdir(out)).toEqual([])
    })

    it('keeps few partials open when many files are written a piece at a time', async () => {
      const src = join(dir, 'many')
      await mkdir(src)
      const count = MAX_OPEN_PARTIALS + 8
      for (let i = 0; i < count; i++) await writeFile(join(src, `f${i}`), pseudoRandom(CS + i + 1, `f${i}`))
      const { entries } = await chunkSource(src, { keys, version: 2, store: sealedSink(store), chunkSize: CS })
      const m = createManifest({ ...owner, shareId, version: 2, name: 'many', chunkSize: CS, entries }).manifest
      const assembly = new ShareAssembly({ store, keys, owner: OWNER_PEER, manifest: m, targets: targets(m) })
      const files = m.entries as ManifestFile[]
      const fds = async (): Promise<number> => (await readdir('/proc/self/fd')).length
      const before = await fds()
      for (const f of files) await assembly.accept(f.chunks[0]!, await store.get(f.chunks[0]!)) // every file half written
      await waitFor(async () => await fds() - before <= MAX_OPEN_PARTIALS, 'idle partials closed', 5_000)
      for (const f of [...files].reverse()) await assembly.accept(f.chunks[1]!, await store.get(f.chunks[1]!))
      await assembly.finish()
      for (let i = 0; i < count; i++) expect((await readFile(join(out, `f${i}`))).equals(pseudoRandom(CS + i + 1, `f${i}`))).toBe(true)
      expect((await readdir(out)).length).toBe(count)
    })

    it('replaces the partial a killed run left, by its key', async () => {
      const { manifest: m } = await folder()
      const big = (m.entries.find(e => e.path === 'big.bin') as ManifestFile).chunks
      const first = new ShareAssembly({ store, keys, owner: OWNER_PEER, manifest: m, targets: targets(m), partialKey: 'transfer-1' })
      await first.accept(big[0]!, await store.get(big[0]!)) // then "killed": no abort, no finish
      const left = (await readdir(out)).filter(n => n.endsWith('.kith-partial'))
      expect(left.length).toBe(1)
      const second = new ShareAssembly({ store, keys, owner: OWNER_PEER, manifest: m, targets: targets(m), partialKey: 'transfer-1' })
      await second.finish()
      expect((await readdir(out)).sort()).toEqual(['big.bin', 'empty', 'twin1', 'twin2'])
      await first.close() // the descriptor a kill would have closed
    })

    it('never writes through a link planted at a partial, nor through a folder swapped for a link', async () => {
      const { manifest: m } = await folder()
      const big = m.entries.findIndex(e => e.path === 'big.bin')
      const bigChunks = (m.entries[big] as ManifestFile).chunks
      const outside = join(dir, 'outside')
      await mkdir(outside)
      const victim = join(outside, 'victim.txt')
      await writeFile(victim, 'precious')
      // a link where the next run's partial will be, pointing at a file outside the destination
      await symlink(victim, sharePartialPath(join(out, 'big.bin'), 'transfer-2', big))
      const planted = new ShareAssembly({ store, keys, owner: OWNER_PEER, manifest: m, targets: targets(m), partialKey: 'transfer-2', root: out })
      await expectCodeAsync(planted.accept(bigChunks[0]!, await store.get(bigChunks[0]!)), 'DESTINATION_LINK')
      await planted.close()
      expect(await readFile(victim, 'utf8')).toBe('precious')

      // the destination's folder itself swapped for a link once the fetch is under way
      const sub = join(out, 'sub')
      await mkdir(sub)
      const twin = m.entries.findIndex(e => e.path === 'twin1')
      const swapped = new ShareAssembly({ store, keys, owner: OWNER_PEER, manifest: { ...m, entries: plainEntries(m.entries).map(e => e.path === 'twin1' ? { ...e, path: 'sub/twin1' } : e) }, targets: targetList([{ file: twin, dest: join(sub, 'twin1') }]), partialKey: 'transfer-3', root: out })
      await rm(sub, { recursive: true })
      await symlink(outside, sub)
      const twinChunks = (m.entries[twin] as ManifestFile).chunks
      await expectCodeAsync(swapped.accept(twinChunks[0]!, await store.get(twinChunks[0]!)), 'DESTINATION_LINK')
      await swapped.close()
      expect(await readdir(outside)).toEqual(['victim.txt'])
    })

    it('keeps a verified file in its partial when something took its destination meanwhile', async () => {
      const { manifest: m } = await folder()
      const assembly = new ShareAssembly({ store, keys, owner: OWNER_PEER, manifest: m, targets: targets(m), partialKey: 'transfer-4', root: out })
      await writeFile(join(out, 'big.bin'), 'the user\'s own')
      await expectCodeAsync(assembly.finish(), 'DESTINATION_EXISTS')
      await assembly.close()
      expect(await readFile(join(out, 'big.bin'), 'utf8')).toBe('the user\'s own')
      const big = m.entries.findIndex(e => e.path === 'big.bin')
      const partial = sharePartialPath(join(out, 'big.bin'), 'transfer-4', big)
      expect((await stat(partial)).size).toBe(4 * CS + 1)
      // moved away, a resume places it from the partial (its chunks read back from the store)
      await rm(join(out, 'big.bin'))
      const resumed = new ShareAssembly({ store, keys, owner: OWNER_PEER, manifest: m, targets: targets(m, file => file === big), partialKey: 'transfer-4', root: out })
      await resumed.finish()
      expect((await readFile(join(out, 'big.bin'))).length).toBe(4 * CS + 1)
    })

    describe('holding the chunks it writes in their files', () => {
      /** A fetcher's store: empty, its chunks come from `store` (the source) through `put`. */
      async function fetcherStore (): Promise<ChunkStore> {
        return await openChunkStore({
          dir: join(dir, 'fetcher-chunks'),
          db: db.sublevel('fetcher'),
          keys: async (share, peer) => share === shareId && peer === OWNER_PEER ? keys : undefined
        })
      }

      async function listed (s: ChunkStore): Promise<Array<{ id: string, inFile: boolean }>> {
        const out = []
        for await (const { id, inFile } of s.list()) out.push({ id, inFile })
        return out
      }

      const chunksOf = (m: Manifest, path: string): string[] => (m.entries.find(e => e.path === path) as ManifestFile).chunks
      const indexOf = (m: Manifest, path: string): number => m.entries.findIndex(e => e.path === path)

      it('records every chunk put as held in its placed file, writing no sealed copy', async () => {
        const { manifest: m, contents } = await folder()
        const fetched = await fetcherStore()
        const assembly = new ShareAssembly({ store: fetched, keys, owner: OWNER_PEER, manifest: m, targets: targets(m) })
        const ids = assembly.wanted()
        for (const id of ids) expect(await assembly.put(id, await store.get(id))).toBe(true)
        await assembly.finish()
        expect((await readdir(out)).sort()).toEqual([...contents.keys()].sort())
        for (const [name, bytes] of contents) expect((await readFile(join(out, name))).equals(bytes)).toBe(true)
        for (const id of ids) {
          expect(await fetched.has(id)).toBe(true)
          expect(Buffer.from(await fetched.get(id)).equals(await store.get(id))).toBe(true)
        }
        expect(fetched.stats()).toEqual({ count: ids.length, bytes: 0, inFiles: ids.length })
        expect((await listed(fetched)).every(c => c.inFile)).toBe(true)
        expect((await readdir(join(dir, 'fetcher-chunks'), { recursive: true, withFileTypes: true })).filter(e => e.isFile())).toEqual([])
        // served from the placed file itself: changing it loses the chunk, and the file stays as it is
        const big = chunksOf(m, 'big.bin')
        const changed = Buffer.from(contents.get('big.bin')!)
        changed[CS + 7]! ^= 1 // in chunk 1
        await writeFile(join(out, 'big.bin'), changed)
        await expectCodeAsync(fetched.get(big[1]!), 'CHUNK_CORRUPT')
        expect(await fetched.has(big[1]!)).toBe(false)
        expect(Buffer.from(await fetched.get(big[0]!)).equals(await store.get(big[0]!))).toBe(true)
        expect((await readFile(join(out, 'big.bin'))).equals(changed)).toBe(true)
      })

      it('refuses bytes that do not match the id, writing and recording nothing', async () => {
        const { manifest: m } = await folder()
        const big = chunksOf(m, 'big.bin')
        const fetched = await fetcherStore()
        const assembly = new ShareAssembly({ store: fetched, keys, owner: OWNER_PEER, manifest: m, targets: targets(m) })
        const good = Buffer.from(await store.get(big[0]!))
        await expectCodeAsync(assembly.put(big[0]!, await store.get(big[1]!)), 'CHUNK_HASH_MISMATCH')
        const flipped = Buffer.from(good)
        flipped[40]! ^= 1
        await expectCodeAsync(assembly.put(big[0]!, flipped), 'CHUNK_HASH_MISMATCH')
        await expectCodeAsync(assembly.put(big[0]!, good.subarray(0, 10)), 'CHUNK_TOO_LARGE')
        expect(await readdir(out)).toEqual([])
        expect(await fetched.has(big[0]!)).toBe(false)
        expect(fetched.stats()).toEqual({ count: 0, bytes: 0, inFiles: 0 })
        expect(assembly.wanted()).toContain(big[0])
        // the source is blamed, not the assembly: the right bytes still go in
        expect(await assembly.put(big[0]!, good)).toBe(true)
        expect(await fetched.has(big[0]!)).toBe(true)
        expect(assembly.wanted()).not.toContain(big[0])
        await assembly.abort()
      })

      it('keeps its partials when closed, serves their chunks meanwhile, and the next run takes them over', async () => {
        const { manifest: m, contents } = await folder()
        const big = chunksOf(m, 'big.bin')
        const partial = sharePartialPath(join(out, 'big.bin'), 'transfer-1', indexOf(m, 'big.bin'))
        const fetched = await fetcherStore()
        const first = new ShareAssembly({ store: fetched, keys, owner: OWNER_PEER, manifest: m, targets: targets(m), partialKey: 'transfer-1' })
        await first.put(big[0]!, await store.get(big[0]!))
        await first.put(big[1]!, await store.get(big[1]!))
        await first.close()
        await expectCodeAsync(first.put(big[2]!, await store.get(big[2]!)), 'FETCH_ABORTED')
        expect(await readdir(out)).toEqual([basename(partial)])
        const before = await stat(partial)
        expect((await readFile(partial)).subarray(0, 2 * CS).equals(contents.get('big.bin')!.subarray(0, 2 * CS))).toBe(true)
        // meanwhile the store serves what the partial holds
        for (const id of big.slice(0, 2)) expect(Buffer.from(await fetched.get(id)).equals(await store.get(id))).toBe(true)
        expect(await fetched.has(big[2]!)).toBe(false)
        expect(fetched.stats()).toEqual({ count: 2, bytes: 0, inFiles: 2 })

        await appendFile(partial, Buffer.alloc(3 * CS, 0xee)) // junk past the end: the takeover cuts it off
        const second = new ShareAssembly({ store: fetched, keys, owner: OWNER_PEER, manifest: m, targets: targets(m), partialKey: 'transfer-1' })
        await second.fill() // from the partial, through the store
        expect(second.wanted()).not.toContain(big[0])
        expect(second.wanted()).not.toContain(big[1])
        expect((await stat(partial)).ino).toBe(before.ino) // taken over, not replaced
        for (const id of big.slice(0, 2)) expect(Buffer.from(await fetched.get(id)).equals(await store.get(id))).toBe(true)
        for (const id of second.wanted()) await second.put(id, await store.get(id))
        await second.finish()
        expect((await readdir(out)).sort()).toEqual([...contents.keys()].sort())
        for (const [name, bytes] of contents) expect((await readFile(join(out, name))).equals(bytes)).toBe(true)
        // the records followed the file into place
        for (const id of big) expect(Buffer.from(await fetched.get(id)).equals(await store.get(id))).toBe(true)
        expect(fetched.stats()).toEqual({ count: 8, bytes: 0, inFiles: 8 })
      })

      it('removes its partials on abort, keeping the files already placed', async () => {
        const { manifest: m, contents } = await folder()
        const big = chunksOf(m, 'big.bin')
        const twin = chunksOf(m, 'twin1')
        const fetched = await fetcherStore()
        const assembly = new ShareAssembly({ store: fetched, keys, owner: OWNER_PEER, manifest: m, targets: targets(m), partialKey: 'transfer-2' })
        await assembly.put(big[0]!, await store.get(big[0]!))
        for (const id of twin) await assembly.put(id, await store.get(id))
        expect((await readdir(out)).some(n => n.endsWith('.kith-partial'))).toBe(true)
        await assembly.abort()
        expect((await readdir(out)).sort()).toEqual(['twin1', 'twin2'])
        for (const name of ['twin1', 'twin2']) expect((await readFile(join(out, name))).equals(contents.get(name)!)).toBe(true)
        for (const id of twin) expect(Buffer.from(await fetched.get(id)).equals(await store.get(id))).toBe(true)
        // the chunk held in the removed partial is held no more
        await fetched.get(big[0]!).catch(() => {})
        expect(await fetched.has(big[0]!)).toBe(false)
      })
    })
  })

  async function chunkSourceFolder (): Promise<Manifest> {
    const src = join(dir, 'src')
    await mkdir(join(src, 'sub'), { recursive: true })
    await writeFile(join(src, 'sub', 'f.txt'), 'inside')
    const { entries } = await chunkSource(src, { keys, version: 2, store: sealedSink(store), chunkSize: CS })
    return createManifest({ ...owner, shareId, version: 2, name: 'folder', chunkSize: CS, entries }).manifest
  }
})
