import { constants } from 'node:fs'
import { open as openFile, type FileHandle } from 'node:fs/promises'
import type { Dispatcher } from 'undici'
import { KithError } from '../../../errors.ts'
import type { DownloadContext, DownloadJob, DownloadResult } from '../addon.ts'
import { CONTROL_INTERVAL_MS, HASH_AHEAD, MAX_PIECE, MAX_RESTARTS, MIN_PIECE, MIN_SPLIT_SIZE } from './constants.ts'
import { bootId, CONTROL_VERSION, loadControl, saveControl } from './control-file.ts'
import { makeDispatcher } from './dispatcher.ts'
import { HashCursor } from './hash-cursor.ts'
import { PieceTiming } from './piece-timing.ts'
import { RangeSet, type Range } from './ranges.ts'
import { HttpError, isRetryable, networkError, open, OriginChanged, type Opened } from './request.ts'
import { backoffMs, wait } from './retry.ts'
import { bodyReceived } from './scavenge.ts'
import { Planner, type Segment } from './segments.ts'
import type { Validators } from './validators.ts'
import { fsError, WriteCache, type Gatherer } from './write-cache.ts'

/**
 * The HTTP download engine (docs/downloads.md, "HTTP engine").
 *
 * One attempt: the control file says what of the partial is already good;
 * the first request (a Range request from the first missing byte, with
 * If-Range) is the probe: a 206 means the server takes ranges, and up to N
 * connections (no more than one per MIN_SPLIT_SIZE left) share what is
 * missing (segments.ts); a 200 means one connection from byte 0. Each
 * connection writes through the write-back cache, retries with backoff, and
 * gives its range back when it gives up. The control file is saved every
 * CONTROL_INTERVAL_MS, and after an fdatasync when the attempt ends
 * (control-file.ts says why not more often).
 *
 * The file changing at the origin (other validators, another size, a 416)
 * starts the download over from nothing, at most MAX_RESTARTS times; a server
 * that stops taking ranges midway starts it over on one connection.
 */
export async function download (job: DownloadJob, ctx: DownloadContext): Promise<DownloadResult> {
  const dispatcher = makeDispatcher(ctx.settings, undefined, Math.max(1, job.connections))
  let fresh = false
  let single = false
  let refused = 0
  try {
    for (let restarts = 0; ; restarts++) {
      try {
        return await new Attempt(job, ctx, dispatcher, fresh, single).run()
      } catch (err) {
        if (err instanceof RangesRefused) {
          // the server answered 200 to a range: from byte 0 on one connection; a retry if it happens again
          if (single && ++refused > ctx.settings.retries) throw new HttpError('HTTP_CONNECTION_LOST', `${job.url.href} broke off ${refused} times and takes no ranges to resume from`)
          if (single) await wait(backoffMs(refused, ctx.settings.maxRetryWaitMs), ctx.signal)
          single = true
          fresh = true
          restarts--
          continue
        }
        if (!(err instanceof OriginChanged)) throw err
        if (restarts >= MAX_RESTARTS) throw new KithError('HTTP_ORIGIN_CHANGED', `${job.url.href} changed at the origin ${restarts + 1} times while downloading; try again when it is stable`, { cause: err })
        fresh = true
      }
    }
  } finally {
    await dispatcher.destroy().catch(() => {})
  }
}

/** The server answered 200 (the whole file) to a request for a range past byte 0. */
class RangesRefused extends Error {
  override name = 'RangesRefused'
}

class Attempt {
  private fh!: FileHandle
  private cache!: WriteCache
  /** the file's SHA-256 as it is written, when the job asks for it (a checksum to verify) */
  private hash: HashCursor | null
  private planner!: Planner
  private total: number | null = null
  private validators: Validators | null = null
  private url: URL
  private name: string | undefined
  /** bytes received since the attempt began, over what was on disk then */
  private base = 0
  private received = 0
  /** aborted on the first fatal error, or with ctx.signal */
  private readonly stop = new AbortController()
  private readonly signal: AbortSignal
  private saving: Promise<void> = Promise.resolve()
  private bootId: string | null = null
  /** ranges known to be on the disk (the last fdatasync's) */
  private synced: Range[] = []
  private lastError: unknown

  private readonly job: DownloadJob
  private readonly ctx: DownloadContext
  private readonly dispatcher: Dispatcher
  /** ignore the control file: start from nothing */
  private readonly fresh: boolean
  /** one connection, even if the server takes ranges */
  private readonly single: boolean

  constructor (job: DownloadJob, ctx: DownloadContext, dispatcher: Dispatcher, fresh: boolean, single: boolean) {
    this.job = job
    this.ctx = ctx
    this.dispatcher = dispatcher
    this.fresh = fresh
    this.single = single
    this.url = job.url
    this.hash = job.hash ? new HashCursor(HASH_AHEAD) : null
    this.signal = AbortSignal.any([ctx.signal, this.stop.signal])
  }

