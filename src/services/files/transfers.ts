import { EventEmitter } from 'node:events'
import { randomBytes } from 'node:crypto'
import { rm, statfs } from 'node:fs/promises'
import { basename, dirname, join, resolve } from 'node:path'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Connection } from '@libp2p/interface'
import { KithError, asKithError } from '../../errors.ts'
import type { Sublevel } from '../../peer/database.ts'
import { pathExists } from '../../peer/home.ts'
import { Slices } from '../../peer/slices.ts'
import { unwrapKey } from '../../peer/key-wrap.ts'
import type { KithLibp2p } from '../../peer/node.ts'
import type { FriendBook } from '../../trust/friends.ts'
import type { ChunkStore } from '../../transfer/chunk-store.ts'
import { fetchChunks, type FetchProgress } from '../../transfer/fetcher.ts'
import { chunkLength, type Manifest, type ManifestFile } from '../../transfer/manifest.ts'
import { deriveSealKeys, type SealKeys } from '../../transfer/seal.ts'
import { COLLECT_EVERY_FILES, ShareAssembly, sharePartialPath, type ShareTargets } from '../../transfer/assemble.ts'
import { checkUnder, compareFile, makeRoot, prepareUnder } from '../../transfer/destination.ts'
import { PRIORITIES, type BandwidthScheduler, type Flow, type FloorReport, type Priority } from '../../transfer/scheduler/index.ts'
import { fullCollection } from '../daemon-heap.ts'
import { fetchManifest, listShares } from './files-protocol.ts'
import { ShareBook } from './share-book.ts'

/**
 * Fetches of friends' shares: queued, run a few at a time, persisted so they
 * survive restarts (verified chunks stay in the chunk store; a resumed fetch
 * asks only for what is missing), paused, resumed and cancelled on request,
 * and reporting progress as events.
 */
export const MAX_ACTIVE_TRANSFERS = 3
export const PROGRESS_INTERVAL_MS = 250
/** A start removes partials of fetches cancelled this recently (a kill may have come between the cancel and the removal). */
export const CANCELLED_CLEANUP_MS = 7 * 24 * 3600 * 1000
/** Fetches again what was held but found damaged or gone while read back, this many times at most before failing. */
export const MAX_REFETCH_PASSES = 3
/** How often fetches paused by a full disk look for room again. */
export const DISK_RECHECK_MS = 2_000
/** Room a fetch paused by a full disk wants beyond what it still has to write (and on the database's disk) before it goes on by itself. */
export const DISK_MARGIN_BYTES = 8 * 1024 * 1024
/** `store.has` checks run this many at a time when a fetch starts. */
const HAS_CONCURRENCY = 64
/** Destination files checked (folders made, what is there compared) this many at a time when a fetch starts. */
const PREPARE_CONCURRENCY = 16

export type TransferState = 'queued' | 'running' | 'paused' | 'done' | 'failed' | 'cancelled'

export interface Transfer {
  id: string
  owner: string
  ownerLabel: string
  shareId: string
  shareName: string
  version: number
  /** a file or folder inside the share, or '' for all of it */
  path: string
  dest: string
  state: TransferState
  totalBytes: number
  doneBytes: number
  /** bytes per second: achieved over the scheduler's 2 s window */
  rate: number
  /** seconds, or null when unknown: from this fetch's expected share of the caps (docs/scheduler.md) */
  eta: number | null
  /** within its class, who goes first; `kith priority ID LEVEL` changes it while it runs */
  priority: Priority
  /** minimum rate asked for, bytes/s, or null */
  minRate: number | null
  /**
   * How the floor stands while it runs (and as it last stood after): state
   * `ok`, `cap` or `peer-cap` (the caps can't reserve all of it), or `slow`
   * (reserved, but the sources are slower); null without a floor.
   */
  floor: FloorReport | null
  /** who served this fetch, and how much */
  sources: TransferSource[]
  error: { code: string, message: string } | null
  created: number
  updated: number
}

export interface TransferSource {
  peerId: string
  label: string
  /** verified bytes received from this source */
  bytes: number
  /** bytes/s, smoothed */
  rate: number
  state: 'active' | 'cooling' | 'dropped'
}

export type TransferEvent = { type: 'transfer:progress' | 'transfer:state', transfer: Transfer }

export type StartFetch = {
  friend: string
  share: string
  path?: string
  /** @default 'normal' */
  priority?: Priority
  /** bytes/s the fetch asks for at least */
  minRate?: number
} & ({ dest: string } | { destDir: string })

export interface TransferInit {
  libp2p: KithLibp2p
  friends: FriendBook
  shares: ShareBook
  store: ChunkStore
  level: Sublevel<Transfer>
  secretKey: Uint8Array
  /** what fetches receive passes through it; their speed and ETA come from it */
  bandwidth?: BandwidthScheduler
  /** the home folder (the database's disk): a fetch paused by a full disk waits for room there too */
  home?: string
}

interface Running {
  controller: AbortController
  done: Promise<void>
  /** its bandwidth flow, once it has one */
  flow?: Flow
}

const FINAL: TransferState[] = ['done', 'failed', 'cancelled']

