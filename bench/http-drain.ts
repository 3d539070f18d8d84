import { connect } from 'node:net'
import { Agent, request } from 'undici'
import { ownPeakRss } from './lib.ts'

/**
 * A ceiling for bench/downloads.ts: how fast one Node 24 process receives the
 * file from nginx on one connection when it does nothing with the bytes.
 * `net`: a plain node:net socket (a one-line GET, the response read and
 * dropped): Node's own receive path. `undici`: undici's request() with its
 * body read and dropped: what kith's engine is built on. Prints one JSON
 * line: bytes, ms, peak RSS.
 *
 *   node bench/http-drain.ts net|undici URL
 */
const [mode, href] = process.argv.slice(2)
if ((mode !== 'net' && mode !== 'undici') || href == null) throw new Error('usage: node bench/http-drain.ts net|undici URL')
const url = new URL(href)
const started = performance.now()
let bytes = 0
if (mode === 'net') {
  await new Promise<void>((resolve, reject) => {
    const socket = connect(Number(url.port), url.hostname, () => socket.write(`GET ${url.pathname} HTTP/1.1\r\nHost: ${url.host}\r\nConnection: close\r\n\r\n`))
    socket.on('data', (chunk: Buffer) => { bytes += chunk.length })
    socket.once('end', resolve)
    socket.once('error', reject)
  })
} else {
  const res = await request(url, { dispatcher: new Agent() })
  for await (const chunk of res.body as AsyncIterable<Buffer>) bytes += chunk.length
}
console.log(JSON.stringify({ bytes, ms: performance.now() - started, peakRss: ownPeakRss() }))
