/**
 * The local proxy (docs/proxy.md): BitTorrent DNA's URL form on
 * 127.0.0.1, so any program (a download manager, a player, curl) hands kith
 * a URL and gets the bytes, through the engine's bandwidth scheduler and
 * the HTTP engine's network settings, kept in a bounded cache for the next
 * request of the same file. With `friends` given, what the cache keeps is
 * offered to friends, and friends who hold a file serve it first (the
 * friend swarm, swarm/).
 *
 *   const proxy = await ProxyService.start({ db, home, bandwidth, config, friends: { libp2p, friends, secretKey } })
 *   proxy.info   // { url: 'http://127.0.0.1:PORT', port }, also in HOME/proxy.json
 *   await proxy.stop()
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import { join } from 'node:path'
import { rm } from 'node:fs/promises'
import type { Dispatcher } from 'undici'
import { asKithError, KithError } from '../../errors.ts'
import { sublevel, type Database } from '../../peer/database.ts'
import { writeFileAtomic } from '../../peer/home.ts'
import type { BandwidthScheduler } from '../../transfer/scheduler/index.ts'
import type { ConfigFile } from '../engine/index.ts'
import { MAX_REDIRECTS } from '../downloads/http/constants.ts'
import { queueSettings } from '../downloads/settings.ts'
import type { DownloadSettings } from '../downloads/addon.ts'
import type { PlacedDownload } from '../downloads/queue.ts'
import { ProxyCache, type CacheEntry } from './cache.ts'
import { CACHE_DIR, MAX_CONNECTIONS, PROXY_INFO } from './constants.ts'
import { checkCaller, checkOriginHost, originGuard } from './guard.ts'
import { parseProxyQuery } from './query.ts'
import { proxySettings, type ProxySettings } from './settings.ts'
import { ReadAhead } from './read-ahead.ts'
import { Swarm, type SwarmInit, type SwarmStats } from './swarm/index.ts'

// node:http taken as a CommonJS builtin, not imported: an ES import of it reads every export,
// and its lazy WebSocket, CloseEvent and MessageEvent getters load Node's own undici (about 90 ms of CPU and 5 MB
// at each daemon start, measured on Node 24.9)
const { createServer } = process.getBuiltinModule('node:http')

export interface ProxyServiceInit {
  db: Database
  home: string
  bandwidth: BandwidthScheduler
  config: ConfigFile | null
  /** the HTTP engine's network settings @default config.json's `downloads` section, as the download queue reads it */
  network?: DownloadSettings
  /** the friend swarm's parts; absent: origin only, nothing offered */
  friends?: Pick<SwarmInit, 'libp2p' | 'friends' | 'secretKey'>
}

export interface ProxyInfo {
  /** http://127.0.0.1:PORT: requests go to URL/proxy?url=... */
  url: string
  port: number
  /** entries and bytes in the cache */
  cache: { entries: number, bytes: number }
  /** what friends may fetch from this node, and where the swarm answers' bytes came from; null without the swarm */
  swarm: SwarmStats | null
}

/** What answers a /proxy request from the origin (and friends), loaded on first use. */
interface OriginSide {
  dispatcher: Dispatcher
  serve: typeof import('./serve.ts').serve
  OriginStatus: typeof import('./serve.ts').OriginStatus
}

export class ProxyService {
  private readonly server: Server
  private readonly network: DownloadSettings
  /** the origin side, loaded by the first /proxy request (originSide) */
  private origin: Promise<OriginSide> | null = null
  private loaded: OriginSide | null = null
  private readonly cache: ProxyCache
  private readonly settings: ProxySettings
  private readonly swarm: Swarm | null
  private readonly infoPath: string
  private readonly stopping = new AbortController()
  private readonly readAhead = new ReadAhead()
  private port = 0

  private constructor (server: Server, network: DownloadSettings, cache: ProxyCache, settings: ProxySettings, swarm: Swarm | null, infoPath: string) {
    this.server = server
    this.swarm = swarm
    this.network = network
    this.cache = cache
    this.settings = settings
    this.infoPath = infoPath
  }