export class Transfers extends EventEmitter<{ event: [TransferEvent] }> {
  private readonly init: TransferInit
  private readonly records = new Map<string, Transfer>()
  private readonly running = new Map<string, Running>()
  /** seal keys of friends' shares, newest first, by `${owner}/${shareId}`: fetched files serve their chunks with them */
  private readonly keys = new Map<string, SealKeys[]>()
  /**
   * Manifests just pinned by `fetch`, with the files selected, for the run
   * that follows (a few: a run decodes its own from the saved copy otherwise).
   */
  private readonly pinned = new Map<string, Pinned>()
  private stopped = false
  /** looks for room while some fetch is paused by a full disk */
  private diskTimer: ReturnType<typeof setTimeout> | undefined
  /** goes on with the fetches waiting for a connection without limits to their owner */
  private readonly onConnection = (evt: CustomEvent<Connection>): void => {
    const connection = evt.detail
    if (connection.limits != null) return
    this.resumeWaitingFor(connection.remotePeer.toString()).catch(() => {}) // a failed save leaves the fetch waiting
  }

  constructor (init: TransferInit) {
    super()
    this.init = init
  }

  /**
   * Loads saved transfers; those that were running or queued go on by
   * themselves. Partials of fetches cancelled lately are removed again, in the
   * background: a kill right after a cancel may have left them.
   */
  async start (): Promise<void> {
    for await (const record of this.init.level.values()) {
      if (record.state === 'running') record.state = 'queued'
      this.records.set(record.id, { ...record, rate: 0, eta: null, sources: record.sources ?? [], priority: record.priority ?? 'normal', minRate: record.minRate ?? null, floor: record.floor ?? null })
    }
    // `updated` is a stored timestamp, so this window is on the wall clock
    const recent = [...this.records.values()].filter(r => r.state === 'cancelled' && Date.now() - r.updated < CANCELLED_CLEANUP_MS)
    setImmediate(() => {
      const clearing = async (): Promise<void> => {
        for (const record of recent) await this.dropPartials(record).catch(() => {})
      }
      clearing().catch(() => {}) // each removal is best effort; nothing here may end the daemon
    })
    this.kick()
    this.watchDisk()
    this.init.libp2p.addEventListener('connection:open', this.onConnection)
    // a link without limits may be up already
    for (const owner of new Set(this.list().filter(waitingForLink).map(r => r.owner))) {
      if (this.hasUnlimitedLink(owner)) await this.resumeWaitingFor(owner)
    }
  }

  async stop (): Promise<void> {
    this.stopped = true
    clearTimeout(this.diskTimer)
    this.init.libp2p.removeEventListener('connection:open', this.onConnection)
    const active = [...this.running.values()]
    for (const run of active) run.controller.abort(new KithError('TRANSFER_STATE', 'the daemon is stopping'))
    await Promise.allSettled(active.map(async r => await r.done))
  }

  list (): Transfer[] {
    return [...this.records.values()].sort((a, b) => a.created - b.created)
  }

  get (id: string): Transfer {
    const record = this.records.get(id) ?? [...this.records.values()].find(r => r.id.startsWith(id) && id.length >= 4)
    if (record == null) throw new KithError('TRANSFER_UNKNOWN', `no transfer ${JSON.stringify(id)}; see \`kith transfers\``)
    return record
  }

  /**
   * Queue-wide ETA, seconds, from the scheduler's view: the bytes left in
   * every running and queued fetch over the rate the running ones are
   * expected to get together (their shares, at most the download cap in
   * force); never less than the longest running fetch's own ETA. Null when
   * unknown (nothing moved yet), 0 when nothing is left.
   */
  queueEta (): number | null {
    const open = this.list().filter(t => !FINAL.includes(t.state) && t.state !== 'paused')
    const left = open.reduce((sum, t) => sum + Math.max(0, t.totalBytes - t.doneBytes), 0)
    if (left === 0) return 0
    const bandwidth = this.init.bandwidth
    let rate = 0
    let longest = 0
    for (const t of open) {
      if (t.state !== 'running') continue
      const flow = this.running.get(t.id)?.flow
      const share = bandwidth !== undefined && flow !== undefined && !flow.closed ? bandwidth.share(flow) : null
      rate += share ?? t.rate
      if (t.eta != null) longest = Math.max(longest, t.eta)
    }
    if (bandwidth !== undefined) rate = Math.min(rate, bandwidth.caps().down)
    return rate > 0 ? Math.max(longest, left / rate) : null
  }

  /** Changes a fetch's priority; a running one's next slice already goes by it. */
  async setPriority (id: string, priority: Priority): Promise<Transfer> {
    if (!PRIORITIES.includes(priority)) throw new KithError('BAD_REQUEST', `a priority is one of ${PRIORITIES.join(', ')}, not ${JSON.stringify(priority)}`)
    const record = this.get(id)
    if (FINAL.includes(record.state)) throw new KithError('TRANSFER_STATE', `transfer ${record.id} is already ${record.state}`)
    this.running.get(record.id)?.flow?.setPriority(priority)
    await this.save({ ...record, priority }, 'transfer:state')
    return this.get(record.id)
  }

