import { createServer, type Server } from 'node:http'
import { once } from 'node:events'

/**
 * A real node:http server on 127.0.0.1 serving fixed bodies by path, with
 * Range (one range, 206) and an ETag, optionally at a limited rate, or
 * holding each body after its first bytes until `gate` resolves, so a
 * download is still running when a test acts on it. For the download queue's
 * tests; the HTTP engine's fault cases have their own server.
 */
export interface RangeServer {
  url: (path: string) => string
  /** requests served, by path */
  hits: Map<string, number>
  close: () => Promise<void>
}

export async function rangeServer (files: Record<string, Buffer>, options: { bytesPerSecond?: number, gate?: Promise<void> } = {}): Promise<RangeServer> {
  const hits = new Map<string, number>()
  const server: Server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname
    const body = files[path]
    hits.set(path, (hits.get(path) ?? 0) + 1)
    if (body === undefined) {
      res.writeHead(404).end('not found')
      return
    }
    const etag = `"${body.length}"`
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '')
    let start = 0
    let end = body.length - 1
    if (range != null && (req.headers['if-range'] === undefined || req.headers['if-range'] === etag)) {
      start = Number(range[1])
      end = range[2] !== '' ? Math.min(Number(range[2]), end) : end
      if (start > end) {
        res.writeHead(416, { 'content-range': `bytes */${body.length}` }).end()
        return
      }
      res.writeHead(206, { 'content-range': `bytes ${start}-${end}/${body.length}`, 'content-length': end - start + 1, etag, 'accept-ranges': 'bytes' })
    } else {
      res.writeHead(200, { 'content-length': body.length, etag, 'accept-ranges': 'bytes' })
    }
    if (req.method === 'HEAD') {
      res.end()
      return
    }
    const gate = options.gate
    if (gate !== undefined) {
      // the first byte now (the download is running), the rest once the test opens the gate
      res.write(body.subarray(start, start + 1))
      void gate.then(() => { if (!res.destroyed) res.end(body.subarray(start + 1, end + 1)) })
      return
    }
    const rate = options.bytesPerSecond
    if (rate === undefined) {
      res.end(body.subarray(start, end + 1))
      return
    }
    // a slice every 50 ms at the rate asked: slow enough to act on mid-download
    const slice = Math.max(1, Math.floor(rate / 20))
    let at = start
    const timer = setInterval(() => {
      if (at > end || res.destroyed) {
        clearInterval(timer)
        res.end()
        return
      }
      res.write(body.subarray(at, Math.min(end + 1, at + slice)))
      at += slice
    }, 50)
    res.on('close', () => clearInterval(timer))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  return {
    url: path => `http://127.0.0.1:${port}${path}`,
    hits,
    close: async () => {
      server.closeAllConnections()
      server.close()
      await once(server, 'close')
    }
  }
}
