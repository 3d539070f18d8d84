import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openDatabase, type Database } from '../../../src/peer/database.ts'
import { LevelOwnerIndex, type SnapshotRecord } from '../../../src/services/backup/owner-index.ts'
import { keepPolicy } from '../../../src/services/backup/forget.ts'
import { codeOf } from '../../helpers/errors.ts'

const id = (n: number): string => n.toString(16).padStart(64, '0')
const DAY = 24 * 3600 * 1000
function snapshot (seq: number, created: number, hex = id(seq)): SnapshotRecord {
  return { seq, id: hex, created, label: null, paths: ['/a'], tree: [id(1000 + seq)], stats: { files: 1, dirs: 0, links: 0, bytes: 1, blobs: 3 } }
}

describe('the owner index (a real LevelDB)', () => {
  let dir: string
  let db: Database
  let index: LevelOwnerIndex

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kith-owner-index-'))
    db = await openDatabase(join(dir, 'db'))
    index = LevelOwnerIndex.open(db)
  })
  afterAll(async () => {
    await db.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('keeps blobs with the hosts that confirmed them, and lists them per host', async () => {
    await index.putBlob(id(1), { kind: 'data', sealedId: id(11), size: 100, root: id(21), hosts: [] })
    await index.addHost(id(1), 'h1')
    await index.addHost(id(1), 'h1')
    await index.addHost(id(1), 'h2')
    await index.putBlob(id(2), { kind: 'tree', sealedId: id(12), size: 50, root: id(22), hosts: ['h2'] })
    expect((await index.blob(id(1)))?.hosts).toEqual(['h1', 'h2'])
    const on = async (host: string): Promise<string[]> => { const out: string[] = []; for await (const [i] of index.blobsOn(host)) out.push(i); return out }
    expect(await on('h1')).toEqual([id(1)])
    expect(await on('h2')).toEqual([id(1), id(2)])
    await index.removeHost(id(1), 'h1')
    expect(await on('h1')).toEqual([])
    await index.deleteBlob(id(2))
    expect(await index.blob(id(2))).toBeUndefined()
  })

  it('numbers snapshots past every one made, finds them by number, id start or latest, and keeps what each needs', async () => {
    expect(await index.nextSeq()).toBe(1)
    await index.putSnapshot(snapshot(1, 0, 'abcd' + id(1).slice(4)))
    await index.putSnapshot(snapshot(2, DAY, 'abce' + id(2).slice(4)))
    expect(await index.nextSeq()).toBe(3)
    // a snapshot brought back with a lower number does not move the counter back
    await index.putSnapshot(snapshot(0, 0, 'ffff' + id(0).slice(4)))
    expect(await index.nextSeq()).toBe(3)
    expect((await index.snapshot('2')).seq).toBe(2)
    expect((await index.snapshot(2)).seq).toBe(2)
    expect((await index.snapshot('latest')).seq).toBe(2)
    expect((await index.snapshot('abcd')).seq).toBe(1)
    await expect(index.snapshot('abc')).rejects.toMatchObject({ code: 'SNAPSHOT_UNKNOWN' }) // too short
    await expect(index.snapshot('9')).rejects.toMatchObject({ code: 'SNAPSHOT_UNKNOWN' })
    await index.putSnapshot(snapshot(3, 2 * DAY, 'abcd0' + id(3).slice(5)))
    await expect(index.snapshot('abcd')).rejects.toMatchObject({ code: 'SNAPSHOT_UNKNOWN', message: expect.stringContaining('2 snapshots') })

    await index.addNeeds(2, [[id(5), 'data'], [id(6), 'tree']])
    await index.addNeeds(12, [[id(7), 'data']])
    expect([...await index.snapshotBlobs(2)].sort()).toEqual([id(5), id(6)])
    await index.deleteSnapshot(2)
    expect(await index.snapshotBlobs(2)).toEqual(new Set())
    expect([...await index.snapshotBlobs(12)]).toEqual([id(7)])
    expect((await index.snapshots()).map(s => s.seq)).toEqual([0, 1, 3])
  })
})

describe('the keep policy of forget', () => {
  const noon = Date.UTC(2026, 0, 10, 12)
  // two a day for four days, oldest first
  const all = Array.from({ length: 8 }, (_, i) => snapshot(i + 1, noon + Math.floor(i / 2) * DAY + (i % 2) * 3600_000))

  it('keeps the last N, the newest of each of the last N days, or their union', () => {
    expect(keepPolicy(all, { keepLast: 3 }).map(s => s.seq)).toEqual([6, 7, 8])
    expect(keepPolicy(all, { keepDaily: 2 }).map(s => s.seq)).toEqual([6, 8])
    expect(keepPolicy(all, { keepLast: 1, keepDaily: 3 }).map(s => s.seq)).toEqual([4, 6, 8])
    expect(keepPolicy(all, { keepLast: 0 })).toEqual([])
  })

  it('asks for a rule and refuses nonsense', () => {
    expect(codeOf(() => keepPolicy(all, {}))).toBe('BAD_REQUEST')
    expect(codeOf(() => keepPolicy(all, { keepLast: -1 }))).toBe('BAD_REQUEST')
    expect(codeOf(() => keepPolicy(all, { keepDaily: 1.5 }))).toBe('BAD_REQUEST')
  })
})
