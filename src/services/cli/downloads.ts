import { resolve } from 'node:path'
import type { Command } from 'commander'
import { isErrorCode, KithError } from '../../errors.ts'
import type { ApiClient } from '../api/client.ts'
import type { Transfer } from '../files/transfers.ts'
import type { Controlled, DownloadView, QueueOutlook } from '../downloads/index.ts'
import { parseChecksum } from '../downloads/checksum.ts'
import { DEFAULT_CONNECTIONS, MAX_CONNECTIONS } from '../downloads/constants.ts'
import { parseRate } from '../engine/rate-text.ts'
import { PRIORITIES } from '../../transfer/scheduler/types.ts'
import { bytes, duration, table, terminalJson, terminalText } from './format.ts'

/**
 * Download commands: get, downloads, limit, and pause, resume, cancel and priority,
 * which act on downloads and friend fetches alike (one queue, one id space).
 * `get` follows the daemon's events and draws one progress bar over what it
 * queued, or prints JSON progress lines with --json. Thin: types and light
 * modules only (test/services/cli-thin.spec.ts).
 */
type Print = (json: boolean | undefined, value: unknown, text: () => string) => void
type Client = (cmd: Command) => Promise<ApiClient>

const FINAL = new Set(['done', 'failed', 'cancelled'])

/** One line of the queue, a download or a friend fetch. */
export interface Item {
  id: string
  kind: 'url' | 'friend'
  what: string
  state: string
  priority: string
  done: number
  total: number | null
  rate: number
  eta: number | null
  dest: string
  error: { code: string, message: string } | null
}

function fromDownload (d: DownloadView): Item {
  return { id: d.id, kind: 'url', what: d.url, state: d.state, priority: d.priority, done: d.doneBytes, total: d.totalBytes, rate: d.rate, eta: d.eta, dest: d.dest ?? `${d.dir}/`, error: d.error }
}

function fromTransfer (t: Transfer): Item {
  return { id: t.id, kind: 'friend', what: `kith://${t.ownerLabel}/${t.shareName}${t.path === '' ? '' : '/' + t.path}`, state: t.state, priority: t.priority, done: t.doneBytes, total: t.totalBytes, rate: t.rate, eta: t.eta, dest: t.dest, error: t.error }
}

function itemOf (c: Controlled): Item {
  return 'download' in c ? fromDownload(c.download) : fromTransfer(c.transfer)
}

function rows (items: Item[]): string {
  return table(['ID', 'KIND', 'WHAT', 'STATE', 'PRIORITY', 'PROGRESS', 'SPEED', 'ETA', 'DEST'], items.map(i => [
    i.id,
    i.kind,
    i.what.length > 60 ? i.what.slice(0, 57) + '...' : i.what,
    i.state + (i.error != null ? ` (${i.error.code})` : ''),
    i.priority,
    `${bytes(i.done)} / ${i.total === null ? '?' : bytes(i.total)}`,
    i.state === 'running' ? `${bytes(i.rate)}/s` : '-',
    i.state === 'running' && i.eta != null ? duration(i.eta) : '-',
    i.dest
  ]))
}

/** Why what waits or failed is waiting or failed (a low disk, an origin's answer), in words; a failed one with what to do about it. */
export function reasons (items: Item[]): string[] {
  return items.filter(i => i.error != null && (i.state === 'paused' || i.state === 'failed')).map(i =>
    `${i.id}: ${i.error!.message}` + (i.state === 'failed' ? ` (\`kith resume ${i.id}\` tries again, \`kith cancel ${i.id}\` drops it)` : ''))
}

/** "12s left", with what the ETA leaves out */
export function queueText (outlook: QueueOutlook): string {
  const eta = outlook.eta == null ? 'time left unknown' : outlook.eta === 0 ? 'nothing running or queued' : `${duration(outlook.eta)} left`
  return `queue: ${eta}` + (outlook.unknownSizes > 0 ? ` (${outlook.unknownSizes} of unknown size not counted)` : '')
}

function checkId (id: string): void {
  if (!/^[0-9a-f]{4,12}$/.test(id)) throw new KithError('USAGE', `an id is 4 to 12 hex digits, from \`kith downloads\`; got ${JSON.stringify(id)}`)
}

