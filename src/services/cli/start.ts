import { readFile } from 'node:fs/promises'
import module from 'node:module'
import { KithError } from '../../errors.ts'
import { homePaths, writeFileAtomic } from '../../peer/home.ts'
import { Daemon, newToken, writeApiInfo } from '../daemon.ts'
import { startApiServer } from '../api/server.ts'
import { routes, type Route } from '../api/routes.ts'
import { installLastResort } from '../last-resort.ts'
import { releaseAfterStart } from '../daemon-heap.ts'
import type { RelayBudget } from '../../peer/node.ts'
import { terminalText } from './format.ts'

/**
 * `kith start`: runs the node in the foreground until SIGINT, SIGTERM or
 * `kith stop` (POST /v1/stop).
 */
export const DEFAULT_API = '127.0.0.1:0'

export interface StartOptions {
  home: string
  listen?: string[]
  api?: string
  name?: string
  passphrase?: string
  /** bytes per second */
  maxUpload?: number
  /** bytes per second */
  maxDownload?: number
  json?: boolean
  /** as a relay: each friend's relayed connection's budget */
  relay?: RelayBudget
}

export function parseApiAddress (text: string): { host: string, port: number } {
  const match = /^(?:(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|localhost|\[::1\]):)?(\d{1,5})$/.exec(text)
  const port = Number(match?.[2])
  if (match == null || port > 65535) {
    throw new KithError('BAD_REQUEST', `--api wants HOST:PORT on loopback, such as 127.0.0.1:7070 (port 0 picks a free one); got ${JSON.stringify(text)}`)
  }
  const host = match[1] ?? '127.0.0.1'
  return { host: host === 'localhost' ? '127.0.0.1' : host.replace(/^\[|\]$/g, ''), port }
}

/**
 * The API token, made once per home and written again (0600) on every start.
 * One that other users could read before this start made the home private
 * is replaced: anyone who read it could drive the node.
 */
async function apiToken (path: string, exposed: boolean): Promise<string> {
  let token: string | undefined
  if (!exposed) {
    try {
      token = (await readFile(path, 'utf8')).trim()
    } catch {}
  }
  if (token == null || token.length < 32) token = newToken()
  await writeFileAtomic(path, token + '\n', 0o600)
  return token
}

export async function runStart (options: StartOptions): Promise<void> {
  const { host, port } = parseApiAddress(options.api ?? DEFAULT_API)
  // a bug in background work is logged, never the end of the node (last-resort.ts)
  installLastResort()
  const daemon = await Daemon.start({
    home: options.home,
    ...(options.listen != null && options.listen.length > 0 ? { listen: options.listen } : {}),
    ...(options.name != null ? { name: options.name } : {}),
    ...(options.passphrase != null ? { passphrase: options.passphrase } : {}),
    ...(options.maxUpload != null ? { maxUpload: options.maxUpload } : {}),
    ...(options.maxDownload != null ? { maxDownload: options.maxDownload } : {}),
    ...(options.relay != null ? { relay: options.relay } : {})
  })
  const paths = homePaths(options.home)
  let requestStop = (_why: string): void => {}
  // `kith stop`: answered first, then the node stops as on SIGTERM
  const stopRoute: Route = {
    method: 'POST',
    path: /^\/v1\/stop$/,
    handler: async () => {
      setImmediate(() => requestStop('kith stop'))
      return { stopping: true, pid: process.pid }
    }
  }
  let api
  try {
    const token = await apiToken(paths.apiToken, daemon.loosened.includes(paths.apiToken))
    api = await startApiServer({ host, port, token, routes: [...routes(daemon), stopRoute], events: daemon, dashboard: true })
    await writeApiInfo(paths, api.url, daemon.identity.peerId.toString())
  } catch (err) {
    await daemon.stop()
    throw new KithError('BAD_REQUEST', `can't start the local API on ${host}:${port}: ${(err as Error).message}`, { cause: err })
  }

  // what Node compiled to start the daemon, kept for the next start now (bin/kith.js enables the
  // cache); at exit would be too late for a daemon that is killed
  module.flushCompileCache?.()
  // started: code that runs hot from now on is worth V8's optimizing (daemon-heap.ts)
  releaseAfterStart()

  const status = daemon.status()
  if (options.json === true) {
    console.log(JSON.stringify({ ...status, api: api.url }))
  } else {
    console.log(`kith node ${status.peerId} (${status.name})`)
    console.log(`home     ${status.home}`)
    for (const addr of status.addrs) console.log(`listen   ${addr}`)
    console.log(`api      ${api.url}`)
    console.log(`friends  ${status.friends.total}`)
    if (daemon.loosened.length > 0) {
      const count = daemon.loosened.length
      console.log(`private  other users could read ${count} ${count === 1 ? 'entry' : 'entries'} in the home: made private again${daemon.loosened.includes(paths.apiToken) ? ', with a new API token' : ''}`)
    }
  }
  if (options.json !== true) {
    daemon.on('event', evt => {
      const at = new Date().toISOString()
      // labels came from friends' display names: escaped like all the CLI prints
      if ('label' in evt) console.log(terminalText(`${at} ${evt.type} ${evt.label}`))
      else if ('friend' in evt) console.log(terminalText(`${at} ${evt.type} ${evt.friend.label}`))
      else if (evt.type === 'transfer:state') console.log(`${at} transfer ${evt.transfer.id} ${evt.transfer.state}${evt.transfer.error != null ? ` ${evt.transfer.error.code}` : ''}`)
    })
  }

  await new Promise<void>(resolve => {
    let stopping = false
    const stop = (signal: string): void => {
      if (stopping) return
      stopping = true
      if (options.json !== true) console.log(`${signal}: stopping`)
      const done = async (): Promise<void> => {
        await api.close()
        await daemon.stop()
      }
      done().catch(err => console.error(`kith: error while stopping: ${(err as Error).message}`)).finally(resolve)
    }
    requestStop = stop
    process.once('SIGINT', () => stop('SIGINT'))
    process.once('SIGTERM', () => stop('SIGTERM'))
  })
}
