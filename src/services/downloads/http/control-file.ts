import { readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Range } from './ranges.ts'
import type { Validators } from './validators.ts'

/**
 * The control file: what a resumed download needs to go on where it
 * stopped, in ctx.stateDir: the version of the file at the origin, and the
 * byte ranges of the partial already written, twice: `done`, every range
 * written (saved every CONTROL_INTERVAL_MS), and `synced`, those an
 * fdatasync has put on the disk (on pause, stop, failure and at the end).
 * Written data survives a kill -9 of the process in the page cache, so on
 * the same boot (`bootId`, Linux's /proc/sys/kernel/random/boot_id) `done`
 * holds; after a reboot or power loss only `synced` does. So a running
 * download never waits for the disk (an fdatasync a second cost a third of
 * the throughput), and a crash of the machine costs at most what came since
 * the last pause.
 *
 * Saved atomically (a temporary file, then rename), so a kill -9 leaves the
 * old one or the new one; a file left damaged by a power loss reads as none.
 *
 * A file that is missing, unreadable, of another version of this format or
 * for another URL is ignored: the download starts over (nothing worse than
 * fetching again).
 */
export const CONTROL_VERSION = 2
const NAME = 'http.control.json'

export interface Control {
  version: typeof CONTROL_VERSION
  /** the URL asked for (before redirects) */
  url: string
  /** the file's size, or null when the server did not say */
  total: number | null
  validators: Validators
  /** the boot the ranges in `done` were written during; null where the system does not say */
  bootId: string | null
  /** ranges of the partial written */
  done: Range[]
  /** ranges of the partial on the disk (a subset of done) */
  synced: Range[]
}

const BOOT_ID = '/proc/sys/kernel/random/boot_id'

/** This boot's id, or null where the system has none. */
export async function bootId (): Promise<string | null> {
  return await readFile(BOOT_ID, 'utf8').then(s => s.trim(), () => null)
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
  await writeFile(temp, JSON.stringify(control), { mode: 0o600 })
  await rename(temp, path)
}

function valid (c: unknown, url: string): c is Control {
  if (typeof c !== 'object' || c == null) return false
  const o = c as Record<string, unknown>
  const v = o.validators as Record<string, unknown> | null
  const isSize = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= 0
  return o.version === CONTROL_VERSION && o.url === url &&
    (o.total === null || isSize(o.total)) &&
    typeof v === 'object' && v != null && (v.etag === null || typeof v.etag === 'string') && (v.lastModified === null || typeof v.lastModified === 'string') &&
    (o.bootId === null || typeof o.bootId === 'string') && ranges(o.done) && ranges(o.synced)

  function ranges (list: unknown): boolean {
    return Array.isArray(list) && list.every(r => Array.isArray(r) && r.length === 2 && isSize(r[0]) && isSize(r[1]) && r[0] < r[1] && (o.total == null || r[1] <= (o.total as number)))
  }
}