/** Follows the request's items until each has ended; one bar over all of them. */
async function follow (api: ApiClient, items: Item[], json: boolean, events: AsyncGenerator<{ type: string, [key: string]: unknown }>, controller: AbortController): Promise<Item[]> {
  // loaded only here: the one command that draws a bar
  const cliProgress = !json && process.stderr.isTTY ? (await import('cli-progress')).default : null
  const bar = cliProgress != null
    ? new cliProgress.SingleBar({ format: '{bar} {percentage}% | {got} / {size} | {speed} | ETA {eta_h}', stream: process.stderr, hideCursor: true }, cliProgress.Presets.shades_classic)
    : null
  const state = new Map(items.map(i => [i.id, i]))
  const ended = (i: Item): boolean => FINAL.has(i.state) || (i.state === 'paused' && i.error != null)
  const show = (i: Item): void => {
    state.set(i.id, i)
    if (json) console.log(terminalJson({ id: i.id, state: i.state, doneBytes: i.done, totalBytes: i.total, rate: Math.round(i.rate), eta: i.eta, error: i.error }))
    if (bar == null) return
    const all = [...state.values()]
    const total = all.every(a => a.total !== null) ? all.reduce((s, a) => s + a.total!, 0) : null
    const done = all.reduce((s, a) => s + a.done, 0)
    const eta = all.some(a => a.eta === null && !ended(a)) ? null : Math.max(0, ...all.map(a => a.eta ?? 0))
    const payload = { got: bytes(done), size: total === null ? '?' : bytes(total), speed: `${bytes(all.reduce((s, a) => s + a.rate, 0))}/s`, eta_h: eta !== null ? duration(eta) : '?' }
    const size = Math.max(1, total ?? done)
    if (bar.getTotal() !== size) bar.start(size, done, payload)
    bar.update(done, payload)
  }
  try {
    // an item may have ended before the event stream caught up
    for (const i of items) show(itemOf(await api.get<Controlled>(`/v1/downloads/${i.id}`)))
    if ([...state.values()].every(ended)) return [...state.values()]
    for await (const evt of events) {
      const c = evt as { download?: DownloadView, transfer?: Transfer }
      const item = c.download != null ? fromDownload(c.download) : c.transfer != null ? fromTransfer(c.transfer) : null
      if (item === null || !state.has(item.id)) continue
      show(item)
      if ([...state.values()].every(ended)) break
    }
    return [...state.values()]
  } finally {
    bar?.stop()
    controller.abort()
  }
}

/**
 * `-O KEY=VALUE` on `kith get`: one add-on option (docs/downloads.md lists
 * each add-on's). VALUE is `true`, `false` or a whole number as such, a
 * JSON string in double quotes as that string (`-O passphrase='"1234"'`),
 * anything else as text. Collected into `options`, later ones winning.
 */
export function addonOption (text: string, options: Record<string, unknown> = {}): Record<string, unknown> {
  const at = text.indexOf('=')
  const key = at > 0 ? text.slice(0, at) : ''
  if (!/^[A-Za-z][A-Za-z0-9]{0,63}$/.test(key)) throw new KithError('USAGE', `-O wants KEY=VALUE with an option name such as hostKey or keyFile; got ${JSON.stringify(text)}`)
  const raw = text.slice(at + 1)
  let value: unknown = raw
  if (raw === 'true' || raw === 'false') value = raw === 'true'
  else if (/^-?[0-9]{1,15}$/.test(raw)) value = Number(raw)
  else if (raw.length >= 2 && raw.startsWith('"') && raw.endsWith('"')) {
    try {
      value = JSON.parse(raw)
    } catch {
      throw new KithError('USAGE', `-O ${key}: ${raw} is not a JSON string`)
    }
  }
  return { ...options, [key]: value }
}

