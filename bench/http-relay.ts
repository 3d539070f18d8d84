import { createServer } from 'node:http'
import { connect, createServer as createTcpServer } from 'node:net'
import { pipeline } from 'node:stream/promises'
import { Agent, request } from 'undici'

/**
 * Ceilings for bench/proxy.ts, each in a process of its own as the daemon
 * is. Prints one JSON line, {"url": "http://127.0.0.1:PORT"}, then serves
 * until killed.
 *
 *   node bench/http-relay.ts ORIGIN        the barest Node HTTP relay: each request's path fetched from ORIGIN with
 *                                          undici and piped to the client with stream.pipeline, nothing else
 *   node bench/http-relay.ts ORIGIN tcp    the floor of any Node relay: each connection piped both ways to ORIGIN's
 *                                          port as bytes (net.Socket to net.Socket, no HTTP parsed)
 *
 * Tried for the HTTP relay and not kept (256 MiB from nginx, interleaved,
 * load 9-15 on 2 shared cores): undici's stream() writing straight into
 * the response, its dispatch() with pause/resume, node:http's client, a
 * 'data' loop, and a server highWaterMark of 256 KiB or 1 MiB. Each was
 * faster than pipeline in some rounds and slower in others; none was
 * steadily ahead in rate or CPU per MB. The tcp mode is steadily below
 * them all (1.5-2 CPU ms/MB against 2.5-5): what HTTP parsing and
 * streams cost on top of copying.
 */
const [origin, mode] = process.argv.slice(2)
if (origin == null || (mode != null && mode !== 'tcp')) throw new Error('usage: node bench/http-relay.ts ORIGIN [tcp]')
const ready = (address: unknown): void => { console.log(JSON.stringify({ url: `http://127.0.0.1:${(address as { port: number }).port}` })) }

if (mode === 'tcp') {
  const { hostname, port } = new URL(origin)
  const server = createTcpServer(client => {
    const upstream = connect(Number(port), hostname)
    client.pipe(upstream).pipe(client)
    client.on('error', () => upstream.destroy())
    upstream.on('error', () => client.destroy())
  })
  server.listen(0, '127.0.0.1', () => { ready(server.address()) })
} else {
  const agent = new Agent()
  const server = createServer((req, res) => {
    void request(`${origin}${req.url ?? '/'}`, { dispatcher: agent }).then(async answer => {
      res.writeHead(answer.statusCode, { 'content-length': String(answer.headers['content-length']) })
      await pipeline(answer.body, res)
    }).catch(() => res.destroy())
  })
  server.listen(0, '127.0.0.1', () => { ready(server.address()) })
}
