import type { Command } from 'commander'
import { KithError } from '../../errors.ts'
import type { ApiClient } from '../api/client.ts'
import type { ConnectionView, ExposedView, Offer } from '../expose/index.ts'
import { checkPort, checkServiceName, parseTarget } from '../expose/names.ts'
import { ago, bytes, table } from './format.ts'

/**
 * Friend services: expose, unexpose, services, connect, disconnect,
 * connections (docs/services.md). Names, ports and targets are checked here
 * first, with the same rules the daemon applies (expose/names.ts), so a typo
 * is a USAGE error before anything is asked.
 */
type Print = (json: boolean | undefined, value: unknown, text: () => string) => void
type Client = (cmd: Command) => Promise<ApiClient>

function exposedRows (services: ExposedView[]): string {
  return table(['NAME', 'ADDRESS', 'FRIENDS', 'OPEN', 'DESCRIPTION'], services.map(s => [
    s.name,
    `${s.host.includes(':') ? `[${s.host}]` : s.host}:${s.port}`,
    s.to.map(f => f.label).join(',') || '- (grant with --to or `kith friend grant FRIEND service:NAME`)',
    String(s.open),
    s.description || '-'
  ])) || 'you expose no services yet: `kith expose NAME --port PORT --to FRIEND`'
}

function connectionRows (connections: ConnectionView[]): string {
  return table(['FRIEND:SERVICE', 'LOCAL ADDRESS', 'STATE', 'OPEN', 'SENT', 'RECEIVED', 'LAST ERROR'], connections.map(c => [
    `${c.friend}:${c.service}`,
    `${c.host}:${c.port}`,
    c.listening ? 'listening' : 'NOT LISTENING',
    String(c.open),
    bytes(c.bytesUp),
    bytes(c.bytesDown),
    c.error != null ? `${ago(c.error.at)}: ${c.error.message} [${c.error.code}]` : '-'
  ])) || 'no friend services connected: `kith services FRIEND` lists what a friend offers, `kith connect FRIEND:NAME` makes one reachable here'
}

export function exposeCommands (program: Command, client: Client, print: Print): void {
  program.command('expose')
    .description('offer a program on this machine (a TCP port) to chosen friends, or list what you offer')
    .argument('[name]', 'the name friends use for it: lowercase letters, digits, dashes (like blog)')
    .option('--port <port>', 'the port the program listens on')
    .option('--host <host>', 'the address the program listens on; kith connects there and nowhere else', '127.0.0.1')
    .option('--to <friend...>', 'friends who may use it (added to those granted before)')
    .option('--description <text>', 'what friends see in `kith services`')
    .option('--list', 'list the services you expose')
    .option('--json', 'print as JSON')
    .action(async (name: string | undefined, opts: { port?: string, host: string, to?: string[], description?: string, list?: boolean, json?: boolean }, cmd: Command) => {
      const api = await client(cmd)
      if (opts.list === true || name == null) {
        if (name != null || opts.port != null) throw new KithError('USAGE', 'give either NAME --port PORT, or --list')
        const { services } = await api.get<{ services: ExposedView[] }>('/v1/services')
        print(opts.json, { services }, () => exposedRows(services))
        return
      }
      checkServiceName(name)
      if (opts.port == null) throw new KithError('USAGE', `kith expose ${name} needs --port, the port the program listens on`)
      const port = checkPort(opts.port, '--port')
      const { service } = await api.call<{ service: ExposedView }>('PUT', `/v1/services/${encodeURIComponent(name)}`, {
        port,
        host: opts.host,
        ...(opts.description != null ? { description: opts.description } : {}),
        ...(opts.to != null ? { to: opts.to.flatMap(t => t.split(',')).filter(t => t !== '') } : {})
      })
      print(opts.json, { service }, () => service.to.length > 0
        ? `exposed ${service.name} (${service.host}:${service.port}) to ${service.to.map(f => f.label).join(', ')}; they reach it with: kith connect YOURNAME:${service.name}`
        : `exposed ${service.name} (${service.host}:${service.port}) to nobody yet; grant it with: kith friend grant FRIEND service:${service.name}`)
    })

  program.command('unexpose')
    .description('stop offering a service: friends\' open connections to it are cut')
    .argument('<name>', 'the service name')
    .option('--json', 'print as JSON')
    .action(async (name: string, opts: { json?: boolean }, cmd: Command) => {
      checkServiceName(name)
      const result = await (await client(cmd)).call<{ service: ExposedView }>('DELETE', `/v1/services/${encodeURIComponent(name)}`)
      print(opts.json, result, () => `${name} is no longer offered to anyone`)
    })

  program.command('services')
    .description('what a friend offers you (ask them; they must be online)')
    .argument('<friend>', 'friend name or peer id')
    .option('--json', 'print as JSON')
    .action(async (friend: string, opts: { json?: boolean }, cmd: Command) => {
      const result = await (await client(cmd)).get<{ friend: { label: string }, services: Offer[] }>(`/v1/friends/${encodeURIComponent(friend)}/services`)
      print(opts.json, result, () => {
        if (result.services.length === 0) return `${result.friend.label} offers you no services`
        const rows = table(['NAME', 'DESCRIPTION'], result.services.map(s => [s.name, s.description || '-']))
        return `${rows}\nreach one with: kith connect ${result.friend.label}:NAME`
      })
    })

  program.command('connect')
    .description('make a friend\'s service reachable on a port of this machine (127.0.0.1), kept until `kith disconnect`')
    .argument('<friend:service>', 'like bob:blog')
    .option('--port <port>', 'the local port (default: any free one, then kept)')
    .option('--json', 'print as JSON')
    .action(async (target: string, opts: { port?: string, json?: boolean }, cmd: Command) => {
      const { friend, service } = parseTarget(target)
      const port = opts.port != null ? checkPort(opts.port, '--port') : undefined
      const { connection } = await (await client(cmd)).call<{ connection: ConnectionView }>('POST', '/v1/connections', { friend, service, ...(port != null ? { port } : {}) })
      print(opts.json, { connection }, () => `${connection.friend}'s ${connection.service} is at ${connection.host}:${connection.port} (kept until \`kith disconnect ${connection.friend}:${connection.service}\`)`)
    })

  program.command('disconnect')
    .description('close the local port of a friend\'s service, and the connections through it')
    .argument('<friend:service>', 'like bob:blog')
    .option('--json', 'print as JSON')
    .action(async (target: string, opts: { json?: boolean }, cmd: Command) => {
      const { friend, service } = parseTarget(target)
      const result = await (await client(cmd)).call<{ connection: ConnectionView }>('DELETE', `/v1/connections/${encodeURIComponent(friend)}/${service}`)
      print(opts.json, result, () => `${result.connection.friend}:${service} is disconnected (port ${result.connection.port} closed)`)
    })

  program.command('connections')
    .description('friends\' services reachable here, their local ports and traffic')
    .option('--json', 'print as JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const { connections } = await (await client(cmd)).get<{ connections: ConnectionView[] }>('/v1/connections')
      print(opts.json, { connections }, () => connectionRows(connections))
    })
}
