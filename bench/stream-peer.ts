import { createReadStream, createWriteStream } from 'node:fs'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import type { Stream } from '@libp2p/interface'
import { createNode } from '../src/peer/node.ts'
import { tuneDaemonHeap } from '../src/services/daemon-heap.ts'
import { MiB, ownPeakRss, cpuMs } from './lib.ts'

/**
 * Ceiling (b): one plain libp2p 3 stream between two nodes built exactly as
 * kith builds them (createNode: tcp + noise + yamux, identify, ping, DHT),
 * with an open gater, in two processes on 127.0.0.1. The receiver writes to
 * a file on disk.
 *
 *   node bench/stream-peer.ts recv OUTFILE      prints {"addr"}, then {"bytes","ms","peakRss"}
 *   node bench/stream-peer.ts send ADDR SRCFILE prints {"bytes","ms","peakRss"} once closed
 *
 * DESIGN.md's stream traps are respected: the sender waits while more than
 * WRITE_BUFFER_HIGH bytes are queued and awaits onDrain() when send() says
 * false; the receiver pauses while the file lags and finishes on 'end'.
 * Both ends run with the kith daemon's V8 heap settings (run.ts passes the
 * startup flags; the runtime ones are set here), as the ceiling must be
 * measured in kith's own configuration.
 */
const PROTOCOL = '/kith-bench/stream/1.0.0'
const WRITE_BUFFER_HIGH = 4 * MiB
const SEND_SIZE = MiB

const [role, a, b] = process.argv.slice(2)
tuneDaemonHeap()

/** Resolves on the next 'drain' or 'idle', rejects on 'close'. */
async function writeProgress (stream: Stream): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const done = (): void => { cleanup(); resolve() }
    const closed = (evt: Event): void => { cleanup(); reject((evt as Event & { error?: Error }).error ?? new Error('stream closed while sending')) }
    const cleanup = (): void => {
      stream.removeEventListener('drain', done)
      stream.removeEventListener('idle', done)
      stream.removeEventListener('close', closed)
    }
    stream.addEventListener('drain', done)
    stream.addEventListener('idle', done)
    stream.addEventListener('close', closed)
  })
}

const node = await createNode({
  privateKey: await generateKeyPair('Ed25519'),
  listen: role === 'recv' ? ['/ip4/127.0.0.1/tcp/0'] : [],
  // the sender listens nowhere, so the default policy would refuse to dial the receiver on loopback
  dialPolicy: { loopback: true },
  gater: {}
})

if (role === 'recv') {
  const out = a!
  await node.handle(PROTOCOL, (stream: Stream) => {
    const started = performance.now()
    const cpuStart = process.cpuUsage()
    const file = createWriteStream(out, { highWaterMark: 4 * MiB })
    let bytes = 0
    let paused = false
    let resuming = false
    // Trap (libp2p 3 + yamux 8): resume() dispatches the buffered data first and
    // only then tells yamux to resume. A pause() from inside that dispatch is
    // undone by yamux (it goes back to granting window) while the stream still
    // reads as paused, so the read buffer grows until it passes
    // maxReadBufferLength and the stream is reset. So never pause from inside
    // resume(): check after it returns.
    const onFileDrain = (): void => {
      paused = false
      resuming = true
      stream.resume()
      resuming = false
      if (file.writableNeedDrain) {
        paused = true
        stream.pause()
        file.once('drain', onFileDrain)
      }
    }
    stream.addEventListener('message', evt => {
      let ok = true
      const data = evt.data
      if (data instanceof Uint8Array) {
        bytes += data.byteLength
        ok = file.write(data)
      } else {
        for (const buf of data) {
          bytes += buf.byteLength
          ok = file.write(buf)
        }
      }
      if (!ok && !paused && !resuming) {
        paused = true
        stream.pause()
        file.once('drain', onFileDrain)
      }
    })
    stream.addEventListener('end', () => {
      file.end(() => {
        stream.close().catch(() => {}).finally(() => {
          console.log(JSON.stringify({ bytes, ms: performance.now() - started, peakRss: ownPeakRss(), cpuMs: cpuMs(cpuStart) }))
        })
      })
    })
    stream.addEventListener('close', evt => {
      if (evt.error != null) {
        console.error(`stream failed: ${evt.error.message}`)
        process.exit(1)
      }
    })
  }, { maxInboundStreams: 1 })
  const addr = node.getMultiaddrs()[0]
  console.log(JSON.stringify({ addr: addr?.toString() }))
} else if (role === 'send') {
  const src = b!
  const stream = await node.dialProtocol(multiaddr(a!), PROTOCOL)
  const started = performance.now()
    const cpuStart = process.cpuUsage()
  let bytes = 0
  for await (const buf of createReadStream(src, { highWaterMark: SEND_SIZE })) {
    while (stream.writeBufferLength > WRITE_BUFFER_HIGH) await writeProgress(stream)
    bytes += (buf as Buffer).byteLength
    if (!stream.send(buf as Buffer)) await stream.onDrain()
  }
  await stream.close()
  console.log(JSON.stringify({ bytes, ms: performance.now() - started, peakRss: ownPeakRss(), cpuMs: cpuMs(cpuStart) }))
} else {
  console.error('usage: stream-peer.ts recv OUTFILE | send ADDR SRCFILE')
  process.exit(2)
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => { Promise.resolve(node.stop()).finally(() => process.exit(0)) })
}
