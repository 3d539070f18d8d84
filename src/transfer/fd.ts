import { close, fchmod, fstat, fsync, ftruncate, futimes, link, open, rename, unlink, write } from 'node:fs'
import { promisify } from 'node:util'

/**
 * File-descriptor calls as promises, for the paths that write many files or
 * many pieces (destination.ts's writeWhole, the backup's restore): a
 * FileHandle costs a handle object and a promise request with its own stats
 * array per call, these only the request. The same for the calls that place
 * a file (`placeFile`): `node:fs/promises`' `link` and `unlink` cost the
 * main thread 33-38 µs a pair, these 21-24 (5,000 pairs, 16 at a time, Node 24).
 */
export const openFd = promisify(open)
export const fchmodFd = promisify(fchmod)
export const fstatFd = promisify(fstat)
export const ftruncateFd = promisify(ftruncate)
export const futimesFd = promisify(futimes)
export const fsyncFd = promisify(fsync)
export const closeFd = promisify(close)
export const linkPath = promisify(link)
export const unlinkPath = promisify(unlink)
export const renamePath = promisify(rename)
const writeFd = promisify(write)

/** Writes all of `data` at `position` (a positional write may take less than it is given). */
export async function writeAt (fd: number, data: Uint8Array, position: number): Promise<void> {
  for (let at = 0; at < data.length;) at += (await writeFd(fd, data, at, data.length - at, position + at)).bytesWritten
}
