import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import nacl from 'tweetnacl'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { openDatabase, sublevel, type Database } from '../../../src/peer/database.ts'
import { createAddressRecord } from '../../../src/peer/address-record.ts'
import { RecordStore, type StoredRecord } from '../../../src/services/locate/record-store.ts'

const key = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(3))
const rec = (seq: number, port = 4001) => createAddressRecord({ secretKey: key.secretKey, publicKey: key.publicKey, addrs: [`/ip4/127.0.0.1/tcp/${port}`], seq })

describe('the record store', () => {
  let dir: string
  let db: Database
  let store: RecordStore

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kith-records-'))
    db = await openDatabase(join(dir, 'db'))
    store = new RecordStore(sublevel<StoredRecord>(db, 'address-records'))
  })

  afterEach(async () => {
    await db.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('keeps the newest record per peer and refuses equal or older ones', async () => {
    const first = rec(5)
    await store.offer(first, 'x')
    expect((await store.get(first.peerId))?.seq).toBe(5)
    await expect(store.offer(rec(5, 9999), 'x')).rejects.toMatchObject({ code: 'RECORD_STALE' })
    await expect(store.offer(rec(4, 9999), 'x')).rejects.toMatchObject({ code: 'RECORD_STALE' })
    expect((await store.get(first.peerId))?.addrs).toEqual(['/ip4/127.0.0.1/tcp/4001'])
    expect(await store.offerIfNewer(rec(6, 4002), 'x')).toBe(true)
    expect(await store.offerIfNewer(rec(6, 4003), 'x')).toBe(false)
    expect((await store.get(first.peerId))?.addrs).toEqual(['/ip4/127.0.0.1/tcp/4002'])
  })

  it('applies concurrent offers one at a time: the highest seq wins whatever the order', async () => {
    const offers = [3, 9, 1, 7, 9, 2, 8].map(seq => store.offerIfNewer(rec(seq, 4000 + seq), 'x'))
    await Promise.all(offers)
    expect((await store.get(rec(1).peerId))?.seq).toBe(9)
  })

  it('keeps records of friends only: another peer\'s is refused, and a revoked friend\'s is forgotten (drop, prune)', async () => {
    const other = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(4))
    const otherRecord = createAddressRecord({ secretKey: other.secretKey, publicKey: other.publicKey, addrs: ['/ip4/10.0.0.9/tcp/4001'], seq: 1 })
    const friends = new Set([rec(1).peerId, otherRecord.peerId])
    const level = sublevel<StoredRecord>(db, 'address-records')
    const kept = new RecordStore(level, peer => friends.has(peer))
    await kept.offer(rec(1), 'x')
    await kept.offer(otherRecord, 'x')
    friends.delete(otherRecord.peerId)
    await expect(kept.offer(createAddressRecord({ secretKey: other.secretKey, publicKey: other.publicKey, addrs: [], seq: 2 }), 'x')).rejects.toMatchObject({ code: 'NOT_A_FRIEND' })
    expect((await kept.get(otherRecord.peerId))?.seq).toBe(1)
    // revoked while the node was down: forgotten at the next start
    expect(await kept.prune()).toBe(1)
    expect(await kept.get(otherRecord.peerId)).toBeUndefined()
    await kept.drop(rec(1).peerId)
    expect(await kept.get(rec(1).peerId)).toBeUndefined()
    expect(await level.keys().all()).toEqual([])
  })

  it('reads a damaged stored record as no record', async () => {
    const r = rec(5)
    await sublevel<StoredRecord>(db, 'address-records').put(r.peerId, { record: Buffer.from(r.bytes.subarray(0, 40)).toString('base64'), received: 0, from: 'x' })
    expect(await store.get(r.peerId)).toBeUndefined()
  })
})
