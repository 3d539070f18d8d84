import { describe, it, expect, beforeEach, afterEach } from 'vitest'
import { mkdtemp, rm, readdir, readFile, writeFile, truncate, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openDatabase, repairDatabase, sublevel, type Database } from '../../src/peer/database.ts'
import { checkDatabaseFiles, checkTable, snappyDecompress } from '../../src/peer/leveldb-check.ts'
import { KithError } from '../../src/errors.ts'

/**
 * The database on real LevelDB folders: checked against its own checksums
 * before it opens (classic-level can't turn on LevelDB's paranoid checks),
 * so damage is refused instead of silently dropped, and `repairDatabase`
 * salvages the rest.
 */
const FRIENDS = 3000
const INVITES = 100

/**
 * A database that lived through two runs: the first run's records compacted
 * into a table (snappy blocks, a compressed index, a bloom filter), the
 * second's still in the live log.
 */
async function makeDatabase (path: string): Promise<void> {
  let db = await openDatabase(path, 'new')
  await sublevel<object>(db, 'friends').batch(Array.from({ length: FRIENDS }, (_, i) => ({
    type: 'put' as const, key: `friend-${String(i).padStart(6, '0')}`, value: { i, label: `friend number ${i}`, note: 'n'.repeat(i % 97) }
  })))
  await db.close()
  db = await openDatabase(path, 'existing')
  const invites = sublevel<object>(db, 'invites')
  for (let i = 0; i < INVITES; i++) await invites.put(`invite-${i}`, { i })
  await db.close()
}

async function count (db: Database, name: string): Promise<number> {
  let n = 0
  for await (const _ of sublevel(db, name).keys()) n++
  return n
}

async function fileOf (dir: string, ext: string): Promise<string> {
  const name = (await readdir(dir)).find(n => n.endsWith(ext))
  if (name == null) throw new Error(`no ${ext} file in ${dir}`)
  return join(dir, name)
}

async function flip (file: string, at: number): Promise<void> {
  const bytes = await readFile(file)
  bytes[at < 0 ? bytes.length + at : at]! ^= 0x55
  await writeFile(file, bytes)
}

async function refused (path: string): Promise<KithError> {
  const err = await openDatabase(path, 'existing').then(async db => { await db.close(); return null }, (e: unknown) => e)
  expect(err).toBeInstanceOf(KithError)
  return err as KithError
}