  /** Resolves the friend and share, pins the share's current manifest, and queues the fetch. */
  async fetch (req: StartFetch): Promise<Transfer> {
    const friend = this.init.friends.resolve(req.friend)
    if (friend.state !== 'active') throw new KithError('FRIEND_REVOKED', `${friend.label} is not your friend any more`)
    const owner = peerIdFromString(friend.peerId)
    const listings = await listShares(this.init.libp2p, owner).catch(err => { throw this.relayLimited(friend.peerId, err) ?? err })
    const matches = listings.filter(s => s.id === req.share || s.name === req.share || (req.share.length >= 6 && s.id.startsWith(req.share)))
    if (matches.length === 0) throw new KithError('SHARE_UNKNOWN', `${friend.label} shares nothing called ${JSON.stringify(req.share)} with you; see \`kith ls ${friend.label}\``)
    if (matches.length > 1) throw new KithError('BAD_REQUEST', `${friend.label} shares more than one ${JSON.stringify(req.share)}; use the share id from \`kith ls ${friend.label}\``)
    const pinned = await this.pinManifest(friend.peerId, matches[0]!.id)
    const { manifest } = pinned
    const path = (req.path ?? '').replace(/^\/+|\/+$/g, '')
    const selected = select(manifest, path)
    const priority = req.priority ?? 'normal'
    if (!PRIORITIES.includes(priority)) throw new KithError('BAD_REQUEST', `a priority is one of ${PRIORITIES.join(', ')}, not ${JSON.stringify(priority)}`)
    if (req.minRate != null && !(req.minRate >= 0 && Number.isFinite(req.minRate))) throw new KithError('BAD_REQUEST', 'minRate is a rate in bytes per second')
    const dest = 'dest' in req ? resolve(req.dest) : join(resolve(req.destDir), safeName(path === '' ? manifest.name : path.split('/').pop()!))
    if (await pathExists(dest)) throw new KithError('DESTINATION_EXISTS', `${dest} already exists; choose another -o or move it away`)
    const now = Date.now()
    const record: Transfer = {
      id: randomBytes(6).toString('hex'),
      owner: friend.peerId,
      ownerLabel: friend.label,
      shareId: manifest.shareId,
      shareName: manifest.name,
      version: manifest.version,
      path,
      dest,
      state: 'queued',
      totalBytes: selected.files.reduce((sum, f) => sum + f.entry.size, 0),
      doneBytes: 0,
      rate: 0,
      eta: null,
      priority,
      minRate: req.minRate != null && req.minRate > 0 ? req.minRate : null,
      floor: null,
      sources: [],
      error: null,
      created: now,
      updated: now
    }
    // its run takes the manifest from here rather than decoding (and selecting from) it again
    this.pinned.set(record.id, { ...pinned, files: selected.files })
    for (const old of this.pinned.keys()) if (this.pinned.size > MAX_ACTIVE_TRANSFERS) this.pinned.delete(old)
    try {
      await this.save(record, 'transfer:state')
    } catch (err) {
      this.pinned.delete(record.id)
      throw err
    }
    this.kick()
    return record
  }

  async pause (id: string): Promise<Transfer> {
    const record = this.get(id)
    if (FINAL.includes(record.state)) throw new KithError('TRANSFER_STATE', `transfer ${record.id} is ${record.state}; there is nothing to pause`)
    const run = this.running.get(record.id)
    // a pause asked for replaces one a full disk made: it waits for `kith resume`, not for room
    await this.save({ ...record, state: 'paused', error: null, rate: 0, eta: null }, 'transfer:state')
    if (run != null) {
      run.controller.abort(new KithError('TRANSFER_STATE', 'paused'))
      await run.done.catch(() => {})
    }
    return this.get(record.id)
  }

  async resume (id: string): Promise<Transfer> {
    const record = this.get(id)
    if (record.state !== 'paused' && record.state !== 'failed') throw new KithError('TRANSFER_STATE', `transfer ${record.id} is ${record.state}, not paused or failed`)
    await this.save({ ...record, state: 'queued', error: null }, 'transfer:state')
    this.kick()
    return this.get(record.id)
  }

  async cancel (id: string): Promise<Transfer> {
    const record = this.get(id)
    // a failed fetch may still be resumed, so it may be cancelled (its partials removed)
    if (record.state === 'done' || record.state === 'cancelled') throw new KithError('TRANSFER_STATE', `transfer ${record.id} is already ${record.state}`)
    const run = this.running.get(record.id)
    await this.save({ ...record, state: 'cancelled', rate: 0, eta: null }, 'transfer:state')
    if (run != null) {
      run.controller.abort(new KithError('TRANSFER_STATE', 'cancelled'))
      await run.done.catch(() => {})
    }
    // a paused, failed or queued fetch's; a run removes its own, unless it had just ended (failed) as the cancel came
    await this.dropPartials(record).catch(() => {})
    return this.get(record.id)
  }

  /** Removes the partial files a (not running) fetch left in its destination. */
  private async dropPartials (record: Transfer): Promise<void> {
    const saved = await this.init.shares.receivedManifest(record.owner, record.shareId, record.version)
    const friend = this.init.friends.get(record.owner)
    if (saved === undefined || friend === undefined) return
    const manifest = await ShareBook.decode(saved, Buffer.from(friend.publicKey, 'base64'))
    for (const { index, relative } of select(manifest, record.path).files) {
      const dest = destOf(record, relative)
      // never through a link planted on the way: that partial is not ours to remove
      if (!await checkUnder(dirname(record.dest), dirname(dest)).then(() => true, () => false)) continue
      await rm(sharePartialPath(dest, record.id, index), { force: true })
    }
  }

