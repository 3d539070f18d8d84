/**
 * The partial file of a one-stream add-on (ftp, sftp, webdav, s3):
 * what is already in it is where a resumed download starts, and every byte
 * received passes the bandwidth scheduler (`ctx.take`) before it is written
 * there.
 *
 * The file is opened without following links (src/transfer/destination.ts)
 * and synced before the writer finishes, so what a resume trusts was on disk.
 * A resume trusts it only while the origin's validator is the one saved when
 * it was fetched (a file changed at the origin starts over, instead of
 * joining two versions) and it is no longer than the object.
 */
import { once } from 'node:events'
import { mkdir, readFile, rename, writeFile, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { Writable, type Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { KithError } from '../../errors.ts'
import { openNoFollow } from '../../transfer/destination.ts'
import type { DownloadContext } from './addon.ts'

/** Counts what a download has (before and after a resume) and reports it. */
export class Progress {
  done = 0
  readonly #ctx: DownloadContext
  readonly #total: number | null
  readonly #name: string | undefined

  constructor (ctx: DownloadContext, total: number | null, name?: string) {
    this.#ctx = ctx
    this.#total = total
    this.#name = name
  }

  add (bytes: number): void {
    this.done += bytes
    this.#ctx.progress({ done: this.done, total: this.#total, name: this.#name })
  }
}

/** What the origin said the object was when the bytes in the partial were fetched. */
export interface Origin {
  /** its length, when the origin tells */
  size: number | null
  /** what changes when the object changes (an ETag, a modification time and size); null when the origin gives none */
  validator: string | null
}

/**
 * Opens `path` for writing at its end. What is in it is kept only if it can
 * be vouched for: the validator saved in `stateDir` when it was fetched is
 * the origin's today, and it is no longer than the object. Otherwise the
 * file is emptied and the download starts over. Returns the handle and where
 * the download goes on from.
 */
export async function openPartial (path: string, stateDir: string, origin: Origin): Promise<{ handle: FileHandle, at: number }> {
  const saved = join(stateDir, 'origin.json')
  const before = await readFile(saved, 'utf8').then(text => (JSON.parse(text) as { validator?: unknown }).validator, () => undefined)
  const same = before === origin.validator
  let handle: FileHandle
  let at = 0
  try {
    handle = await openNoFollow(path, 'existing')
    at = (await handle.stat()).size
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    handle = await openNoFollow(path, 'create')
  }
  try {
    if (at > 0 && (!same || (origin.size !== null && at > origin.size))) {
      await handle.truncate(0)
      at = 0
    }
    // saved only once the bytes of another version are gone: a crash in between must not vouch for them
    if (!same) {
      await mkdir(stateDir, { recursive: true })
      await writeFile(saved + '.new', JSON.stringify({ validator: origin.validator }))
      await rename(saved + '.new', saved)
    }
  } catch (err) {
    await handle.close()
    throw err
  }
  return { handle, at }
}

/**
 * A stream that writes into `handle` from `at` on: each chunk waits for the
 * scheduler (`ctx.take`) first, so the origin is read only as fast as the
 * download's flow allows (the stream's backpressure reaches the socket). It
 * syncs and closes the file when it ends or fails; `ctx.signal` fails it.
 */
function partialWriter (handle: FileHandle, at: number, ctx: DownloadContext, progress: Progress): Writable {
  let position = at
  const close = (err: Error | null, callback: (err?: Error | null) => void): void => {
    handle.sync().finally(() => handle.close()).then(() => callback(err), closeErr => callback(err ?? closeErr))
  }
  return new Writable({
    signal: ctx.signal,
    write (chunk: Buffer, _encoding, callback) {
      ctx.take(chunk.length, ctx.signal)
        .then(async () => {
          let written = 0
          while (written < chunk.length) {
            const { bytesWritten } = await handle.write(chunk, written, chunk.length - written, position + written)
            written += bytesWritten
          }
          position += chunk.length
          progress.add(chunk.length)
        })
        .then(() => callback(), callback)
    },
    final (callback) { close(null, callback) },
    destroy (err, callback) {
      // final has closed the file already when the stream ended normally
      if (err === null && this.writableFinished) callback(null)
      else close(err, callback)
    }
  })
}

/**
 * Runs `pump` with a partialWriter into `handle` from `at`, and returns only
 * once the file is closed, also when `pump` fails: no write of this run can
 * land after the download has settled (and a resume has begun).
 */
export async function writeWith (handle: FileHandle, at: number, ctx: DownloadContext, progress: Progress, pump: (writer: Writable) => Promise<unknown>): Promise<void> {
  const writer = partialWriter(handle, at, ctx, progress)
  try {
    await pump(writer)
  } finally {
    if (!writer.closed) {
      const closed = once(writer, 'close').catch(() => {})
      writer.destroy()
      await closed
    }
  }
}

/**
 * What a download rejects with: the signal's reason once it aborted (pause,
 * cancel, stop), else `err` as it is.
 */
export function abortReason (signal: AbortSignal, err: unknown): unknown {
  return signal.aborted ? signal.reason : err
}

/** The origin sent a different length than it announced. */
export function lengthChanged (what: string, expected: number, got: number): KithError {
  return new KithError('REMOTE_CHANGED', `${what} was ${expected} bytes when the download started and ${got} now: it changed at the origin; start the download again`)
}

/** A file at the origin, as a listing or a HEAD/stat gives it. */
export interface RemoteFile {
  /** its path under a folder download, one name per segment; its name alone for a one-file download */
  segments: string[]
  size: number
  /** what changes when the file changes (ETag, modification time), or null */
  validator: string | null
}

/**
 * The body of `file` from byte `at` on; `from` is where the body really
 * starts: `at`, or 0 when the server sent the whole file instead.
 */
export type FetchFrom = (file: RemoteFile, at: number) => Promise<{ body: Readable, from: number }>

/**
 * Fetches `file` into `path` for an add-on that reads ranges (webdav, s3):
 * resumes from what the partial holds while `stateDir`'s validator is the
 * origin's, and starts over if the server sends the whole file instead of the
 * rest. `progress` counts what the file holds.
 */
export async function fetchInto (path: string, stateDir: string, file: RemoteFile, ctx: DownloadContext, progress: Progress, fetchFrom: FetchFrom): Promise<void> {
  const { handle, at } = await openPartial(path, stateDir, { size: file.size, validator: file.validator })
  progress.add(at)
  if (at === file.size) {
    await handle.close()
    return
  }
  let start = at
  try {
    const { body, from } = await fetchFrom(file, at)
    if (from !== at) {
      await handle.truncate(from)
      progress.add(from - at)
      start = from
    }
    const before = progress.done
    await writeWith(handle, start, ctx, progress, async writer => { await pipeline(body, writer) })
    const got = start + progress.done - before
    if (got !== file.size) throw lengthChanged(file.segments.join('/'), file.size, got)
  } catch (err) {
    // the writer closes the file once it has it; before that, it is ours to close
    await handle.close().catch(() => {})
    throw err
  }
}
