/**
 * The owner's side of backups (docs/backup.md): snapshots of local paths
 * sealed and placed on friends who granted me `backup`, listed, browsed,
 * restored and forgotten. The daemon starts it after the transfer engine;
 * every byte goes through the engine's bandwidth scheduler as class `backup`
 * (the host client, protocol.ts, takes the flows). The owner keeps no blob in
 * the engine's store (its index is all it keeps locally), so it declares no
 * live chunks.
 *
 * A run or a restore is a job: it starts at once, reports progress as
 * `backup:job` events (and GET /v1/backup/jobs/ID), and ends done or failed.
 * One job or forget at a time (BACKUP_BUSY): they share the index.
 */
import { EventEmitter } from 'node:events'
import { randomBytes } from 'node:crypto'
import { KithError, asKithError } from '../../errors.ts'
import type { Database } from '../../peer/database.ts'
import type { Identity } from '../../peer/identity.ts'
import type { KithLibp2p } from '../../peer/node.ts'
import type { FriendBook } from '../../trust/friends.ts'
import type { TransferEngine } from '../engine/index.ts'
import { FileCache } from './file-cache.ts'
import { forgetSnapshots, type ForgetOptions, type ForgetResult } from './forget.ts'
import { deriveBackupKeys, type BackupKeys } from './keys.ts'
import { LevelOwnerIndex, type SnapshotRecord } from './owner-index.ts'
import type { BackupParts } from './parts.ts'
import { backupClient, type BackupClient } from './protocol.ts'
import { findPath, loadSnapshot, loadTree, restoreBackup, type RestoreResult } from './restore.ts'
import { runBackup, type RunResult } from './run.ts'
import { checkLabel } from './snapshot.ts'
import type { EntryType } from './tree.ts'

/** Replicas of each blob unless asked otherwise. */
export const DEFAULT_REPLICAS = 2
/** Finished jobs remembered for GET /v1/backup/jobs. */
const JOBS_KEPT = 20
/** Weight of the newest sample in the smoothed rate. */
const RATE_SMOOTHING = 0.3

export interface BackupServiceInit {
  db: Database
  identity: Identity
  libp2p: KithLibp2p
  friends: FriendBook
  engine: TransferEngine
}

export interface RunRequest {
  /** absolute paths */
  paths: string[]
  /** friends' names or peer ids @default every friend who granted me backup */
  to?: string[]
  /** @default DEFAULT_REPLICAS, or fewer when fewer hosts were named */
  replicas?: number
  name?: string
}

export interface RestoreRequest {
  snapshot: string
  path?: string
  /** absolute folder */
  out: string
}

export interface BackupJob {
  id: string
  op: 'run' | 'restore'
  state: 'running' | 'done' | 'failed'
  /** ms since the epoch */
  started: number
  /** plaintext bytes read (run) or written (restore), of totalBytes */
  doneBytes: number
  totalBytes: number
  files: number
  /** sealed bytes sent to hosts, every copy counted (run) */
  sentBytes: number
  /** bytes per second, smoothed */
  rate: number
  /** seconds left at that rate, null while unknown */
  eta: number | null
  error: { code: string, message: string } | null
  result: RunResult | RestoreResult | null
}

/** A job's progress or end; a snapshot made (OWNER-CARE's audits and recovery record follow it). */
export type BackupEvent = { type: 'backup:job', job: BackupJob } | { type: 'backup:snapshot', snapshot: SnapshotRecord } | { type: 'backup:forgotten', result: ForgetResult }

export interface LsEntry {
  name: string
  type: EntryType
  mode: number
  /** ms since the epoch */
  mtime: number
  size: number | null
  target: string | null
}

export class BackupService extends EventEmitter<{ event: [BackupEvent] }> {
  private readonly init: BackupServiceInit
  private readonly parts: BackupParts
  private readonly clients = new Map<string, BackupClient>()
  private readonly jobs = new Map<string, BackupJob>()
  private readonly controller = new AbortController()
  private busy: Promise<unknown> | null = null

