import { Resolver } from 'node:dns'
import { isIP, type LookupFunction } from 'node:net'
import { Agent, buildConnector, Dispatcher, ProxyAgent, interceptors } from 'undici'
import { KithError } from '../../../errors.ts'
import { exempt } from '../no-proxy.ts'
import type { DownloadSettings } from '../addon.ts'

/**
 * The undici dispatcher one download uses: its proxies (settings first, then
 * HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY as config.json's defaults
 * already hold them), IPv4 only when IPv6 is switched off, the configured DNS
 * servers instead of the system's, and the connect and read timeouts.
 * Closed by the caller when the download ends.
 *
 * `guard`, when given, sees every direct connection once it is made (the
 * address actually connected to, after DNS) and may refuse it by returning
 * an error: the local proxy refuses private origins this way, so a name that
 * resolves to a public address first and a private one later can't slip by.
 * Connections to a configured proxy server are not guarded (the proxy
 * resolves the origin's name).
 *
 * `connections`, when given, caps the connections to one origin: the HTTP
 * engine's N connections are N workers each with one request at a time, and
 * without the cap undici opens a new connection for a worker's next request
 * when the one its last response came on is not yet marked free (measured:
 * 15-16 connections for 8 workers fetching 1 MiB pieces from nginx), each a
 * handshake and a slow start, and more than N against an origin that limits
 * per connection.
 */
export function makeDispatcher (settings: DownloadSettings, guard?: ConnectGuard, connections?: number): Dispatcher {
  const { http, https, all, noProxy } = settings.proxy
  const httpProxy = checkProxy(http ?? all)
  const httpsProxy = checkProxy(https ?? all)
  const family = settings.ipv6 ? 0 : 4
  const lookup = settings.dns.length > 0 ? serverLookup(settings.dns) : undefined
  const connect = { timeout: settings.connectTimeoutMs, family, ...(lookup != null ? { lookup } : {}) }
  const agent = {
    connect: guard != null ? guarded(buildConnector(connect), guard) : connect,
    headersTimeout: settings.readTimeoutMs,
    bodyTimeout: settings.readTimeoutMs,
    ...(connections != null ? { connections } : {})
  }
  const direct = new Agent(agent)
  if (httpProxy == null && httpsProxy == null) return direct
  return new ProxyRouter(direct, {
    'http:': httpProxy != null ? new ProxyAgent({ ...agent, uri: httpProxy }) : direct,
    'https:': httpsProxy != null ? new ProxyAgent({ ...agent, uri: httpsProxy }) : direct
  }, noProxy)
}

/**
 * Each request to its scheme's proxy, or straight to the origin when NO_PROXY
 * names its host as no-proxy.ts reads it (the reading ftp and sftp use too;
 * undici's EnvHttpProxyAgent would match differently). Per request, not per
 * download: a redirect may lead to another host.
 */
class ProxyRouter extends Dispatcher {
  readonly #direct: Dispatcher
  readonly #proxies: Readonly<Record<'http:' | 'https:', Dispatcher>>
  readonly #noProxy: string | null

  constructor (direct: Dispatcher, proxies: Readonly<Record<'http:' | 'https:', Dispatcher>>, noProxy: string | null) {
    super()
    this.#direct = direct
    this.#proxies = proxies
    this.#noProxy = noProxy
  }

