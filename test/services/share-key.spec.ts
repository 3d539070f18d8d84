import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { bytesSublevel, openDatabase, sublevel, type Database } from '../../src/peer/database.ts'
import { unwrapKey, wrapKey } from '../../src/peer/key-wrap.ts'
import { FriendBook } from '../../src/trust/friends.ts'
import { openChunkStore, type ChunkStore } from '../../src/transfer/chunk-store.ts'
import { decodeManifest, type Manifest, type ManifestFile } from '../../src/transfer/manifest.ts'
import { deriveSealKeys, openChunk, type ChunkPosition } from '../../src/transfer/seal.ts'
import { ShareBook, type MyShare } from '../../src/services/files/share-book.ts'
import { shareRecipients } from '../../src/services/files/file-service.ts'
import { expectCode, keypair, pseudoRandom, tempDir } from '../transfer/helpers.ts'

/**
 * Key rotation when a friend is removed from a share, on a real LevelDB, a
 * real chunk store and real signed manifests: the key a removed (or revoked)
 * friend holds opens nothing of the next version; the friends who stay get
 * the new key and, holding versions under both keys, can still read and
 * serve each.
 */
const MiB = 1024 * 1024
const alice = keypair(1)
const bob = keypair(2)
const carol = keypair(3)
const peerOf = (keys: { publicKey: Uint8Array }): string => peerIdFromPublicKey(publicKeyFromRaw(keys.publicKey)).toString()
const ALICE = peerOf(alice)
const BOB = peerOf(bob)
const CAROL = peerOf(carol)

function files (manifest: Manifest): ManifestFile[] {
  return manifest.entries.filter((e): e is ManifestFile => e.type === 'file')
}

function chunkIds (manifest: Manifest): string[] {
  return files(manifest).flatMap(f => f.chunks)
}

/** Every chunk of a manifest with the place it was sealed at. */
function chunks (manifest: Manifest): Array<{ id: string, position: ChunkPosition, file: ManifestFile, index: number }> {
  return files(manifest).flatMap(file => file.chunks.map((id, index) => ({ id, file, index, position: { shareId: manifest.shareId, fileHash: file.sha256, index } })))
}

/** The share key as a friend gets it: wrapped to them by alice (the files protocol), opened with their key. */
function keyAs (share: MyShare, friend: typeof bob): Uint8Array {
  return unwrapKey(wrapKey(Buffer.from(share.key, 'base64'), friend.publicKey, alice.secretKey), alice.publicKey, friend.secretKey)
}

