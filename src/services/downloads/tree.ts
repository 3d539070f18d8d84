/**
 * A folder download (an S3 prefix, a WebDAV collection): `ctx.partial` is a
 * folder and each remote file is written under it, by its relative path, one
 * after the other. Each file resumes as a one-file download does
 * (partial.ts, fetchInto): its own saved validator in the state folder,
 * only the missing bytes fetched. Paths go through src/transfer/destination.ts
 * (no `..`, no link followed); a name a folder may not hold is refused.
 */
import { createHash } from 'node:crypto'
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { KithError } from '../../errors.ts'
import { prepareUnder } from '../../transfer/destination.ts'
import type { DownloadContext, DownloadResult } from './addon.ts'
import { fetchInto, Progress, type FetchFrom, type RemoteFile } from './partial.ts'

/** files one folder download may hold, checked while listing */
export const MAX_TREE_FILES = 100_000

/** Throws when a listing grows past MAX_TREE_FILES. */
export function checkTreeSize (count: number, what: string): void {
  if (count > MAX_TREE_FILES) throw new KithError('REMOTE_FAILED', `${what} holds more than ${MAX_TREE_FILES} files; kith downloads folders up to that many (download its subfolders one by one)`)
}

/** Downloads every file of the listing into the folder `ctx.partial`; `name` is the folder's name at the origin. */
export async function downloadTree (files: RemoteFile[], name: string, ctx: DownloadContext, fetchFrom: FetchFrom): Promise<DownloadResult> {
  await mkdir(ctx.partial, { recursive: true })
  const total = files.reduce((sum, f) => sum + f.size, 0)
  const progress = new Progress(ctx, total, name)
  for (const file of files) {
    ctx.signal.throwIfAborted()
    const path = await prepareUnder(ctx.partial, file.segments)
    const stateDir = join(ctx.stateDir, 'files', createHash('sha256').update(file.segments.join('/')).digest('hex').slice(0, 32))
    await fetchInto(path, stateDir, file, ctx, progress, fetchFrom)
  }
  return { size: total, name, kind: 'tree' }
}
