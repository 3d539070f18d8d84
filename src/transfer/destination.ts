import { createHash } from 'node:crypto'
import { constants, type Stats } from 'node:fs'
import { chmod, lstat, mkdir, open, type FileHandle } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { KithError } from '../errors.ts'
import { userMode } from '../peer/home.ts'
import { closeFd, fchmodFd, fstatFd, fsyncFd, ftruncateFd, linkPath, openFd, renamePath, unlinkPath, writeAt } from './fd.ts'
import type { ManifestFile } from './manifest.ts'

/**
 * Checked paths under a destination folder.
 *
 * A fetch writes below one folder, its root, and only through real folders:
 * every path component under the root is looked at with lstat (never
 * followed), a missing folder is made, and a symbolic link anywhere on the
 * way (a folder, the destination itself, a partial file) is refused with
 * DESTINATION_LINK. Files are opened with O_NOFOLLOW and must be regular
 * files. So a link planted in a destination, by another local user or
 * program, can't lead a write (or a truncation) outside it.
 *
 * The root itself, the folder the user named, is taken as it is: a link
 * there, or above it, is the user's own choice.
 *
 * Node has no openat(), so a component swapped for a link between the check
 * and the open is not caught by the open itself; callers check again right
 * before they open and before they place (`checkUnder`), which leaves that
 * window as small as a few system calls.
 */

/** What `compareFile` reads at a time. */
const COMPARE_BUFFER = 1024 * 1024

function linkRefused (path: string): KithError {
  return new KithError('DESTINATION_LINK', `${JSON.stringify(path)} is a symbolic link; kith never writes through a link in a destination (it could lead outside it). Remove the link, then resume`)
}

function inTheWay (path: string): KithError {
  return new KithError('DESTINATION_EXISTS', `${JSON.stringify(path)} is in the way (it is not a folder); move it away, then resume`)
}

function checkSegment (segment: string): void {
  if (segment === '' || segment === '.' || segment === '..' || segment.includes('/') || segment.includes('\0')) {
    throw new KithError('MANIFEST_BAD_PATH', `${JSON.stringify(segment)} is not a name a destination may hold`)
  }
}