  private constructor (init: BackupServiceInit) {
    super()
    this.init = init
    const { identity } = init
    this.parts = {
      owner: identity.peerId.toString(),
      secretKey: identity.secretKey,
      publicKey: identity.publicKey,
      keys: deriveBackupKeys(identity.secretKey.subarray(0, 32)),
      index: LevelOwnerIndex.open(init.db),
      files: new FileCache(init.db),
      host: peer => this.client(peer)
    }
  }

  static async start (init: BackupServiceInit): Promise<BackupService> {
    return new BackupService(init)
  }

  /** the owner index (audits, repair and health read it) */
  get index (): LevelOwnerIndex { return this.parts.index }

  get keys (): BackupKeys { return this.parts.keys }

  /** the client for one host, made once */
  client (peer: string): BackupClient {
    let client = this.clients.get(peer)
    if (client == null) {
      client = backupClient({ libp2p: this.init.libp2p, bandwidth: this.init.engine.bandwidth, peer, identity: this.init.identity })
      this.clients.set(peer, client)
    }
    return client
  }

  /** Peer ids of the friends who granted me backup, or of those named (each must have). */
  hosts (names?: string[]): string[] {
    const { friends } = this.init
    if (names == null || names.length === 0) {
      const all = friends.list().filter(f => f.state === 'active' && f.grantsFromThem.includes('backup')).map(f => f.peerId)
      if (all.length === 0) throw new KithError('BACKUP_NO_HOSTS', 'no friend has granted you backup yet; ask one to run `kith friend grant YOURNAME backup --quota 20GB`')
      return all
    }
    return [...new Set(names.map(name => {
      const friend = friends.resolve(name)
      if (friend.state !== 'active' || !friend.grantsFromThem.includes('backup')) throw new KithError('BACKUP_NO_HOSTS', `${friend.label} has not granted you backup; ask them to run \`kith friend grant YOURNAME backup\``)
      return friend.peerId
    }))]
  }

  run (req: RunRequest): BackupJob {
    const hosts = this.hosts(req.to)
    const replicas = req.replicas ?? Math.min(DEFAULT_REPLICAS, hosts.length)
    if (!Number.isInteger(replicas) || replicas < 1) throw new KithError('BAD_REQUEST', `--replicas is a whole number of copies, at least 1; got ${String(replicas)}`)
    if (replicas > hosts.length) {
      throw new KithError('BACKUP_NO_HOSTS', `${replicas} replicas need ${replicas} hosts, and ${hosts.length === 1 ? 'one friend has' : `${hosts.length} friends have`} granted you backup; ask for fewer --replicas, or more friends`)
    }
    const label = req.name != null ? checkLabel(req.name) : null
    if (req.paths.length === 0) throw new KithError('BAD_REQUEST', 'name at least one path to back up')
    return this.job('run', async (signal, progress) => {
      const result = await runBackup(this.parts, { paths: req.paths, hosts, replicas, label, signal, onProgress: progress })
      this.emit('event', { type: 'backup:snapshot', snapshot: result.snapshot })
      return result
    })
  }

  restore (req: RestoreRequest): BackupJob {
    return this.job('restore', async (signal, progress) => await restoreBackup(this.parts, {
      snapshot: req.snapshot,
      out: req.out,
      ...(req.path != null ? { path: req.path } : {}),
      signal,
      onProgress: progress
    }))
  }

  async forget (options: ForgetOptions): Promise<ForgetResult> {
    const result = await this.exclusive(async () => await forgetSnapshots(this.parts, options, this.controller.signal))
    if (result.forgotten.length > 0) this.emit('event', { type: 'backup:forgotten', result })
    return result
  }

  async list (): Promise<SnapshotRecord[]> {
    return await this.parts.index.snapshots()
  }

