import { resolve } from 'node:path'
import { Command } from 'commander'
import { isErrorCode, KithError } from '../../errors.ts'
import type { ApiClient } from '../api/client.ts'
import type { ShareView } from '../files/file-service.ts'
import type { GcResult } from '../engine/collector.ts'
import type { ShareListing } from '../files/share-book.ts'
import type { Transfer } from '../files/transfers.ts'
import { table, bytes, duration, shellArg, terminalJson, terminalText } from './format.ts'
import { parseRate } from '../engine/rate-text.ts'
import { PRIORITIES } from '../../transfer/scheduler/types.ts'

/**
 * File commands: share, shares, unshare, ls, fetch, transfers, gc (pause,
 * resume, cancel and priority, for fetches and downloads alike, are in
 * downloads.ts). `fetch` follows the daemon's events and draws a progress
 * bar on a terminal, or prints JSON progress lines with --json.
 */
type Print = (json: boolean | undefined, value: unknown, text: () => string) => void
type Client = (cmd: Command) => Promise<ApiClient>

const FINAL = new Set(['done', 'failed', 'cancelled'])

const FLOOR_STATES: Record<string, string> = { ok: 'ok', cap: 'NOT MET: caps too low', 'peer-cap': 'NOT MET: peer cap too low', slow: 'NOT MET: sources too slow' }

/** "2.0 MiB/s ok", or "2.0 MiB/s NOT MET: caps too low (1.6 MiB/s reserved, 1.2 MiB/s achieved)"; '-' without a floor */
export function floorText (t: Transfer): string {
  if (t.minRate == null) return '-'
  const f = t.floor
  if (f == null) return `${bytes(t.minRate)}/s`
  const detail = f.state === 'ok' ? '' : ` (${bytes(f.reserved)}/s reserved, ${bytes(f.achieved)}/s achieved)`
  return `${bytes(t.minRate)}/s ${FLOOR_STATES[f.state] ?? f.state}${detail}`
}

function transferRows (transfers: Transfer[]): string {
  return table(['ID', 'FROM', 'SHARE', 'STATE', 'PRIORITY', 'PROGRESS', 'SPEED', 'ETA', 'FLOOR', 'DEST'], transfers.map(t => [
    t.id,
    t.ownerLabel,
    t.path === '' ? t.shareName : `${t.shareName}/${t.path}`,
    t.state + (t.error != null ? ` (${t.error.code})` : ''),
    t.priority ?? 'normal',
    `${bytes(t.doneBytes)} / ${bytes(t.totalBytes)}`,
    t.state === 'running' ? `${bytes(t.rate)}/s` : '-',
    t.state === 'running' && t.eta != null ? duration(t.eta) : '-',
    floorText(t),
    t.dest
  ]))
}

/** "freed 12 chunks (12.0 MiB); the store holds 30 chunks (30.0 MiB)" */
export function gcText (gc: GcResult): string {
  const plural = (n: number): string => `${n} chunk${n === 1 ? '' : 's'}`
  return `freed ${plural(gc.freed.chunks)} (${bytes(gc.freed.bytes)}); the store holds ${plural(gc.store.chunks)} (${bytes(gc.store.bytes)})` +
    (gc.aborted ? '; stopped early, the daemon is stopping' : '')
}

/** FRIEND:SHARE[/path] */
export function parseTarget (target: string): { friend: string, share: string, path: string } {
  const match = /^([^:]+):([^/]+)(?:\/(.*))?$/.exec(target)
  if (match == null) throw new KithError('USAGE', `fetch wants FRIEND:SHARE or FRIEND:SHARE/path, like alice:photos/2024; got ${JSON.stringify(target)}`)
  return { friend: match[1]!, share: match[2]!, path: match[3] ?? '' }
}

