import { createHash } from 'node:crypto'
import { open } from 'node:fs/promises'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import type { Stream } from '@libp2p/interface'
import { createNode } from '../src/peer/node.ts'
import { tuneDaemonHeap } from '../src/services/daemon-heap.ts'
import { writeAll } from '../src/transfer/assemble.ts'
import { BufferPool } from '../src/transfer/buffer-pool.ts'
import { FrameReader, MAX_RESPONSE_FRAME, decodeResponse, encodeChunk, sendFrame } from '../src/transfer/chunk-protocol.ts'
import { CHUNK_SIZE } from '../src/transfer/constants.ts'
import { chunkId, deriveSealKeys, openChunk, resealChunkParts, verifySealed, type ChunkPosition } from '../src/transfer/seal.ts'
import { ownPeakRss, cpuMs, threadCpuSeconds, threadSleeps } from './lib.ts'

/**
 * Ceiling (c): the work every chunk of a kith fetch needs, alone on one plain
 * libp2p stream (the same nodes as ceiling (b)), with none of kith's requests,
 * scheduling, chunk store or LevelDB. The sender reads each 1 MiB chunk,
 * seals it (AES-256-GCM) with a nonce it holds and hashes the sealed bytes,
 * as a holder does before serving (`resealChunkParts`: the nonce's HMAC pass
 * over the chunk is the share's work, done once, not the holder's); it sends
 * CHUNK frames with kith's `sendFrame`. The receiver reads
 * them with kith's `FrameReader`, checks each against its id (SHA-256), opens
 * it into a reused buffer, writes it at its offset (up to WRITES_IN_FLIGHT
 * writes at once) and hashes the whole file in order.
 *
 * So (b) is what the transport costs, (c) what the transport plus the
 * per-chunk crypto and disk work cost, and kith's fetch against (c) is what
 * kith's own machinery costs.
 *
 *   node bench/chunk-path-peer.ts recv OUTFILE      prints {"addr"}, then {"bytes","ms","peakRss","cpuMs","mainCpuMs","mainSleeps"}
 *   node bench/chunk-path-peer.ts send ADDR SRCFILE prints {"bytes","ms","peakRss","cpuMs","mainCpuMs","mainSleeps"} once closed
 *
 * cpuMs is the process's CPU, mainCpuMs its main thread's alone (the event
 * loop, which bounds each end; the rest is V8's and libuv's threads), and
 * mainSleeps how often that thread went idle (each wake-up after costs the
 * event loop's round again).
 *
 * With BENCH_SEND_ON_SIGNAL=1 the sender prints {"ready"} once its node is
 * up and sends only on SIGUSR2, so a profiler can attach to both ends first.
 */
const PROTOCOL = '/kith-bench/chunk-path/1.0.0'
const WRITES_IN_FLIGHT = 4
/** a benchmark key and place: both ends derive the same keys */
const SHARE_ID = 'b'.repeat(64)
const FILE_HASH = 'c'.repeat(64)
const KEYS = deriveSealKeys(new Uint8Array(32).fill(9), SHARE_ID)

const [role, a, b] = process.argv.slice(2)
tuneDaemonHeap()

const place = (index: number): ChunkPosition => ({ shareId: SHARE_ID, fileHash: FILE_HASH, index })
/** the nonce a holder keeps for each chunk (from the share); any distinct 12 bytes do here */
const nonceOf = (index: number): Uint8Array => {
  const nonce = Buffer.alloc(12)
  nonce.writeUInt32BE(index, 8)
  return nonce
}

const node = await createNode({
  privateKey: await generateKeyPair('Ed25519'),
  listen: role === 'recv' ? ['/ip4/127.0.0.1/tcp/0'] : [],
  // the sender listens nowhere, so the default policy would refuse to dial the receiver on loopback
  dialPolicy: { loopback: true },
  gater: {}
})