  override dispatch (options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const origin = new URL(String(options.origin))
    const via = exempt(origin, this.#noProxy) ? this.#direct : (this.#proxies[origin.protocol as 'http:' | 'https:'] ?? this.#direct)
    return via.dispatch(options, handler)
  }

  override close (): Promise<void>
  override close (callback: () => void): void
  override close (callback?: () => void): Promise<void> | void {
    return settle(Promise.all(this.#all().map(async d => { await d.close() })), callback)
  }

  override destroy (): Promise<void>
  override destroy (err: Error | null): Promise<void>
  override destroy (callback: () => void): void
  override destroy (err: Error | null, callback: () => void): void
  override destroy (errOrCallback?: Error | null | (() => void), callback?: () => void): Promise<void> | void {
    const err = typeof errOrCallback === 'function' ? null : (errOrCallback ?? null)
    return settle(Promise.all(this.#all().map(async d => { await d.destroy(err) })), typeof errOrCallback === 'function' ? errOrCallback : callback)
  }

  #all (): Dispatcher[] {
    return [...new Set([this.#direct, ...Object.values(this.#proxies)])]
  }
}

/** undici's two call styles: a promise, or a callback when one is given */
function settle (work: Promise<unknown>, callback: (() => void) | undefined): Promise<void> | void {
  const done = work.then(() => {})
  if (callback == null) return done
  void done.then(callback, callback)
}

/** Looks at a connection just made: an Error refuses it (the request fails with that error). */
export type ConnectGuard = (address: { address: string, family: string, hostname: string }) => Error | null

function guarded (connector: buildConnector.connector, guard: ConnectGuard): buildConnector.connector {
  return (options, callback) => connector(options, (err, socket) => {
    if (err != null || socket == null) { callback(err ?? new Error('no socket'), null); return }
    const refusal = guard({ address: socket.remoteAddress ?? '', family: socket.remoteFamily ?? '', hostname: options.hostname })
    if (refusal == null) { callback(null, socket); return }
    socket.destroy()
    callback(refusal, null)
  })
}

/** undici's proxy agents speak to HTTP(S) proxies; a SOCKS ALL_PROXY is refused in words. */
function checkProxy (url: string | null): string | null {
  if (url == null || url === '') return null
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    throw new KithError('PROXY_UNSUPPORTED', `the proxy ${JSON.stringify(url)} is not a URL; set it as http://HOST:PORT`)
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new KithError('PROXY_UNSUPPORTED', `the proxy ${JSON.stringify(url)} is ${parsed.protocol.slice(0, -1)}; kith's HTTP downloads go through http:// or https:// proxies only`)
  }
  return url
}

/** `dispatcher`, following up to `max` redirects (the local proxy's origin side) */
export function followingRedirects (dispatcher: Dispatcher, max: number): Dispatcher {
  return dispatcher.compose(interceptors.redirect({ maxRedirections: max }))
}

/**
 * A `lookup` for net.connect that asks the given DNS servers ("IP" or
 * "IP:PORT") instead of the system resolver; IPv4 addresses first, IPv6 ones
 * only when the connection may use them (family 0 or 6).
 */
export function serverLookup (servers: readonly string[]): LookupFunction {
  const resolver = new Resolver()
  resolver.setServers([...servers])
  return (hostname, options, callback) => {
    const done = callback as (err: NodeJS.ErrnoException | null, address: string | Array<{ address: string, family: number }>, family?: number) => void
    const literal = isIP(hostname)
    const answer = (list: Array<{ address: string, family: number }>): void => {
      if (list.length === 0) {
        const err: NodeJS.ErrnoException = new Error(`${hostname}: no address from the DNS servers ${servers.join(', ')}`)
        err.code = 'ENOTFOUND'
        done(err, '')
      } else if (options.all === true) done(null, list)
      else done(null, list[0]!.address, list[0]!.family)
    }
    if (literal !== 0) { answer([{ address: hostname, family: literal }]); return }
    const family = options.family === 'IPv4' ? 4 : options.family === 'IPv6' ? 6 : (options.family ?? 0)
    const v4 = new Promise<string[]>(resolve => family === 6 ? resolve([]) : resolver.resolve4(hostname, (err, a) => resolve(err != null ? [] : a)))
    const v6 = new Promise<string[]>(resolve => family === 4 ? resolve([]) : resolver.resolve6(hostname, (err, a) => resolve(err != null ? [] : a)))
    void Promise.all([v4, v6]).then(([a, b]) => answer([...a.map(address => ({ address, family: 4 })), ...b.map(address => ({ address, family: 6 }))]))
  }
}