  private async save (record: Transfer, type: TransferEvent['type']): Promise<void> {
    const updated = { ...record, updated: Date.now() }
    this.records.set(record.id, updated)
    try {
      await this.init.level.put(record.id, updated)
    } finally {
      // the transfer is in this state now, recorded or not (a database write can fail): say so
      this.emit('event', { type, transfer: updated })
      if (pausedByFullDisk(updated)) this.watchDisk()
    }
  }

  /**
   * Fetches paused because `owner` was reached only over a relay with a
   * budget (FRIEND_RELAY_LIMITED) go on: a connection without limits to it
   * is open. `kith pause` stops the waiting.
   */
  private async resumeWaitingFor (owner: string): Promise<void> {
    for (const record of this.list()) {
      if (this.stopped) return
      if (record.owner !== owner || !waitingForLink(record)) continue
      await this.save({ ...record, state: 'queued', error: null }, 'transfer:state')
    }
    this.kick()
  }

  private hasUnlimitedLink (peer: string): boolean {
    try {
      return this.init.libp2p.getConnections(peerIdFromString(peer)).some(c => c.status === 'open' && c.limits == null)
    } catch {
      return false
    }
  }

  /**
   * While some fetch is paused by a full disk, looks every DISK_RECHECK_MS
   * for room: once the disk of its destination has what the fetch still has
   * to write and DISK_MARGIN_BYTES more (and the home's disk the margin), it
   * goes on by itself. `kith resume` needs no room; `kith pause` stops the
   * waiting.
   */
  private watchDisk (): void {
    if (this.stopped || this.diskTimer !== undefined) return
    if (!this.list().some(pausedByFullDisk)) return
    this.diskTimer = setTimeout(() => {
      this.lookForRoom().catch(() => {}).finally(() => {
        this.diskTimer = undefined
        this.watchDisk()
      })
    }, DISK_RECHECK_MS)
    this.diskTimer.unref()
  }

  private async lookForRoom (): Promise<void> {
    for (const record of this.list().filter(pausedByFullDisk)) {
      if (this.stopped) return
      const left = Math.max(0, record.totalBytes - record.doneBytes)
      if (await freeBytes(dirname(record.dest)) < left + DISK_MARGIN_BYTES) continue
      if (this.init.home !== undefined && await freeBytes(this.init.home) < DISK_MARGIN_BYTES) continue
      // it may have been resumed, paused or cancelled meanwhile
      const now = this.get(record.id)
      if (!pausedByFullDisk(now)) continue
      await this.save({ ...now, state: 'queued', error: null }, 'transfer:state')
      this.kick()
    }
  }

  private kick (): void {
    if (this.stopped) return
    for (const record of this.list()) {
      if (this.running.size >= MAX_ACTIVE_TRANSFERS) return
      if (record.state !== 'queued' || this.running.has(record.id)) continue
      const controller = new AbortController()
      // a run records its own outcome; if even that fails (the database), it must not end the daemon
      const done = this.run(record.id, controller.signal).catch((err: unknown) => { this.unrecorded(record.id, err) }).finally(() => {
        this.running.delete(record.id)
        this.kick()
      })
      this.running.set(record.id, { controller, done })
    }
  }

  /**
   * A run that threw instead of recording how it ended: a database write
   * failed (a full disk, a closed or damaged database). If the run got as
   * far as its last state (save keeps it in memory and sends the event even
   * when the write fails), that stands; else the transfer ends in memory as
   * the run would have ended it (failed, or paused by a full disk), with an
   * event, and writing the record is tried once more in the background.
   * Logged, since the record on disk may be stale. Never throws.
   */
  private unrecorded (id: string, err: unknown): void {
    console.error(`kith: transfer ${id} ended with an error that could not be recorded: ${err instanceof Error ? err.stack ?? err.message : String(err)}`)
    const record = this.records.get(id)
    if (record === undefined || this.stopped || (record.state !== 'running' && record.state !== 'queued')) return
    const error = describe(err)
    const next: Transfer = { ...record, state: error.code === 'DISK_FULL' ? 'paused' : 'failed', error, rate: 0, eta: null, updated: Date.now() }
    this.records.set(id, next)
    try {
      this.emit('event', { type: 'transfer:state', transfer: next })
    } catch {}
    this.init.level.put(id, next).catch(() => {})
    if (pausedByFullDisk(next)) this.watchDisk()
  }

  /**
   * The seal keys of a friend's share I fetched, newest version first, from
   * the manifests I saved (a share gets a new key when its owner removes a
   * friend from it); for the chunk store, which reseals chunks held in
   * fetched files. Empty if the owner is no longer a friend or nothing of
   * theirs was saved.
   */
  async sealKeys (shareId: string, owner: string): Promise<SealKeys[]> {
    const friend = this.init.friends.get(owner)
    if (friend === undefined || friend.state !== 'active') return []
    const cached = this.keys.get(`${owner}/${shareId}`)
    if (cached !== undefined) return cached
    const keys = await this.init.shares.receivedKeys(owner, shareId, Buffer.from(friend.publicKey, 'base64'), this.init.secretKey)
    if (keys.length > 0) this.keys.set(`${owner}/${shareId}`, keys)
    return keys
  }

