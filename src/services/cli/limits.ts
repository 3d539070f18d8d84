import { Command } from 'commander'
import { KithError } from '../../errors.ts'
import type { ApiClient } from '../api/client.ts'
import type { BandwidthView, LaneView, LimitRate, LimitsPatch, LimitsView, RuleDoc } from '../engine/limits.ts'
import { PRIORITIES, TRAFFIC_CLASSES } from '../../transfer/scheduler/types.ts'
import { table } from './format.ts'
import { parseLimitRate } from '../engine/rate-text.ts'

/**
 * `kith limits` (show), `kith limits set`, `kith limits clear`, and
 * `kith priority ID LEVEL`. Rates are shown in decimal units (MB = 10^6
 * bytes), the units limits are given in.
 */
type Print = (json: boolean | undefined, value: unknown, text: () => string) => void
type Client = (cmd: Command) => Promise<ApiClient>

/** 12_500_000 -> "12.5 MB/s"; null, Infinity and 'unlimited' -> "unlimited" */
export function showRate (rate: LimitRate | number | null | undefined): string {
  if (rate == null || rate === 'unlimited' || rate === Infinity) return 'unlimited'
  const units: Array<[number, string]> = [[1e9, 'GB/s'], [1e6, 'MB/s'], [1e3, 'kB/s']]
  for (const [size, unit] of units) {
    if (rate >= size) return `${Number((rate / size).toFixed(rate / size < 10 ? 2 : 1))} ${unit}`
  }
  return `${Math.round(rate)} B/s`
}

/** "23:00-07:00 up=unlimited down=2 MB/s" */
function formatRule (rule: RuleDoc, show: (rate: LimitRate) => string): string {
  return [`${rule.from}-${rule.to}`, ...(rule.upload !== undefined ? [`up=${show(rule.upload)}`] : []), ...(rule.download !== undefined ? [`down=${show(rule.download)}`] : [])].join(' ')
}

function lane (name: string, l: LaneView): string[] {
  const classes = TRAFFIC_CLASSES.map(c => `${c} ${showRate(l.classes[c].rate)}${l.classes[c].flows > 0 ? ` (${l.classes[c].flows})` : ''}`).join(', ')
  return [
    `${name.padEnd(5)} ${showRate(l.rate)} of ${l.cap == null ? 'no cap' : `cap ${showRate(l.cap)}`}${l.waiting > 0 ? `, ${l.waiting} waiting` : ''}`,
    `      by class: ${classes}`,
    ...l.peers.map(p => `      ${(p.label ?? p.peerId).padEnd(18)} ${showRate(p.rate)}${p.cap != null ? ` (cap ${showRate(p.cap)})` : ''}`)
  ]
}

/** Rates now per direction, class and peer: for `kith status` and `kith limits`. */
export function bandwidthLines (view: BandwidthView): string[] {
  return [...lane('up', view.up), ...lane('down', view.down)]
}

function describe (view: LimitsView): string {
  const l = view.limits
  const origin = (key: 'upload' | 'download'): string => view.override[key] != null
    ? ' (kith start flag, this run)'
    : view.stored[key] != null ? '' : view.config?.limits[key] != null ? ' (config file)' : ''
  const peers = Object.entries(l.peers)
  const lines = [
    `upload    ${showRate(l.upload)}${origin('upload')}`,
    `download  ${showRate(l.download)}${origin('download')}`,
    `schedule  ${l.schedule.length === 0 ? 'none' : l.schedule.map(r => formatRule(r, showRate)).join('; ')}${view.rates.rule != null ? ` (rule ${view.rates.rule + 1} in force)` : ''}`,
    `weights   ${TRAFFIC_CLASSES.map(c => `${c}=${l.classWeights[c]}`).join(' ')}; priorities ${PRIORITIES.map(p => `${p}=${l.priorityWeights[p]}`).join(' ')}`
  ]
  if (view.config != null) lines.push(`config    ${view.config.path}`)
  if (peers.length > 0) {
    lines.push('', table(['PEER', 'UP', 'DOWN'], peers.map(([peer, p]) => [view.labels[peer] ?? peer, showRate(p.upload), showRate(p.download)])))
  }
  lines.push('', 'now', ...bandwidthLines(view.rates))
  return lines.join('\n')
}

function rateOption (flag: string, text: string | undefined): LimitRate | undefined {
  if (text === undefined) return undefined
  const rate = parseLimitRate(text)
  if (rate === undefined) throw new KithError('USAGE', `${flag} wants a rate like 10MB/s or 512KiB/s, 0, or unlimited; got ${JSON.stringify(text)}`)
  return rate
}

