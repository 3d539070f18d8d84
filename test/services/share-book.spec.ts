import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { bytesSublevel, openDatabase, sublevel, type Database, type Sublevel } from '../../src/peer/database.ts'
import { openChunkStore, type ChunkStore } from '../../src/transfer/chunk-store.ts'
import { decodeManifest, type ManifestFile } from '../../src/transfer/manifest.ts'
import { ShareBook, type MyShare, type ReceivedManifest } from '../../src/services/files/share-book.ts'
import { expectCodeAsync, keypair, packingSink, pseudoRandom, tempDir } from '../transfer/helpers.ts'

/**
 * How the share book stores my shares, on a real LevelDB: a small JSON
 * record and the signed manifest's bytes in a row of their own, written
 * together; records of the form before (the manifest as base64 inside the
 * record) are moved over once.
 */
const me = keypair(1)
const FILES = 50

describe('share book storage', () => {
  let dir: string
  let cleanup: () => Promise<void>
  let db: Database
  let store: ChunkStore
  let records: Sublevel<Record<string, unknown>>
  let manifests: Sublevel<Uint8Array>
  let received: Sublevel<Record<string, unknown>>
  let receivedBytes: Sublevel<Uint8Array>
  let book: ShareBook
  let folder: string

  beforeEach(async () => {
    ({ dir, cleanup } = await tempDir())
    db = await openDatabase(join(dir, 'db'))
    store = await openChunkStore({ dir: join(dir, 'chunks'), db: sublevel(db, 'chunk-index'), sync: false })
    records = sublevel(db, 'shares')
    manifests = bytesSublevel(db, 'share-manifests')
    received = sublevel(db, 'received')
    receivedBytes = bytesSublevel(db, 'received-bytes')
    book = new ShareBook(records as unknown as Sublevel<MyShare>, received as unknown as Sublevel<ReceivedManifest>, manifests, receivedBytes)
    // small files, packed, and one of two chunks
    folder = join(dir, 'photos')
    await mkdir(join(folder, 'small'), { recursive: true })
    for (let i = 0; i < FILES; i++) await writeFile(join(folder, 'small', `f${String(i).padStart(4, '0')}.jpg`), pseudoRandom(1000 + i, `f${i}`))
    await writeFile(join(folder, 'big.bin'), pseudoRandom(1024 * 1024 + 5, 'big'))
  })

  afterEach(async () => {
    await db.close()
    await cleanup()
  })

  async function shareFolder (): Promise<{ share: MyShare, manifest: Uint8Array }> {
    return await book.share({ source: folder, with: [], secretKey: me.secretKey, publicKey: me.publicKey, store: packingSink(store) })
  }

  it('keeps a small record and the signed manifest as bytes of its own, which summarise to its chunks', async () => {
    const { share, manifest } = await shareFolder()
    const record = await records.get(share.id)
    expect(record).not.toHaveProperty('manifest')
    // the record does not grow with the files: a few hundred bytes for 51 (a record naming 51 paths is 1,109)
    expect(JSON.stringify(record).length).toBeLessThan(600)
    const stored = await book.manifestBytes(share.id)
    expect(Buffer.from(stored!).equals(Buffer.from(manifest))).toBe(true)
    const decoded = decodeManifest(stored!, { owner: me.publicKey })
    const files = decoded.entries.filter((e): e is ManifestFile => e.type === 'file')
    expect(files).toHaveLength(FILES + 1)
    expect(files.filter(f => f.pack !== undefined)).toHaveLength(FILES)
    expect({ size: share.size, files: share.files, chunks: share.chunks }).toEqual({ size: decoded.totalSize, files: FILES + 1, chunks: decoded.chunkCount })
    const summary = await book.summary(share.id, me.publicKey)
    const ids = new Set<string>()
    for (let at = 0; at < summary.chunkIds.length; at += 32) ids.add(summary.chunkIds.toString('hex', at, at + 32))
    expect(ids).toEqual(new Set(files.flatMap(f => f.chunks)))
    // checked again on every read: not my key, not my manifest
    await expectCodeAsync(book.summary(share.id, keypair(2).publicKey), 'MANIFEST_WRONG_OWNER')
  })

  it('notes a changed file only for a chunk the share holds, and a malformed chunk id for none', async () => {
    const { share } = await shareFolder()
    const summary = await book.summary(share.id, me.publicKey)
    const held = summary.chunkIds.toString('hex', 0, 32)
    for (const bad of ['', 'zz', held.slice(0, 62), `${held}00`]) expect(await book.markChanged(share.id, bad, 'big.bin', me.publicKey)).toBe(false)
    expect(await book.markChanged(share.id, '00'.repeat(32), 'big.bin', me.publicKey)).toBe(false)
    expect((await book.list())[0]!.changed).toBeUndefined()
    expect(await book.markChanged(share.id, held, 'big.bin', me.publicKey)).toBe(true)
    expect((await book.list())[0]!.changed?.paths).toEqual(['big.bin'])
  })

  it('moves the manifest out of a record stored with it in base64, once, and serves the same bytes', async () => {
    const { share, manifest } = await shareFolder()
    // the record as kith stored it before: the manifest inside, no row of its own
    await records.put(share.id, { ...share, manifest: Buffer.from(manifest).toString('base64') })
    await manifests.del(share.id)
    const old = new ShareBook(records as unknown as Sublevel<MyShare>, received as unknown as Sublevel<ReceivedManifest>, manifests, receivedBytes)
    expect(await old.migrate()).toBe(1)
    expect(await records.get(share.id)).toEqual(share)
    expect(Buffer.from((await old.manifestBytes(share.id))!).equals(Buffer.from(manifest))).toBe(true)
    expect((await old.summary(share.id, me.publicKey)).files).toBe(FILES + 1)
    expect(await old.migrate()).toBe(0)
  })

  it('keeps a friend\'s manifest as bytes beside a small record, moves one stored in base64 out once, and prunes both rows', async () => {
    const { share, manifest } = await shareFolder()
    const record = { owner: 'friend', shareId: share.id, version: 1, wrappedKey: 'a2V5', received: 1000 }
    await book.saveReceived(record, manifest)
    const key = `friend/${share.id}/1`
    expect(JSON.stringify(await received.get(key)).length).toBeLessThan(300)
    expect(Buffer.from((await book.receivedManifest('friend', share.id, 1))!).equals(Buffer.from(manifest))).toBe(true)
    // version 2 as kith stored it before: the manifest inside the record, no row of its own
    await received.put(`friend/${share.id}/2`, { ...record, version: 2, manifest: Buffer.from(manifest).toString('base64') })
    expect(await book.receivedManifest('friend', share.id, 2)).toBeUndefined()
    expect(await book.migrate()).toBe(1)
    expect(await book.getReceived('friend', share.id, 2)).toEqual({ ...record, version: 2 })
    expect(decodeManifest((await book.receivedManifest('friend', share.id, 2))!, { owner: me.publicKey }).entries).toHaveLength(FILES + 2)
    expect(await book.migrate()).toBe(0)
    // received before 2000 and not kept: version 1 goes, both rows
    expect(await book.pruneReceived(new Set([`friend/${share.id}/2`]), 2000)).toBe(1)
    expect(await book.getReceived('friend', share.id, 1)).toBeUndefined()
    expect(await book.receivedManifest('friend', share.id, 1)).toBeUndefined()
    expect(await book.receivedManifest('friend', share.id, 2)).toBeDefined()
  })

  it('removes both rows on unshare', async () => {
    const { share } = await shareFolder()
    await book.unshare(share.id)
    expect(await records.get(share.id)).toBeUndefined()
    expect(await book.manifestBytes(share.id)).toBeUndefined()
    await expectCodeAsync(book.summary(share.id, me.publicKey), 'SHARE_UNKNOWN')
  })
})