async function receive (stream: Stream, out: string): Promise<void> {
  const started = performance.now()
  const cpuStart = process.cpuUsage()
  const mainStart = await threadCpuSeconds(process.pid)
  const sleepsStart = await threadSleeps(process.pid)
  const frames = new BufferPool(WRITES_IN_FLIGHT + 2)
  const plaintexts = new BufferPool(WRITES_IN_FLIGHT + 2)
  const reader = new FrameReader(stream, { maxFrame: MAX_RESPONSE_FRAME, highWater: MAX_RESPONSE_FRAME + 16, pause: true, buffers: frames })
  const handle = await open(out, 'w')
  const whole = createHash('sha256')
  const writing = new Set<Promise<void>>()
  let bytes = 0
  for (let index = 0; ; index++) {
    const body = await reader.next()
    if (body === undefined) break
    const response = decodeResponse(body)
    if (response.type !== 'chunk') throw new Error(`expected a CHUNK frame, got ${response.type}`)
    verifySealed(response.id, response.sealed)
    const plaintext = openChunk(KEYS, place(index), response.sealed, plaintexts)
    frames.give(body)
    whole.update(plaintext)
    const write = writeAll(handle, plaintext, index * CHUNK_SIZE).finally(() => {
      plaintexts.give(plaintext)
      writing.delete(write)
    })
    writing.add(write)
    bytes += plaintext.length
    while (writing.size >= WRITES_IN_FLIGHT) await Promise.race(writing)
  }
  await Promise.all(writing)
  await handle.close()
  whole.digest()
  reader.dispose()
  await stream.close()
  console.log(JSON.stringify({ bytes, ms: performance.now() - started, peakRss: ownPeakRss(), cpuMs: cpuMs(cpuStart), mainCpuMs: ((await threadCpuSeconds(process.pid)) - mainStart) * 1000, mainSleeps: (await threadSleeps(process.pid)) - sleepsStart }))
}

async function send (addr: string, src: string): Promise<void> {
  if (process.env.BENCH_SEND_ON_SIGNAL === '1') {
    const go = new Promise(resolve => process.once('SIGUSR2', resolve))
    console.log(JSON.stringify({ ready: true }))
    await go
  }
  const stream = await node.dialProtocol(multiaddr(addr), PROTOCOL)
  const started = performance.now()
  const cpuStart = process.cpuUsage()
  const mainStart = await threadCpuSeconds(process.pid)
  const sleepsStart = await threadSleeps(process.pid)
  const handle = await open(src, 'r')
  const { size } = await handle.stat()
  const plaintexts = new BufferPool(2)
  const signal = new AbortController().signal
  // the next chunk is read and sealed while this one is sent, as a holder reads ahead
  const prepare = async (index: number): Promise<{ id: string, sealed: Uint8Array[] }> => {
    const plaintext = plaintexts.take(Math.min(CHUNK_SIZE, size - index * CHUNK_SIZE))
    try {
      for (let at = 0; at < plaintext.length;) {
        const { bytesRead } = await handle.read(plaintext, at, plaintext.length - at, index * CHUNK_SIZE + at)
        if (bytesRead === 0) throw new Error(`${src} ended early`)
        at += bytesRead
      }
      const sealed = resealChunkParts(KEYS, place(index), plaintext, nonceOf(index))
      return { id: chunkId(sealed), sealed }
    } finally {
      plaintexts.give(plaintext)
    }
  }
  const chunks = Math.ceil(size / CHUNK_SIZE)
  let next = chunks > 0 ? prepare(0) : undefined
  for (let index = 0; index < chunks; index++) {
    const { id, sealed } = await next!
    next = index + 1 < chunks ? prepare(index + 1) : undefined
    await sendFrame(stream, encodeChunk(id, sealed), { signal, peer: node.peerId })
  }
  await handle.close()
  await stream.close()
  console.log(JSON.stringify({ bytes: size, ms: performance.now() - started, peakRss: ownPeakRss(), cpuMs: cpuMs(cpuStart), mainCpuMs: ((await threadCpuSeconds(process.pid)) - mainStart) * 1000, mainSleeps: (await threadSleeps(process.pid)) - sleepsStart }))
}

if (role === 'recv') {
  await node.handle(PROTOCOL, (stream: Stream) => {
    receive(stream, a!).catch((err: Error) => {
      console.error(`receiving failed: ${err.message}`)
      process.exit(1)
    })
  }, { maxInboundStreams: 1 })
  console.log(JSON.stringify({ addr: node.getMultiaddrs()[0]?.toString() }))
} else if (role === 'send') {
  await send(a!, b!)
} else {
  console.error('usage: chunk-path-peer.ts recv OUTFILE | send ADDR SRCFILE')
  process.exit(2)
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => { Promise.resolve(node.stop()).finally(() => process.exit(0)) })
}
