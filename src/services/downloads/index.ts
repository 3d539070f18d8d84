/**
 * The download service (docs/downloads.md): any program on the machine
 * queues its downloads through the daemon, over every protocol an add-on
 * knows, and friend shares (kith://) through the file service, all in one
 * queue: one listing, one ETA, and `kith pause|resume|cancel|priority ID`
 * acting on downloads and friend fetches alike.
 *
 *   const downloads = await DownloadService.start({ db, home, engine, files, config })
 *   await downloads.add({ urls: ['https://example.org/a.iso'], dest: '/home/me/Downloads' })
 *   downloads.on('event', evt => ...)       // download:progress, download:state
 *   await downloads.stop()
 */
import { EventEmitter } from 'node:events'
import { randomBytes } from 'node:crypto'
import { lstat, mkdir, stat } from 'node:fs/promises'
import { basename, dirname, isAbsolute, join } from 'node:path'
import { KithError } from '../../errors.ts'
import { sublevel, type Database } from '../../peer/database.ts'
import { PRIORITIES, type Priority } from '../../transfer/scheduler/index.ts'
import type { ConfigFile, TransferEngine } from '../engine/index.ts'
import type { FileService } from '../files/file-service.ts'
import type { Transfer } from '../files/transfers.ts'
import { DEFAULT_CONNECTIONS, MAX_CONNECTIONS, MAX_OPTIONS_BYTES, MAX_URLS_PER_REQUEST } from './constants.ts'
import { DOWNLOAD_RECORD_VERSION, DownloadBook, publicView, type Download } from './download-book.ts'
import { isKithUrl, parseKithUrl, type KithTarget } from './kith-url.ts'
import { parseRate } from '../engine/rate-text.ts'
import { parseChecksum } from './checksum.ts'
import { safeName } from './place.ts'
import { DownloadQueue, type DownloadEvent, type QueueInit } from './queue.ts'
import { addonFor, checkUrl, parseUrl } from './registry.ts'
import { queueSettings } from './settings.ts'

export type { DownloadEvent } from './queue.ts'
export type DownloadView = ReturnType<typeof publicView>

/** What POST /v1/downloads takes: one or more URLs to the same destination. */
export interface AddRequest {
  urls: string[]
  /** absolute: a file path for one URL, or a folder (existing, or ending in /) where each goes under the origin's name */
  dest: string
  priority?: Priority | undefined
  /** bytes/s for each download alone, or a rate like '2MB/s' */
  limit?: number | string | undefined
  /** 1 to MAX_CONNECTIONS @default DEFAULT_CONNECTIONS */
  connections?: number | undefined
  /** 'sha256:HEX', for one URL */
  checksum?: string | undefined
  /** add-on options, as given */
  options?: Record<string, unknown> | undefined
}

export interface DownloadServiceInit {
  db: Database
  home: string
  engine: TransferEngine
  files: FileService
  config: ConfigFile | null
  /** told of each http(s) file placed whole (queue.ts) */
  onPlaced?: QueueInit['onPlaced']
}

/** The whole queue (downloads and friend fetches): seconds left, or null when unknown. */
export interface QueueOutlook {
  eta: number | null
  /** open downloads whose size is not known yet (not in the ETA) */
  unknownSizes: number
}

export type Controlled = { download: DownloadView } | { transfer: Transfer }

export class DownloadService extends EventEmitter<{ event: [DownloadEvent] }> {
  private readonly init: DownloadServiceInit
  private readonly book: DownloadBook
  private readonly queue: DownloadQueue

  private constructor (init: DownloadServiceInit, book: DownloadBook, queue: DownloadQueue) {
    super()
    this.init = init
    this.book = book
    this.queue = queue
    queue.on('event', evt => this.emit('event', { type: evt.type, download: publicView(evt.download) }))
  }

  /** Reads the settings (config.json's `downloads`), loads the book and goes on with what was queued. */
  static async start (init: DownloadServiceInit): Promise<DownloadService> {
    const settings = queueSettings(init.config?.downloads, init.config?.path ?? join(init.home, 'config.json'))
    const book = new DownloadBook(sublevel<Download>(init.db, 'downloads'))
    await book.load()
    const stateRoot = join(init.home, 'downloads')
    await mkdir(stateRoot, { recursive: true })
    const queue = new DownloadQueue({ book, bandwidth: init.engine.bandwidth, settings, stateRoot, addonFor, ...(init.onPlaced != null ? { onPlaced: init.onPlaced } : {}) })
    const service = new DownloadService(init, book, queue)
    queue.start()
    return service
  }