  /** Fetches the share's manifest and key from its owner (or my saved copy) for the given version. */
  private async pinManifest (owner: string, shareId: string, version?: number): Promise<{ manifest: Manifest, key: Uint8Array }> {
    const friend = this.init.friends.get(owner)!
    const ownerKey = Buffer.from(friend.publicKey, 'base64')
    const saved = version != null ? await this.init.shares.getReceived(owner, shareId, version) : undefined
    const savedBytes = saved != null ? await this.init.shares.receivedManifest(owner, shareId, saved.version) : undefined
    let bytes: Uint8Array
    let wrapped: string
    if (saved != null && savedBytes !== undefined) {
      bytes = savedBytes
      wrapped = saved.wrappedKey
    } else {
      const fetched = await fetchManifest(this.init.libp2p, peerIdFromString(owner), shareId)
      bytes = fetched.manifest
      wrapped = Buffer.from(fetched.key).toString('base64')
    }
    const manifest = await ShareBook.decode(bytes, ownerKey)
    if (manifest.shareId !== shareId) throw new KithError('PROTOCOL_VIOLATION', 'the owner sent the manifest of another share')
    if (version != null && manifest.version !== version) {
      throw new KithError('TRANSFER_STATE', `the share changed (version ${manifest.version}, this fetch is of version ${version}); cancel it and fetch again`)
    }
    const key = unwrapKey(Buffer.from(wrapped, 'base64'), ownerKey, this.init.secretKey)
    if (savedBytes === undefined) {
      await this.init.shares.saveReceived({ owner, shareId, version: manifest.version, wrappedKey: wrapped, received: Date.now() }, bytes)
    }
    return { manifest, key }
  }

  /** A fetch's manifest (its pinned version, from my saved copy) and the files it selects. */
  private async pin (record: Transfer): Promise<Pinned> {
    const { manifest, key } = await this.pinManifest(record.owner, record.shareId, record.version)
    return { manifest, key, files: select(manifest, record.path).files }
  }

  private async run (id: string, signal: AbortSignal): Promise<void> {
    let record = this.get(id)
    await this.save({ ...record, state: 'running' }, 'transfer:state')
    try {
      const { assembly, ids, inStore, held, files } = await this.prepare(id, record)
      // a fetch of many files: what decoding and preparing them left goes before they come, and the
      // assembly's collections (every COLLECT_EVERY_FILES placed) start from the heap the fetch needs
      if (files >= COLLECT_EVERY_FILES) fullCollection()
      const meter = new RateMeter()
      const bandwidth = this.init.bandwidth
      // friends' shares are friend traffic; one flow for the fetch, each take naming its source
      const flow = bandwidth?.flow({ direction: 'down', class: 'friend', label: id, priority: record.priority, floor: record.minRate ?? 0 })
      const entry = this.running.get(id)
      if (entry !== undefined && flow !== undefined) entry.flow = flow
      let last = -Infinity
      const label = (peerId: string): string => this.init.friends.get(peerId)?.label ?? peerId
      let latest: { fetched: number, perSource: FetchProgress['perSource'] } = { fetched: 0, perSource: {} }
      const progress = (fetched: number, perSource: FetchProgress['perSource'], force = false): void => {
        latest = { fetched, perSource }
        // intervals and rates on the monotonic clock; `updated` is a timestamp for people
        const now = performance.now()
        if (!force && now - last < PROGRESS_INTERVAL_MS) return
        last = now
        record = this.get(id)
        if (record.state !== 'running') return
        const doneBytes = Math.min(record.totalBytes, held + fetched)
        let rate = meter.sample(doneBytes, now)
        let eta = rate > 0 ? (record.totalBytes - doneBytes) / rate : null
        let floor: FloorReport | null = null
        if (bandwidth !== undefined && flow !== undefined && !flow.closed) {
          // the scheduler's view: achieved over its window, time left from this fetch's share of the caps
          rate = flow.stats().rate
          eta = bandwidth.eta(flow, record.totalBytes - doneBytes)
          floor = flow.floor()
        }
        const sources = Object.entries(perSource).map(([peerId, p]) => ({ peerId, label: label(peerId), bytes: p.bytes, rate: Math.round(p.rate), state: p.state }))
        const next = { ...record, doneBytes, rate, eta, floor, sources, updated: Date.now() }
        this.records.set(id, next)
        this.emit('event', { type: 'transfer:progress', transfer: next })
      }
      progress(0, {})
      try {
        const filling = assembly.fill({ signal, held: inStore })
        filling.catch(() => {}) // awaited below; the fetch may fail first
        const store = this.init.store
        const fetch = async (wanted: string[]): Promise<void> => {
          await fetchChunks({
            libp2p: this.init.libp2p,
            // a chunk goes only into its files; the store records it as held there
            store: {
              // what was not in the store a moment ago is not asked again
              has: async chunk => inStore.has(chunk) && await store.has(chunk),
              put: async (chunk, sealed) => await assembly.put(chunk, sealed)
            },
            ids: wanted,
            sources: this.sources(record.owner),
            name: label,
            // friends who come online (or gain chunks) while it runs join; and at once when a floor falls short
            discover: () => this.sources(record.owner),
            ...(flow !== undefined ? { short: () => flow.floor()?.state === 'slow' } : {}),
            signal,
            onProgress: p => progress(p.doneBytes, p.perSource, p.doneChunks === p.totalChunks),
            ...(flow !== undefined ? { beforeReceive: async (bytes, peer, s) => { await flow.take(bytes, s, peer.toString()) } } : {})
          })
        }
        await fetch(ids)
        await filling
        // a held chunk found damaged or gone while it was read back was dropped from the store: fetch it again
        for (let pass = 0; pass < MAX_REFETCH_PASSES; pass++) {
          const lost = assembly.wanted()
          if (lost.length === 0) break
          await fetch(lost)
        }
        await assembly.finish({ signal })
      } catch (err) {
        // what it got before it ended, which the last (throttled) progress may not show yet
        progress(latest.fetched, latest.perSource, true)
        // a paused, stopped or failed fetch keeps its partials: the chunks it holds are in them
        if (this.get(id).state === 'cancelled') await assembly.abort()
        else await assembly.close()
        throw err
      } finally {
        flow?.close()
      }
      record = this.get(id)
      await this.save({ ...record, state: 'done', doneBytes: record.totalBytes, rate: 0, eta: 0 }, 'transfer:state')
    } catch (err) {
      record = this.get(id)
      if (record.state === 'paused' || record.state === 'cancelled' || this.stopped) {
        if (this.stopped && record.state === 'running') await this.init.level.put(id, { ...record, state: 'queued' })
        return
      }
      const limited = this.relayLimited(record.owner, err)
      const error = limited !== null
        ? { code: limited.code, message: `${limited.message}. This fetch waits, and goes on by itself once a connection to ${record.ownerLabel} without such a limit opens` }
        : describe(err)
      // a full disk, or a friend reached only over a relay with a budget, pauses the fetch: it goes on by
      // itself once there is room (watchDisk) or a connection without limits opens (onConnection)
      const state: TransferState = error.code === 'DISK_FULL' || error.code === 'FRIEND_RELAY_LIMITED' ? 'paused' : 'failed'
      await this.save({ ...record, state, error, rate: 0, eta: null }, 'transfer:state')
    }
  }

