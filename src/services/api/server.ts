import type { IncomingMessage, ServerResponse, Server } from 'node:http'
import { timingSafeEqual } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import { KithError, asKithError } from '../../errors.ts'
import type { Route, EventSource } from './routes.ts'
import { createDashboard, type Dashboard } from './dashboard.ts'

// node:http taken as a CommonJS builtin, not imported: an ES import of it reads every export,
// and its lazy WebSocket, CloseEvent and MessageEvent getters load Node's own undici (about 90 ms of CPU and 5 MB
// at each daemon start, measured on Node 24.9)
const { createServer } = process.getBuiltinModule('node:http')

/**
 * The local HTTP API: loopback only, bearer token, JSON in and out, and a
 * server-sent event stream. Requests with a foreign Host header (DNS
 * rebinding) or any Origin header (a web page) are refused before routing,
 * except the web dashboard's own, which hold a session cookie instead of the
 * token and are checked by dashboard.ts (origin, CSRF header).
 *
 * Any local program can connect, token or not, so what a connection may hold
 * is bounded (ApiLimits, docs/api.md): sockets at once, time to send a
 * request, event streams at once, and what an event stream may have waiting
 * for a client that does not read.
 */
export const MAX_BODY_BYTES = 64 * 1024
export const SSE_KEEPALIVE_MS = 15_000

export interface ApiLimits {
  /** sockets open at once; more are closed as they connect @default 64 */
  maxConnections: number
  /** time from a socket's opening (or its previous request) to a request's complete headers; then 408 and closed @default 10 s */
  headersTimeoutMs: number
  /** time to send a whole request, body included @default 30 s */
  requestTimeoutMs: number
  /** an idle keep-alive socket between requests is closed after this @default 5 s */
  keepAliveTimeoutMs: number
  /** event streams open at once; one more is refused with EVENT_STREAMS_FULL @default 16 */
  maxEventStreams: number
  /** bytes an event stream may have waiting for a client that stopped reading; past it the stream is closed @default 1 MiB */
  maxEventBacklog: number
}

export const API_LIMITS: Readonly<ApiLimits> = {
  maxConnections: 64,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
  maxEventStreams: 16,
  maxEventBacklog: 1024 * 1024
}

export interface ApiServerInit {
  host: string
  port: number
  token: string
  routes: Route[]
  events: EventSource
  /** @default API_LIMITS */
  limits?: Partial<ApiLimits>
  /** serve the web dashboard (dashboard.ts) beside the API */
  dashboard?: boolean
}

export interface ApiServer {
  url: string
  /** event streams open now */
  eventStreams: () => number
  close: () => Promise<void>
}

