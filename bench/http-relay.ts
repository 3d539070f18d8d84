import { createServer } from 'node:http'
import { pipeline } from 'node:stream/promises'
import { Agent, request } from 'undici'

/**
 * A ceiling for bench/proxy.ts: the barest Node relay, in a process of its
 * own as the daemon is: each request's path fetched from ORIGIN with undici
 * and piped to the client with stream.pipeline, nothing else. Prints one
 * JSON line, {"url": "http://127.0.0.1:PORT"}, then serves until killed.
 *
 *   node bench/http-relay.ts ORIGIN
 */
const origin = process.argv[2]
if (origin == null) throw new Error('usage: node bench/http-relay.ts ORIGIN')
const agent = new Agent()
const server = createServer((req, res) => {
  void request(`${origin}${req.url ?? '/'}`, { dispatcher: agent }).then(async answer => {
    res.writeHead(answer.statusCode, { 'content-length': String(answer.headers['content-length']) })
    await pipeline(answer.body, res)
  }).catch(() => res.destroy())
})
server.listen(0, '127.0.0.1', () => {
  console.log(JSON.stringify({ url: `http://127.0.0.1:${(server.address() as { port: number }).port}` }))
})