  /**
   * A run's files, ready to be written as chunks arrive (chunks held from
   * before are read back alongside), what it still wants, which of that the
   * store holds (asked once: the fetch and the read-back go by this answer),
   * and the bytes it holds already. The selection is not kept: a share of
   * many files would hold an object per file for the whole fetch.
   */
  private async prepare (id: string, record: Transfer): Promise<{ assembly: ShareAssembly, ids: string[], inStore: Set<string>, held: number, files: number }> {
    const { manifest, key, files } = this.pinned.get(id) ?? await this.pin(record)
    this.pinned.delete(id)
    const assembly = await this.assembly(id, manifest, key, record, files)
    // what files placed before a restart hold is done; of the rest, what the store holds is read back, not fetched
    const ids = assembly.wanted()
    const inStore = await heldOf(this.init.store, ids)
    const held = Math.max(0, record.totalBytes - missingBytes(files, manifest.chunkSize, ids, inStore))
    return { assembly, ids, inStore, held, files: files.length }
  }

  /**
   * Why `err` (a failure to reach `peerId`) happened, when the friend is
   * online only over limited connections: a relay whose budget (time or
   * bytes) limits each relayed connection. libp2p opens no `files` or
   * `chunks` stream there, on purpose, since the relay would cut a transfer
   * off partway; the error says so, and what to do. Null otherwise.
   */
  private relayLimited (peerId: string, err: unknown): KithError | null {
    const code = (err as KithError | undefined)?.code
    if (code !== 'FRIEND_OFFLINE' && code !== 'FETCH_NO_SOURCE' && code !== 'CHUNK_PEER_UNREACHABLE') return null
    let open: Connection[]
    try { open = this.init.libp2p.getConnections(peerIdFromString(peerId)).filter(c => c.status === 'open') } catch { return null }
    if (open.length === 0 || open.some(c => c.limits == null)) return null
    const label = (id: string): string => this.init.friends.get(id)?.label ?? id
    const relays = [...new Set(open.map(c => {
      const parts = c.remoteAddr.getComponents()
      const at = parts.findIndex(p => p.name === 'p2p-circuit')
      const relay = at > 0 ? parts[at - 1]?.value : undefined
      return relay != null ? label(relay) : 'the'
    }))].join(' and ')
    const friend = label(peerId)
    return new KithError('FRIEND_RELAY_LIMITED',
      `${friend} is online, but only through ${relays}'s relay, whose budget limits each relayed connection (time or bytes); ` +
      `kith moves no files over such a connection, as the relay would cut the transfer off partway. ` +
      `Ask ${relays} to relay without a limit (\`kith start\` without --relay-max-data and --relay-max-duration), or reach ${friend} directly ` +
      `(the same network, a forwarded port, or NATs that let hole punching through: see \`kith status\`), then fetch again`, { cause: err })
  }

