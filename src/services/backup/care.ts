/**
 * Looking after my backups once they are placed (docs/backup.md, "Audits",
 * "Repair", "Recovery"): audits every host on a schedule (every
 * `auditEveryMs`, 24 h by default, jittered by a tenth so friends' audits
 * don't line up), repairs what audits or silence show missing, and pushes the
 * recovery record to every host after each run and each audit pass (so a
 * forget or a new friend reaches it within a day); and keeps the scheduled
 * runs (schedule.ts).
 *
 * It works on the owner index that BackupService keeps, under the service's
 * lock (a run and a repair must not both change a blob's hosts), and through
 * the service's host clients (the engine's scheduler, class `backup`).
 */
import { asKithError } from '../../errors.ts'
import type { Database } from '../../peer/database.ts'
import type { Identity } from '../../peer/identity.ts'
import type { FriendBook } from '../../trust/friends.ts'
import { auditHost, type AuditOutcome } from './audit.ts'
import { auditTrail, type TrailItem, type TrailQuery } from './audit-trail.ts'
import { CareBook, type AuditTrigger } from './care-book.ts'
import { health, type Health } from './health.ts'
import { deriveBackupKey } from './keys.ts'
import type { LevelOwnerIndex } from './owner-index.ts'
import type { BackupClient } from './protocol.ts'
import { nextRecoverySeq, sealRecovery, type RecoveryContent } from './recovery.ts'
import { repair, DEFAULT_REPLICAS, DEFAULT_UNREACHABLE_MS, type RepairReport } from './repair.ts'
import { BackupSchedules, type Runner } from './schedule.ts'

export const DEFAULT_AUDIT_EVERY_MS = 24 * 3600 * 1000
/** how long a host gets to answer an audit */
const AUDIT_TIMEOUT_MS = 60_000
/** the scheduler looks again at least this often (a host added, a clock moved) */
const MAX_SLEEP_MS = 3600_000
/** and at most this often: a second, or a tenth of a shorter period (config.json's is an hour at least; a test's is shorter) */
const MIN_SLEEP_MS = 1000

/** What care needs of BackupService. */
export interface CareService {
  readonly index: LevelOwnerIndex
  client: (peer: string) => BackupClient
  /** runs `work` when no run, restore or forget is under way, and keeps them out meanwhile */
  exclusive: <T>(work: () => Promise<T>) => Promise<T>
  on: (event: 'event', listener: (evt: { type: string, job?: { op: string, state: string } }) => void) => unknown
  /** starts a run (scheduled backups) */
  run: Runner['run']
}

export interface BackupCareInit {
  db: Database
  identity: Identity
  friends: FriendBook
  service: CareService
  /** the name friends see (goes in the recovery record) */
  name: () => string
  /** @default DEFAULT_AUDIT_EVERY_MS (24 h); 0 turns scheduled audits off */
  auditEveryMs?: number
  /** @default DEFAULT_UNREACHABLE_MS (7 days) */
  unreachableAfterMs?: number
  /** @default DEFAULT_REPLICAS (2) */
  replicas?: number
}

export interface AuditReport {
  audits: AuditOutcome[]
  repair: RepairReport | null
}

export interface PushReport {
  seq: number
  bytes: number
  hosts: Array<{ peer: string, ok: boolean, error: { code: string, message: string } | null }>
}

export class BackupCare {
  readonly book: CareBook
  /** `kith backup schedule`: runs on a period, kept across restarts */
  readonly schedules: BackupSchedules
  private readonly init: BackupCareInit
  private readonly controller = new AbortController()
  private timer: NodeJS.Timeout | undefined
  private pushing: Promise<unknown> = Promise.resolve()
  private auditing: Promise<unknown> = Promise.resolve()

  constructor (init: BackupCareInit) {
    this.init = init
    this.book = new CareBook(init.db)
    this.schedules = new BackupSchedules(init.db, init.service)
  }

  start (): void {
    // a finished run or a forget changed the index: hosts should hold a record of it at once
    // (a record older than a forget names blobs the hosts no longer keep)
    this.init.service.on('event', evt => {
      const changed = (evt.type === 'backup:job' && evt.job?.op === 'run' && evt.job.state === 'done') || evt.type === 'backup:forgotten'
      if (changed) void this.pushRecovery().catch(() => {})
    })
    this.schedule()
    this.schedules.start()
  }

  stop (): void {
    this.schedules.stop()
    this.controller.abort()
    clearTimeout(this.timer)
  }

  /** Friends who grant me backup now: where repair places blobs and recovery records go. */
  hosts (): string[] {
    return this.init.friends.list().filter(f => f.state === 'active' && f.grantsFromThem.includes('backup')).map(f => f.peerId)
  }

  /** Hosts to audit: those granting me backup, and any other my index places blobs on. */
  private async auditees (): Promise<string[]> {
    const all = new Set(this.hosts())
    for await (const [, r] of this.init.service.index.blobs()) for (const h of r.hosts) all.add(h)
    return [...all]
  }

  /**
   * Audits one host (by name or peer id) or all of them now, then repairs what
   * the audits found and pushes a fresh recovery record.
   */
  async audit (name?: string): Promise<AuditReport> {
    const peers = name != null ? [this.init.friends.resolve(name).peerId] : await this.auditees()
    return await this.auditPeers(peers, 'request')
  }

