import { createServer, type IncomingMessage, type ServerResponse, type Server } from 'node:http'
import { timingSafeEqual } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import { KithError, asKithError } from '../../errors.ts'
import type { Route, EventSource } from './routes.ts'

/**
 * The local HTTP API: loopback only, bearer token, JSON in and out, and a
 * server-sent event stream. Requests with a foreign Host header (DNS
 * rebinding) or any Origin header (a web page) are refused before routing.
 */
export const MAX_BODY_BYTES = 64 * 1024
export const SSE_KEEPALIVE_MS = 15_000

export interface ApiServerInit {
  host: string
  port: number
  token: string
  routes: Route[]
  events: EventSource
}

export interface ApiServer {
  url: string
  close: () => Promise<void>
}

export async function startApiServer (init: ApiServerInit): Promise<ApiServer> {
  const token = Buffer.from(init.token)
  const streams = new Set<ServerResponse>()
  let allowedHosts: Set<string> = new Set()

  const server: Server = createServer((req, res) => {
    handle(req, res).catch(err => sendError(res, asKithError(err)))
  })

  async function handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!allowedHosts.has(req.headers.host ?? '')) {
      throw new KithError('FORBIDDEN_ORIGIN', 'the Host header does not name this API; use the address in api.json')
    }
    if (req.headers.origin != null) {
      throw new KithError('FORBIDDEN_ORIGIN', 'requests from web pages are refused; call the API from a local program')
    }
    const auth = Buffer.from(req.headers.authorization ?? '')
    const expected = Buffer.concat([Buffer.from('Bearer '), token])
    if (auth.length !== expected.length || !timingSafeEqual(auth, expected)) {
      throw new KithError('UNAUTHORIZED', 'missing or wrong API token; send "Authorization: Bearer <token>" with the token from api.token in the kith home folder')
    }
    const url = new URL(req.url ?? '/', 'http://localhost')
    if (req.method === 'GET' && url.pathname === '/v1/events') {
      openEventStream(res)
      return
    }
    for (const route of init.routes) {
      if (route.method !== req.method) continue
      const match = route.path.exec(url.pathname)
      if (match == null) continue
      const body = req.method === 'GET' || req.method === 'DELETE' ? undefined : await readJson(req)
      const result = await route.handler({ params: match.groups ?? {}, body, query: url.searchParams })
      sendJson(res, 200, result)
      return
    }
    throw new KithError('NOT_FOUND', `no such API endpoint: ${req.method ?? ''} ${url.pathname}; see docs/api.md`)
  }

  function openEventStream (res: ServerResponse): void {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' })
    res.write(': kith events\n\n')
    streams.add(res)
    const keepalive = setInterval(() => res.write(': keepalive\n\n'), SSE_KEEPALIVE_MS)
    res.on('close', () => {
      clearInterval(keepalive)
      streams.delete(res)
    })
  }

  const onEvent = (evt: { type: string }): void => {
    const frame = `event: ${evt.type}\ndata: ${JSON.stringify(evt)}\n\n`
    for (const res of streams) res.write(frame)
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
  return {
    url: `http://${hostPart}:${address.port}`,
    close: async () => {
      init.events.off('event', onEvent)
      for (const res of streams) res.end()
      server.closeAllConnections()
      await new Promise<void>(resolve => server.close(() => resolve()))
    }
  }
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
  sendJson(res, err.status, { error: err.toJSON() })
}
