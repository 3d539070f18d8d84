import type { Command } from 'commander'
import { KithError } from '../../errors.ts'
import type { ApiClient } from '../api/client.ts'
import type { AuditReport } from '../backup/care.ts'
import type { AuditOutcome } from '../backup/audit.ts'
import { DEFAULT_TRAIL_LIMIT, MAX_TRAIL_LIMIT, trailLimit, type TrailItem } from '../backup/audit-trail.ts'
import type { Health, LedgerRow } from '../backup/health.ts'
import type { Schedule } from '../backup/schedule.ts'
import { resolve } from 'node:path'
import { ago, bytes, duration, parseDuration, shellArg, shortId, table } from './format.ts'

/**
 * `kith backup audit|audits|health|ledger|schedule|schedules|unschedule`: looking
 * after backups once placed (docs/backup.md, Audits and Repair), and runs on
 * a period; added to `kith backup`.
 */
type Print = (json: boolean | undefined, value: unknown, text: () => string) => void
type Client = (cmd: Command) => Promise<ApiClient>

function auditText (a: Pick<AuditOutcome, 'ok' | 'error' | 'challenges' | 'blobs' | 'failures'>): string {
  if (a.error != null) return `no answer: ${a.error.message} [${a.error.code}]`
  if (a.ok) return a.challenges === 0 ? 'answers (nothing placed there yet)' : `passed ${a.challenges} challenges on ${a.blobs} blobs`
  const kinds = ([['missing', 'missing'], ['damaged', 'damaged on the host'], ['wrong', 'wrong data']] as const)
    .map(([why, text]) => [a.failures.filter(f => f.why === why).length, text] as const)
    .filter(([n]) => n > 0)
  return `FAILED ${a.failures.length} of ${a.challenges} challenges (${kinds.map(([n, text]) => `${n} ${text}`).join(', ')})`
}

/** The blobs an audit failed on (missing, damaged, wrong), by sealed id (what `kith backup hosted` on the host shows), a few at most. */
function failuresText (a: TrailItem): string {
  if (a.failures.length === 0) return '-'
  const shown = a.failures.slice(0, 3).map(f => `${f.sealedId.slice(0, 12)} ${f.why}`)
  return shown.join(', ') + (a.failures.length > shown.length ? ` +${a.failures.length - shown.length} more` : '')
}

