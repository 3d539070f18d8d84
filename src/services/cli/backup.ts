import { resolve } from 'node:path'
import { Command } from 'commander'
import { isErrorCode, KithError } from '../../errors.ts'
import type { ApiClient } from '../api/client.ts'
import type { BackupJob, LsEntry } from '../backup/index.ts'
import type { ForgetResult } from '../backup/forget.ts'
import type { SnapshotRecord } from '../backup/owner-index.ts'
import type { RestoreResult } from '../backup/restore.ts'
import type { RunResult } from '../backup/run.ts'
import { bytes, duration, table, terminalJson, terminalText } from './format.ts'

/**
 * `kith backup run|list|ls|restore|forget`: the owner's side of backups
 * (docs/backup.md). run and restore follow the daemon's `backup:job` events
 * with a progress bar (speed, ETA) on a terminal, or JSON lines with --json.
 * Other backup commands (hosted, audit, health...) are added to the command
 * this returns.
 */
type Print = (json: boolean | undefined, value: unknown, text: () => string) => void
type Client = (cmd: Command) => Promise<ApiClient>

function whole (text: string, flag: string): number {
  if (!/^\d+$/.test(text)) throw new KithError('USAGE', `${flag} wants a whole number; got ${JSON.stringify(text)}`)
  return Number(text)
}

async function follow (api: ApiClient, job: BackupJob, json: boolean, events: AsyncGenerator<{ type: string, [key: string]: unknown }>, controller: AbortController): Promise<BackupJob> {
  const cliProgress = !json && process.stderr.isTTY ? (await import('cli-progress')).default : null
  const bar = cliProgress != null
    ? new cliProgress.SingleBar({ format: '{bar} {percentage}% | {done} / {total} | {files} files | {speed} | ETA {eta_h}', stream: process.stderr, hideCursor: true }, cliProgress.Presets.shades_classic)
    : null
  let started = false
  const show = (j: BackupJob): void => {
    if (json) console.log(terminalJson({ id: j.id, op: j.op, state: j.state, doneBytes: j.doneBytes, totalBytes: j.totalBytes, files: j.files, sentBytes: j.sentBytes, rate: Math.round(j.rate), eta: j.eta }))
    if (bar == null) return
    const payload = { done: bytes(j.doneBytes), total: bytes(j.totalBytes), files: j.files, speed: `${bytes(j.rate)}/s`, eta_h: j.eta != null ? duration(j.eta) : '?' }
    if (!started || bar.getTotal() !== Math.max(1, j.totalBytes)) { bar.start(Math.max(1, j.totalBytes), j.doneBytes, payload); started = true }
    bar.update(j.doneBytes, payload)
  }
  try {
    let current = (await api.get<{ job: BackupJob }>(`/v1/backup/jobs/${job.id}`)).job
    show(current)
    if (current.state !== 'running') return current
    for await (const evt of events) {
      const next = (evt as { job?: BackupJob }).job
      if (evt.type !== 'backup:job' || next?.id !== job.id) continue
      current = next
      show(current)
      if (current.state !== 'running') break
    }
    return current
  } finally {
    bar?.stop()
    controller.abort()
  }
}

/** Starts a job, follows it to its end, throws its error. */
async function runJob (api: ApiClient, path: string, request: unknown, json: boolean): Promise<BackupJob> {
  const controller = new AbortController()
  const events = await api.events(controller.signal) // subscribe first, so no event is missed
  const { job } = await api.call<{ job: BackupJob }>('POST', path, request).catch(err => { controller.abort(); throw err })
  const end = await follow(api, job, json, events, controller)
  if (end.state !== 'done') {
    const code = end.error?.code
    throw new KithError(isErrorCode(code) ? code : 'INTERNAL', end.error?.message ?? `backup ${end.op} ${end.id} ended ${end.state}`)
  }
  return end
}

function snapshotRows (snapshots: SnapshotRecord[]): string {
  return table(['#', 'ID', 'TAKEN', 'NAME', 'FILES', 'SIZE', 'PATHS'], snapshots.map(s => [
    String(s.seq), s.id.slice(0, 12), new Date(s.created).toISOString().replace('T', ' ').slice(0, 19), s.label ?? '-', String(s.stats.files), bytes(s.stats.bytes), s.paths.join(' ')
  ]))
}

function modeText (e: LsEntry): string {
  const kind = e.type === 'dir' ? 'd' : e.type === 'symlink' ? 'l' : '-'
  return kind + [6, 3, 0].map(shift => { const m = (e.mode >> shift) & 7; return (m & 4 ? 'r' : '-') + (m & 2 ? 'w' : '-') + (m & 1 ? 'x' : '-') }).join('')
}