  /** One audit pass at a time; a scheduled pass that finds the service busy leaves repair to the next one. */
  private async auditPeers (peers: string[], by: AuditTrigger): Promise<AuditReport> {
    const run = this.auditing.then(async () => {
      // hosts at once: one that is offline costs its timeout, not everyone's
      const audits = await Promise.all(peers.map(async peer => {
        const signal = AbortSignal.any([this.controller.signal, AbortSignal.timeout(AUDIT_TIMEOUT_MS)])
        return await auditHost(this.init.service.client(peer), this.init.service.index, signal)
      }))
      for (const outcome of audits) await this.book.recordAudit(outcome, by)
      let report: RepairReport | null = null
      try {
        report = await this.repair()
      } catch (err) {
        if (by === 'request' || asKithError(err).code !== 'BACKUP_BUSY') throw err
      }
      // hosts get a fresh record after each pass: it also carries what changed without a run (a forget, new friends)
      void this.pushRecovery().catch(() => {})
      return { audits, repair: report }
    })
    this.auditing = run.catch(() => {})
    return await run
  }

  /** Re-places what failing, unreachable or losing hosts held (the audit pass then pushes a new record). */
  async repair (): Promise<RepairReport> {
    return await this.init.service.exclusive(async () => await repair({
      index: this.init.service.index,
      care: this.book,
      client: peer => this.init.service.client(peer),
      hosts: () => this.hosts(),
      replicas: this.init.replicas ?? DEFAULT_REPLICAS,
      unreachableAfterMs: this.init.unreachableAfterMs ?? DEFAULT_UNREACHABLE_MS,
      signal: this.controller.signal
    }))
  }

  /** `kith backup audits`: the trail, newest first. */
  async trail (query: TrailQuery): Promise<TrailItem[]> {
    return await auditTrail(query, this.book, this.init.friends)
  }

  async health (): Promise<Health> {
    return await health({
      index: this.init.service.index,
      care: this.book,
      friends: this.init.friends,
      hosts: this.hosts(),
      replicas: this.init.replicas ?? DEFAULT_REPLICAS,
      unreachableAfterMs: this.init.unreachableAfterMs ?? DEFAULT_UNREACHABLE_MS,
      auditEveryMs: this.init.auditEveryMs ?? DEFAULT_AUDIT_EVERY_MS
    })
  }

  /** What the recovery record holds now. */
  async content (): Promise<RecoveryContent> {
    const index = this.init.service.index
    const blobs: RecoveryContent['blobs'] = []
    for await (const entry of index.blobs()) blobs.push(entry)
    const snapshots: RecoveryContent['snapshots'] = []
    for (const record of await index.snapshots()) snapshots.push({ record, needs: [...await index.snapshotBlobs(record.seq)] })
    return { created: Date.now(), name: this.init.name(), friends: this.init.friends.list(), blobs, snapshots }
  }

  /** Seals a new recovery record and gives it to every host; one push at a time, in order. */
  async pushRecovery (): Promise<PushReport> {
    const run = this.pushing.then(async () => {
      const { identity } = this.init
      const seq = nextRecoverySeq(await this.book.recoverySeq())
      const key = deriveBackupKey(identity.secretKey.subarray(0, 32), 'recovery')
      const record = sealRecovery(await this.content(), { identity, key, seq })
      await this.book.setRecoverySeq(seq)
      const hosts = await Promise.all(this.hosts().map(async peer => {
        try {
          await this.init.service.client(peer).putRecord(record, this.controller.signal)
          return { peer, ok: true, error: null }
        } catch (err) {
          const e = asKithError(err)
          return { peer, ok: false, error: { code: e.code, message: e.message } }
        }
      }))
      return { seq, bytes: record.length, hosts }
    })
    this.pushing = run.catch(() => {})
    return await run
  }

  /** Sleeps until the next host is due an audit (jittered), audits the due ones, and again. */
  private schedule (): void {
    const every = this.init.auditEveryMs ?? DEFAULT_AUDIT_EVERY_MS
    if (every <= 0 || this.controller.signal.aborted) return
    const least = Math.min(MIN_SLEEP_MS, every / 10)
    const plan = async (): Promise<number> => {
      const cares = await this.book.all()
      let soonest = Date.now() + MAX_SLEEP_MS
      const due: string[] = []
      for (const peer of await this.auditees()) {
        let care = cares.get(peer)
        // a host never audited is first audited a period after I first saw it (its blobs were just placed)
        if (care == null) await this.book.put(peer, care = await this.book.host(peer))
        const last = care.trail.at(-1)?.at ?? care.firstSeen
        // jitter: each host's period is stretched or shrunk by up to a tenth, differently each time
        const at = last + every * (0.9 + 0.2 * Math.random())
        if (at <= Date.now()) due.push(peer)
        else soonest = Math.min(soonest, at)
      }
      if (due.length > 0 && !this.controller.signal.aborted) {
        await this.auditPeers(due, 'schedule').catch(() => {})
        // those just audited are due again a period from now (at the earliest, a tenth short of it), not an hour later
        soonest = Math.min(soonest, Date.now() + every * 0.9)
      }
      return Math.max(least, soonest - Date.now())
    }
    const tick = (): void => {
      plan().catch(() => MAX_SLEEP_MS).then(wait => {
        if (this.controller.signal.aborted) return
        this.timer = setTimeout(tick, Math.min(wait, MAX_SLEEP_MS))
        this.timer.unref()
      }, () => {})
    }
    this.timer = setTimeout(tick, least)
    this.timer.unref()
  }
}