  static async start (init: ProxyServiceInit): Promise<ProxyService> {
    const configPath = init.config?.path ?? join(init.home, 'config.json')
    const settings = proxySettings(init.config?.proxy, configPath)
    // the HTTP engine's network settings (proxies, IPv6, DNS, timeouts), with the private-origin guard on each connection
    const network = init.network ?? queueSettings(init.config?.downloads, configPath).network
    const swarm = init.friends != null ? await Swarm.start({ ...init.friends, db: init.db, bandwidth: init.bandwidth, serve: settings.serveFriends }) : null
    const cache = await ProxyCache.open({
      level: sublevel<CacheEntry>(init.db, 'proxy-cache'),
      dir: join(init.home, CACHE_DIR),
      maxBytes: settings.cacheBytes,
      ...(swarm != null
        ? {
            onKept: async (entry, path, chunks) => { await swarm.index.record({ urls: entry.urls, etag: entry.etag, lastModified: entry.lastModified, hash: entry.sha256, chunks, path, length: entry.length }) },
            onRemoved: async path => { await swarm.index.forget(path) }
          }
        : {})
    })
    const server = createServer()
    server.maxConnections = MAX_CONNECTIONS
    const service = new ProxyService(server, network, cache, settings, swarm, join(init.home, PROXY_INFO))
    server.on('request', (req, res) => {
      service.handle(req, res, init.bandwidth).catch(err => service.fail(res, asKithError(err)))
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', err => reject(new KithError((err as NodeJS.ErrnoException).code === 'EADDRINUSE' ? 'PORT_IN_USE' : 'INTERNAL', `the local proxy can't listen on 127.0.0.1:${settings.port}: ${err.message}; set another "proxy": {"port": N} in config.json (0: any free port)`)))
      server.listen(settings.port, '127.0.0.1', resolve)
    })
    service.port = (server.address() as { port: number }).port
    await writeFileAtomic(service.infoPath, JSON.stringify({ url: service.url, port: service.port, pid: process.pid }) + '\n', 0o600)
    return service
  }

  /**
   * Offers friends a file `kith get` fetched over http(s) and placed whole
   * (docs/proxy.md, "The friend swarm"); a failure only logs.
   */
  offer (file: PlacedDownload): void {
    if (this.swarm == null || (file.url.protocol !== 'http:' && file.url.protocol !== 'https:')) return
    this.swarm.offer({ urls: [file.url.href], path: file.path, size: file.size, placed: file.placed, sha256: file.sha256, ...file.validators }).catch(err => {
      console.error(`kith proxy: ${file.path} could not be offered to friends: ${(err as Error).message}`)
    })
  }

  get url (): string {
    return `http://127.0.0.1:${this.port}`
  }

  get info (): ProxyInfo {
    return { url: this.url, port: this.port, cache: { entries: this.cache.count, bytes: this.cache.size }, swarm: this.swarm?.stats ?? null }
  }

  async stop (): Promise<void> {
    this.stopping.abort(new KithError('FETCH_ABORTED', 'the daemon is stopping'))
    this.server.closeAllConnections()
    this.readAhead.stop()
    await new Promise<void>(resolve => this.server.close(() => resolve()))
    await this.swarm?.stop()
    const origin = await this.origin?.catch(() => null)
    await origin?.dispatcher.close().catch(() => {})
    await rm(this.infoPath, { force: true })
  }

  private async handle (req: IncomingMessage, res: ServerResponse, bandwidth: BandwidthScheduler): Promise<void> {
    checkCaller(req.headers, this.port)
    const raw = req.url ?? '/'
    const q = raw.indexOf('?')
    const path = q < 0 ? raw : raw.slice(0, q)
    if (path !== '/proxy') throw new KithError('NOT_FOUND', `no such path ${JSON.stringify(path.slice(0, 100))}; the proxy answers /proxy?url=ENCODED_URL (docs/proxy.md)`)
    if (req.method !== 'GET' && req.method !== 'HEAD') throw new KithError('PROXY_METHOD', `the proxy answers GET and HEAD, not ${req.method ?? ''}`)
    const query = parseProxyQuery(q < 0 ? '' : raw.slice(q + 1))
    for (const url of query.urls) checkOriginHost(url, this.settings.allowPrivateOrigins)
    const { serve, dispatcher } = await this.originSide()
    await serve(req, res, query, { dispatcher, cache: this.cache, bandwidth, signal: this.stopping.signal, swarm: this.swarm, readAhead: this.readAhead })
  }

  /**
   * undici, the HTTP engine's dispatcher and serve.ts, loaded by the first
   * /proxy request rather than at start: most daemons never proxy, and
   * undici alone costs a daemon's start ~0.2 s of CPU and its idle memory
   * some MB (it also loads Node's own copy of undici).
   */
  private async originSide (): Promise<OriginSide> {
    this.origin ??= (async () => {
      // (undici's names come through dispatcher.ts's static import: a CommonJS package imported dynamically has only a default export in the package's bundle)
      const [{ makeDispatcher, followingRedirects }, { serve, OriginStatus }] = await Promise.all([import('../downloads/http/dispatcher.ts'), import('./serve.ts')])
      const dispatcher = followingRedirects(makeDispatcher(this.network, originGuard(this.settings.allowPrivateOrigins)), MAX_REDIRECTS)
      this.loaded = { dispatcher, serve, OriginStatus }
      return this.loaded
    })()
    return await this.origin
  }

  /** An error as its status and a small JSON body with the stable code; once bytes went, a cut connection. */
  private fail (res: ServerResponse, err: KithError): void {
    // a client gone already hears nothing; one that has the status already can only be cut off
    if (res.headersSent || res.destroyed) { res.destroy(); return }
    const body = JSON.stringify({ error: err.toJSON() }) + '\n'
    res.writeHead(err.status, {
      ...(this.loaded != null && err instanceof this.loaded.OriginStatus ? err.headers : {}),
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
      'x-kith-error': err.code,
      ...(err.code === 'PROXY_CROSS_SITE' || err.code === 'PROXY_BAD_HOST' ? { connection: 'close' } : {})
    })
    res.end(body)
  }
}