export async function startApiServer (init: ApiServerInit): Promise<ApiServer> {
  const token = Buffer.from(init.token)
  const limits: ApiLimits = { ...API_LIMITS, ...init.limits }
  const streams = new Set<ServerResponse>()
  let allowedHosts: Set<string> = new Set()
  let dashboard: Dashboard | null = null

  const server: Server = createServer({
    // how often the headers and request timeouts are checked: a fraction of the shorter one
    connectionsCheckingInterval: Math.max(50, Math.min(1000, limits.headersTimeoutMs / 4))
  }, (req, res) => {
    handle(req, res).catch(err => sendError(res, asKithError(err)))
  })
  server.maxConnections = limits.maxConnections
  server.headersTimeout = limits.headersTimeoutMs
  server.requestTimeout = limits.requestTimeoutMs
  server.keepAliveTimeout = limits.keepAliveTimeoutMs

  async function handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!allowedHosts.has(req.headers.host ?? '')) {
      throw new KithError('FORBIDDEN_ORIGIN', 'the Host header does not name this API; use the address in api.json')
    }
    if (dashboard?.serves((req.url ?? '/').split('?')[0]!) === true) {
      await dashboard.page(req, res, parseUrl(req.url ?? '/'))
      return
    }
    const session = dashboard?.session(req) ?? null
    if (session != null) {
      dashboard!.check(req, session)
    } else {
      if (req.headers.origin != null) {
        throw new KithError('FORBIDDEN_ORIGIN', 'requests from web pages are refused; call the API from a local program')
      }
      const auth = Buffer.from(req.headers.authorization ?? '')
      const expected = Buffer.concat([Buffer.from('Bearer '), token])
      if (auth.length !== expected.length || !timingSafeEqual(auth, expected)) {
        throw new KithError('UNAUTHORIZED', 'missing or wrong API token; send "Authorization: Bearer <token>" with the token from api.token in the kith home folder')
      }
    }
    const url = parseUrl(req.url ?? '/')
    if (dashboard != null && req.method === 'POST' && url.pathname === '/v1/dashboard/login') {
      if (session != null) throw new KithError('UNAUTHORIZED', 'login links are made with the API token (kith open), not from the dashboard')
      sendJson(res, 200, dashboard.loginLink())
      return
    }
    if (session != null && req.method === 'POST' && url.pathname === '/v1/dashboard/logout') {
      dashboard!.logout(res, session)
      return
    }
    if (req.method === 'GET' && url.pathname === '/v1/events') {
      openEventStream(res)
      return
    }
    for (const route of init.routes) {
      if (route.method !== req.method) continue
      const match = route.path.exec(url.pathname)
      if (match == null) continue
      const body = req.method === 'GET' || req.method === 'DELETE' ? undefined : await readJson(req)
      // matched on the raw path (an escaped "/" stays inside its segment), then decoded once, here
      const params = Object.fromEntries(Object.entries(match.groups ?? {}).map(([k, v]) => [k, decodeURIComponent(v)]))
      const result = await route.handler({ params, body, query: url.searchParams })
      sendJson(res, 200, result)
      return
    }
    throw new KithError('NOT_FOUND', `no such API endpoint: ${req.method ?? ''} ${url.pathname}; see docs/api.md`)
  }

  function openEventStream (res: ServerResponse): void {
    if (streams.size >= limits.maxEventStreams) {
      throw new KithError('EVENT_STREAMS_FULL', `${limits.maxEventStreams} event streams are open already; close one (each \`kith events\` holds one) and try again`)
    }
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' })
    streams.add(res)
    const keepalive = setInterval(() => send(res, ': keepalive\n\n'), SSE_KEEPALIVE_MS)
    res.on('close', () => {
      clearInterval(keepalive)
      streams.delete(res)
    })
    send(res, ': kith events\n\n')
  }

  /** Writes to an event stream; one whose client stopped reading is closed, not buffered without end. */
  function send (res: ServerResponse, frame: string): void {
    res.write(frame)
    // what the response and its socket hold that the client has not taken
    if (res.writableLength > limits.maxEventBacklog) res.destroy()
  }

  const onEvent = (evt: { type: string }): void => {
    const frame = `event: ${evt.type}\ndata: ${JSON.stringify(evt)}\n\n`
    for (const res of streams) send(res, frame)
  }
  init.events.on('event', onEvent)

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(init.port, init.host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  const address = server.address() as AddressInfo
  const hostPart = address.family === 'IPv6' ? `[${address.address}]` : address.address
  allowedHosts = new Set([`${hostPart}:${address.port}`, `localhost:${address.port}`])
  if (init.dashboard === true) dashboard = createDashboard(`http://${hostPart}:${address.port}`, [...allowedHosts].map(h => `http://${h}`))
  return {
    url: `http://${hostPart}:${address.port}`,
    eventStreams: () => streams.size,
    close: async () => {
      init.events.off('event', onEvent)
      for (const res of streams) res.end()
      server.closeAllConnections()
      await new Promise<void>(resolve => server.close(() => resolve()))
    }
  }
}

/**
 * The request's URL. A percent-escape that does not decode (`%zz`, or `%ff`,
 * not UTF-8) is refused here, so no handler meets one.
 */
function parseUrl (raw: string): URL {
  let url: URL
  try {
    url = new URL(raw, 'http://localhost')
  } catch {
    throw malformedUrl()
  }
  for (const part of [url.pathname, ...url.search.slice(1).split(/[&=]/)]) {
    try {
      decodeURIComponent(part.replaceAll('+', ' '))
    } catch {
      throw malformedUrl()
    }
  }
  return url
}

function malformedUrl (): KithError {
  return new KithError('URL_MALFORMED', 'the request path or query has a percent-escape that does not decode to UTF-8 text; encode names with encodeURIComponent')
}

async function readJson (req: IncomingMessage): Promise<unknown> {
  const declared = Number(req.headers['content-length'] ?? 0)
  if (declared > MAX_BODY_BYTES) throw tooLarge()
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > MAX_BODY_BYTES) throw tooLarge()
    chunks.push(chunk as Buffer)
  }
  if (size === 0) return {}
  if (!/^application\/json\b/.test(req.headers['content-type'] ?? '')) {
    throw new KithError('BAD_REQUEST', 'send the request body as JSON with Content-Type: application/json')
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch {
    throw new KithError('BAD_REQUEST', 'the request body is not valid JSON')
  }
}

function tooLarge (): KithError {
  return new KithError('PAYLOAD_TOO_LARGE', `request bodies are limited to ${MAX_BODY_BYTES} bytes`)
}

function sendJson (res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' })
  res.end(text)
}

function sendError (res: ServerResponse, err: KithError): void {
  if (res.headersSent) {
    res.destroy()
    return
  }
  // a caller without the right to be here keeps no socket open
  if (err.code === 'UNAUTHORIZED' || err.code === 'FORBIDDEN_ORIGIN') res.setHeader('connection', 'close')
  sendJson(res, err.status, { error: err.toJSON() })
}
