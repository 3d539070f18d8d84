import { createServer, connect } from 'node:net'
import { createReadStream, createWriteStream } from 'node:fs'
import { pipeline } from 'node:stream/promises'
import { MiB, ownPeakRss, cpuMs } from './lib.ts'

/**
 * Ceiling (a): one raw TCP socket between two processes on 127.0.0.1.
 *
 *   node bench/tcp-peer.ts recv OUTFILE      prints {"port"}, then {"bytes","ms","peakRss"}
 *   node bench/tcp-peer.ts send PORT SRCFILE prints {"bytes","ms","peakRss"} once all is written
 *
 * The receiver times from accepting the connection to the file being closed.
 */
const [role, a, b] = process.argv.slice(2)

if (role === 'recv') {
  const out = a!
  const server = createServer(socket => {
    server.close()
    const started = performance.now()
    const cpuStart = process.cpuUsage()
    let bytes = 0
    socket.on('data', (d: Buffer) => { bytes += d.length })
    pipeline(socket, createWriteStream(out, { highWaterMark: 4 * MiB })).then(() => {
      console.log(JSON.stringify({ bytes, ms: performance.now() - started, peakRss: ownPeakRss(), cpuMs: cpuMs(cpuStart) }))
    }, err => {
      console.error(err)
      process.exit(1)
    })
  })
  server.listen(0, '127.0.0.1', () => {
    const addr = server.address()
    console.log(JSON.stringify({ port: typeof addr === 'object' && addr != null ? addr.port : 0 }))
  })
} else if (role === 'send') {
  const port = Number(a)
  const src = b!
  const socket = connect(port, '127.0.0.1')
  socket.once('connect', () => {
    const started = performance.now()
    const cpuStart = process.cpuUsage()
    let bytes = 0
    const input = createReadStream(src, { highWaterMark: MiB })
    input.on('data', d => { bytes += d.length })
    pipeline(input, socket).then(() => {
      console.log(JSON.stringify({ bytes, ms: performance.now() - started, peakRss: ownPeakRss(), cpuMs: cpuMs(cpuStart) }))
    }, err => {
      console.error(err)
      process.exit(1)
    })
  })
} else {
  console.error('usage: tcp-peer.ts recv OUTFILE | send PORT SRCFILE')
  process.exit(2)
}