  /**
   * The owner first, then every friend who granted me files and is connected
   * other than through a relay with a budget (no chunk moves over such a
   * link): any of them may hold chunks.
   */
  private sources (owner: string): Array<ReturnType<typeof peerIdFromString>> {
    const others = this.init.friends.list()
      .filter(f => f.state === 'active' && f.peerId !== owner && f.grantsFromThem.includes('files'))
      .filter(f => this.init.libp2p.getConnections(peerIdFromString(f.peerId)).some(c => c.limits == null))
    return [owner, ...others.map(f => f.peerId)].map(p => peerIdFromString(p))
  }

  /**
   * The files of this fetch not already in place, ready to be written as
   * chunks arrive. Everything is written under the folder the destination
   * was named in (the root, taken as the user gave it), through checked
   * paths: a link planted at the destination, at a folder in it or at a
   * partial is refused with DESTINATION_LINK (destination.ts).
   *
   * A file already at its destination counts as done only if it is the
   * very file (its size and whole-file sha256 match the manifest's): one
   * this fetch placed before a restart. Anything else there is left
   * untouched; the file is fetched into its partial as usual, and placing it
   * then fails with DESTINATION_EXISTS, the verified file waiting in its
   * partial until the other is moved away and the fetch resumed.
   */
  private async assembly (id: string, manifest: Manifest, key: Uint8Array, record: Transfer, files: Selected[]): Promise<ShareAssembly> {
    const root = dirname(record.dest)
    await makeRoot(root)
    /** per selected file, its entry's index, or -1 once found in place */
    const prepared = new Int32Array(files.length)
    // a few files at a time: a folder of many small files would otherwise wait on each one's checks in turn
    let next = 0
    const checked = new Set<string>()
    // folders made just now hold nothing to compare: a first run over many files looks at none of them
    const made = new Set<string>()
    // the files of a folder checked already go without a wait: thousands of them, in slices
    const slices = new Slices()
    const prepare = async (): Promise<void> => {
      for (;;) {
        if (slices.due) await slices.pass()
        if (next >= files.length) return
        const at = next++
        const { entry, index, relative } = files[at]!
        const segments = [basename(record.dest), ...(relative === '' ? [] : relative.split('/'))]
        const dest = await prepareUnder(root, segments, { checked, made })
        if (!made.has(dirname(dest)) && await compareFile(dest, entry) === 'same') {
          // placed before a restart; a kill may have come between placing it, moving its chunks' records and unlinking the partial
          const partial = sharePartialPath(dest, id, index)
          await this.init.store.moveInFile(entry.chunks, partial, dest)
          await rm(partial, { force: true })
          prepared[at] = -1
          continue
        }
        // its path again when its first chunk comes, not held meanwhile: a share of many files would hold them all
        prepared[at] = index
      }
    }
    await Promise.all(Array.from({ length: Math.min(PREPARE_CONCURRENCY, files.length) }, prepare))
    const targets = new FetchTargets(prepared.filter(index => index >= 0), manifest, record)
    const keys = deriveSealKeys(key, manifest.shareId)
    // this version's key (its manifest is saved by now) joins the share's keys at the next look-up
    this.keys.delete(`${record.owner}/${manifest.shareId}`)
    return new ShareAssembly({ store: this.init.store, keys, owner: record.owner, manifest, targets, partialKey: id, root, collect: fullCollection })
  }
}

/**
 * The files of a fetch to be written, prepared (`prepareUnder` made and
 * checked their folders): an entry index each, in one typed array, and a
 * destination made from the entry's path when asked, once its first chunk
 * arrives. So a fetch of many files holds no object or path per file.
 */
class FetchTargets implements ShareTargets {
  readonly count: number
  private readonly entries: Int32Array
  private readonly manifest: Manifest
  private readonly record: Pick<Transfer, 'dest' | 'path'>

  constructor (entries: Int32Array, manifest: Manifest, record: Pick<Transfer, 'dest' | 'path'>) {
    this.count = entries.length
    this.entries = entries
    this.manifest = manifest
    this.record = record
  }

  file (t: number): number {
    return this.entries[t]!
  }

  dest (t: number): string {
    return destOf(this.record, relativeOf(this.manifest, this.record.path, this.manifest.entries[this.entries[t]!]!.path)!)
  }
}

interface Pinned {
  manifest: Manifest
  key: Uint8Array
  files: Selected[]
}

/** Which of `ids` the store holds, asked a few at a time. */
async function heldOf (store: Pick<ChunkStore, 'has'>, ids: string[]): Promise<Set<string>> {
  const held = new Set<string>()
  for (let at = 0; at < ids.length; at += HAS_CONCURRENCY) {
    const batch = ids.slice(at, at + HAS_CONCURRENCY)
    const answers = await Promise.all(batch.map(async id => await store.has(id)))
    batch.forEach((id, i) => { if (answers[i] === true) held.add(id) })
  }
  return held
}