async function follow (api: ApiClient, id: string, json: boolean, events: AsyncGenerator<{ type: string, [key: string]: unknown }>, controller: AbortController): Promise<Transfer> {
  // loaded only here: the one command that draws a bar
  const cliProgress = !json && process.stderr.isTTY ? (await import('cli-progress')).default : null
  const bar = cliProgress != null
    ? new cliProgress.SingleBar({
      format: '{bar} {percentage}% | {got} / {size} | {speed} | ETA {eta_h}{floor}',
      stream: process.stderr,
      hideCursor: true
    }, cliProgress.Presets.shades_classic)
    : null
  let last: Transfer | null = null
  const show = (t: Transfer): void => {
    last = t
    if (json) console.log(terminalJson({ id: t.id, state: t.state, doneBytes: t.doneBytes, totalBytes: t.totalBytes, rate: Math.round(t.rate), eta: t.eta, priority: t.priority, floor: t.floor }))
    if (bar != null) {
      const payload = { got: bytes(t.doneBytes), size: bytes(t.totalBytes), speed: `${bytes(t.rate)}/s`, eta_h: t.eta != null ? duration(t.eta) : '?', floor: t.floor != null && t.floor.state !== 'ok' ? ` | floor ${floorText(t)}` : '' }
      if (bar.getTotal() !== t.totalBytes) bar.start(Math.max(1, t.totalBytes), t.doneBytes, payload)
      bar.update(t.doneBytes, payload)
    }
  }
  try {
    // the transfer may have finished before the event stream caught up
    const current = (await api.get<{ transfer: Transfer }>(`/v1/transfers/${id}`)).transfer
    show(current)
    if (FINAL.has(current.state)) return current
    for await (const evt of events) {
      const transfer = (evt as { transfer?: Transfer }).transfer
      if (transfer?.id !== id) continue
      show(transfer)
      if (FINAL.has(transfer.state) || (transfer.state === 'paused' && transfer.error != null)) return transfer
    }
    return last ?? current
  } finally {
    bar?.stop()
    controller.abort()
  }
}