describe('the database', () => {
  let dir: string
  let path: string

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kith-db-'))
    path = join(dir, 'db')
    await makeDatabase(path)
  })

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('opens a healthy database, and one whose log a crash cut short, as LevelDB does', async () => {
    expect(await checkDatabaseFiles(path)).toEqual([])
    const table = checkTable(await readFile(await fileOf(path, '.ldb')))
    expect(table.problem).toBeNull()
    expect(table.dataBlocks.length).toBeGreaterThan(10)
    // killed mid write: the last record is cut short, and only it is lost
    const log = await fileOf(path, '.log')
    await truncate(log, (await stat(log)).size - 3)
    const db = await openDatabase(path, 'existing')
    try {
      expect(await count(db, 'friends')).toBe(FRIENDS)
      expect(await count(db, 'invites')).toBe(INVITES - 1)
    } finally {
      await db.close()
    }
  })

  it('refuses a log record that fails its checksum, naming the folder and the file, and leaves the files as they were', async () => {
    const log = await fileOf(path, '.log')
    await flip(log, 100)
    const before = await readFile(log)
    const names = await readdir(path)
    const err = await refused(path)
    expect(err.code).toBe('DATABASE_CORRUPT')
    expect(err.message).toContain(path)
    expect(err.message).toMatch(/\d+\.log: record at \d+ fails its checksum/)
    expect(err.message).toContain('kith repair')
    // LevelDB never got to replay the log (which would drop the record and delete the file)
    expect(await readFile(log)).toEqual(before)
    expect((await readdir(path)).sort()).toEqual(names.sort())
  })

  it('refuses a table with a damaged block, a damaged index or footer, or cut short', async () => {
    const table = await fileOf(path, '.ldb')
    const original = await readFile(table)
    await flip(table, 20_000)
    expect((await refused(path)).message).toMatch(/\d+\.ldb: block at \d+ \(\d+ bytes\) fails its checksum/)
    await writeFile(table, original)
    await flip(table, -60) // the index block, just before the footer
    expect((await refused(path)).message).toContain('index block fails its checksum')
    await writeFile(table, original)
    await flip(table, -1) // the footer's magic number
    expect((await refused(path)).message).toContain('footer is damaged')
    await writeFile(table, original)
    await truncate(table, original.length - 100)
    expect((await refused(path)).message).toMatch(/bytes, but the manifest says/)
    await writeFile(table, original)
    const db = await openDatabase(path, 'existing')
    await db.close()
  })

  it('refuses a missing database or manifest instead of making an empty one', async () => {
    await writeFile(join(path, 'CURRENT'), 'MANIFEST-999999\n')
    expect((await refused(path)).code).toBe('DATABASE_CORRUPT')
    await rm(path, { recursive: true })
    const missing = await refused(path)
    expect(missing.code).toBe('DATABASE_MISSING')
    expect(missing.message).toContain(path)
    await expect(stat(path)).rejects.toThrow()
  })

  it('makes a database only where none is', async () => {
    const err = await openDatabase(path, 'new').then(async db => { await db.close(); return null }, (e: unknown) => e)
    expect((err as KithError).code).toBe('HOME_LOCKED')
    expect((err as KithError).message).toContain(path)
  })

  it('repair drops only the damaged log record and table block, and what is left passes the check', async () => {
    await flip(await fileOf(path, '.log'), 100)
    await flip(await fileOf(path, '.ldb'), 20_000)
    const report = await repairDatabase(path)
    expect(report.problems).toHaveLength(2)
    expect(report.logs).toEqual([{ log: expect.stringMatching(/\.log$/), dropped: [{ at: expect.any(Number), what: 'record' }] }])
    expect(report.salvaged).toEqual([{ table: expect.stringMatching(/\.ldb$/), blocks: 1 }])
    expect(report.lost).toEqual([])
    expect(report.leveldb.some(line => line.startsWith('**** Repaired'))).toBe(true)
    expect(report.records.invites).toBe(INVITES - 1)
    // one 4 KiB block of friends is gone, every other one kept
    expect(report.records.friends).toBeGreaterThan(FRIENDS - 100)
    expect(report.records.friends).toBeLessThan(FRIENDS)
    expect(await checkDatabaseFiles(path)).toEqual([])
    const db = await openDatabase(path, 'existing')
    try {
      expect(await count(db, 'friends')).toBe(report.records.friends)
      expect(await sublevel<{ i: number }>(db, 'invites').get(`invite-${INVITES - 1}`)).toEqual({ i: INVITES - 1 })
    } finally {
      await db.close()
    }
    expect((await readdir(join(path, 'lost'))).length).toBeGreaterThan(0)
  })

  it('repair moves a table it cannot read aside and keeps the rest', async () => {
    const table = await fileOf(path, '.ldb')
    await truncate(table, (await stat(table)).size - 100)
    const report = await repairDatabase(path)
    expect(report.lost).toEqual([{ table: expect.stringMatching(/\.ldb$/), why: expect.stringContaining('footer') }])
    expect(report.records).toEqual({ invites: INVITES })
    const db = await openDatabase(path, 'existing')
    await db.close()
  })
})

describe('snappy, as LevelDB compresses blocks', () => {
  it('decodes literals and overlapping copies, and refuses a copy from before the start', () => {
    // "abcabcabcabcX": literal "abc", copy (offset 3, length 9) with a 1-byte offset, literal "X"
    const stream = Uint8Array.from([13, (3 - 1) << 2, 0x61, 0x62, 0x63, 0x01 | ((9 - 4) << 2), 3, 0 << 2, 0x58])
    expect(Buffer.from(snappyDecompress(stream)).toString()).toBe('abcabcabcabcX')
    expect(() => snappyDecompress(Uint8Array.from([4, 0x01, 9]))).toThrow('damaged')
    expect(() => snappyDecompress(Uint8Array.from([9, 0 << 2, 0x61]))).toThrow('damaged')
  })
})
