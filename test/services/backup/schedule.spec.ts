import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { KithError } from '../../../src/errors.ts'
import { openDatabase, sublevel, type Database } from '../../../src/peer/database.ts'
import { BackupSchedules, type Runner, type Schedule } from '../../../src/services/backup/schedule.ts'

/**
 * Scheduled backups in a real LevelDB, reopened as a daemon restart would.
 * The runner stands in for BackupService.run (which needs hosts): it is the
 * one thing a schedule asks of it, so the test records the calls.
 */

const HOUR = 3600_000

describe('backup schedules (a real LevelDB)', () => {
  let dir: string
  let db: Database
  let runs: Array<Parameters<Runner['run']>[0]>
  let answer: () => { id: string }
  const runner: Runner = { run: req => { runs.push(req); return answer() } }
  /** Makes `id` due as if the daemon had been down `periods` periods past it. */
  const overdue = async (id: string, periods: number): Promise<void> => {
    const level = sublevel<Schedule>(db, 'backup-schedules')
    const s = await level.get(id)
    await level.put(id, { ...s!, next: Date.now() - periods * s!.everyMs })
  }

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kith-schedule-'))
    db = await openDatabase(join(dir, 'db'))
    runs = []
    answer = () => ({ id: 'job00001' })
  })
  afterEach(async () => {
    await db.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('keeps a schedule across a restart; one missed while the daemon was down runs once at start, the next a period later', async () => {
    const first = new BackupSchedules(db, runner)
    first.start()
    const added = await first.add({ paths: ['/data'], everyMs: HOUR, name: 'nightly', replicas: 3 })
    expect(added.next - Date.now()).toBeGreaterThan(HOUR - 60_000) // the first run one period from now
    first.stop()
    await db.close()
    db = await openDatabase(join(dir, 'db'))
    await overdue(added.id, 3)
    const again = new BackupSchedules(db, runner)
    const before = Date.now()
    again.start()
    await vi.waitFor(async () => { expect((await again.list())[0]?.last).not.toBeNull() }, { timeout: 10_000 })
    again.stop()
    expect(runs).toEqual([{ paths: ['/data'], replicas: 3, name: 'nightly' }]) // three periods missed: one run
    const [kept] = await again.list()
    expect(kept).toMatchObject({ id: added.id, last: { ok: true, job: 'job00001', error: null } })
    expect(kept!.next).toBeGreaterThanOrEqual(before + HOUR)
  })

  it('tries a run refused as busy again a minute later, keeping why; an unknown id is NOT_FOUND', async () => {
    answer = () => { throw new KithError('BACKUP_BUSY', 'a restore is under way') }
    const schedules = new BackupSchedules(db, runner)
    const added = await schedules.add({ paths: ['/data'], everyMs: HOUR })
    await overdue(added.id, 0)
    schedules.start()
    await vi.waitFor(async () => { expect((await schedules.list())[0]?.last).not.toBeNull() }, { timeout: 10_000 })
    schedules.stop()
    const [kept] = await schedules.list()
    expect(kept!.last).toMatchObject({ ok: false, job: null, error: { code: 'BACKUP_BUSY' } })
    expect(kept!.next - kept!.last!.at).toBe(60_000)
    await expect(schedules.remove('nope')).rejects.toMatchObject({ code: 'NOT_FOUND' })
    expect((await schedules.remove(added.id)).id).toBe(added.id)
    expect(await schedules.list()).toEqual([])
  })
})
