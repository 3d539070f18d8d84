/**
 * Scheduled backups (docs/backup.md, "Run and restore"): `kith backup
 * schedule PATH... --every 1h` makes a run of those paths every hour, kept in
 * the home's LevelDB so the daemon goes on after a restart. A schedule due
 * while the daemon was down runs once at start, not once per missed period.
 * A run that finds another run, restore or forget under way is tried again a
 * minute later; its last outcome is kept (`kith backup schedules`).
 */
import { randomBytes } from 'node:crypto'
import { z } from 'zod'
import { KithError, asKithError } from '../../errors.ts'
import { sublevel, type Database, type Sublevel } from '../../peer/database.ts'

/** at most this many schedules */
export const MAX_SCHEDULES = 64
/** the shortest period */
export const MIN_EVERY_MS = 60_000
const BUSY_RETRY_MS = 60_000
const MAX_SLEEP_MS = 3600_000

export interface Schedule {
  id: string
  paths: string[]
  everyMs: number
  to: string[] | null
  replicas: number | null
  name: string | null
  /** ms since the epoch */
  next: number
  last: { at: number, ok: boolean, job: string | null, error: { code: string, message: string } | null } | null
}

export const scheduleRequest = z.object({
  paths: z.array(z.string().min(1).max(4096)).min(1).max(256),
  everyMs: z.number().int().min(MIN_EVERY_MS).max(366 * 24 * 3600 * 1000),
  to: z.array(z.string().min(1).max(128)).max(64).optional(),
  replicas: z.number().int().min(1).max(64).optional(),
  name: z.string().max(255).optional()
}).strict()

export type ScheduleRequest = z.infer<typeof scheduleRequest>

/** What schedules need of BackupService: starting a run (it checks the paths, hosts and replicas). */
export interface Runner {
  run: (req: { paths: string[], to?: string[], replicas?: number, name?: string }) => { id: string }
}

export class BackupSchedules {
  private readonly level: Sublevel<Schedule>
  private readonly runner: Runner
  private timer: NodeJS.Timeout | undefined
  private stopped = false

  constructor (db: Database, runner: Runner) {
    this.level = sublevel<Schedule>(db, 'backup-schedules')
    this.runner = runner
  }

  async list (): Promise<Schedule[]> {
    return await this.level.values().all()
  }

  /** Adds a schedule; its first run is one period from now. */
  async add (req: ScheduleRequest): Promise<Schedule> {
    if ((await this.list()).length >= MAX_SCHEDULES) throw new KithError('BAD_REQUEST', `at most ${MAX_SCHEDULES} schedules; remove one first (kith backup unschedule ID)`)
    const schedule: Schedule = {
      id: randomBytes(4).toString('hex'),
      paths: req.paths,
      everyMs: req.everyMs,
      to: req.to ?? null,
      replicas: req.replicas ?? null,
      name: req.name ?? null,
      next: Date.now() + req.everyMs,
      last: null
    }
    await this.level.put(schedule.id, schedule)
    this.wake()
    return schedule
  }

  async remove (id: string): Promise<Schedule> {
    const schedule = await this.level.get(id)
    if (schedule == null) throw new KithError('NOT_FOUND', `no backup schedule ${JSON.stringify(id)}; kith backup schedules lists them`)
    await this.level.del(id)
    return schedule
  }

  start (): void {
    this.wake()
  }

  stop (): void {
    this.stopped = true
    clearTimeout(this.timer)
  }

  /** Runs what is due, then sleeps until the next one (at most an hour: the clock may move). */
  private wake (): void {
    clearTimeout(this.timer)
    if (this.stopped) return
    this.tick().catch(() => MAX_SLEEP_MS).then(wait => {
      if (this.stopped) return
      this.timer = setTimeout(() => { this.wake() }, Math.max(1000, Math.min(wait, MAX_SLEEP_MS)))
      this.timer.unref()
    }, () => {})
  }

  private async tick (): Promise<number> {
    const now = Date.now()
    let soonest = now + MAX_SLEEP_MS
    for (const s of await this.list()) {
      if (s.next > now) {
        soonest = Math.min(soonest, s.next)
        continue
      }
      let next = s.next + s.everyMs
      // missed periods (the daemon was down) are not made up: the next one is from now
      if (next <= now) next = now + s.everyMs
      let last: Schedule['last']
      try {
        const job = this.runner.run({ paths: s.paths, ...(s.to != null ? { to: s.to } : {}), ...(s.replicas != null ? { replicas: s.replicas } : {}), ...(s.name != null ? { name: s.name } : {}) })
        last = { at: now, ok: true, job: job.id, error: null }
      } catch (err) {
        const e = asKithError(err)
        if (e.code === 'BACKUP_BUSY') next = now + BUSY_RETRY_MS
        last = { at: now, ok: false, job: null, error: { code: e.code, message: e.message } }
      }
      // the schedule may have been removed meanwhile
      if (await this.level.get(s.id) != null) await this.level.put(s.id, { ...s, next, last })
      soonest = Math.min(soonest, next)
    }
    return soonest - Date.now()
  }
}