export function fileCommands (program: Command, client: Client, print: Print): void {
  program.command('share')
    .description('share a file or folder with friends (sharing it again publishes its changes)')
    .argument('<path>', 'file or folder')
    .option('--with <name...>', 'friends to share with (default: every friend you granted files)')
    .option('--name <label>', 'the name friends see (default: the file or folder name)')
    .option('--json', 'print as JSON')
    .action(async (path: string, opts: { with?: string[], name?: string, json?: boolean }, cmd: Command) => {
      const result = await (await client(cmd)).call<{ share: ShareView, skipped: Array<{ path: string, reason: string }> }>('POST', '/v1/shares', {
        path: resolve(path),
        ...(opts.with != null ? { with: opts.with } : {}),
        ...(opts.name != null ? { name: opts.name } : {})
      }, { timeoutMs: 0 })
      const s = result.share
      print(opts.json, result, () => [
        `shared ${s.name} (version ${s.version}, ${bytes(s.size)} in ${s.files} files) as ${s.id.slice(0, 12)}`,
        `with ${s.with.map(w => w.label).join(', ') || 'nobody yet: grant friends files, then share again'}`,
        ...result.skipped.map(k => `skipped ${k.path}: ${k.reason}`)
      ].join('\n'))
    })

  program.command('shares')
    .description('what you share')
    .option('--json', 'print as JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const { shares } = await (await client(cmd)).get<{ shares: ShareView[] }>('/v1/shares')
      print(opts.json, { shares }, () => [
        table(['ID', 'NAME', 'VERSION', 'SIZE', 'FILES', 'WITH', 'SOURCE'], shares.map(s => [
          s.id.slice(0, 12), s.name, String(s.version) + (s.changed !== null ? ' (changed)' : ''), bytes(s.size), String(s.files), s.with.map(w => w.label).join(',') || '-', s.source
        ])) || 'you share nothing yet: `kith share PATH`',
        ...shares.filter(s => s.changed !== null).map(s =>
          `${s.name}: ${s.changed!.paths.join(', ')} changed since version ${s.version} was shared, so friends can't fetch what changed; run \`kith share ${shellArg(s.source)}\` to share the new content`)
      ].join('\n'))
    })

  program.command('unshare')
    .description('stop sharing something')
    .argument('<id>', 'share id (or its start) or name')
    .option('--json', 'print as JSON')
    .action(async (id: string, opts: { json?: boolean }, cmd: Command) => {
      const result = await (await client(cmd)).call<{ share: ShareView }>('DELETE', `/v1/shares/${encodeURIComponent(id)}`)
      print(opts.json, result, () => `stopped sharing ${result.share.name}`)
    })

  program.command('ls')
    .description('what a friend shares with you')
    .argument('<friend>', 'friend name or peer id')
    .option('--json', 'print as JSON')
    .action(async (friend: string, opts: { json?: boolean }, cmd: Command) => {
      const result = await (await client(cmd)).get<{ friend: string, shares: ShareListing[] }>(`/v1/friends/${encodeURIComponent(friend)}/shares`)
      print(opts.json, result, () => table(['ID', 'NAME', 'VERSION', 'SIZE', 'FILES', 'UPDATED'], result.shares.map(s => [
        s.id.slice(0, 12), s.name, String(s.version), bytes(s.size), String(s.files), s.updated
      ])) || `${result.friend} shares nothing with you`)
    })

  program.command('fetch')
    .description('fetch a friend\'s share, or a file or folder in it, and wait for it (Ctrl-C leaves it running)')
    .argument('<target>', 'FRIEND:SHARE or FRIEND:SHARE/path')
    .option('-o, --output <dest>', 'where to put it (default: its name, in the current folder)')
    .option('--detach', 'queue it and return at once')
    .option('--priority <level>', `${PRIORITIES.join(' | ')}: who goes first among your fetches (change it later with \`kith priority\`)`, 'normal')
    .option('--min-rate <rate>', 'ask for at least this rate, like 2MB/s: reserved where the caps allow, reported when it can\'t be met')
    .option('--json', 'print progress as JSON lines')
    .action(async (target: string, opts: { output?: string, detach?: boolean, json?: boolean, priority: string, minRate?: string }, cmd: Command) => {
      const { friend, share, path } = parseTarget(target)
      if (!(PRIORITIES as readonly string[]).includes(opts.priority)) throw new KithError('USAGE', `--priority is one of ${PRIORITIES.join(', ')}; got ${JSON.stringify(opts.priority)}`)
      const minRate = opts.minRate != null ? parseRate(opts.minRate) : undefined
      if (opts.minRate != null && minRate == null) throw new KithError('USAGE', `--min-rate wants a rate like 2MB/s; got ${JSON.stringify(opts.minRate)}`)
      const api = await client(cmd)
      const controller = new AbortController()
      const events = await api.events(controller.signal) // subscribe first, so no event is missed
      const { transfer } = await api.call<{ transfer: Transfer }>('POST', '/v1/transfers', {
        friend,
        share,
        ...(path !== '' ? { path } : {}),
        priority: opts.priority,
        ...(minRate != null ? { minRate } : {}),
        ...(opts.output != null ? { dest: resolve(opts.output) } : { destDir: process.cwd() })
      }).catch(err => { controller.abort(); throw err })
      if (opts.detach === true) {
        controller.abort()
        print(opts.json, { transfer }, () => `queued ${transfer.id}: ${transfer.shareName} from ${transfer.ownerLabel} to ${transfer.dest}`)
        return
      }
      const end = await follow(api, transfer.id, opts.json === true, events, controller)
      if (end.state !== 'done') {
        // the transfer's own error code when it has one (DISK_FULL, FRIEND_RELAY_LIMITED, ...), so scripts can act on it
        const code = end.error?.code
        throw new KithError(isErrorCode(code) ? code : 'TRANSFER_STATE',
          `transfer ${end.id} is ${end.state}${end.error != null ? `: ${end.error.message}` : ''}`)
      }
      if (opts.json !== true) console.log(terminalText(`fetched ${bytes(end.totalBytes)} to ${end.dest}`))
    })

  program.command('transfers')
    .description('fetches, with progress, speed and time left')
    .option('--json', 'print as JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const result = await (await client(cmd)).get<{ transfers: Transfer[], eta: number | null }>('/v1/transfers')
      print(opts.json, result, () => {
        const rows = transferRows(result.transfers)
        if (rows === '') return 'no transfers'
        return `${rows}\n\nqueue: ${result.eta == null ? 'time left unknown' : result.eta === 0 ? 'nothing left to fetch' : `${duration(result.eta)} left`}`
      })
    })

  program.command('gc')
    .description('free the chunks nothing needs any more: unshared shares, old versions, cancelled fetches')
    .option('--json', 'print as JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      // a sweep of a large store can take a while: wait as long as the daemon works
      const result = await (await client(cmd)).call<{ gc: GcResult }>('POST', '/v1/gc', undefined, { timeoutMs: 0 })
      print(opts.json, result, () => gcText(result.gc))
    })
}