  async run (): Promise<DownloadResult> {
    const control = this.fresh ? null : await loadControl(this.ctx.stateDir, this.job.url.href)
    this.bootId = await bootId()
    this.fh = await openFile(this.ctx.partial, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW, 0o644).catch((err: unknown) => { throw fsError(err, this.ctx.partial) })
    let timer: NodeJS.Timeout | undefined
    try {
      // what was written survives a kill -9 in the page cache, not a reboot (control-file.ts)
      const sameBoot = control?.bootId != null && control.bootId === this.bootId
      const done = new RangeSet(sameBoot ? control.done : control?.synced)
      this.synced = control?.synced ?? []
      // a partial shorter than the control file says was not written as it says: start over
      if (control == null || (await this.fh.stat()).size < done.last) {
        await this.fh.truncate(0)
        this.cache = new WriteCache(this.fh, 1, this.hash)
      } else {
        this.total = control.total
        this.validators = control.validators
        if (this.hash != null) this.hash = new HashCursor(HASH_AHEAD, done.last)
        this.cache = new WriteCache(this.fh, 1, this.hash, done)
      }
      this.base = this.cache.done.size
      timer = setInterval(() => { this.save().catch(() => {}) }, CONTROL_INTERVAL_MS)
      if (this.total == null || this.cache.done.size < this.total) await this.fetch()
      clearInterval(timer)
      timer = undefined
      const size = this.total ?? this.cache.done.size
      if (this.cache.done.size !== size || this.cache.done.prefix !== size) throw new KithError('INTERNAL', `the download ended with ${this.cache.done.size} of ${size} bytes written`)
      await this.fh.truncate(size)
      const sha256 = await this.hash?.finish(this.fh, size, this.ctx.signal)
      await this.save(true)
      return { size, ...(sha256 != null ? { sha256 } : {}), kind: 'file', ...(this.validators != null ? { validators: this.validators } : {}), ...(this.name != null ? { name: this.name } : {}) }
    } catch (err) {
      if (timer != null) clearInterval(timer)
      // keep what is resumable: the ranges written so far, once on disk
      if (!(err instanceof OriginChanged) && !(err instanceof RangesRefused)) await this.save(true).catch(() => {})
      throw this.ctx.signal.aborted ? this.ctx.signal.reason : err
    } finally {
      await this.saving.catch(() => {})
      await this.hash?.stop()
      await this.fh.close()
    }
  }

  /** Saves the control file; `durable`: after an fdatasync of the partial, so what is written counts as synced. Saves never overlap. */
  private async save (durable = false): Promise<void> {
    this.saving = this.saving.catch(() => {}).then(async () => {
      if (this.validators == null) return
      const done = this.cache.done.list()
      if (durable) {
        await this.fh.datasync()
        this.synced = done
      }
      await saveControl(this.ctx.stateDir, { version: CONTROL_VERSION, url: this.job.url.href, total: this.total, validators: this.validators, bootId: this.bootId, done, synced: this.synced })
    })
    await this.saving
  }

  private async fetch (): Promise<void> {
    const gaps = this.total != null ? this.cache.done.gaps(this.total) : [[0, Infinity] as const]
    const first = gaps[0]!
    const known = this.cache.done.size > 0 ? this.validators : null
    // a download that may be split asks for its first piece only: an open-ended probe was cut after that
    // piece, and its connection closed with the bytes in flight (~3 MiB of a 1 GiB file from nginx on
    // loopback) and opened again; on one connection (asked for, or the server's ranges refused) the rest
    const probeEnd = this.job.connections > 1 && !this.single ? Math.min(first[1], first[0] + MIN_PIECE) : null
    let probe = await this.retrying(() => open(this.url, { start: first[0], end: probeEnd, known, total: this.total }, this.dispatcher, this.signal))
    if (probe.status === 206 && probe.total == null && probeEnd != null) {
      // a size not given (`bytes 0-N/*`): nothing to split, so the rest on this one connection, to its end
      probe.body.discard()
      probe = await this.retrying(() => open(this.url, { start: first[0], end: null, known, total: this.total }, this.dispatcher, this.signal))
    }
    this.url = probe.url
    this.name = probe.name
    this.validators = probe.validators
    this.ctx.progress({ done: this.base, total: probe.total, ...(this.name != null ? { name: this.name } : {}) })
    if (probe.status === 200 && first[0] > 0) {
      probe.body.discard()
      throw new RangesRefused('200 to a range')
    }
    this.total = probe.total
    const ranged = probe.status === 206 && this.total != null && !this.single
    const left = this.total != null ? this.total - this.cache.done.size : Infinity
    const connections = ranged ? Math.max(1, Math.min(this.job.connections, Math.floor(left / MIN_SPLIT_SIZE))) : 1
    // pieces in file order, when there are several connections to share them, sized for the hash to take
    // the ones ahead of it from memory (constants.ts, MIN_PIECE)
    const piece = connections > 1 ? Math.min(Math.max(MIN_PIECE, Math.floor(HASH_AHEAD / connections)), Math.ceil(left / connections)) : Infinity
    const free: Range[] = this.total != null ? this.cache.done.gaps(this.total).map(([s, e]) => [s, e] as const) : [[0, Infinity]]
    // the probe's connection goes on with what it was answered: the first free range, up to where its answer ends
    const answered = ranged && probe.length != null ? probe.start + probe.length : Infinity
    const head = free[0]
    if (head != null && answered < head[1]) free.splice(0, 1, [head[0], answered], [answered, head[1]])
    this.planner = new Planner(free, piece, Math.max(piece, MAX_PIECE), connections)
    this.cache = new WriteCache(this.fh, connections, this.hash, this.cache.done)
    await this.save()
    const workers = [this.worker(probe, ranged)]
    for (let i = 1; i < connections; i++) workers.push(this.worker(undefined, true))
    const outcomes = await Promise.allSettled(workers)
    const failed = outcomes.find(o => o.status === 'rejected')
    if (failed != null) throw failed.reason
    const missing = this.total != null ? this.total - this.cache.done.size : 0
    if (missing > 0) throw this.lastError ?? new KithError('INTERNAL', `${missing} bytes were left unfetched`)
  }