function weightsOption (text: string): Record<string, number> {
  const out: Record<string, number> = {}
  for (const part of text.split(',').filter(Boolean)) {
    const match = /^(\w+)=(\d+(?:\.\d+)?)$/.exec(part.trim())
    if (match == null || !(TRAFFIC_CLASSES as readonly string[]).includes(match[1]!) || !(Number(match[2]) > 0)) {
      throw new KithError('USAGE', `--weights wants CLASS=N,... with classes ${TRAFFIC_CLASSES.join(', ')}, like friend=8,foaf=2,public=1,backup=2,service=8; got ${JSON.stringify(text)}`)
    }
    out[match[1]!] = Number(match[2])
  }
  return out
}

function json (cmd: Command): boolean {
  return cmd.optsWithGlobals<{ json?: boolean }>().json === true
}

export function limitsCommand (program: Command, client: Client, print: Print): void {
  const limits = program.command('limits')
    .description('bandwidth limits in force, and rates now per class and per peer; `limits set` and `limits clear` change them while transfers run')
    .option('--json', 'print as JSON')
    .action(async (_opts: unknown, cmd: Command) => {
      const view = await (await client(cmd)).get<LimitsView>('/v1/limits')
      print(json(cmd), view, () => describe(view))
    })

  limits.command('set')
    .description('set limits (kept across restarts); with --peer, --up and --down are that peer\'s caps')
    .option('--up <rate>', 'upload cap, like 10MB/s, 0, or unlimited')
    .option('--down <rate>', 'download cap')
    .option('--peer <name>', 'a friend (name or peer id) whose own caps --up and --down set')
    .option('--schedule <rule...>', 'time-of-day rules replacing the schedule, like "23:00-07:00 up=unlimited down=unlimited" (local time, first match wins)')
    .option('--weights <weights>', 'class weights, like friend=8,foaf=2,public=1,backup=2,service=8')
    .option('--json', 'print as JSON')
    .action(async (opts: { up?: string, down?: string, peer?: string, schedule?: string[], weights?: string }, cmd: Command) => {
      const up = rateOption('--up', opts.up)
      const down = rateOption('--down', opts.down)
      const patch: LimitsPatch = {}
      if (opts.peer != null) {
        if (up === undefined && down === undefined) throw new KithError('USAGE', '--peer wants --up and/or --down: the caps for that peer')
        patch.peers = { [opts.peer]: { ...(up !== undefined ? { upload: up } : {}), ...(down !== undefined ? { download: down } : {}) } }
      } else {
        if (up !== undefined) patch.upload = up
        if (down !== undefined) patch.download = down
      }
      if (opts.schedule != null) patch.schedule = opts.schedule
      if (opts.weights != null) patch.classWeights = weightsOption(opts.weights)
      if (Object.keys(patch).length === 0) throw new KithError('USAGE', 'limits set wants at least one of --up, --down, --peer, --schedule, --weights')
      const view = await (await client(cmd)).call<LimitsView>('PUT', '/v1/limits', patch)
      print(json(cmd), view, () => describe(view))
    })

  limits.command('clear')
    .description('remove limits set before, back to the config file or no limit; with --peer, that peer\'s (both directions unless --up or --down)')
    .option('--up', 'the upload cap (also ends a --max-upload of this run)')
    .option('--down', 'the download cap (also ends a --max-download of this run)')
    .option('--peer <name>', 'a friend whose caps to clear')
    .option('--schedule', 'the time-of-day schedule')
    .option('--weights', 'the class weights')
    .option('--all', 'everything set with `kith limits set`')
    .option('--json', 'print as JSON')
    .action(async (opts: { up?: boolean, down?: boolean, peer?: string, schedule?: boolean, weights?: boolean, all?: boolean }, cmd: Command) => {
      const patch: LimitsPatch = {}
      if (opts.all === true) Object.assign(patch, { upload: null, download: null, peers: null, schedule: null, classWeights: null })
      if (opts.peer != null) {
        const both = opts.up !== true && opts.down !== true
        patch.peers = { [opts.peer]: both ? null : { ...(opts.up === true ? { upload: null } : {}), ...(opts.down === true ? { download: null } : {}) } }
      } else {
        if (opts.up === true) patch.upload = null
        if (opts.down === true) patch.download = null
      }
      if (opts.schedule === true) patch.schedule = null
      if (opts.weights === true) patch.classWeights = null
      if (Object.keys(patch).length === 0) throw new KithError('USAGE', 'limits clear wants --up, --down, --peer NAME, --schedule, --weights or --all')
      const view = await (await client(cmd)).call<LimitsView>('PUT', '/v1/limits', patch)
      print(json(cmd), view, () => describe(view))
    })
}