/** Bytes of the chunks in `ids` the store does not hold: what the fetch still moves. */
function missingBytes (files: Selected[], chunkSize: number, ids: string[], inStore: ReadonlySet<string>): number {
  const lengths = new Map<string, number>()
  for (const { entry } of files) {
    // a pack counts the bytes of its files this fetch selects
    if (entry.pack !== undefined) lengths.set(entry.chunks[0]!, (lengths.get(entry.chunks[0]!) ?? 0) + entry.size)
    else entry.chunks.forEach((chunk, index) => lengths.set(chunk, chunkLength(entry.size, chunkSize, index)))
  }
  let missing = 0
  for (const chunk of ids) if (!inStore.has(chunk)) missing += lengths.get(chunk)!
  return missing
}

interface Selected {
  entry: ManifestFile
  /** the entry's index in the manifest */
  index: number
  /** path under the destination; '' when the destination is the file itself */
  relative: string
}

/** The files a fetch of `path` covers: one file, a folder's files, or everything. */
export function select (manifest: Manifest, path: string): { files: Selected[] } {
  const files: Selected[] = []
  manifest.entries.forEach((entry, index) => {
    if (entry.type !== 'file') return
    const relative = relativeOf(manifest, path, entry.path)
    if (relative !== undefined) files.push({ entry, index, relative })
  })
  if (files.length === 0 && path !== '' && !manifest.entries.some(e => e.type === 'dir' && e.path === path)) throw notInShare(path, manifest.name)
  return { files }
}

/** Whether a fetch of `path` takes the entry at `entryPath` ('' takes every entry); the rule of `select`. */
export function selects (path: string, entryPath: string): boolean {
  return path === '' || entryPath === path || entryPath.startsWith(path + '/')
}

/** `select`'s error for a path that names no file or folder of the share `name`. */
export function notInShare (path: string, name: string): KithError {
  return new KithError('SHARE_UNKNOWN', `${JSON.stringify(path)} is not in ${name}; see \`kith ls\``)
}

/**
 * The path under a fetch's destination of the entry at `entryPath`, for a
 * fetch of `path` ('' when the destination is the file itself: a fetch of
 * one file, or of a share of one file); undefined if the fetch leaves it out.
 */
function relativeOf (manifest: Pick<Manifest, 'entries'>, path: string, entryPath: string): string | undefined {
  if (!selects(path, entryPath)) return undefined
  if (path === '') return manifest.entries.length === 1 && manifest.entries[0]!.type === 'file' ? '' : entryPath
  return entryPath === path ? '' : entryPath.slice(path.length + 1)
}

/** A share name as a single file name: no separators, never `.` or `..`. */
function safeName (name: string): string {
  const cleaned = name.replace(/[/\\\0]/g, '_')
  return cleaned === '.' || cleaned === '..' || cleaned === '' ? 'share' : cleaned
}

function pausedByFullDisk (record: Transfer): boolean {
  return record.state === 'paused' && record.error?.code === 'DISK_FULL'
}

function waitingForLink (record: Transfer): boolean {
  return record.state === 'paused' && record.error?.code === 'FRIEND_RELAY_LIMITED'
}

/** Bytes an unprivileged writer may still use on the disk holding `path`; 0 if it can't be told. */
async function freeBytes (path: string): Promise<number> {
  try {
    const stats = await statfs(path)
    return stats.bavail * stats.bsize
  } catch {
    return 0
  }
}

/** Where the file at `relative` (as `select` gives it) of a fetch goes. */
function destOf (record: Pick<Transfer, 'dest'>, relative: string): string {
  return relative === '' ? record.dest : join(record.dest, ...relative.split('/'))
}

function describe (err: unknown): { code: string, message: string } {
  const code = (err as NodeJS.ErrnoException).code
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return { code: 'DISK_FULL', message: `the disk is full (${(err as Error).message}); the fetch goes on by itself once there is room (or \`kith resume\`)` }
  }
  const database = databaseFailure(err)
  if (database !== undefined) {
    return /No space left|quota exceeded/i.test(database.message)
      ? { code: 'DISK_FULL', message: `the disk holding kith's database is full (${database.message}); the fetch goes on by itself once there is room (or \`kith resume\`)` }
      : { code: 'INTERNAL', message: `kith's database could not be written (${database.message}); the fetch stopped. See the daemon's log` }
  }
  const error = asKithError(err)
  return { code: error.code, message: error.message }
}

/** The LevelDB error (code LEVEL_*) behind `err`, if one is: a write the database refused. */
function databaseFailure (err: unknown): Error | undefined {
  for (let at = err, depth = 0; at instanceof Error && depth < 4; at = at.cause, depth++) {
    const code = (at as NodeJS.ErrnoException).code
    if (typeof code === 'string' && code.startsWith('LEVEL_')) return at
  }
  return undefined
}

/** Exponentially smoothed rate over progress samples (times from performance.now). */
class RateMeter {
  private lastBytes = -1
  private lastTime = 0
  private rate = 0

  sample (bytes: number, now: number): number {
    if (this.lastBytes >= 0 && now > this.lastTime) {
      const instant = (bytes - this.lastBytes) * 1000 / (now - this.lastTime)
      this.rate = this.rate === 0 ? instant : this.rate * 0.7 + instant * 0.3
    }
    this.lastBytes = bytes
    this.lastTime = now
    return this.rate
  }
}
