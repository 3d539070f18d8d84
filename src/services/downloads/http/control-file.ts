import { open, readFile, rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import type { Range } from './ranges.ts'
import type { Validators } from './validators.ts'

/**
 * The control file: what a resumed download needs to go on where it
 * stopped, in ctx.stateDir. It lists the byte ranges of the partial that
 * are safely on disk (written and fdatasync'ed before the file is saved), and
 * the version of the file they belong to. Saved atomically (a temporary
 * file, fsync, rename), so a kill -9 leaves the old one or the new one.
 *
 * A file that is missing, unreadable, of another version of this format or
 * for another URL is ignored: the download starts over (nothing worse than
 * fetching again).
 */
export const CONTROL_VERSION = 1
const NAME = 'http.control.json'

export interface Control {
  version: typeof CONTROL_VERSION
  /** the URL asked for (before redirects) */
  url: string
  /** the file's size, or null when the server did not say */
  total: number | null
  validators: Validators
  /** ranges of the partial safely on disk */
  done: Range[]
}

export async function loadControl (stateDir: string, url: string): Promise<Control | null> {
  let parsed: unknown
  try {
    parsed = JSON.parse(await readFile(join(stateDir, NAME), 'utf8'))
  } catch {
    return null
  }
  return valid(parsed, url) ? parsed : null
}

export async function saveControl (stateDir: string, control: Control): Promise<void> {
  const path = join(stateDir, NAME)
  const temp = `${path}.tmp`
  const fh = await open(temp, 'w', 0o600)
  try {
    await fh.writeFile(JSON.stringify(control))
    await fh.sync()
  } finally {
    await fh.close()
  }
  await rename(temp, path)
}

export async function dropControl (stateDir: string): Promise<void> {
  await rm(join(stateDir, NAME), { force: true })
}

function valid (c: unknown, url: string): c is Control {
  if (typeof c !== 'object' || c == null) return false
  const o = c as Record<string, unknown>
  const v = o.validators as Record<string, unknown> | null
  const isSize = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= 0
  return o.version === CONTROL_VERSION && o.url === url &&
    (o.total === null || isSize(o.total)) &&
    typeof v === 'object' && v != null && (v.etag === null || typeof v.etag === 'string') && (v.lastModified === null || typeof v.lastModified === 'string') &&
    Array.isArray(o.done) && o.done.every(r => Array.isArray(r) && r.length === 2 && isSize(r[0]) && isSize(r[1]) && r[0] < r[1] && (o.total == null || r[1] <= (o.total as number)))
}
