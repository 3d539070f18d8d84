import { Command } from 'commander'
import { KithError } from '../../errors.ts'
import type { ApiClient } from '../api/client.ts'
import type { LocateReport, LocateStep } from '../locate/index.ts'
import { shortId } from './format.ts'

/**
 * `kith locate NAME`: find a friend who moved, showing each step the daemon
 * took (POST /v1/friends/:name/locate). Exits 1 with LOCATE_FAILED when the
 * friend could not be reached.
 */
type Print = (json: boolean | undefined, value: unknown, text: () => string) => void
type Client = (cmd: Command) => Promise<ApiClient>

function addrs (list: string[]): string {
  return list.length === 0 ? '(none)' : list.join(', ')
}

export function describeStep (step: LocateStep): string {
  switch (step.step) {
    case 'connected':
      return `already connected at ${step.remoteAddr}`
    case 'known':
      return `dialed the last known addresses ${addrs(step.addrs)}: ${step.ok ? `connected via ${step.remoteAddr ?? '?'}` : `failed (${step.error?.message ?? '?'})`} [${step.ms} ms]`
    case 'ask':
      switch (step.result) {
        case 'record': return `asked ${step.label}: a signed record, seq ${step.record!.seq} from ${step.record!.time}, at ${addrs(step.record!.addrs)} [${step.ms} ms]`
        case 'none': return `asked ${step.label}: no record [${step.ms} ms]`
        case 'rejected': return `asked ${step.label}: a record that failed verification, ignored (${step.error?.code ?? '?'}) [${step.ms} ms]`
        case 'refused': return `asked ${step.label}: refused (${step.error?.code ?? '?'}: ${step.error?.message ?? ''}) [${step.ms} ms]`
        case 'unreachable': return `asked ${step.label}: no answer (${step.error?.message ?? '?'}) [${step.ms} ms]`
      }
      break
    case 'skip':
      return `did not ask ${step.label}: ${step.reason}`
    case 'dht':
      switch (step.result) {
        case 'skipped': return 'DHT: skipped (no DHT peers, or DHT off)'
        case 'none': return `DHT: no record [${step.ms} ms]`
        case 'record': return `DHT: ${step.records} answer(s), newest seq ${step.record!.seq} at ${addrs(step.record!.addrs)} [${step.ms} ms]`
        case 'rejected': return `DHT: ${step.records} answer(s), none verified (${step.error?.code ?? '?'}) [${step.ms} ms]`
      }
      break
    case 'verify':
      return `verified the record from ${step.from}: signed by the friend, seq ${step.record.seq} ${step.newer ? `is newer than ${step.known == null ? 'nothing known' : `the ${step.known} known`}` : `is not newer than the ${step.known ?? '?'} known`}`
    case 'dial':
      return `dialed ${addrs(step.addrs)}: ${step.ok ? `connected via ${step.remoteAddr ?? '?'}` : `failed (${step.error?.message ?? '?'})`} [${step.ms} ms]`
  }
  return JSON.stringify(step)
}

export function describeReport (report: LocateReport): string {
  const lines = [`locating ${report.label} (${shortId(report.peerId)})`]
  report.steps.forEach((step, i) => lines.push(`  ${i + 1}. ${describeStep(step)}`))
  if (report.ok) lines.push(`${report.label} is connected${report.via === 'friends' ? ', found through friends' : report.via === 'dht' ? ', found in the DHT' : ''} (${report.ms} ms)`)
  return lines.join('\n')
}

export function locateCommand (program: Command, client: Client, print: Print): void {
  program.command('locate')
    .description('find a friend who moved: last known addresses, then common friends, then the DHT; shows each step')
    .argument('<name>', 'friend name or peer id')
    .option('--json', 'print the steps as JSON')
    .action(async (name: string, opts: { json?: boolean }, cmd: Command) => {
      const { locate } = await (await client(cmd)).call<{ locate: LocateReport }>('POST', `/v1/friends/${encodeURIComponent(name)}/locate`)
      print(opts.json, { locate }, () => describeReport(locate))
      if (!locate.ok) throw new KithError('LOCATE_FAILED', locate.error?.message ?? `${locate.label} could not be reached`)
    })
}
