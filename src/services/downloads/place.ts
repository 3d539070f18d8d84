import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { rm, statfs } from 'node:fs/promises'
import { join } from 'node:path'
import { KithError } from '../../errors.ts'
import { syncDir, userMode } from '../../peer/home.ts'
import { DestinationTaken, openNoFollow, placeFile } from '../../transfer/destination.ts'
import { partialPath } from '../../transfer/assemble.ts'
import type { DownloadResult } from './addon.ts'

/**
 * A download's last steps, and the names it uses on disk: the partial sits
 * in the destination's own folder (so placing it is a rename or a link in
 * one folder), named from the download's id so a restart finds it again.
 * The checksum asked for is verified before anything is placed; a file
 * that fails it is removed, never kept.
 */

export function downloadPartial (dir: string, id: string): string {
  return partialPath(join(dir, 'download'), `download\0${id}`)
}

/** The hex sha256 of the file at `path`, read without following a link. */
export async function hashFile (path: string, signal?: AbortSignal): Promise<string> {
  const handle = await openNoFollow(path, 'read')
  const hash = createHash('sha256')
  for await (const piece of createReadStream('', { fd: handle, ...(signal !== undefined ? { signal } : {}) })) hash.update(piece as Buffer)
  return hash.digest('hex')
}

/** Names tried in turn for a file named by its origin, as browsers do: `a.iso`, `a (1).iso`, ... */
export const NUMBERED_NAMES = 100

/** `name` with ` (n)` before its extension; `name` itself for 0. */
export function numbered (name: string, n: number): string {
  if (n === 0) return name
  const dot = name.lastIndexOf('.')
  return dot > 0 ? `${name.slice(0, dot)} (${n})${name.slice(dot)}` : `${name} (${n})`
}

/**
 * Verifies `partial` against `checksum` (hex, or null when none was asked),
 * fsyncs it and moves it into `dir` under the first of `names` that nothing
 * holds, without clobbering. A mismatch removes the partial and throws
 * CHECKSUM_MISMATCH; when every name is taken, the verified partial waits and
 * DESTINATION_EXISTS says so. Returns the name used and the sha256 when one is
 * known.
 */
export async function verifyAndPlace (partial: string, dir: string, names: readonly string[], result: DownloadResult, checksum: string | null, signal: AbortSignal): Promise<{ name: string, sha256: string | null }> {
  let sha256 = result.sha256?.toLowerCase() ?? null
  if (checksum !== null) {
    if (result.kind === 'tree') {
      await rm(partial, { recursive: true, force: true })
      throw new KithError('CHECKSUM_MISMATCH', 'a checksum was asked for, but the URL gave a folder of files, not one file; nothing was kept. Download it without --checksum')
    }
    sha256 ??= await hashFile(partial, signal)
    if (sha256 !== checksum) {
      await rm(partial, { force: true })
      throw new KithError('CHECKSUM_MISMATCH', `the downloaded file's sha256 is ${sha256}, not the ${checksum} asked for; nothing was kept. Check the checksum and the URL, then download again`)
    }
  }
  if (result.kind === 'file') {
    const handle = await openNoFollow(partial, 'existing')
    try {
      // the daemon's umask is private; the file is the user's, with their own umask's mode
      const mode = userMode(0o644)
      if (mode !== null) await handle.chmod(mode)
      await handle.sync()
    } finally {
      await handle.close()
    }
  }
  for (const [i, name] of names.entries()) {
    try {
      await placeFile(partial, join(dir, name), false)
    } catch (err) {
      if (err instanceof DestinationTaken && i < names.length - 1) continue
      throw err
    }
    await syncDir(dir)
    return { name, sha256 }
  }
  throw new KithError('INTERNAL', 'no name to place the download under')
}

/** Bytes an unprivileged writer may still use on the disk holding `path`; Infinity if it can't be told (never pause on a guess). */
export async function freeBytes (path: string): Promise<number> {
  try {
    const stats = await statfs(path)
    return stats.bavail * stats.bsize
  } catch {
    return Infinity
  }
}

/** An origin's name for a file as a single safe file name, or null if nothing usable is left. */
export function safeName (name: string | undefined | null): string | null {
  if (name == null) return null
  const cleaned = name.replace(/[/\\\0-\x1f\x7f]/g, '_').trim().slice(0, 200)
  if (cleaned === '' || cleaned === '.' || cleaned === '..' || cleaned.startsWith('.kith-')) return null
  return cleaned
}

/** The last segment of a URL's path, decoded, as a file name (null for '/'). */
export function urlName (url: URL): string | null {
  const last = url.pathname.split('/').filter(Boolean).pop()
  if (last === undefined) return null
  try {
    return safeName(decodeURIComponent(last))
  } catch {
    return safeName(last)
  }
}
