import { appendFile, link, open as openFile, readdir, rename, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { KithError } from '../../../src/errors.ts'
import { openDatabase, sublevel, type Database } from '../../../src/peer/database.ts'
import { openChunkStore, type ChunkStore } from '../../../src/transfer/chunk-store.ts'
import { MAX_SEALED_CHUNK_SIZE } from '../../../src/transfer/constants.ts'
import { HostBook } from '../../../src/services/backup/host-book.ts'
import { PackStore, type Place } from '../../../src/services/backup/pack-store.ts'
import { makeChunks, tempDir, type Chunk } from '../../helpers/chunks.ts'

/**
 * The host's pack files against real files and a real LevelDB: appends of
 * concurrent requests never overlap, places are checked against the pack
 * before a byte is read, and a compaction keeps every held blob readable
 * whatever step a kill -9 cuts it at (each crash point's disk state is made
 * as the kill would leave it, then the book opened on it as after a restart).
 */
const OWNER = '12D3KooWOwnerOwnerOwnerOwnerOwnerOwnerOwnerOwnerOwner'
/** small packs, so a few blobs fill several */
const PACK = 10_000
const SIZE = 2000

const codeOf = (err: unknown): string => err instanceof KithError ? err.code : `not a KithError: ${String(err)}`

describe('pack store', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let db: Database
  let store: ChunkStore
  let packDir: string

  const open = async (): Promise<HostBook> => {
    const book = new HostBook({ db, home: tmp.dir, store, sync: false, packSize: PACK })
    await book.open()
    return book
  }

  /** `chunks` put by OWNER as a put-many would: reserved, appended, synced, indexed, one batch each */
  const put = async (book: HostBook, chunks: Chunk[]): Promise<void> => {
    expect(await book.reserveMany(OWNER, chunks.map(c => ({ id: c.id, size: c.sealed.length })))).toEqual(chunks.map(() => 'go'))
    const batch = book.appender(OWNER)
    try {
      const placed: Array<{ id: string, place: Place }> = []
      for (const c of chunks) placed.push({ id: c.id, place: await batch.append(c.sealed) })
      await batch.sync()
      await book.commitMany(OWNER, placed)
    } finally {
      batch.end()
    }
  }

  const packs = async (): Promise<string[]> => (await readdir(packDir).catch(() => [])).sort()

  /** every chunk read back through the book, or the code it failed with */
  const readAll = async (book: HostBook, chunks: Chunk[]): Promise<boolean[]> => {
    const held = await book.locate(OWNER, chunks.map(c => c.id))
    return await Promise.all(chunks.map(async (c, i) => held[i] != null && Buffer.from(await book.read(OWNER, c.id, held[i]!)).equals(c.sealed)))
  }

  beforeEach(async () => {
    tmp = await tempDir('kith-pack-store-')
    db = await openDatabase(join(tmp.dir, 'db'))
    store = await openChunkStore({ dir: join(tmp.dir, 'chunks'), db: db.sublevel('chunk-index'), sync: false })
    packDir = join(tmp.dir, 'backup-host', 'packs', OWNER)
  })

  afterEach(async () => {
    await db.close()
    await tmp.cleanup()
  })

  it('appends of concurrent batches never overlap and roll over at the pack size; a place past a pack\'s end is refused before it is read', async () => {
    const packStore = new PackStore({ dir: join(tmp.dir, 'packs'), sync: false, packSize: PACK })
    await packStore.open()
    const chunks = makeChunks(15, 1500)
    const places = await Promise.all([0, 1, 2].map(async b => {
      const batch = packStore.begin(OWNER)
      try {
        const placed = await Promise.all(chunks.slice(b * 5, b * 5 + 5).map(async c => await batch.append(c.sealed)))
        await batch.sync()
        return placed
      } finally {
        batch.end()
      }
    }))
    const all = places.flat()
    // each pack holds whole blobs, at most PACK bytes of them, none overlapping
    const byPack = Map.groupBy(all, p => p.pack)
    expect(byPack.size).toBe(3)
    for (const [, ps] of byPack) {
      const offsets = ps.map(p => p.offset).sort((a, b) => a - b)
      expect(offsets).toEqual(offsets.map((_, i) => i * 1500))
      expect(offsets.at(-1)! + 1500).toBeLessThanOrEqual(PACK)
    }
    for (const [i, place] of all.entries()) expect(Buffer.from(await packStore.read(OWNER, place, 1500))).toEqual(chunks[i]!.sealed)
    const last = all.at(-1)!
    expect(codeOf(await packStore.read(OWNER, last, 1501).catch(e => e))).toBe('CHUNK_NOT_FOUND')
    expect(codeOf(await packStore.read(OWNER, { pack: 99, offset: 0 }, 10).catch(e => e))).toBe('CHUNK_NOT_FOUND')
    expect(codeOf(await packStore.read(OWNER, { pack: 1, offset: 0 }, MAX_SEALED_CHUNK_SIZE + 1).catch(e => e))).toBe('CHUNK_NOT_FOUND')
    expect(codeOf(await packStore.read(OWNER, { pack: 1, offset: -1 }, 10).catch(e => e))).toBe('CHUNK_NOT_FOUND')
    packStore.close()
  })

  it('compacts a pack once half of it is dead: its live blobs move to the current pack with their rows, the pack goes, the quota stays exact', async () => {
    const book = await open()
    const chunks = makeChunks(12, SIZE)
    await put(book, chunks.slice(0, 6))
    await put(book, chunks.slice(6))
    // 5 blobs a pack: 1 and 2 full, 3 current
    expect(await packs()).toEqual(['1.pack', '2.pack', '3.pack'])
    const before = await book.locate(OWNER, chunks.map(c => c.id))
    expect(before.map(h => h!.place!.pack)).toEqual([1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3])

    // two of pack 2 removed: 3 of 5 live, not worth copying yet
    await book.remove(OWNER, [chunks[5]!.id, chunks[6]!.id], 1)
    await book.compactSoon(OWNER)
    expect(await packs()).toEqual(['1.pack', '2.pack', '3.pack'])
    // three of pack 1: 2 of 5 live, compacted
    await book.remove(OWNER, [chunks[0]!.id, chunks[1]!.id, chunks[2]!.id], 2)
    await book.compactSoon(OWNER)
    expect(await packs()).toEqual(['2.pack', '3.pack'])
    const kept = chunks.filter((_, i) => ![0, 1, 2, 5, 6].includes(i))
    expect((await book.locate(OWNER, kept.map(c => c.id))).map(h => h!.place!.pack)).toEqual([3, 3, 2, 2, 2, 3, 3])
    expect(await readAll(book, kept)).toEqual(kept.map(() => true))
    expect(book.usage(OWNER)).toMatchObject({ used: kept.length * SIZE, blobs: kept.length })
    // pack 2 holds two dead blobs; pack 3 its own two and the two moved
    expect(book.packs.usage(OWNER)).toEqual({ packs: 2, bytes: PACK + 4 * SIZE, dead: 2 * SIZE })
    // after a restart, the same
    await book.close()
    const again = await open()
    expect(again.usage(OWNER)).toMatchObject({ used: kept.length * SIZE, blobs: kept.length })
    expect(await readAll(again, kept)).toEqual(kept.map(() => true))
    // everything removed: every pack goes, the current one too, and the next put makes a new one
    await again.remove(OWNER, kept.map(c => c.id), 3)
    await again.compactSoon(OWNER)
    expect(await packs()).toEqual([])
    expect(again.packs.usage(OWNER)).toEqual({ packs: 0, bytes: 0, dead: 0 })
    await put(again, chunks.slice(0, 1))
    expect(await packs()).toEqual(['4.pack'])
    expect(await readAll(again, chunks.slice(0, 1))).toEqual([true])
    await again.close()
  })

  it('keeps every held blob readable when a kill -9 cuts a compaction between its copies and its batch', async () => {
    let book = await open()
    const chunks = makeChunks(7, SIZE)
    await put(book, chunks)
    const places = await book.locate(OWNER, chunks.map(c => c.id))
    await book.close()
    // what the kill leaves: three of pack 1 removed (their rows gone), the two live ones appended to the current pack, no row moved
    const rows = sublevel(db, 'backup-host-blobs')
    await rows.batch([0, 1, 2].map(i => ({ type: 'del' as const, key: `${OWNER}/${chunks[i]!.id}` })))
    await appendFile(join(packDir, '2.pack'), Buffer.concat([chunks[3]!.sealed, chunks[4]!.sealed]))
    expect((await stat(join(packDir, '2.pack'))).size).toBe(4 * SIZE)
    const kept = chunks.slice(3)
    expect(places.slice(3).map(h => h!.place!.pack)).toEqual([1, 1, 2, 2])

    book = await open()
    // every blob readable at once, wherever the compaction that starts with the book has got to
    expect(await readAll(book, kept)).toEqual(kept.map(() => true))
    // pack 1, half dead, is compacted after start; the copies were dead space at the tail, cut off first
    await book.compactSoon(OWNER)
    expect(await packs()).toEqual(['2.pack'])
    expect((await book.locate(OWNER, kept.map(c => c.id))).map(h => h!.place)).toEqual([
      { pack: 2, offset: 2 * SIZE }, { pack: 2, offset: 3 * SIZE }, { pack: 2, offset: 0 }, { pack: 2, offset: SIZE }
    ])
    expect(book.usage(OWNER)).toMatchObject({ used: 4 * SIZE, blobs: 4 })
    expect(book.packs.usage(OWNER)).toEqual({ packs: 1, bytes: 4 * SIZE, dead: 0 })
    await book.close()
  })

  it('keeps every held blob readable when a kill -9 cuts a compaction between its batch and the unlink, and removes the pack no row points at on start', async () => {
    let book = await open()
    const chunks = makeChunks(7, SIZE)
    await put(book, chunks)
    // the pack is kept aside while the compaction runs, and put back after: as if the unlink never came
    await link(join(packDir, '1.pack'), join(tmp.dir, 'pack-1-aside'))
    await book.remove(OWNER, [chunks[0]!.id, chunks[1]!.id, chunks[2]!.id], 1)
    await book.compactSoon(OWNER)
    expect(await packs()).toEqual(['2.pack'])
    await book.close()
    await rename(join(tmp.dir, 'pack-1-aside'), join(packDir, '1.pack'))

    book = await open()
    expect(await packs()).toEqual(['2.pack'])
    const kept = chunks.slice(3)
    expect(await readAll(book, kept)).toEqual(kept.map(() => true))
    expect(book.usage(OWNER)).toMatchObject({ used: 4 * SIZE, blobs: 4 })
    await book.close()
  })

  it('reads a blob a compaction moved while it was being read where it went; a damaged one is BLOB_MISSING, caused by CHUNK_CORRUPT, and given back', async () => {
    const book = await open()
    const chunks = makeChunks(7, SIZE)
    await put(book, chunks)
    const [old] = await book.locate(OWNER, [chunks[4]!.id])
    await book.remove(OWNER, [chunks[0]!.id, chunks[1]!.id, chunks[2]!.id], 1)
    await book.compactSoon(OWNER)
    expect((await book.locate(OWNER, [chunks[4]!.id]))[0]!.place!.pack).toBe(2)
    // the place read before the move: its pack is gone, the row says where the blob went
    expect(Buffer.from(await book.read(OWNER, chunks[4]!.id, old!))).toEqual(chunks[4]!.sealed)
    expect(book.usage(OWNER)).toMatchObject({ used: 4 * SIZE, blobs: 4 })

    // a blob whose bytes in its pack were damaged
    const [held] = await book.locate(OWNER, [chunks[6]!.id])
    const file = await openFile(join(packDir, `${held!.place!.pack}.pack`), 'r+')
    await file.write(Buffer.from([1, 2, 3]), 0, 3, held!.place!.offset + 100)
    await file.close()
    const err = await book.read(OWNER, chunks[6]!.id, held!).catch(e => e)
    expect(codeOf(err)).toBe('BLOB_MISSING')
    expect(codeOf((err as KithError).cause)).toBe('CHUNK_CORRUPT')
    expect(await book.has(OWNER, [chunks[5]!.id, chunks[6]!.id])).toEqual([true, false])
    expect(book.usage(OWNER)).toMatchObject({ used: 3 * SIZE, blobs: 3 })
    await book.close()
  })

  it('close() waits for every compaction round asked for, not only the one under way', async () => {
    const book = await open()
    const chunks = makeChunks(40, SIZE)
    for (let p = 0; p < 8; p++) await put(book, chunks.slice(5 * p, 5 * p + 5))
    const numbered = async (): Promise<number[]> => (await packs()).map(name => parseInt(name)).sort((a, b) => a - b)
    expect(await numbered()).toEqual([1, 2, 3, 4, 5, 6, 7, 8])
    // 3 of 5 removed from packs 1-7: seven half dead (8, the current one, is not compacted), two rounds of at most 4
    await book.remove(OWNER, [0, 1, 2, 3, 4, 5, 6].flatMap(p => [0, 1, 2].map(i => chunks[5 * p + i]!.id)), 1)
    await book.close()
    // once close has resolved, nothing more happens to the packs
    expect((await numbered()).filter(n => n <= 7)).toEqual([])
  })

  it('a revoked owner\'s sweep during a put-many leaves nothing of theirs on disk once the compaction it asks for is done', async () => {
    const book = await open()
    const chunks = makeChunks(4, SIZE)
    await put(book, chunks.slice(0, 2))
    // a put-many under way: reserved, one of two appended
    expect(await book.reserveMany(OWNER, chunks.slice(2).map(c => ({ id: c.id, size: SIZE })))).toEqual(['go', 'go'])
    const batch = book.appender(OWNER)
    const placed = [{ id: chunks[2]!.id, place: await batch.append(chunks[2]!.sealed) }]
    // the owner's grant is gone, with no grace: everything of theirs is deleted
    expect(await book.sweep(() => false, 0)).toEqual([OWNER])
    expect(await packs()).toEqual([])
    // the put-many goes on as protocol.ts's does: its next append, sync, commit (of none), end, a compaction
    placed.push({ id: chunks[3]!.id, place: await batch.append(chunks[3]!.sealed) })
    await batch.sync()
    expect(await book.commitMany(OWNER, placed)).toBe(0)
    batch.end()
    await book.compactSoon(OWNER)
    expect(book.usage(OWNER)).toMatchObject({ used: 0, blobs: 0 })
    expect(await book.has(OWNER, chunks.map(c => c.id))).toEqual([false, false, false, false])
    expect({ packs: await packs(), usage: book.packs.usage(OWNER) }).toEqual({ packs: [], usage: { packs: 0, bytes: 0, dead: 0 } })
    await book.close()
  })
})