async function lstatOrUndefined (path: string): Promise<Stats | undefined> {
  try {
    return await lstat(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
}

/**
 * `segments` below `root` as a path, with every folder on the way made if
 * missing and checked: a real folder, never a link. With `dir`, the last
 * segment is a folder too; else it is the file's name, which may be absent
 * or a regular file (the caller decides what an existing file means) but
 * not a link (DESTINATION_LINK) or anything else (DESTINATION_EXISTS).
 * `checked`: folders a pass over many files already made and checked, not
 * looked at again (what is written there is checked again before it is
 * opened and placed: `checkUnder`); the folders this call checks are added.
 * `made`: the folders this pass made, to which those this call makes are
 * added; a file in one of them is not looked for (nothing of ours can be
 * there yet, and placing never overwrites what someone else put there).
 */
export async function prepareUnder (root: string, segments: string[], options: { dir?: boolean, checked?: Set<string>, made?: Set<string> } = {}): Promise<string> {
  for (const segment of segments) checkSegment(segment)
  const dir = options.dir ?? false
  const folders = dir ? segments : segments.slice(0, -1)
  let at = root
  for (const segment of folders) {
    at = join(at, segment)
    if (options.checked?.has(at) === true) continue
    let info = await lstatOrUndefined(at)
    if (info === undefined) {
      const made = await mkdir(at, { mode: 0o755 }).then(() => true, (err: NodeJS.ErrnoException) => { if (err.code !== 'EEXIST') throw err; return false })
      if (made) {
        await giveUserMode(at)
        options.made?.add(at)
      }
      info = await lstat(at)
    }
    if (info.isSymbolicLink()) throw linkRefused(at)
    if (!info.isDirectory()) throw inTheWay(at)
    options.checked?.add(at)
  }
  if (dir) return at
  const target = join(at, segments.at(-1)!)
  if (options.made?.has(at) === true) return target
  const info = await lstatOrUndefined(target)
  if (info?.isSymbolicLink() === true) throw linkRefused(target)
  if (info !== undefined && !info.isFile()) throw new KithError('DESTINATION_EXISTS', `${JSON.stringify(target)} is in the way (it is not a regular file); move it away, then resume`)
  return target
}

/**
 * A folder just made for the user gets their umask's mode, not the daemon's
 * private one (home.ts `userMode`). Opened without following a link, so a
 * link swapped in meanwhile is left alone (and refused by the lstat after).
 */
async function giveUserMode (folder: string): Promise<void> {
  const wanted = userMode(0o777)
  if (wanted === null) return
  const { O_RDONLY, O_DIRECTORY, O_NOFOLLOW } = constants
  const handle = await open(folder, O_RDONLY | O_DIRECTORY | O_NOFOLLOW).catch(() => null)
  if (handle === null) return
  try {
    await handle.chmod(wanted)
  } finally {
    await handle.close()
  }
}

/**
 * Makes a destination's root folder and the folders above it that are
 * missing, with the user's mode (the root is the user's choice: links on the
 * way are followed).
 */
export async function makeRoot (root: string): Promise<void> {
  const first = await mkdir(root, { recursive: true })
  if (first === undefined) return
  const wanted = userMode(0o777)
  if (wanted === null) return
  for (let at = root; ; at = dirname(at)) {
    await chmod(at, wanted)
    if (at === first || at === dirname(at)) break
  }
}

/**
 * Checks, without making anything, that every folder from `root` down to
 * `folder` (a path under `root`) is a real folder, not a link. Throws
 * DESTINATION_LINK or DESTINATION_EXISTS, or ENOENT if one is gone.
 */
export async function checkUnder (root: string, folder: string): Promise<void> {
  if (folder === root) return
  const prefix = root.endsWith('/') ? root : root + '/'
  if (!folder.startsWith(prefix)) throw new KithError('MANIFEST_BAD_PATH', `${JSON.stringify(folder)} is not under the destination ${JSON.stringify(root)}`)
  let at = root
  for (const segment of folder.slice(prefix.length).split('/')) {
    at = join(at, segment)
    const info = await lstat(at)
    if (info.isSymbolicLink()) throw linkRefused(at)
    if (!info.isDirectory()) throw inTheWay(at)
  }
}

/** Whether anything is at `path` (a dangling link included). */
export async function isPresent (path: string): Promise<boolean> {
  try {
    await lstat(path)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
    throw err
  }
}

/** The verified file waits in its partial: something else took its destination meanwhile. */
export class DestinationTaken extends KithError {
  constructor (dest: string, partial: string) {
    super('DESTINATION_EXISTS', `${JSON.stringify(dest)} already exists and is not the file being fetched; kith left it as it is. ` +
      `Move it away, then resume: the fetched file waits, complete and verified, in ${JSON.stringify(partial)}`)
  }
}

/**
 * Moves a verified partial (a file, or a folder) into place in the same
 * folder, without clobbering unless asked (a link at `dest` is replaced as
 * a name, never followed). Fetched shares and downloads both place this way.
 */
export async function placeFile (partial: string, dest: string, overwrite: boolean): Promise<void> {
  if (overwrite) {
    await renamePath(partial, dest)
    return
  }
  try {
    await linkPath(partial, dest) // atomic: fails with EEXIST rather than replace
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EEXIST') throw new DestinationTaken(dest, partial)
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'EMLINK') throw err
    // A filesystem without hard links (or a folder): check, then rename (racy only against other local writers).
    if (await isPresent(dest)) throw new DestinationTaken(dest, partial)
    await renamePath(partial, dest)
    return
  }
  await unlinkPath(partial)
}

/**
 * Opens a file without following a link at its last component:
 * `existing` opens one that is there (read and write), `create` makes a new
 * one (failing with EEXIST if anything is there, a dangling link included).
 * A link gives DESTINATION_LINK; anything but a regular file,
 * DESTINATION_EXISTS.
 */
export async function openNoFollow (path: string, how: 'existing' | 'create' | 'read', mode = 0o644): Promise<FileHandle> {
  const { O_RDWR, O_RDONLY, O_CREAT, O_EXCL, O_NOFOLLOW, O_NONBLOCK } = constants
  // O_NONBLOCK: a FIFO planted there must not hang the open; it is refused below
  const flags = how === 'create'
    ? O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW
    : (how === 'read' ? O_RDONLY : O_RDWR) | O_NOFOLLOW | O_NONBLOCK
  let handle: FileHandle
  try {
    handle = await open(path, flags, mode)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ELOOP') throw linkRefused(path)
    throw err
  }
  const wanted = how === 'create' ? userMode(mode) : null
  if (wanted !== null) {
    try {
      await handle.chmod(wanted)
    } catch (err) {
      // the file was made: its handle is not left open behind the error
      await handle.close().catch(() => {})
      throw err
    }
  }
  // O_CREAT | O_EXCL made it: a new regular file
  if (how === 'create') return handle
  try {
    if (!(await handle.stat()).isFile()) throw new KithError('DESTINATION_EXISTS', `${JSON.stringify(path)} is in the way (it is not a regular file); move it away, then resume`)
  } catch (err) {
    await handle.close()
    throw err
  }
  return handle
}

/**
 * A new file at `path` for writing, as a descriptor (made with `mode` as
 * given, before the umask): never through a link there (DESTINATION_LINK);
 * EEXIST when anything else is there. `flags` are added to the open's.
 */
export async function createNoFollow (path: string, mode: number, flags = 0): Promise<number> {
  const { O_RDWR, O_CREAT, O_EXCL, O_NOFOLLOW } = constants
  try {
    return await openFd(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | flags, mode)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ELOOP') throw linkRefused(path)
    throw err
  }
}

/** `O_SYNC` where Node has it (not on Windows: `writeWhole` fsyncs by hand there) */
const O_SYNC = (constants as Partial<typeof constants>).O_SYNC

/**
 * Writes a whole file to `path` (a partial) at once, as `openNoFollow`
 * would open it: made new with `mode` under the user's umask, or, when a
 * killed run left one there, that regular file taken over and cut to
 * `data`'s length; a link gives DESTINATION_LINK, anything else in the way
 * DESTINATION_EXISTS. The bytes are fsynced before it returns: opened
 * `O_SYNC`, each write returns once its bytes and the file's metadata (its
 * size, its mode) are on the disk, as an fsync after it would (the kernel
 * runs the same sync), so a file costs one call fewer. Through a
 * descriptor, not a FileHandle: many small files so cost no handle object
 * and no promise request (with its own stats array) per call.
 */
export async function writeWhole (path: string, data: Uint8Array, mode = 0o644): Promise<void> {
  const { O_RDWR, O_NOFOLLOW, O_NONBLOCK } = constants
  let fd: number
  let created = true
  try {
    fd = await createNoFollow(path, mode, O_SYNC ?? 0)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    created = false
    try {
      // O_NONBLOCK: a FIFO planted there must not hang the open; it is refused below
      fd = await openFd(path, O_RDWR | O_NOFOLLOW | O_NONBLOCK | (O_SYNC ?? 0))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ELOOP') throw linkRefused(path)
      throw err
    }
  }
  try {
    const wanted = created ? userMode(mode) : null
    if (wanted !== null) await fchmodFd(fd, wanted)
    if (!created) {
      if (!(await fstatFd(fd)).isFile()) throw new KithError('DESTINATION_EXISTS', `${JSON.stringify(path)} is in the way (it is not a regular file); move it away, then resume`)
      await ftruncateFd(fd, data.length)
    }
    await writeAt(fd, data, 0)
    // no write, nothing synced: an empty file (its truncation, its mode) is synced by hand, as is any without O_SYNC
    if (data.length === 0 || O_SYNC === undefined) await fsyncFd(fd)
  } finally {
    await closeFd(fd)
  }
}

/**
 * What is at `path` compared with the manifest's `entry`: nothing, the
 * very file (same size and whole-file sha256, read in full), or something
 * else. A link there is DESTINATION_LINK, never followed.
 */
export async function compareFile (path: string, entry: Pick<ManifestFile, 'size' | 'sha256'>): Promise<'absent' | 'same' | 'differs'> {
  let handle: FileHandle
  try {
    handle = await openNoFollow(path, 'read')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'absent'
    if ((err as KithError).code === 'DESTINATION_EXISTS') return 'differs'
    throw err
  }
  try {
    if ((await handle.stat()).size !== entry.size) return 'differs'
    const hash = createHash('sha256')
    const buffer = Buffer.allocUnsafe(Math.min(COMPARE_BUFFER, Math.max(1, entry.size)))
    for (let at = 0; ;) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, at)
      if (bytesRead === 0) break
      hash.update(buffer.subarray(0, bytesRead))
      at += bytesRead
    }
    return hash.digest('hex') === entry.sha256 ? 'same' : 'differs'
  } finally {
    await handle.close()
  }
}