describe('share keys when a friend is removed', () => {
  let dir: string
  let cleanup: () => Promise<void>
  let db: Database
  let store: ChunkStore
  let shares: ShareBook
  let folder: string

  beforeEach(async () => {
    ({ dir, cleanup } = await tempDir())
    db = await openDatabase(join(dir, 'db'))
    store = await openChunkStore({ dir: join(dir, 'chunks'), db: sublevel(db, 'chunk-index'), sync: false })
    shares = new ShareBook(sublevel(db, 'shares'), sublevel(db, 'received'), bytesSublevel(db, 'share-manifests'), bytesSublevel(db, 'received-bytes'))
    folder = join(dir, 'photos')
    await mkdir(folder)
    await writeFile(join(folder, 'a.bin'), pseudoRandom(MiB + 7, 'a'))
    await writeFile(join(folder, 'b.txt'), 'hello\n')
  })

  afterEach(async () => {
    await db.close()
    await cleanup()
  })

  async function share (withPeers: string[]): Promise<{ share: MyShare, bytes: Uint8Array, manifest: Manifest }> {
    const { share, manifest } = await shares.share({
      source: folder,
      with: withPeers,
      secretKey: alice.secretKey,
      publicKey: alice.publicKey,
      store: { put: async (id, sealed) => await store.put(id, Buffer.concat(sealed), { sync: false }) }
    })
    return { share, bytes: manifest, manifest: decodeManifest(manifest, { owner: alice.publicKey }) }
  }

  it('a new version after a friend is removed is sealed under a new key that friend never gets', async () => {
    const v1 = await share([BOB, CAROL])
    const v2 = await share([CAROL])
    expect(v2.share.version).toBe(2)
    expect(v2.share.with).toEqual([CAROL])
    expect(v2.share.key).not.toBe(v1.share.key)
    // same content, other key: no chunk id in common
    expect(chunkIds(v2.manifest).filter(id => chunkIds(v1.manifest).includes(id))).toEqual([])

    const bobKeys = deriveSealKeys(keyAs(v1.share, bob), v1.manifest.shareId)
    const carolKeys = deriveSealKeys(keyAs(v2.share, carol), v2.manifest.shareId)
    for (const { id, position, file, index } of chunks(v2.manifest)) {
      const sealed = await store.get(id)
      expectCode(() => openChunk(bobKeys, position, sealed), 'CHUNK_DECRYPT_FAILED')
      const plain = openChunk(carolKeys, position, sealed)
      const source = file.path === 'a.bin' ? pseudoRandom(MiB + 7, 'a') : Buffer.from('hello\n')
      expect(Buffer.from(plain).equals(source.subarray(index * v2.manifest.chunkSize, (index + 1) * v2.manifest.chunkSize))).toBe(true)
    }
  })

  it('keeps the key, and so the chunk ids, while nobody is removed', async () => {
    const v1 = await share([CAROL])
    const v2 = await share([CAROL])
    const v3 = await share([BOB, CAROL])
    expect([v2.share.key, v3.share.key]).toEqual([v1.share.key, v1.share.key])
    expect(chunkIds(v3.manifest)).toEqual(chunkIds(v1.manifest))
  })

  it('a revoked friend, or one whose files grant was removed, is left out of the next version and its key', async () => {
    const friends = new FriendBook(sublevel(db, 'friends'))
    for (const [peerId, keys, label] of [[BOB, bob, 'bob'], [CAROL, carol, 'carol']] as const) {
      await friends.befriend({ peerId, publicKey: Buffer.from(keys.publicKey).toString('base64'), label, grantsToThem: ['files'], grantsFromThem: ['files'], addrs: [], via: 'test' })
    }
    const v1 = await share(shareRecipients(friends))
    expect(v1.share.with).toEqual([BOB, CAROL].sort())

    await friends.revoke('bob')
    expect(shareRecipients(friends)).toEqual([CAROL])
    expectCode(() => shareRecipients(friends, ['bob']), 'SHARE_NOT_GRANTED')
    const v2 = await share(shareRecipients(friends))
    expect(v2.share.key).not.toBe(v1.share.key)

    await friends.ungrant('carol', 'files')
    const v3 = await share(shareRecipients(friends))
    expect(v3.share.with).toEqual([])
    expect(v3.share.key).not.toBe(v2.share.key)
  })

  it('a friend who stays holds versions under both keys and reads each from the files it fetched', async () => {
    const v1 = await share([BOB, CAROL])
    const v2 = await share([CAROL])
    // carol's node: the manifests she received, and her two fetched copies holding the chunks
    const received = new ShareBook(sublevel(db, 'carol-shares'), sublevel(db, 'carol-received'), bytesSublevel(db, 'carol-share-manifests'), bytesSublevel(db, 'carol-received-bytes'))
    const held = await openChunkStore({
      dir: join(dir, 'carol-chunks'),
      db: sublevel(db, 'carol-index'),
      sync: false,
      keys: async (shareId, owner) => owner === ALICE ? await received.receivedKeys(owner, shareId, alice.publicKey, carol.secretKey) : undefined
    })
    for (const v of [v1, v2]) {
      const wrappedKey = Buffer.from(wrapKey(Buffer.from(v.share.key, 'base64'), carol.publicKey, alice.secretKey)).toString('base64')
      await received.saveReceived({ owner: ALICE, shareId: v.share.id, version: v.share.version, wrappedKey, received: Date.now() }, v.bytes)
      const copy = join(dir, `fetched-v${v.share.version}`)
      await mkdir(copy)
      for (const file of files(v.manifest)) {
        const path = join(copy, file.path)
        await writeFile(path, file.path === 'a.bin' ? pseudoRandom(MiB + 7, 'a') : 'hello\n')
        for (const [index, id] of file.chunks.entries()) {
          const position = { shareId: v.manifest.shareId, fileHash: file.sha256, index }
          expect(await held.putInFile(id, await store.get(id), { path, offset: index * v.manifest.chunkSize, position, owner: ALICE })).toBe(true)
        }
      }
    }
    const keys = await received.receivedKeys(ALICE, v1.share.id, alice.publicKey, carol.secretKey)
    expect(keys).toHaveLength(2)
    // each chunk sealed again from her files under the key its version had, byte for byte what alice sealed
    for (const id of [...chunkIds(v2.manifest), ...chunkIds(v1.manifest)]) {
      expect(Buffer.from(await held.get(id)).equals(await store.get(id))).toBe(true)
    }
  })
})
