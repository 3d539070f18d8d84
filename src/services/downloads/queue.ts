import { EventEmitter } from 'node:events'
import type { Stats } from 'node:fs'
import { lstat, mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { KithError, asKithError } from '../../errors.ts'
import { makeRoot } from '../../transfer/destination.ts'
import { PRIORITIES, type BandwidthScheduler, type Flow, type Priority } from '../../transfer/scheduler/index.ts'
import { TokenBucket } from '../../transfer/token-bucket.ts'
import type { DownloadAddon, DownloadContext, DownloadProgress } from './addon.ts'
import { FINAL_STATES, type Download, type DownloadBook } from './download-book.ts'
import { DISK_RECHECK_MS, PROGRESS_INTERVAL_MS } from './constants.ts'
import { NUMBERED_NAMES, downloadPartial, freeBytes, numbered, safeName, urlName, verifyAndPlace } from './place.ts'
import type { QueueSettings } from './settings.ts'
import type { Validators } from './http/validators.ts'

/**
 * The download queue: runs a few downloads at a time (settings.maxActive),
 * each through its add-on, each a flow of class 'public' on the engine's
 * bandwidth scheduler with its priority and its own --limit; verifies,
 * places, and records every change in the book so a restart (or kill -9)
 * goes on where it was: the add-on is called again with the same partial
 * and state folder.
 *
 * Low disk space: a download does not start, and a running one pauses,
 * while its folder's disk has less than settings.minFreeBytes free (plus,
 * before it starts, what it still has to write when that is known). It is
 * then 'paused' with error DISK_LOW (DISK_FULL if the disk filled anyway),
 * and goes on by itself once there is room again (checked every
 * DISK_RECHECK_MS). `kith pause` stops the waiting; `kith resume` tries at
 * once.
 */
export type DownloadEvent = { type: 'download:progress' | 'download:state', download: Download }

export interface QueueInit {
  book: DownloadBook
  bandwidth: BandwidthScheduler
  settings: QueueSettings
  /** where each download's state folder lives (in the home: private, kept across restarts) */
  stateRoot: string
  /** the add-on for a URL (registry.ts addonFor) */
  addonFor: (url: URL) => Promise<DownloadAddon>
  /** how often free space is looked at while anything runs or waits for room @default DISK_RECHECK_MS */
  diskRecheckMs?: number
  /**
   * told of each file placed whole whose origin gave validators (the
   * proxy's friend swarm offers it), once no download runs: offering reads
   * and hashes the file on the main thread, which running downloads need.
   * At most MAX_UNTOLD wait; past that the oldest is told at once. Files
   * placed before a stop and not told yet are not told.
   */
  onPlaced?: (file: PlacedDownload) => void
}

/** A file a download placed whole, with the origin's validators of its version. */
export interface PlacedDownload {
  url: URL
  path: string
  size: number
  /** its sha256 when a checksum was verified, else null (none was computed) */
  sha256: string | null
  validators: Validators
  /** the file as placed (lstat): an offer hashing it later checks it is still these bytes (sameFile), not the user's edit */
  placed: Stats
}

/** placed files waiting for the queue to be idle before onPlaced is told of them */
const MAX_UNTOLD = 256

interface Running {
  controller: AbortController
  done: Promise<void>
  flow: Flow
  /** its own --limit, in front of the scheduler */
  limiter: TokenBucket | null
}

/** Waiting for room: paused by the queue, not by a person. */
function waitingForRoom (d: Download): boolean {
  return d.state === 'paused' && (d.error?.code === 'DISK_LOW' || d.error?.code === 'DISK_FULL')
}

export class DownloadQueue extends EventEmitter<{ event: [DownloadEvent] }> {
  private readonly init: QueueInit
  private readonly running = new Map<string, Running>()
  /** placed files onPlaced is not told of yet: it is once no download runs */
  private readonly placed: PlacedDownload[] = []
  private stopped = false
  private diskTimer: ReturnType<typeof setTimeout> | undefined

  constructor (init: QueueInit) {
    super()
    this.init = init
  }

  /** Goes on with what was queued or running when the daemon last ended. */
  start (): void {
    this.kick()
    this.watchDisk()
  }

  async stop (): Promise<void> {
    this.stopped = true
    clearTimeout(this.diskTimer)
    const active = [...this.running.values()]
    for (const run of active) run.controller.abort(new KithError('DOWNLOAD_STATE', 'the daemon is stopping'))
    await Promise.allSettled(active.map(async r => await r.done))
  }

  list (): Download[] {
    return this.init.book.list()
  }

  get (id: string): Download {
    return this.init.book.get(id)
  }

  /** Queues a checked download (index.ts checks the request and the URL first). */
  async add (record: Download): Promise<Download> {
    const saved = await this.save(record)
    this.kick()
    return saved
  }

  async pause (id: string): Promise<Download> {
    const record = this.get(id)
    if (FINAL_STATES.includes(record.state)) throw new KithError('DOWNLOAD_STATE', `download ${record.id} is ${record.state}; there is nothing to pause`)
    // a pause asked for replaces one for disk space: it waits for `kith resume`, not for room
    await this.save({ ...record, state: 'paused', error: null, rate: 0, eta: null })
    await this.halt(record.id, 'paused')
    return this.get(record.id)
  }

  async resume (id: string): Promise<Download> {
    const record = this.get(id)
    if (record.state !== 'paused' && record.state !== 'failed') throw new KithError('DOWNLOAD_STATE', `download ${record.id} is ${record.state}, not paused or failed`)
    await this.save({ ...record, state: 'queued', error: null })
    this.kick()
    return this.get(record.id)
  }

  async cancel (id: string): Promise<Download> {
    const record = this.get(id)
    if (record.state === 'done' || record.state === 'cancelled') throw new KithError('DOWNLOAD_STATE', `download ${record.id} is already ${record.state}`)
    await this.save({ ...record, state: 'cancelled', rate: 0, eta: null })
    await this.halt(record.id, 'cancelled')
    await this.dropFiles(record)
    return this.get(record.id)
  }

  async setPriority (id: string, priority: Priority): Promise<Download> {
    if (!PRIORITIES.includes(priority)) throw new KithError('BAD_REQUEST', `a priority is one of ${PRIORITIES.join(', ')}, not ${JSON.stringify(priority)}`)
    const record = this.get(id)
    if (FINAL_STATES.includes(record.state)) throw new KithError('DOWNLOAD_STATE', `download ${record.id} is already ${record.state}`)
    this.running.get(record.id)?.flow.setPriority(priority)
    return await this.save({ ...record, priority })
  }

  /** Changes a download's own limit (bytes/s, null for none); a running one goes by it from its next take. */
  async setLimit (id: string, limit: number | null): Promise<Download> {
    if (limit !== null && !(limit >= 1 && Number.isFinite(limit))) throw new KithError('BAD_REQUEST', 'a limit is a rate in bytes per second, at least 1, or null for none')
    const record = this.get(id)
    if (FINAL_STATES.includes(record.state)) throw new KithError('DOWNLOAD_STATE', `download ${record.id} is already ${record.state}`)
    const run = this.running.get(record.id)
    if (run !== undefined) {
      if (limit === null) run.limiter = null
      else if (run.limiter === null) run.limiter = new TokenBucket(limit)
      else run.limiter.setRate(limit)
    }
    return await this.save({ ...record, limit })
  }

  /**
   * What the queue still has to move, for the whole queue's ETA (index.ts):
   * bytes left in downloads of known size that are running or queued, the
   * rate the running ones are expected to get (their shares of the caps,
   * their own limits), the longest running one's ETA, and how many open
   * downloads have no known size yet.
   */
  outlook (): { left: number, rate: number, longest: number, unknown: number } {
    let left = 0
    let rate = 0
    let longest = 0
    let unknown = 0
    for (const d of this.list()) {
      if (d.state !== 'running' && d.state !== 'queued') continue
      if (d.totalBytes === null) unknown++
      else left += Math.max(0, d.totalBytes - d.doneBytes)
      const run = this.running.get(d.id)
      if (run === undefined || run.flow.closed) continue
      const share = this.init.bandwidth.share(run.flow) ?? d.rate
      rate += d.limit !== null ? Math.min(share, d.limit) : share
      if (d.eta !== null) longest = Math.max(longest, d.eta)
    }
    return { left, rate, longest, unknown }
  }

  private async halt (id: string, why: string): Promise<void> {
    const run = this.running.get(id)
    if (run === undefined) return
    run.controller.abort(new KithError('DOWNLOAD_STATE', why))
    await run.done.catch(() => {})
  }

  /** Removes what a (not running) download left: its partial and its state folder. */
  private async dropFiles (record: Download): Promise<void> {
    await rm(downloadPartial(record.dir, record.id), { recursive: true, force: true }).catch(() => {})
    await rm(this.stateDir(record.id), { recursive: true, force: true }).catch(() => {})
  }

  private stateDir (id: string): string {
    return join(this.init.stateRoot, id)
  }

  private async save (record: Download): Promise<Download> {
    try {
      return await this.init.book.save(record)
    } finally {
      // it is in this state now, recorded or not (a database write can fail): say so
      this.emit('event', { type: 'download:state', download: this.get(record.id) })
      if (waitingForRoom(record)) this.watchDisk()
    }
  }

  private kick (): void {
    if (this.stopped) return
    for (const record of this.list()) {
      if (this.running.size >= this.init.settings.maxActive) return
      if (record.state !== 'queued' || this.running.has(record.id)) continue
      const controller = new AbortController()
      const flow = this.init.bandwidth.flow({ direction: 'down', class: 'public', priority: record.priority, label: record.id })
      const limiter = record.limit !== null ? new TokenBucket(record.limit) : null
      const entry: Running = { controller, flow, limiter, done: Promise.resolve() }
      this.running.set(record.id, entry)
      // a run records its own outcome; if even that fails (the database), it must not end the daemon
      entry.done = this.run(record.id, entry).catch((err: unknown) => {
        console.error(`kith: download ${record.id} ended with an error that could not be recorded: ${err instanceof Error ? err.stack ?? err.message : String(err)}`)
      }).finally(() => {
        flow.close()
        this.running.delete(record.id)
        this.kick()
        if (this.running.size === 0 && !this.stopped) for (const file of this.placed.splice(0)) this.init.onPlaced?.(file)
      })
    }
    this.watchDisk()
  }

  private async run (id: string, run: Running): Promise<void> {
    const signal = run.controller.signal
    let record = await this.save({ ...this.get(id), state: 'running', error: null })
    try {
      await makeRoot(record.dir)
      await this.checkRoom(record)
      const url = new URL(record.url)
      const addon = await this.init.addonFor(url)
      const stateDir = this.stateDir(id)
      await mkdir(stateDir, { recursive: true })
      const partial = downloadPartial(record.dir, id)
      let originName: string | null = null
      let last = -Infinity
      const progress = (p: DownloadProgress, force = false): void => {
        originName = safeName(p.name) ?? originName
        const now = performance.now()
        if (!force && now - last < PROGRESS_INTERVAL_MS) return
        last = now
        const current = this.get(id)
        if (current.state !== 'running') return
        const total = p.total ?? current.totalBytes
        const left = total === null ? null : Math.max(0, total - p.done)
        const rate = run.flow.closed ? 0 : run.flow.stats().rate
        let eta = left === null || run.flow.closed ? null : this.init.bandwidth.eta(run.flow, left)
        if (left !== null && current.limit !== null) eta = Math.max(eta ?? 0, left / current.limit)
        const next = this.init.book.touch({ ...current, doneBytes: p.done, totalBytes: total, rate, eta })
        this.emit('event', { type: 'download:progress', download: next })
      }
      const ctx: DownloadContext = {
        partial,
        stateDir,
        signal,
        // called for every read from the origin (64 KiB): without a limit of its own, the flow's promise
        // itself (a shared resolved one when nothing is rationed), not an async frame around it
        take: (bytes, own) => {
          const s = own ?? signal
          const limiter = run.limiter
          if (limiter === null) return run.flow.take(bytes, s)
          return limiter.take(bytes, s).then(async () => { await run.flow.take(bytes, s) })
        },
        progress,
        settings: this.init.settings.network
      }
      // a disk running low while it runs pauses it (watchDisk looks every DISK_RECHECK_MS)
      const result = await addon.download({ id, url, connections: record.connections, options: record.options, hash: record.checksum !== null }, ctx)
      progress({ done: result.size, total: result.size }, true)
      record = this.get(id)
      // a name the user gave is that name or nothing; one from the origin steps aside from files already there
      const origin = safeName(result.name) ?? originName ?? urlName(url) ?? `download-${id}`
      const names = record.name !== null ? [record.name] : Array.from({ length: NUMBERED_NAMES }, (_, n) => numbered(origin, n))
      const checksum = record.checksum === null ? null : record.checksum.slice('sha256:'.length).toLowerCase()
      const { name, sha256 } = await verifyAndPlace(partial, record.dir, names, result, checksum, signal)
      await rm(stateDir, { recursive: true, force: true })
      await this.save({ ...this.get(id), name, state: 'done', kind: result.kind, sha256, doneBytes: result.size, totalBytes: result.size, rate: 0, eta: 0, error: null })
      if (result.kind === 'file' && result.validators != null && this.init.onPlaced != null) {
        const path = join(record.dir, name)
        const placed = await lstat(path)
        if (placed.isFile()) this.placed.push({ url, path, size: result.size, sha256, validators: result.validators, placed })
        if (this.placed.length > MAX_UNTOLD) this.init.onPlaced(this.placed.shift()!)
      }
    } catch (err) {
      record = this.get(id)
      if (record.state === 'cancelled') {
        await this.dropFiles(record)
        return
      }
      if (record.state === 'paused' && !signal.aborted) return
      if (record.state === 'paused' || this.stopped) {
        if (this.stopped && record.state === 'running') await this.init.book.save({ ...record, state: 'queued', rate: 0, eta: null })
        return
      }
      const error = describe(signal.aborted ? signal.reason : err)
      if (error.code === 'CHECKSUM_MISMATCH') await this.dropFiles(record)
      // low disk space pauses it until there is room (watchDisk); anything else fails it (`kith resume` tries again)
      const state = error.code === 'DISK_LOW' || error.code === 'DISK_FULL' ? 'paused' : 'failed'
      await this.save({ ...record, state, error, rate: 0, eta: null })
    }
  }

  /** DISK_LOW when the download's disk has less than the threshold free (plus what it still has to write, when known). */
  private async checkRoom (record: Download): Promise<void> {
    const left = record.totalBytes === null ? 0 : Math.max(0, record.totalBytes - record.doneBytes)
    const free = await freeBytes(record.dir)
    if (free < this.init.settings.minFreeBytes + left) throw lowDisk(record.dir, free, this.init.settings.minFreeBytes)
  }

  /**
   * While anything runs or waits for room, looks every DISK_RECHECK_MS: a
   * running download whose disk fell below the threshold pauses (DISK_LOW);
   * one waiting for room goes on once its disk has it.
   */
  private watchDisk (): void {
    if (this.stopped || this.diskTimer !== undefined) return
    if (this.running.size === 0 && !this.list().some(waitingForRoom)) return
    this.diskTimer = setTimeout(() => {
      this.lookAtDisks().catch(() => {}).finally(() => {
        this.diskTimer = undefined
        this.watchDisk()
      })
    }, this.init.diskRecheckMs ?? DISK_RECHECK_MS)
    this.diskTimer.unref()
  }

  private async lookAtDisks (): Promise<void> {
    const min = this.init.settings.minFreeBytes
    for (const [id, run] of this.running) {
      const record = this.get(id)
      const free = await freeBytes(record.dir)
      if (free < min) run.controller.abort(lowDisk(record.dir, free, min))
    }
    for (const record of this.list().filter(waitingForRoom)) {
      if (this.stopped) return
      const left = record.totalBytes === null ? 0 : Math.max(0, record.totalBytes - record.doneBytes)
      if (await freeBytes(record.dir) < min + left) continue
      // it may have been resumed, paused or cancelled meanwhile
      const now = this.get(record.id)
      if (!waitingForRoom(now)) continue
      await this.save({ ...now, state: 'queued', error: null })
      this.kick()
    }
  }
}

function lowDisk (dir: string, free: number, min: number): KithError {
  return new KithError('DISK_LOW', `the disk holding ${dir} has ${Math.floor(free / 2 ** 20)} MiB free, below the ${Math.floor(min / 2 ** 20)} MiB the queue keeps free (downloads.minFreeBytes in config.json); ` +
    'downloads there wait and go on by themselves once there is room (or `kith cancel ID`)')
}

function describe (err: unknown): { code: string, message: string } {
  const code = (err as NodeJS.ErrnoException).code
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return { code: 'DISK_FULL', message: `the disk is full (${(err as Error).message}); the download goes on by itself once there is room (or \`kith resume\`)` }
  }
  const error = asKithError(err)
  return { code: error.code, message: error.message }
}