export function downloadCommands (program: Command, client: Client, print: Print): void {
  program.command('get')
    .description('download URLs through the daemon\'s queue and wait for them (Ctrl-C leaves them queued); kith://FRIEND/SHARE/path fetches a friend\'s share')
    .argument('<url...>', 'http(s)://, ftp(s)://, sftp://, s3://, webdav(s)://, an .m3u8 playlist, or kith://FRIEND/SHARE[/path]')
    .option('-o, --output <dest>', 'a file name for one URL, or a folder (default: the current folder, under the origin\'s name)')
    .option('--priority <level>', `${PRIORITIES.join(' | ')}: who goes first in the queue (change it later with \`kith priority\`)`, 'normal')
    .option('--limit <rate>', 'cap this download alone, like 2MB/s (the node\'s caps apply too)')
    .option('--connections <n>', `connections per download, 1 to ${MAX_CONNECTIONS} (protocols that can split)`, String(DEFAULT_CONNECTIONS))
    .option('--checksum <sha256:HEX>', 'verify the file before it is placed; a mismatch keeps nothing')
    .option('-O, --option <key=value>', 'an add-on option, repeatable: -O keyFile=~/.ssh/id_ed25519, -O hostKey=SHA256:..., -O profile=work (docs/downloads.md)', addonOption)
    .option('--detach', 'queue and return at once')
    .option('--json', 'print progress as JSON lines')
    .action(async (urls: string[], opts: { output?: string, priority: string, limit?: string, connections: string, checksum?: string, option?: Record<string, unknown>, detach?: boolean, json?: boolean }, cmd: Command) => {
      if (!(PRIORITIES as readonly string[]).includes(opts.priority)) throw new KithError('USAGE', `--priority is one of ${PRIORITIES.join(', ')}; got ${JSON.stringify(opts.priority)}`)
      const limit = opts.limit != null ? parseRate(opts.limit) : undefined
      if (opts.limit != null && limit == null) throw new KithError('USAGE', `--limit wants a rate like 2MB/s; got ${JSON.stringify(opts.limit)}`)
      const connections = Number(opts.connections)
      if (!Number.isInteger(connections) || connections < 1 || connections > MAX_CONNECTIONS) throw new KithError('USAGE', `--connections is a whole number from 1 to ${MAX_CONNECTIONS}; got ${JSON.stringify(opts.connections)}`)
      if (opts.checksum != null) {
        try {
          parseChecksum(opts.checksum)
        } catch (err) {
          throw new KithError('USAGE', `--checksum: ${(err as Error).message}`)
        }
      }
      const explicit = cmd.getOptionValueSource('connections') === 'cli'
      const api = await client(cmd)
      const controller = new AbortController()
      const events = opts.detach === true ? null : await api.events(controller.signal) // subscribe first, so no event is missed
      const dest = opts.output != null ? resolve(opts.output) + (/[/\\]$/.test(opts.output) ? '/' : '') : process.cwd() + '/'
      const queued = await api.call<{ downloads: DownloadView[], transfers: Transfer[] }>('POST', '/v1/downloads', {
        urls,
        dest,
        priority: opts.priority,
        ...(limit != null ? { limit } : {}),
        ...(explicit ? { connections } : {}),
        ...(opts.checksum != null ? { checksum: opts.checksum } : {}),
        ...(opts.option != null ? { options: opts.option } : {})
      }).catch(err => { controller.abort(); throw err })
      const items = [...queued.downloads.map(fromDownload), ...queued.transfers.map(fromTransfer)]
      if (events === null) {
        print(opts.json, queued, () => items.map(i => `queued ${i.id}: ${i.what} to ${i.dest}`).join('\n'))
        return
      }
      const end = await follow(api, items, opts.json === true, events, controller)
      const failed = end.find(i => i.state !== 'done')
      if (failed !== undefined) {
        // the item's own error code when it has one (CHECKSUM_MISMATCH, DISK_LOW, HTTP_STATUS...), so scripts can act on it
        const code = failed.error?.code
        throw new KithError(isErrorCode(code) ? code : 'DOWNLOAD_STATE', `${failed.id} (${failed.what}) is ${failed.state}${failed.error != null ? `: ${failed.error.message}` : ''}`)
      }
      if (opts.json !== true) console.log(terminalText(end.map(i => `downloaded ${bytes(i.done)} to ${i.dest}`).join('\n')))
    })

  program.command('downloads')
    .description('the queue: downloads and friend fetches, with progress, speed, time left and the whole queue\'s time left')
    .option('--json', 'print as JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const result = await (await client(cmd)).get<{ downloads: DownloadView[], fetches: Transfer[] } & QueueOutlook>('/v1/downloads')
      print(opts.json, result, () => {
        const items = [...result.downloads.map(fromDownload), ...result.fetches.map(fromTransfer)]
        const text = rows(items)
        if (text === '') return 'the queue is empty: `kith get URL`'
        const why = reasons(items)
        return [text, '', queueText(result), ...(why.length > 0 ? ['', ...why] : [])].join('\n')
      })
    })

  for (const action of ['pause', 'resume', 'cancel'] as const) {
    program.command(action)
      .description(`${action} a download or a friend fetch`)
      .argument('<id>', 'id from `kith downloads` (or `kith transfers`)')
      .option('--json', 'print as JSON')
      .action(async (id: string, opts: { json?: boolean }, cmd: Command) => {
        checkId(id)
        const result = await (await client(cmd)).call<Controlled>('POST', `/v1/downloads/${id}/${action}`)
        const item = itemOf(result)
        print(opts.json, result, () => `${item.id} is ${item.state}`)
      })
  }

  program.command('priority')
    .description('change a download\'s or friend fetch\'s priority while it runs: urgent, normal or background')
    .argument('<id>', 'id from `kith downloads` (or `kith transfers`)')
    .argument('<level>', PRIORITIES.join(' | '))
    .option('--json', 'print as JSON')
    .action(async (id: string, level: string, opts: { json?: boolean }, cmd: Command) => {
      checkId(id)
      if (!(PRIORITIES as readonly string[]).includes(level)) throw new KithError('USAGE', `a priority is one of ${PRIORITIES.join(', ')}; got ${JSON.stringify(level)}`)
      const result = await (await client(cmd)).call<Controlled>('POST', `/v1/downloads/${id}/priority`, { priority: level })
      const item = itemOf(result)
      print(opts.json, result, () => `${item.id} is now ${item.priority}`)
    })

  program.command('limit')
    .description('change one download\'s own speed limit while it runs (the node\'s caps are `kith limits`)')
    .argument('<id>', 'id from `kith downloads`')
    .argument('<rate>', 'like 2MB/s, or none')
    .option('--json', 'print as JSON')
    .action(async (id: string, rate: string, opts: { json?: boolean }, cmd: Command) => {
      checkId(id)
      const limit = rate === 'none' || rate === 'unlimited' ? null : parseRate(rate)
      if (limit === undefined) throw new KithError('USAGE', `a rate is like 2MB/s, or none; got ${JSON.stringify(rate)}`)
      const result = await (await client(cmd)).call<{ download: DownloadView }>('POST', `/v1/downloads/${id}/limit`, { limit })
      const d = result.download
      print(opts.json, result, () => `${d.id} ${d.limit === null ? 'has no limit of its own' : `is limited to ${bytes(d.limit)}/s`}`)
    })
}