export function backupCareCommands (backup: Command, client: Client, print: Print): void {
  backup.command('audit')
    .description('challenge hosts now to prove they hold your blobs, then repair what failed')
    .argument('[name]', 'one friend (default: every host)')
    .option('--json', 'print as JSON')
    .action(async (name: string | undefined, opts: { json?: boolean }, cmd: Command) => {
      const api = await client(cmd)
      const report = await api.call<AuditReport>('POST', '/v1/backup/audits', name != null ? { friend: name } : {})
      const { friends } = await api.get<{ friends: Array<{ peerId: string, label: string }> }>('/v1/friends')
      const label = (peer: string): string => friends.find(f => f.peerId === peer)?.label ?? shortId(peer)
      print(opts.json, report, () => [
        ...(report.audits.length === 0 ? ['no host holds anything for you yet'] : report.audits.map(a => `${label(a.host).padEnd(20)} ${auditText(a)}`)),
        ...(report.repair != null && report.repair.short > 0
          ? [`repair: ${report.repair.short} blob(s) short of copies, ${report.repair.placed} copies placed, ${report.repair.unmet} still short (see \`kith backup health\`)`]
          : [])
      ].join('\n'))
      const failed = report.audits.filter(a => !a.ok)
      if (failed.length > 0) {
        throw new KithError('BACKUP_AUDIT_FAILED', `${failed.map(a => label(a.host)).join(', ')} failed the audit or did not answer; \`kith backup health\` shows what is missing and where it was copied`)
      }
    })

  backup.command('audits')
    .description('the audit trail, newest first: when each host was audited, by whom, and what it proved')
    .argument('[name]', 'one friend (default: every host)')
    .option('--limit <n>', `how many audits to show (1-${MAX_TRAIL_LIMIT})`, String(DEFAULT_TRAIL_LIMIT))
    .option('--json', 'print as JSON')
    .action(async (name: string | undefined, opts: { limit: string, json?: boolean }, cmd: Command) => {
      if (trailLimit(opts.limit) == null) throw new KithError('USAGE', `--limit wants a whole number from 1 to ${MAX_TRAIL_LIMIT}; got ${JSON.stringify(opts.limit.slice(0, 32))}`)
      const query = new URLSearchParams({ ...(name != null ? { host: name } : {}), limit: opts.limit })
      const { audits } = await (await client(cmd)).get<{ audits: TrailItem[] }>(`/v1/backup/audits?${query.toString()}`)
      print(opts.json, { audits }, () => table(['WHEN', 'HOST', 'BY', 'TOOK', 'RESULT', 'FAILED BLOBS'], audits.map(a => [
        `${new Date(a.at).toISOString().slice(0, 19).replace('T', ' ')} (${ago(a.at)})`,
        a.name ?? shortId(a.host),
        a.by === 'schedule' ? 'schedule' : a.by === 'request' ? 'you' : '-',
        a.tookMs != null ? `${(a.tookMs / 1000).toFixed(1)}s` : '-',
        auditText(a),
        failuresText(a)
      ])) || (name != null ? `no audits of ${name} yet` : 'no audits yet: hosts are audited a day after they first hold something, or now with `kith backup audit`'))
    })

  backup.command('health')
    .description('per host what it holds and how its audits go; per snapshot whether its copies are all there')
    .option('--json', 'print as JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const h = await (await client(cmd)).get<Health>('/v1/backup/health')
      print(opts.json, h, () => [
        table(['HOST', 'STATE', 'PLACED', 'BLOBS', 'LAST AUDIT', 'RESULT'], h.hosts.map(x => [
          x.name ?? shortId(x.peerId),
          x.state + (x.full ? ' (quota full)' : '') + (x.granting ? '' : ' (no grant)'),
          bytes(x.bytes),
          String(x.blobs),
          x.lastAudit != null ? ago(x.lastAudit.at) : '-',
          x.lastAudit != null ? auditText(x.lastAudit) : '-'
        ])) || 'no backup hosts: ask a friend to run `kith friend grant YOURNAME backup`',
        ...h.hosts.filter(x => x.lastAudit != null && !x.lastAudit.ok).map(x => {
          const name = x.name ?? x.peerId
          return `${name}'s last audit failed: \`kith backup audits ${shellArg(name)}\` shows its trail`
        }),
        '',
        table(['SNAPSHOT', 'LABEL', 'COPIES', 'STATUS'], h.snapshots.map(s => [
          `${s.seq} ${s.id.slice(0, 8)}`,
          s.label ?? '-',
          `${s.fewest}/${s.wanted}`,
          s.met ? 'ok' : s.why ?? 'short'
        ])) || 'no snapshots yet'
      ].join('\n'))
    })

  backup.command('ledger')
    .description('what you keep for each friend beside what they keep for you')
    .option('--json', 'print as JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const { friends } = await (await client(cmd)).get<{ friends: LedgerRow[] }>('/v1/backup/ledger')
      print(opts.json, { friends }, () => table(['FRIEND', 'I KEEP FOR THEM', 'QUOTA', 'THEY KEEP FOR ME', 'THEIR STATE'], friends.map(f => [
        f.name ?? shortId(f.peerId),
        f.forThem != null ? `${bytes(f.forThem.used)} (${f.forThem.blobs} blobs)` : '-',
        f.forThem != null ? bytes(f.forThem.quota) : '-',
        f.forMe != null ? `${bytes(f.forMe.bytes)} (${f.forMe.blobs} blobs)` : '-',
        f.forMe?.state ?? '-'
      ])) || 'no backups either way yet')
    })

  backup.command('schedule')
    .description('back up these paths every period, kept across restarts (the first run one period from now)')
    .argument('<paths...>', 'files or folders')
    .requiredOption('--every <duration>', 'how often: 30m, 1h, 1d, 1w')
    .option('--to <name...>', 'friends to place it on (default: every friend who granted you backup)')
    .option('--replicas <n>', 'copies of each piece (default 2)')
    .option('--name <label>', 'a label for its snapshots')
    .option('--json', 'print as JSON')
    .action(async (paths: string[], opts: { every: string, to?: string[], replicas?: string, name?: string, json?: boolean }, cmd: Command) => {
      const every = parseDuration(opts.every)
      if (every == null || every < 60) throw new KithError('USAGE', `--every wants a duration of a minute or more, like 30m, 1h or 1d; got ${JSON.stringify(opts.every)}`)
      if (opts.replicas != null && !/^\d{1,2}$/.test(opts.replicas)) throw new KithError('USAGE', `--replicas wants a whole number; got ${JSON.stringify(opts.replicas)}`)
      const { schedule } = await (await client(cmd)).call<{ schedule: Schedule }>('POST', '/v1/backup/schedules', {
        paths: paths.map(p => resolve(p)),
        everyMs: every * 1000,
        ...(opts.to != null ? { to: opts.to } : {}),
        ...(opts.replicas != null ? { replicas: Number(opts.replicas) } : {}),
        ...(opts.name != null ? { name: opts.name } : {})
      })
      print(opts.json, { schedule }, () => `schedule ${schedule.id}: ${schedule.paths.join(', ')} every ${duration(schedule.everyMs / 1000)}, first run ${new Date(schedule.next).toISOString()}`)
    })

  backup.command('schedules')
    .description('list scheduled backups and how their last run went')
    .option('--json', 'print as JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const { schedules } = await (await client(cmd)).get<{ schedules: Schedule[] }>('/v1/backup/schedules')
      print(opts.json, { schedules }, () => table(['ID', 'EVERY', 'PATHS', 'NEXT', 'LAST'], schedules.map(s => [
        s.id,
        duration(s.everyMs / 1000),
        s.paths.join(', '),
        new Date(s.next).toISOString(),
        s.last == null ? '-' : s.last.ok ? `started ${ago(s.last.at)} (job ${s.last.job ?? '?'})` : `${ago(s.last.at)}: ${s.last.error?.message ?? ''} [${s.last.error?.code ?? ''}]`
      ])) || 'no scheduled backups; add one with `kith backup schedule PATH --every 1d`')
    })

  backup.command('unschedule')
    .description('remove a scheduled backup (its snapshots stay)')
    .argument('<id>', 'the id `kith backup schedules` shows')
    .option('--json', 'print as JSON')
    .action(async (id: string, opts: { json?: boolean }, cmd: Command) => {
      const { schedule } = await (await client(cmd)).call<{ schedule: Schedule }>('DELETE', `/v1/backup/schedules/${encodeURIComponent(id)}`)
      print(opts.json, { schedule }, () => `schedule ${schedule.id} removed`)
    })
}