  /** A snapshot's root, or a folder in it (a file or link gives itself). */
  async ls (ref: string, path?: string): Promise<{ snapshot: SnapshotRecord, path: string, entries: LsEntry[] }> {
    const signal = this.controller.signal
    const snapshot = await this.parts.index.snapshot(ref)
    const root = await loadTree(this.parts, (await loadSnapshot(this.parts, snapshot, signal)).tree, signal)
    let entries = root
    const clean = (path ?? '').split('/').filter(n => n !== '').join('/')
    if (clean !== '') {
      const entry = await findPath(this.parts, root, clean, signal)
      entries = entry.type === 'dir' ? await loadTree(this.parts, entry.tree, signal) : [entry]
    }
    return {
      snapshot,
      path: clean,
      entries: entries.map(e => ({
        name: e.name,
        type: e.type,
        mode: e.mode,
        mtime: Math.floor(e.mtime / 1000),
        size: e.type === 'file' ? e.size : null,
        target: e.type === 'symlink' ? e.target : null
      }))
    }
  }

  getJob (id: string): BackupJob {
    const job = this.jobs.get(id)
    if (job == null) throw new KithError('NOT_FOUND', `no backup job ${id}; jobs since the daemon started are listed by GET /v1/backup/jobs`)
    return job
  }

  listJobs (): BackupJob[] {
    return [...this.jobs.values()]
  }

  async stop (): Promise<void> {
    this.controller.abort()
    await this.busy?.catch(() => {})
  }

  /** Runs `work` alone among runs, restores, forgets and repairs (they all change the index); BACKUP_BUSY if one is under way. */
  async exclusive<T> (work: () => Promise<T>): Promise<T> {
    if (this.busy != null) throw new KithError('BACKUP_BUSY', 'a backup run, restore or forget is under way; wait for it (kith backup jobs), then try again')
    const running = work()
    this.busy = running
    try {
      return await running
    } finally {
      this.busy = null
    }
  }

  private job (op: BackupJob['op'], work: (signal: AbortSignal, progress: (p: { doneBytes: number, totalBytes: number, files: number, sentBytes?: number }) => void) => Promise<RunResult | RestoreResult>): BackupJob {
    if (this.busy != null) throw new KithError('BACKUP_BUSY', 'a backup run, restore or forget is under way; wait for it (kith backup jobs), then try again')
    const job: BackupJob = { id: randomBytes(4).toString('hex'), op, state: 'running', started: Date.now(), doneBytes: 0, totalBytes: 0, files: 0, sentBytes: 0, rate: 0, eta: null, error: null, result: null }
    this.jobs.set(job.id, job)
    for (const old of [...this.jobs.keys()].slice(0, Math.max(0, this.jobs.size - JOBS_KEPT))) this.jobs.delete(old)
    let last = { at: performance.now(), bytes: 0 }
    const progress = (p: { doneBytes: number, totalBytes: number, files: number, sentBytes?: number }): void => {
      const now = performance.now()
      const elapsed = (now - last.at) / 1000
      if (elapsed > 0) {
        const sample = (p.doneBytes - last.bytes) / elapsed
        job.rate = job.rate === 0 ? sample : RATE_SMOOTHING * sample + (1 - RATE_SMOOTHING) * job.rate
      }
      last = { at: now, bytes: p.doneBytes }
      Object.assign(job, { doneBytes: p.doneBytes, totalBytes: p.totalBytes, files: p.files, sentBytes: p.sentBytes ?? 0 })
      job.eta = job.rate > 0 ? Math.max(0, (job.totalBytes - job.doneBytes) / job.rate) : null
      this.emit('event', { type: 'backup:job', job: { ...job } })
    }
    this.exclusive(async () => await work(this.controller.signal, progress)).then(result => {
      Object.assign(job, { state: 'done', result, eta: 0 })
    }, err => {
      const error = asKithError(err)
      Object.assign(job, { state: 'failed', error: { code: error.code, message: error.message } })
    }).finally(() => {
      this.emit('event', { type: 'backup:job', job: { ...job } })
    })
    this.emit('event', { type: 'backup:job', job: { ...job } })
    return { ...job }
  }
}
