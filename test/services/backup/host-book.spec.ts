import { readdir, stat, truncate } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { KithError } from '../../../src/errors.ts'
import { openDatabase, sublevel, type Database } from '../../../src/peer/database.ts'
import { openChunkStore, type ChunkStore } from '../../../src/transfer/chunk-store.ts'
import { DEFAULT_QUOTA, HostBook } from '../../../src/services/backup/host-book.ts'
import { parseSize } from '../../../src/services/backup/quota-text.ts'
import { makeChunks, tempDir } from '../../helpers/chunks.ts'
import { placeBlobs } from '../../helpers/host-place.ts'

/**
 * The host book against a real LevelDB, real pack files and a real chunk
 * store on disk: what a kill -9 between reserving and indexing leaves is
 * reconciled on open, blobs kept by a host from before packs (in the chunk
 * store) are still held, and a friend no longer granted backup loses their
 * data only after the grace period.
 */
const OWNER = '12D3KooWOwnerOwnerOwnerOwnerOwnerOwnerOwnerOwnerOwner'
const OTHER = '12D3KooWOtherOtherOtherOtherOtherOtherOtherOtherOther'

describe('host book', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let db: Database
  let store: ChunkStore
  let now = 1_000_000

  const open = async (): Promise<HostBook> => {
    const book = new HostBook({ db, home: tmp.dir, store, sync: false, now: () => now })
    await book.open()
    return book
  }


  const packsOf = async (owner: string): Promise<string[]> => (await readdir(join(tmp.dir, 'backup-host', 'packs', owner)).catch(() => [])).sort()

  beforeEach(async () => {
    tmp = await tempDir('kith-host-book-')
    db = await openDatabase(join(tmp.dir, 'db'))
    store = await openChunkStore({ dir: join(tmp.dir, 'chunks'), db: db.sublevel('chunk-index'), sync: false })
  })

  afterEach(async () => {
    await db.close()
    await tmp.cleanup()
  })

  it('reconciles with the disk on open: what a kill left half-done is dead space, cut off the pack\'s tail', async () => {
    const [a, b, c, d] = makeChunks(4, 1000)
    // d: kept by a host from before packs, in the engine's chunk store, its row without a place
    await store.put(d!.id, d!.sealed)
    await sublevel(db, 'backup-host-blobs').put(`${OWNER}/${d!.id}`, { size: 1000, at: now })
    let book = await open()
    await book.setQuota(OWNER, 4000)
    expect(book.usage(OWNER)).toMatchObject({ used: 1000, blobs: 1 })
    // a: appended and indexed; b: appended, the kill came before the batch; c: reserved, never appended
    for (const x of [a!, b!, c!]) expect(await book.reserve(OWNER, x.id, 1000)).toBe('reserved')
    await placeBlobs(book, OWNER, [a!])
    const batch = book.appender(OWNER)
    await batch.append(b!.sealed)
    await batch.sync()
    expect(book.usage(OWNER)).toMatchObject({ used: 4000, blobs: 4 })
    // pending bytes count against the quota: nothing more fits meanwhile
    await expect(book.reserve(OWNER, makeChunks(1, 10)[0]!.id, 10)).rejects.toThrow(KithError)
    expect(await book.has(OWNER, [a!.id, b!.id, c!.id, d!.id])).toEqual([true, false, false, true])
    const pack = join(tmp.dir, 'backup-host', 'packs', OWNER, '1.pack')
    expect((await stat(pack)).size).toBe(2000)

    book = await open() // as after a restart: the same database, a new book
    expect(book.usage(OWNER)).toMatchObject({ used: 2000, blobs: 2, quota: 4000 })
    expect(await book.has(OWNER, [a!.id, b!.id, c!.id, d!.id])).toEqual([true, false, false, true])
    expect((await book.list(OWNER, null, 10)).ids.map(x => x.id).sort()).toEqual([a!.id, d!.id].sort())
    // b's bytes were the pack's tail, no row pointed at them: cut off
    expect((await stat(pack)).size).toBe(1000)
    expect(book.packs.usage(OWNER)).toEqual({ packs: 1, bytes: 1000, dead: 0 })
    for (const x of [a!, d!]) expect(Buffer.from(await book.read(OWNER, x.id, (await book.locate(OWNER, [x.id]))[0]!))).toEqual(x.sealed)
    // only the blob in the chunk store is the engine's to keep
    const live = new Set<string>()
    await book.liveChunks(live)
    expect(live).toEqual(new Set([d!.id]))
    // the next append goes on at the cut
    expect(await book.reserve(OWNER, b!.id, 1000)).toBe('reserved')
    await placeBlobs(book, OWNER, [b!])
    expect(await book.locate(OWNER, [b!.id])).toEqual([{ size: 1000, place: { pack: 1, offset: 1000 } }])

    // blobs whose bytes went since are dropped on the next open: d from the chunk store, b past the pack's end
    await store.delete(d!.id)
    await truncate(pack, 1999)
    book = await open()
    expect(book.usage(OWNER)).toMatchObject({ used: 1000, blobs: 1 })
    expect(await book.has(OWNER, [a!.id, b!.id, d!.id])).toEqual([true, false, false])
  })

  it('gives a friend no longer granted backup the grace period, and keeps everything if the grant comes back', async () => {
    const [a] = makeChunks(1, 500)
    const book = await open()
    await book.reserve(OWNER, a!.id, 500)
    await placeBlobs(book, OWNER, [a!])
    await book.putRecord(OWNER, Buffer.from('record'), 5)
    await expect(book.putRecord(OWNER, Buffer.from('older'), 5)).rejects.toThrow(/replay/)
    const grace = 30 * 86400_000
    let granted = false
    expect(await book.sweep(() => granted, grace)).toEqual([])
    expect(book.hosted()[0]).toMatchObject({ peerId: OWNER, goneSince: now, used: 500 })
    now += grace - 1
    expect(await book.sweep(() => granted, grace)).toEqual([])
    granted = true // granted again in time: the clock stops
    await book.sweep(() => granted, grace)
    expect(book.hosted()[0]!.goneSince).toBeNull()
    granted = false
    await book.sweep(() => granted, grace)
    now += grace
    expect(await book.sweep(() => granted, grace)).toEqual([OWNER])
    expect(book.hosted()[0]).toMatchObject({ used: 0, blobs: 0, record: null, goneSince: null })
    expect(await book.getRecord(OWNER)).toBeNull()
    expect(await book.has(OWNER, [a!.id])).toEqual([false])
    expect(await packsOf(OWNER)).toEqual([])
    // the counter stays, so nothing they signed before is accepted again
    expect(book.usage(OWNER)).toMatchObject({ used: 0, quota: DEFAULT_QUOTA, counter: 5 })
    // nothing left: later sweeps leave them be
    now += 10 * grace
    expect(await book.sweep(() => granted, grace)).toEqual([])
    expect(book.hosted()[0]!.goneSince).toBeNull()
  })

  it('keeps owners apart and removes only with a counter above the last', async () => {
    const [a] = makeChunks(1, 300)
    const book = await open()
    for (const owner of [OWNER, OTHER]) {
      await book.reserve(owner, a!.id, 300)
      await placeBlobs(book, owner, [a!])
    }
    expect(await packsOf(OWNER)).toEqual(['1.pack'])
    expect(await packsOf(OTHER)).toEqual(['1.pack'])
    expect(await book.remove(OWNER, [a!.id], 7)).toEqual({ freed: 300, used: 0 })
    await expect(book.remove(OWNER, [a!.id], 7)).rejects.toMatchObject({ code: 'BACKUP_REPLAYED' })
    expect(await book.has(OTHER, [a!.id])).toEqual([true])
    expect(book.usage(OTHER).used).toBe(300)
  })

  it('reads quotas as people write them', () => {
    expect(parseSize('20GB')).toBe(20e9)
    expect(parseSize('500MiB')).toBe(500 * 1024 ** 2)
    expect(parseSize('1.5T')).toBe(1.5e12)
    expect(parseSize('0')).toBe(0)
    expect(parseSize(4096)).toBe(4096)
    for (const bad of ['', 'lots', '-1GB', '20XB', '1e3', null, 'Infinity']) {
      expect(() => parseSize(bad)).toThrow(/20GB/)
    }
  })
})
