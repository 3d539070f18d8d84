import { open, mkdir, rename, chmod, lstat, stat, opendir } from 'node:fs/promises'
import type { Stats } from 'node:fs'
import { homedir } from 'node:os'
import { join, resolve, dirname } from 'node:path'
import { randomBytes } from 'node:crypto'
import { KithError } from '../errors.ts'

/**
 * The home folder holds everything a node is: its key, its database and the
 * files that tell the CLI where the running daemon's API is.
 *
 * Resolution order: `--home`, then `KITH_HOME`, then `~/.kith`.
 */
export interface HomePaths {
  root: string
  identity: string
  db: string
  apiInfo: string
  apiToken: string
}

export function resolveHome (explicit?: string): string {
  const chosen = explicit ?? process.env.KITH_HOME ?? join(homedir(), '.kith')
  return resolve(chosen)
}

export function homePaths (root: string): HomePaths {
  return {
    root,
    identity: join(root, 'identity.key'),
    db: join(root, 'db'),
    apiInfo: join(root, 'api.json'),
    apiToken: join(root, 'api.token')
  }
}

export async function ensureHome (root: string): Promise<void> {
  await mkdir(root, { recursive: true, mode: 0o700 })
}

/** Modes of everything under the home: it holds the key, invite secrets and share keys. */
export const PRIVATE_DIR_MODE = 0o700
export const PRIVATE_FILE_MODE = 0o600
/** The process umask of a daemon, so LevelDB's and the chunk store's new files are born private. */
export const PRIVATE_UMASK = 0o077

/** The umask the user started kith with, before `makeProcessPrivate` replaced it (null: not replaced). */
let userUmask: number | null = null

/**
 * Makes what this process writes from now on private (umask 077): LevelDB's
 * new files, chunks, api.*. The user's own umask is remembered for the files
 * kith makes for them outside the home (`userMode`). Returns what puts the
 * process back as it was (a daemon never does; a test sharing its process
 * with others must).
 */
export function makeProcessPrivate (): () => void {
  const before = process.umask(PRIVATE_UMASK)
  const remembered = userUmask
  userUmask ??= before
  return () => {
    process.umask(before)
    userUmask = remembered
  }
}

/**
 * The mode a file or folder kith makes for the user (a fetched file, its
 * folders) should be given: `mode` under the user's own umask, not the
 * daemon's private one, so a fetched photo reads like any other file of
 * theirs. Null while the process umask is the user's own: what the system
 * applied is already right.
 */
export function userMode (mode: number): number | null {
  return userUmask === null ? null : mode & ~userUmask
}
/** lstat/chmod calls in flight while walking the home (the chunk store may hold many files) */
const WALK_CONCURRENCY = 32

/**
 * Makes the home private to its user, on every start: the folder and every
 * folder under it 0700, every file 0600. Symbolic links are left alone and
 * never followed (the home itself may be one). Returns the paths whose modes
 * were loosened, so the caller can treat what they held as seen by others.
 *
 * A home that can't be made private is refused with HOME_NOT_PRIVATE: an
 * entry that belongs to another user (its owner could read it whatever its
 * mode), or a chmod that fails.
 */
export async function makeHomePrivate (root: string): Promise<string[]> {
  const uid = process.getuid?.()
  const loosened: string[] = []

  async function fix (path: string, info: Stats): Promise<void> {
    if (uid != null && info.uid !== uid) {
      throw notPrivate(root, `${path} belongs to user ${info.uid}, not to you (user ${uid}); give it back with \`chown -R ${uid} ${root}\``)
    }
    const want = info.isDirectory() ? PRIVATE_DIR_MODE : PRIVATE_FILE_MODE
    if ((info.mode & 0o7777) === want) return
    try {
      await chmod(path, want)
    } catch (err) {
      throw notPrivate(root, `can't chmod ${path} to ${want.toString(8)}: ${(err as Error).message}`, err)
    }
    // only group and other bits matter for who may have read it
    if ((info.mode & 0o077) !== 0) loosened.push(path)
  }

  async function walk (dir: string): Promise<void> {
    const entries: string[] = []
    for await (const entry of await opendir(dir)) entries.push(join(dir, entry.name))
    for (let i = 0; i < entries.length; i += WALK_CONCURRENCY) {
      await Promise.all(entries.slice(i, i + WALK_CONCURRENCY).map(async path => {
        let info: Stats
        try {
          info = await lstat(path)
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') return // removed while we walked
          throw err
        }
        if (info.isSymbolicLink()) return
        if (!info.isDirectory() && !info.isFile()) return
        await fix(path, info)
        if (info.isDirectory()) await walk(path)
      }))
    }
  }

  await fix(root, await stat(root))
  await walk(root)
  return loosened
}

function notPrivate (root: string, why: string, cause?: unknown): KithError {
  return new KithError('HOME_NOT_PRIVATE',
    `the home folder ${root} can't be made private to you: ${why}. kith won't run on a home other users can read`, cause != null ? { cause } : undefined)
}

/**
 * Writes a file so that a crash at any moment leaves either the old content or
 * the new, never a torn file: write a sibling temp file, fsync it, rename it
 * over the target, fsync the folder.
 */
export async function writeFileAtomic (path: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`
  const handle = await open(tmp, 'wx', mode)
  try {
    await handle.writeFile(data)
    await handle.sync()
  } finally {
    await handle.close()
  }
  await chmod(tmp, mode)
  await rename(tmp, path)
  await syncDir(dirname(path))
}

/** Whether anything is at `path`, a dangling link included. */
export async function pathExists (path: string): Promise<boolean> {
  try {
    await lstat(path)
    return true
  } catch {
    return false
  }
}

/** fsyncs a folder, so a rename or a new file in it survives a power loss. */
export async function syncDir (path: string): Promise<void> {
  const handle = await open(path, 'r')
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}