  async stop (): Promise<void> {
    await this.queue.stop()
  }

  list (): DownloadView[] {
    return this.queue.list().map(publicView)
  }

  get (id: string): DownloadView {
    return publicView(this.queue.get(id))
  }

  /**
   * Checks every URL (its add-on is loaded and checks it), the checksum and
   * the destination, then queues them: nothing is queued if any is refused.
   * kith:// URLs become friend fetches, started last; if one fails, the
   * request's other friend fetches are cancelled and its downloads too.
   */
  async add (req: AddRequest): Promise<{ downloads: DownloadView[], transfers: Transfer[] }> {
    if (req.urls.length === 0 || req.urls.length > MAX_URLS_PER_REQUEST) throw new KithError('BAD_REQUEST', `give 1 to ${MAX_URLS_PER_REQUEST} URLs at a time`)
    if (!isAbsolute(req.dest)) throw new KithError('BAD_REQUEST', 'dest must be an absolute path')
    const priority = req.priority ?? 'normal'
    if (!PRIORITIES.includes(priority)) throw new KithError('BAD_REQUEST', `a priority is one of ${PRIORITIES.join(', ')}, not ${JSON.stringify(priority)}`)
    const connections = req.connections ?? DEFAULT_CONNECTIONS
    if (!Number.isInteger(connections) || connections < 1 || connections > MAX_CONNECTIONS) throw new KithError('BAD_REQUEST', `connections is 1 to ${MAX_CONNECTIONS}`)
    const limit = typeof req.limit === 'string' ? parseRate(req.limit) : req.limit
    if (req.limit != null && !(limit !== undefined && limit >= 1 && Number.isFinite(limit))) throw new KithError('BAD_REQUEST', `limit is a rate like 2MB/s, or bytes per second, at least 1; got ${JSON.stringify(req.limit)}`)
    const options = req.options ?? {}
    if (JSON.stringify(options).length > MAX_OPTIONS_BYTES) throw new KithError('PAYLOAD_TOO_LARGE', `add-on options take at most ${MAX_OPTIONS_BYTES} bytes as JSON`)
    const checksum = req.checksum != null ? `sha256:${parseChecksum(req.checksum)}` : null
    if (checksum !== null && req.urls.length > 1) throw new KithError('BAD_REQUEST', 'a checksum is for one URL; queue the others apart')

    const plain: URL[] = []
    const friends: KithTarget[] = []
    for (const text of req.urls) {
      if (isKithUrl(text)) friends.push(parseKithUrl(text))
      else plain.push(parseUrl(text))
    }
    if (friends.length > 0 && (checksum !== null || req.limit != null || req.connections != null || Object.keys(options).length > 0)) {
      throw new KithError('BAD_REQUEST', 'kith:// fetches are verified against the friend\'s signed manifest and fetched from every friend holding the chunks: --checksum, --limit, --connections and options are for other URLs')
    }
    for (const url of plain) await checkUrl(url, options)
    const place = await this.destination(req.dest, req.urls.length)

    const now = Date.now()
    const records: Download[] = plain.map(url => ({
      v: DOWNLOAD_RECORD_VERSION,
      id: this.newId(),
      url: url.toString(),
      dir: place.dir,
      name: place.name,
      state: 'queued',
      priority,
      limit: limit ?? null,
      connections,
      checksum,
      options,
      totalBytes: null,
      doneBytes: 0,
      rate: 0,
      eta: null,
      sha256: null,
      kind: null,
      error: null,
      created: now,
      updated: now
    }))
    const transfers: Transfer[] = []
    try {
      for (const target of friends) {
        transfers.push(await this.init.files.fetch({
          friend: target.friend,
          share: target.share,
          ...(target.path !== '' ? { path: target.path } : {}),
          priority,
          ...(place.name !== null ? { dest: join(place.dir, place.name) } : { destDir: place.dir })
        }))
      }
    } catch (err) {
      for (const t of transfers) await this.init.files.transfers.cancel(t.id).catch(() => {})
      throw err
    }
    const downloads: DownloadView[] = []
    for (const record of records) downloads.push(publicView(await this.queue.add(record)))
    return { downloads, transfers }
  }

  /** A download or a friend fetch, whichever has the id. */
  find (id: string): Controlled {
    const d = this.book.find(id)
    return d !== undefined ? { download: publicView(d) } : { transfer: this.fetchesOr(id).get(id) }
  }