  /**
   * One connection: fetches segments until none is left, retrying with
   * backoff; gives up its segment after settings.retries failures in a row
   * without a byte. A fatal error stops every connection.
   */
  private async worker (opened: Opened | undefined, ranged: boolean): Promise<void> {
    const gather = this.cache.gatherer()
    let failures = 0
    const timing = new PieceTiming()
    let segment: Segment | null = this.planner.next()
    try {
      while (segment != null) {
        const current: Segment = segment
        const before = current.cursor
        try {
          if (opened == null) timing.ask()
          const request = opened == null
          opened ??= await open(this.url, { start: segment.cursor, end: ranged ? segment.end : null, known: this.validators, total: this.total }, this.dispatcher, this.signal)
          if (opened.status === 200 && segment.cursor > 0) throw new RangesRefused('200 to a range')
          if (request) timing.answer()
          await this.receive(segment, opened, gather)
          opened = undefined
          if (segment.cursor < segment.end && Number.isFinite(segment.end)) {
            throw new HttpError('HTTP_CONNECTION_LOST', `${this.url.host} ended the response at byte ${segment.cursor}, before ${segment.end}`)
          }
          // requests wait long against the pieces' flow: larger pieces (piece-timing.ts)
          if (request && timing.ended(segment.cursor - before)) this.planner.grow()
          if (this.total == null) {
            // the body of unknown size ended: that is the file, and nothing past it is left to fetch
            this.total = segment.cursor
            segment.end = segment.cursor
          }
          failures = 0
          this.planner.release(segment)
          segment = this.planner.next()
        } catch (err) {
          if (opened != null) opened.body.discard()
          opened = undefined
          await gather.flush()
          if (current.cursor > before) failures = 0
          if (this.signal.aborted || !isRetryable(err)) throw err
          this.lastError = err
          this.planner.release(current)
          segment = null
          if (++failures > this.ctx.settings.retries) return
          await wait(backoffMs(failures, this.ctx.settings.maxRetryWaitMs, err.retryAfterMs), this.signal)
          segment = this.planner.next()
        }
      }
    } catch (err) {
      if (!this.stop.signal.aborted) this.stop.abort(err)
      throw this.ctx.signal.aborted ? this.ctx.signal.reason : err
    } finally {
      if (segment != null) this.planner.release(segment)
      await gather.flush()
    }
  }

  /** Reads a response into its segment, every byte through ctx.take, until the segment (which may shrink meanwhile) is full. */
  private async receive (segment: Segment, opened: Opened, gather: Gatherer): Promise<void> {
    try {
      await opened.body.read(async chunk => {
        if (segment.cursor >= segment.end) return true
        await this.ctx.take(Math.min(chunk.length, segment.end - segment.cursor), this.signal)
        // another connection may have taken over the tail meanwhile; the bytes are claimed before the
        // write awaits, so a split meanwhile starts past them (a failed write ends the attempt anyway)
        const piece = chunk.subarray(0, Math.min(chunk.length, segment.end - segment.cursor))
        const at = segment.cursor
        segment.cursor += piece.length
        bodyReceived(chunk.length)
        await gather.push(at, piece)
        this.received += piece.length
        this.ctx.progress({ done: this.base + this.received, total: this.total })
        return segment.cursor >= segment.end
      })
    } catch (err) {
      throw err instanceof KithError ? err : networkError(err, this.url, this.signal)
    }
  }

  /** The probe, retried like a connection's request. */
  private async retrying<T> (request: () => Promise<T>): Promise<T> {
    for (let failures = 0; ; failures++) {
      try {
        return await request()
      } catch (err) {
        if (this.signal.aborted || !isRetryable(err) || failures >= this.ctx.settings.retries) throw err
        await wait(backoffMs(failures + 1, this.ctx.settings.maxRetryWaitMs, err.retryAfterMs), this.signal)
      }
    }
  }
}
