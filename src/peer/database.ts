import { mkdir, mkdtemp, readdir, readFile, rename, open as openFile, rm, symlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { Level } from 'level'
import type { AbstractSublevel } from 'abstract-level'
import { KithError } from '../errors.ts'
import { pathExists, type HomePaths } from './home.ts'
import { checkDatabaseFiles, checkLog, checkTable, type Problem } from './leveldb-check.ts'

/**
 * The node's state lives in one LevelDB under the home folder; each concern
 * gets a JSON sublevel of its own. LevelDB's own lock doubles as the "one
 * daemon per home" lock.
 *
 * The database is made once, on a home's first start (when the identity is
 * made too); later starts open it only if it is there and its files pass
 * their checksums (./leveldb-check.ts), so a deleted or damaged database
 * stops the node with an error naming the folder instead of starting it
 * empty or with records silently dropped. `kith repair` (repairDatabase)
 * salvages what it can.
 */
export type Database = Level<string, unknown>
export type Sublevel<V> = AbstractSublevel<Database, string | Uint8Array | Buffer, string, V>

/** How many problems an error message lists before "and N more". */
const PROBLEMS_SHOWN = 3

/**
 * Opens the home's database: made on first start only (no identity.key and
 * no database yet); a home that has an identity but no db/ is refused.
 */
export async function openHomeDatabase (paths: HomePaths): Promise<Database> {
  const hasKey = await pathExists(paths.identity)
  // a first start killed before LevelDB wrote CURRENT left no database yet
  if (!hasKey && !(await pathExists(join(paths.db, 'CURRENT')))) return await openDatabase(paths.db, 'new')
  if (!(await pathExists(paths.db))) {
    throw new KithError('DATABASE_MISSING',
      `the database folder ${paths.db} is missing, but this home has an identity (${paths.identity}); restore the folder from a backup. kith will not start an empty node with an old identity`)
  }
  return await openDatabase(paths.db, 'existing')
}

/**
 * `new`: make it (it must not exist yet); `existing`: it must exist, and is
 * checked before it is opened; neither: either (tests and tools).
 */
export async function openDatabase (path: string, expect?: 'new' | 'existing'): Promise<Database> {
  const existing = expect === 'existing' || (expect == null && await pathExists(path))
  if (existing) {
    const problems = await withLock(path, async () => await checkDatabaseFiles(path))
    if (problems.length > 0) throw damaged(path, problems)
  }
  const db = new Level<string, unknown>(path, { valueEncoding: 'json', createIfMissing: !existing, errorIfExists: expect === 'new' })
  try {
    await db.open()
  } catch (err) {
    throw openError(path, err)
  }
  return db
}

export function sublevel<V> (db: Database, name: string): Sublevel<V> {
  return db.sublevel<string, V>(name, { valueEncoding: 'json' }) as unknown as Sublevel<V>
}

/** A sublevel whose values are bytes as they are (Uint8Array): for a record that is bytes already, such as a signed manifest, with no JSON or base64 around it. */
export function bytesSublevel (db: Database, name: string): Sublevel<Uint8Array> {
  return db.sublevel<string, Uint8Array>(name, { valueEncoding: 'view' }) as unknown as Sublevel<Uint8Array>
}

/** `get` that returns undefined for a missing key (level 10 already does; this keeps callers typed). */
export async function getOrUndefined<V> (level: Sublevel<V>, key: string): Promise<V | undefined> {
  return await level.get(key) ?? undefined
}

// kith repair -----------------------------------------------------------------

export interface RepairReport {
  db: string
  /** what the check found before the repair */
  problems: Problem[]
  /** log records that failed their checksum: dropped alone, or with the rest of their 32 KiB block when their length can't be trusted */
  logs: Array<{ log: string, dropped: Array<{ at: number, what: 'record' | 'rest of block' }> }>
  /** tables with damaged blocks: the rest of their records was kept (LevelDB moves the table to lost/) */
  salvaged: Array<{ table: string, blocks: number }>
  /** tables too damaged to read (footer, index): moved to lost/ whole */
  lost: Array<{ table: string, why: string }>
  /** what LevelDB's repairer reported, line by line */
  leveldb: string[]
  /** records per sublevel after the repair */
  records: Record<string, number>
}

/** classic-level's own methods, which `level`'s types leave out (its Level is classic-level's class) */
interface ClassicLevelStatics { repair: (location: string) => Promise<void> }
interface ClassicLevelMethods { compactRange: (start: Buffer, end: Buffer) => Promise<void> }

/** The invalid block type written over a damaged block's trailer, so LevelDB's repairer drops the block. */
const DAMAGED_BLOCK_TYPE = 0xff
/** A log record type LevelDB does not know, written over a damaged record's, so its repairer drops it alone. */
const UNKNOWN_RECORD_TYPE = 0x7f

/**
 * Salvages a damaged database, refused while a daemon holds it. LevelDB's
 * repairer keeps every log record and table entry that reads back, but it
 * checks no checksums (classic-level can't ask it to): log records and table
 * blocks that fail theirs are first marked unreadable, in place, so it drops
 * them and keeps the rest. It moves every log, manifest and table it replaces
 * to db/lost/. A full compaction then rewrites every table, and the result
 * must pass the same check as a start.
 */
export async function repairDatabase (path: string): Promise<RepairReport> {
  if (!(await pathExists(path))) throw new KithError('DATABASE_MISSING', `there is no database at ${path} to repair`)
  const report: RepairReport = { db: path, problems: [], logs: [], salvaged: [], lost: [], leveldb: [], records: {} }
  await withLock(path, async () => {
    report.problems = await checkDatabaseFiles(path)
    const names = (await readdir(path)).sort()
    for (const name of names.filter(n => /^\d+\.log$/.test(n))) {
      const file = join(path, name)
      const damaged = checkLog(await readFile(file)).problems.filter(p => p.drop != null)
      if (damaged.length === 0) continue
      // The repairer reads logs without checksums. A record of an unknown type
      // it drops and reads on; an empty one of type 0 makes it skip the rest of the block.
      await patch(file, damaged.map(p => p.drop === 'record' ? { at: p.at + 6, bytes: [UNKNOWN_RECORD_TYPE] } : { at: p.at + 4, bytes: [0, 0, 0] }))
      report.logs.push({ log: name, dropped: damaged.map(p => ({ at: p.at, what: p.drop === 'record' ? 'record' : 'rest of block' })) })
    }
    const lostDir = join(path, 'lost')
    for (const name of names.filter(n => /^\d+\.(ldb|sst)$/.test(n))) {
      const file = join(path, name)
      const check = checkTable(await readFile(file))
      if (check.problem != null) {
        await mkdir(lostDir, { recursive: true })
        await rename(file, join(lostDir, name))
        report.lost.push({ table: name, why: check.problem })
        continue
      }
      const dataBlocks = check.badBlocks.filter(b => check.dataBlocks.some(d => d.offset === b.offset))
      if (dataBlocks.length === 0) continue // a damaged filter block: the compaction below rewrites it
      await patch(file, dataBlocks.map(block => ({ at: block.offset + block.size, bytes: [DAMAGED_BLOCK_TYPE] })))
      report.salvaged.push({ table: name, blocks: dataBlocks.length })
    }
    await (Level as unknown as ClassicLevelStatics).repair(path)
    report.leveldb = repairLog(await readFile(join(path, 'LOG'), 'utf8').catch(() => ''))
  })

  const db = new Level<Buffer, Buffer>(path, { createIfMissing: false, keyEncoding: 'buffer', valueEncoding: 'buffer' })
  try {
    await db.open()
  } catch (err) {
    throw openError(path, err)
  }
  try {
    // rewrites every table: fresh indexes and filters, and all of them checked once more by LevelDB
    await (db as unknown as ClassicLevelMethods).compactRange(Buffer.alloc(0), Buffer.alloc(256, 0xff))
    for await (const key of db.keys()) {
      const name = /^!([^!]*)!/.exec(key.toString('latin1'))?.[1] ?? '(top level)'
      report.records[name] = (report.records[name] ?? 0) + 1
    }
  } finally {
    await db.close()
  }
  const left = await checkDatabaseFiles(path)
  if (left.length > 0) {
    throw new KithError('DATABASE_CORRUPT', `the repair of ${path} could not fix everything (${listProblems(left)}); restore the folder from a backup`)
  }
  return report
}

async function patch (file: string, edits: Array<{ at: number, bytes: number[] }>): Promise<void> {
  const handle = await openFile(file, 'r+')
  try {
    for (const edit of edits) await handle.write(Buffer.from(edit.bytes), 0, edit.bytes.length, edit.at)
    await handle.sync()
  } finally {
    await handle.close()
  }
}

/** The repairer's lines of LevelDB's LOG, without their time stamps and thread ids. */
function repairLog (text: string): string[] {
  return text.split('\n')
    .map(line => line.replace(/^\d{4}\/\d\d\/\d\d-\d\d:\d\d:\d\d\.\d+ [0-9a-f]+ /, '').trim())
    .filter(line => /^(Log|Table|Archiving|\*\*\*\*)/.test(line))
}

// the lock, the checks' errors --------------------------------------------------

/**
 * Runs `task` holding the database's lock, so no daemon opens it meanwhile
 * and a running one is reported as such (HOME_LOCKED) rather than as damage.
 * LevelDB takes its lock with fcntl on `LOCK`, which Node can't call: a tiny
 * LevelDB of our own (in a temp folder) whose LOCK is a link to the real one
 * takes the same lock.
 * It is released before the real database is opened: fcntl locks belong to
 * the process, and closing either would drop the other's.
 */
async function withLock<T> (path: string, task: () => Promise<T>): Promise<T> {
  // a folder of its own per call: two starts at once must not share one
  const probe = await mkdtemp(join(tmpdir(), 'kith-db-lock-'))
  try {
    try {
      await (await openFile(join(path, 'LOCK'), 'a')).close() // as LevelDB would make it
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new KithError('DATABASE_MISSING', `there is no database in ${path}; restore the folder from a backup`)
      throw err
    }
    await symlink(resolve(path, 'LOCK'), join(probe, 'LOCK'))
    const holder = new Level(probe, { createIfMissing: true })
    try {
      await holder.open()
    } catch (err) {
      throw openError(path, err)
    }
    try {
      return await task()
    } finally {
      await holder.close()
    }
  } finally {
    await rm(probe, { recursive: true, force: true })
  }
}

function damaged (path: string, problems: Problem[]): KithError {
  return new KithError('DATABASE_CORRUPT',
    `the database ${path} is damaged (${listProblems(problems)}); run \`kith repair\` on this home to salvage what it can, or restore the folder from a backup`)
}

function listProblems (problems: Problem[]): string {
  const more = problems.length > PROBLEMS_SHOWN ? `; and ${problems.length - PROBLEMS_SHOWN} more` : ''
  return problems.slice(0, PROBLEMS_SHOWN).join('; ') + more
}

function openError (path: string, err: unknown): KithError {
  const cause = (err as { cause?: { code?: string, message?: string } }).cause
  const message = cause?.message ?? (err as Error).message
  if (cause?.code === 'LEVEL_LOCKED') {
    return new KithError('HOME_LOCKED', `another kith daemon is already using ${path}; stop it first, or pick another --home`, { cause: err })
  }
  if (/exists \(error_if_exists is true\)/.test(message)) {
    return new KithError('HOME_LOCKED', `a database appeared in ${path} while kith was making one: is another kith starting on this home?`, { cause: err })
  }
  if (/does not exist \(create_if_missing is false\)/.test(message)) {
    return new KithError('DATABASE_MISSING', `there is no database in ${path}; restore the folder from a backup`, { cause: err })
  }
  return new KithError('DATABASE_CORRUPT',
    `the database ${path} can't be opened (${message}); run \`kith repair\` on this home to salvage what it can, or restore the folder from a backup`, { cause: err })
}
