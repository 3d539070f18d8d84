import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'

/**
 * A small HTTP file server of the tests' own (node:http) that misbehaves on
 * demand, for what nginx won't do: drop a connection mid-piece, answer 200 to
 * a Range request, serve another version of the file between two requests,
 * answer 503 or 429 with Retry-After, redirect in a loop, send more bytes than
 * its Content-Length, stall, or send a body of unknown length.
 *
 * It serves the files of `files` (path -> content), taking Range and If-Range
 * (by ETag) like a correct server unless `fault` says otherwise for a request;
 * every request is logged with the body bytes it was sent.
 */
export type Fault =
  /** send `after` bytes of the body, then cut the connection */
  | { kind: 'drop', after: number }
  /** send `after` bytes, then nothing more (the connection stays open) */
  | { kind: 'stall', after: number }
  /** a status with no body; `retryAfter` as the header's text */
  | { kind: 'status', status: number, retryAfter?: string }
  /** the whole file with 200, whatever Range said */
  | { kind: 'ignore-range' }
  /** the right headers, then `extra` bytes more than Content-Length */
  | { kind: 'extra', extra: number }
  /** 302 to `to` */
  | { kind: 'redirect', to: string }
  /** 200, chunked, no Content-Length */
  | { kind: 'chunked' }
  /** a range answered with no size: `Content-Range: bytes A-B/*` */
  | { kind: 'unsized' }

export interface Served {
  path: string
  range: string | undefined
  ifRange: string | undefined
  status: number
  /** body bytes written for it */
  bytes: number
  /** performance.now() when it came */
  at: number
  /** Date.now() when it came, to compare with an HTTP-date */
  wall: number
  /** connections open when it came, its own included */
  open: number
}

export interface FaultServer {
  url: string
  /** path -> content; replace an entry to change the file at the origin (its ETag follows the content) */
  files: Map<string, Buffer>
  log: Served[]
  /** body bytes sent for requests of `path` */
  sent: (path: string) => number
  stop: () => Promise<void>
}

export function etagOf (content: Buffer): string {
  return `"${createHash('sha256').update(content).digest('hex').slice(0, 16)}"`
}

/** `host`: where to listen, 127.0.0.1 unless a test wants ::1 */
export async function startFaultServer (fault: (req: IncomingMessage, index: number) => Fault | undefined = () => undefined, host = '127.0.0.1'): Promise<FaultServer> {
  const files = new Map<string, Buffer>()
  const log: Served[] = []
  const sockets = new Set<Socket>()
  const server = createServer((req, res) => {
    const entry: Served = { path: req.url ?? '', range: req.headers.range, ifRange: req.headers['if-range'] as string | undefined, status: 0, bytes: 0, at: performance.now(), wall: Date.now(), open: sockets.size }
    log.push(entry)
    serve(req, res, entry, fault(req, log.length - 1))
  })
  server.on('connection', socket => { sockets.add(socket); socket.once('close', () => sockets.delete(socket)) })

  function serve (req: IncomingMessage, res: ServerResponse, entry: Served, f: Fault | undefined): void {
    const send = (status: number, headers: Record<string, string | number>, body?: Buffer): void => {
      entry.status = status
      entry.bytes = body?.length ?? 0
      res.writeHead(status, headers)
      res.end(body)
    }
    if (f?.kind === 'redirect') return send(302, { location: f.to, 'content-length': 0 })
    if (f?.kind === 'status') return send(f.status, { 'content-length': 0, ...(f.retryAfter != null ? { 'retry-after': f.retryAfter } : {}) })
    const content = files.get(entry.path)
    if (content == null) return send(404, { 'content-length': 0 })
    const etag = etagOf(content)
    const common = { etag, 'accept-ranges': 'bytes', 'content-type': 'application/octet-stream' }
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '')
    const rangeOk = range != null && f?.kind !== 'ignore-range' && (entry.ifRange == null || entry.ifRange === etag)
    let status = 200
    let start = 0
    let end = content.length
    if (rangeOk) {
      start = Number(range[1])
      end = range[2] !== '' ? Math.min(content.length, Number(range[2]) + 1) : content.length
      if (start >= content.length) return send(416, { 'content-range': `bytes */${content.length}`, 'content-length': 0 })
      status = 206
    }
    const body = content.subarray(start, end)
    const headers: Record<string, string | number> = { ...common, 'content-length': body.length }
    if (status === 206) headers['content-range'] = `bytes ${start}-${end - 1}/${f?.kind === 'unsized' ? '*' : content.length}`
    entry.status = status
    if (f?.kind === 'chunked') {
      delete headers['content-length']
      res.writeHead(status, headers)
      entry.bytes = body.length
      res.end(body)
      return
    }
    if (f?.kind === 'extra') {
      // past node:http's own checks: the raw response, with garbage after the body
      const head = `HTTP/1.1 ${status} ${status === 206 ? 'Partial Content' : 'OK'}\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}`).join('\r\n')}\r\n\r\n`
      entry.bytes = body.length + f.extra
      res.socket!.end(Buffer.concat([Buffer.from(head), body, Buffer.alloc(f.extra, 0x58)]))
      return
    }
    if (f?.kind === 'drop' || f?.kind === 'stall') {
      res.writeHead(status, headers)
      const part = body.subarray(0, f.after)
      entry.bytes = part.length
      res.write(part, () => { if (f.kind === 'drop') res.socket?.destroy() })
      return
    }
    entry.bytes = body.length
    res.writeHead(status, headers)
    res.end(body)
  }

  server.listen(0, host)
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    files,
    log,
    sent: path => log.filter(e => e.path === path).reduce((sum, e) => sum + e.bytes, 0),
    stop: async () => {
      for (const s of sockets) s.destroy()
      server.close()
      await once(server, 'close')
    }
  }
}
