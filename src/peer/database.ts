import { Level } from 'level'
import type { AbstractSublevel } from 'abstract-level'
import { KithError } from '../errors.ts'

/**
 * The node's state lives in one LevelDB under the home folder; each concern
 * gets a JSON sublevel of its own. LevelDB's own lock doubles as the "one
 * daemon per home" lock.
 */
export type Database = Level<string, unknown>
export type Sublevel<V> = AbstractSublevel<Database, string | Uint8Array | Buffer, string, V>

export async function openDatabase (path: string): Promise<Database> {
  const db = new Level<string, unknown>(path, { valueEncoding: 'json' })
  try {
    await db.open()
  } catch (err) {
    const cause = (err as { cause?: { code?: string, message?: string } }).cause
    if (cause?.code === 'LEVEL_LOCKED') {
      throw new KithError('HOME_LOCKED', `another kith daemon is already using ${path}; stop it first, or pick another --home`, { cause: err })
    }
    throw new KithError('DATABASE_CORRUPT',
      `the database ${path} can't be opened (${cause?.message ?? (err as Error).message}); restore the folder from a backup`, { cause: err })
  }
  return db
}

export function sublevel<V> (db: Database, name: string): Sublevel<V> {
  return db.sublevel<string, V>(name, { valueEncoding: 'json' }) as unknown as Sublevel<V>
}

/** `get` that returns undefined for a missing key (level 10 already does; this keeps callers typed). */
export async function getOrUndefined<V> (level: Sublevel<V>, key: string): Promise<V | undefined> {
  return await level.get(key) ?? undefined
}