  /** pause, resume or cancel a download or a friend fetch, whichever has the id. */
  async control (id: string, action: 'pause' | 'resume' | 'cancel'): Promise<Controlled> {
    if (this.book.find(id) !== undefined) {
      const d = action === 'pause' ? await this.queue.pause(id) : action === 'resume' ? await this.queue.resume(id) : await this.queue.cancel(id)
      return { download: publicView(d) }
    }
    const transfers = this.fetchesOr(id)
    const t = action === 'pause' ? await transfers.pause(id) : action === 'resume' ? await transfers.resume(id) : await transfers.cancel(id)
    return { transfer: t }
  }

  async setPriority (id: string, priority: Priority): Promise<Controlled> {
    if (this.book.find(id) !== undefined) return { download: publicView(await this.queue.setPriority(id, priority)) }
    return { transfer: await this.fetchesOr(id).setPriority(id, priority) }
  }

  /** A download's own limit (bytes/s or a rate like '2MB/s'; null for none). Friend fetches have none of their own. */
  async setLimit (id: string, limit: number | string | null): Promise<Controlled> {
    const rate = typeof limit === 'string' ? parseRate(limit) : limit
    if (rate === undefined) throw new KithError('BAD_REQUEST', `limit is a rate like 2MB/s, or bytes per second, or null for none; got ${JSON.stringify(limit)}`)
    if (this.book.find(id) === undefined) {
      this.fetchesOr(id)
      throw new KithError('BAD_REQUEST', `${id} is a friend fetch: it has no limit of its own (friends' fetches share the caps by class; see \`kith limits\`)`)
    }
    return { download: publicView(await this.queue.setLimit(id, rate)) }
  }

  /**
   * The whole queue's time left, downloads and friend fetches together:
   * the bytes left in every running or queued one of known size over the
   * rate the running ones are expected to get together (at most the
   * download cap in force); never less than the longest running one's own
   * ETA. 0 when nothing is left, null when unknown.
   */
  outlook (): QueueOutlook {
    let { left, rate, longest, unknown } = this.queue.outlook()
    for (const t of this.init.files.transfers.list()) {
      if (t.state !== 'running' && t.state !== 'queued') continue
      left += Math.max(0, t.totalBytes - t.doneBytes)
      if (t.state !== 'running') continue
      rate += t.rate
      if (t.eta !== null) longest = Math.max(longest, t.eta)
    }
    rate = Math.min(rate, this.init.engine.bandwidth.caps().down)
    const eta = left === 0 ? (unknown > 0 ? null : 0) : rate > 0 ? Math.max(longest, left / rate) : null
    return { eta, unknownSizes: unknown }
  }

  /** The friend fetches, when one has this id; else neither has it. */
  private fetchesOr (id: string): FileService['transfers'] {
    const transfers = this.init.files.transfers
    try {
      transfers.get(id)
    } catch {
      throw new KithError('TRANSFER_UNKNOWN', `no download or friend fetch ${JSON.stringify(id)}; see \`kith downloads\``)
    }
    return transfers
  }

  /** 12 hex digits no download and no friend fetch has (one queue, one id space). */
  private newId (): string {
    for (;;) {
      const id = randomBytes(6).toString('hex')
      if (this.book.has(id)) continue
      try {
        this.init.files.transfers.get(id)
      } catch {
        return id
      }
    }
  }

  /**
   * Where downloads go: an existing folder (or a path ending in /) takes
   * each under the origin's name; anything else is the file's own path, for
   * one URL only, and must not exist yet.
   */
  private async destination (dest: string, count: number): Promise<{ dir: string, name: string | null }> {
    const info = await stat(dest).catch(() => undefined)
    if (info?.isDirectory() === true || dest.endsWith('/')) return { dir: dest.replace(/\/+$/, '') || '/', name: null }
    if (count > 1) throw new KithError('BAD_REQUEST', `several URLs go into a folder: ${dest} is not one (end it with / to make it)`)
    const name = safeName(basename(dest))
    if (name === null || name !== basename(dest)) throw new KithError('BAD_REQUEST', `${JSON.stringify(basename(dest))} is not a name kith writes a download to`)
    if (await lstat(dest).then(() => true, () => false)) throw new KithError('DESTINATION_EXISTS', `${dest} already exists; choose another -o or move it away`)
    return { dir: dirname(dest), name }
  }
}