export function backupCommand (program: Command, client: Client, print: Print): Command {
  // other backup commands may have made it already (they add to whichever comes first)
  const backup = program.commands.find(c => c.name() === 'backup') ?? program.command('backup')
  backup.description('encrypted backups on friends who granted you backup (docs/backup.md)')

  backup.command('run')
    .description('back up files and folders as a new snapshot: only what changed since the last one is sent')
    .argument('<path...>', 'files and folders')
    .option('--to <name...>', 'friends to place it on (default: every friend who granted you backup)')
    .option('--replicas <n>', 'copies of each piece, on different friends (default: 2, or 1 when one friend hosts)')
    .option('--name <label>', 'a name for the snapshot')
    .option('--json', 'print progress and the result as JSON lines')
    .action(async (paths: string[], opts: { to?: string[], replicas?: string, name?: string, json?: boolean }, cmd: Command) => {
      const end = await runJob(await client(cmd), '/v1/backup/runs', {
        paths: paths.map(p => resolve(p)),
        ...(opts.replicas != null ? { replicas: whole(opts.replicas, '--replicas') } : {}),
        ...(opts.to != null ? { to: opts.to } : {}),
        ...(opts.name != null ? { name: opts.name } : {})
      }, opts.json === true)
      const r = end.result as RunResult
      // with --json, the result is one more JSON line after the progress lines
      if (opts.json === true) { console.log(terminalJson({ result: r })); return }
      print(false, { result: r }, () => [
        `snapshot ${r.snapshot.seq} (${r.snapshot.id.slice(0, 12)}): ${r.snapshot.stats.files} files, ${bytes(r.snapshot.stats.bytes)}`,
        `${r.newBlobs} of ${r.blobs} pieces were new; read ${bytes(r.readBytes)} (unchanged files are not read again), sent ${bytes(r.sentBytes)}`,
        ...r.skipped.map(s => `skipped ${s.path}: ${s.reason}`)
      ].join('\n'))
    })

  backup.command('list')
    .description('your snapshots')
    .option('--json', 'print as JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const result = await (await client(cmd)).get<{ snapshots: SnapshotRecord[] }>('/v1/backup/snapshots')
      print(opts.json, result, () => snapshotRows(result.snapshots) || 'no snapshots yet: `kith backup run PATH`')
    })

  backup.command('ls')
    .description('what a snapshot holds (fetched from your hosts)')
    .argument('<snapshot>', 'snapshot number, id (or its start), or "latest"')
    .argument('[path]', 'a folder in it')
    .option('--json', 'print as JSON')
    .action(async (snapshot: string, path: string | undefined, opts: { json?: boolean }, cmd: Command) => {
      const query = path != null ? `?path=${encodeURIComponent(path)}` : ''
      const result = await (await client(cmd)).get<{ path: string, entries: LsEntry[] }>(`/v1/backup/snapshots/${encodeURIComponent(snapshot)}/ls${query}`)
      print(opts.json, result, () => terminalText(table(['MODE', 'SIZE', 'MODIFIED', 'NAME'], result.entries.map(e => [
        modeText(e), e.size != null ? bytes(e.size) : '-', new Date(e.mtime).toISOString().replace('T', ' ').slice(0, 19), e.name + (e.type === 'dir' ? '/' : '') + (e.target != null ? ` -> ${e.target}` : '')
      ])) || '(empty folder)'))
    })

  backup.command('restore')
    .description('restore a snapshot, or a path in it, into a folder (files already restored are kept; run it again to resume)')
    .argument('<snapshot>', 'snapshot number, id (or its start), or "latest"')
    .requiredOption('-o, --output <dir>', 'folder to restore into (made if missing)')
    .option('--path <path>', 'only this file or folder of the snapshot')
    .option('--json', 'print progress and the result as JSON lines')
    .action(async (snapshot: string, opts: { output: string, path?: string, json?: boolean }, cmd: Command) => {
      const end = await runJob(await client(cmd), '/v1/backup/restores', { snapshot, out: resolve(opts.output), ...(opts.path != null ? { path: opts.path } : {}) }, opts.json === true)
      const r = end.result as RestoreResult
      if (opts.json === true) { console.log(terminalJson({ result: r })); return }
      print(false, { result: r }, () => terminalText(`restored ${r.files} files (${bytes(r.bytes)}), ${r.dirs} folders, ${r.links} links to ${resolve(opts.output)}` +
        (r.skipped > 0 ? `; ${r.skipped} were there already` : '')))
    })

  backup.command('jobs')
    .description('backup runs and restores since the daemon started, with progress, speed and time left')
    .option('--json', 'print as JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const result = await (await client(cmd)).get<{ jobs: BackupJob[] }>('/v1/backup/jobs')
      print(opts.json, result, () => table(['ID', 'WHAT', 'STATE', 'PROGRESS', 'SPEED', 'ETA'], result.jobs.map(j => [
        j.id, j.op, j.state + (j.error != null ? ` (${j.error.code})` : ''), `${bytes(j.doneBytes)} / ${bytes(j.totalBytes)}`,
        j.state === 'running' ? `${bytes(j.rate)}/s` : '-', j.state === 'running' && j.eta != null ? duration(j.eta) : '-'
      ])) || 'no backup runs or restores since the daemon started')
    })

  backup.command('forget')
    .description('drop old snapshots and free what only they needed on your hosts')
    .option('--keep-last <n>', 'keep the newest N snapshots')
    .option('--keep-daily <n>', 'keep the newest snapshot of each of the last N days that have one')
    .option('--json', 'print as JSON')
    .action(async (opts: { keepLast?: string, keepDaily?: string, json?: boolean }, cmd: Command) => {
      if (opts.keepLast == null && opts.keepDaily == null) throw new KithError('USAGE', 'say what to keep: --keep-last N and/or --keep-daily N')
      const result = await (await client(cmd)).call<ForgetResult>('POST', '/v1/backup/forget', {
        ...(opts.keepLast != null ? { keepLast: whole(opts.keepLast, '--keep-last') } : {}),
        ...(opts.keepDaily != null ? { keepDaily: whole(opts.keepDaily, '--keep-daily') } : {})
      }, { timeoutMs: 0 })
      const freed = Object.values(result.freed).reduce((a, b) => a + b, 0)
      print(opts.json, result, () => [
        `forgot ${result.forgotten.length} snapshots, kept ${result.kept.length}; removed ${result.removedBlobs} pieces, freeing ${bytes(freed)} on your hosts`,
        ...result.failed.map(f => `could not reach ${f.host} (${f.reason}); the next forget removes what it holds`)
      ].join('\n'))
    })

  return backup
}
