import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { createHash, randomBytes } from 'node:crypto'
import type { PeerId, Stream } from '@libp2p/interface'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import type { KithLibp2p } from '../../src/peer/node.ts'
import type { NoiseMessageStream } from '../../src/peer/noise-decrypt.ts'
import { SEAL_OVERHEAD, MAX_SEALED_CHUNK_SIZE } from '../../src/transfer/constants.ts'
import {
  CHUNK_PROTOCOL, COALESCE_BYTES, MAX_GET_IDS, MAX_HAVE_IDS, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME, SEND_HIGH_WATER, SEND_SLICE, STATUS,
  askHave, decodeBits, decodeFrame, decodeRequest, decodeResponse, encodeBits, encodeRequest, encodeResponse, encodeVarint,
  chunkHandler, encodeChunk, frame, getChunks, readLength, sendFrame, FrameReader, type ChunkItem, type ServedEvent
} from '../../src/transfer/chunk-protocol.ts'
import { expectCode, expectCodeAsync } from './helpers.ts'
import { learn, makeChunks, openStore, serve, startNode, tempDir, until, type Chunk, type InProcessSource, type TempStore } from '../helpers/chunks.ts'

function concat (parts: Uint8Array[]): Buffer {
  return Buffer.concat(parts)
}

function id (byte: number): string {
  return Buffer.alloc(32, byte).toString('hex')
}

describe('chunk protocol codec', () => {
  it('round-trips HAVE and GET requests', () => {
    const ids = [id(1), id(2), id(0xff)]
    expect(decodeRequest(encodeRequest({ type: 'have', ids }))).toEqual({ type: 'have', ids })
    expect(decodeRequest(encodeRequest({ type: 'get', ids }))).toEqual({ type: 'get', ids })
    const full = Array.from({ length: MAX_HAVE_IDS }, (_, i) => Buffer.alloc(32, i % 256).toString('hex'))
    const body = encodeRequest({ type: 'have', ids: full })
    expect(body.length).toBe(MAX_REQUEST_FRAME)
    expect(decodeRequest(body)).toEqual({ type: 'have', ids: full })
  })

  it('round-trips every response kind', () => {
    const sealed = randomBytes(1000)
    const chunk = decodeResponse(concat(encodeResponse({ type: 'chunk', id: id(7), sealed })))
    expect(chunk).toMatchObject({ type: 'chunk', id: id(7) })
    expect(Buffer.from((chunk as { sealed: Uint8Array }).sealed).equals(sealed)).toBe(true)
    expect(decodeResponse(concat(encodeResponse({ type: 'missing', id: id(8) })))).toEqual({ type: 'missing', id: id(8) })
    expect(decodeResponse(concat(encodeResponse({ type: 'error', status: STATUS.BUSY, message: 'busy\u0000now' }))))
      .toEqual({ type: 'error', status: STATUS.BUSY, message: 'busy now' })
    const long = decodeResponse(concat(encodeResponse({ type: 'error', status: STATUS.INTERNAL, message: 'é'.repeat(2000) })))
    expect(long.type === 'error' && Buffer.byteLength(long.message) <= 1024).toBe(true)
    for (const count of [1, 7, 8, 9, 100, MAX_HAVE_IDS]) {
      const held = Array.from({ length: count }, (_, i) => i % 3 === 0)
      const bits = encodeBits(held)
      const decoded = decodeResponse(concat(encodeResponse({ type: 'have-ok', bits })))
      expect(decoded.type).toBe('have-ok')
      expect(decodeBits((decoded as { bits: Uint8Array }).bits, count)).toEqual(held)
    }
  })

  it('sends a chunk without copying it', () => {
    const sealed = randomBytes(SEAL_OVERHEAD)
    const parts = encodeResponse({ type: 'chunk', id: id(1), sealed })
    expect(parts[1]).toBe(sealed)
  })

  it('frames and unframes', () => {
    const a = concat(frame([encodeRequest({ type: 'get', ids: [id(1)] })]))
    const b = concat(frame(encodeResponse({ type: 'missing', id: id(2) })))
    const first = decodeFrame(concat([a, b]), MAX_RESPONSE_FRAME)
    expect(decodeRequest(first.body)).toEqual({ type: 'get', ids: [id(1)] })
    expect(decodeResponse(decodeFrame(first.rest, MAX_RESPONSE_FRAME).body)).toEqual({ type: 'missing', id: id(2) })
    for (const n of [0, 1, 127, 128, 300, 16383, 16384, MAX_RESPONSE_FRAME]) {
      const v = encodeVarint(n)
      if (n >= 2) expect(readLength(i => v[i]!, v.length, MAX_RESPONSE_FRAME)).toEqual({ length: n, size: v.length })
    }
  })

  it('refuses truncated frames and bodies', () => {
    const whole = concat(frame([encodeRequest({ type: 'have', ids: [id(1), id(2)] })]))
    for (const cut of [0, 1, 2, whole.length - 1]) expectCode(() => decodeFrame(whole.subarray(0, cut), MAX_REQUEST_FRAME), 'CHUNK_FRAME_MALFORMED')
    const body = encodeRequest({ type: 'have', ids: [id(1), id(2)] })
    expectCode(() => decodeRequest(body.subarray(0, body.length - 1)), 'CHUNK_FRAME_MALFORMED')
    expectCode(() => decodeRequest(body.subarray(0, 2)), 'CHUNK_FRAME_MALFORMED')
    expectCode(() => decodeRequest(body.subarray(0, 1)), 'CHUNK_FRAME_MALFORMED')
    const missing = concat(encodeResponse({ type: 'missing', id: id(1) }))
    expectCode(() => decodeResponse(missing.subarray(0, 33)), 'CHUNK_FRAME_MALFORMED')
    expectCode(() => decodeResponse(concat([missing, Buffer.of(0)])), 'CHUNK_FRAME_MALFORMED')
    const tiny = concat(encodeResponse({ type: 'chunk', id: id(1), sealed: randomBytes(SEAL_OVERHEAD) }))
    expectCode(() => decodeResponse(tiny.subarray(0, tiny.length - 1)), 'CHUNK_FRAME_MALFORMED')
    expectCode(() => decodeResponse(Buffer.of(1, 0xff)), 'CHUNK_FRAME_MALFORMED') // ERROR without status
  })

  it('refuses oversize frames from the length prefix alone, before any body', () => {
    const prefix = encodeVarint(MAX_REQUEST_FRAME + 1)
    expectCode(() => readLength(i => prefix[i]!, prefix.length, MAX_REQUEST_FRAME), 'CHUNK_FRAME_TOO_LARGE')
    // even an unfinished varint is refused once it can only end over the limit
    const endless = Buffer.alloc(4, 0xff)
    expectCode(() => readLength(i => endless[i]!, 3, MAX_REQUEST_FRAME), 'CHUNK_FRAME_TOO_LARGE')
    const zeros = Buffer.of(0x80, 0x80, 0x80)
    expectCode(() => readLength(i => zeros[i]!, 3, MAX_REQUEST_FRAME), 'CHUNK_FRAME_TOO_LARGE')
    const huge = encodeVarint(MAX_RESPONSE_FRAME + 1)
    expectCode(() => readLength(i => huge[i]!, huge.length, MAX_RESPONSE_FRAME), 'CHUNK_FRAME_TOO_LARGE')
    // too many ids for the kind
    const get = Buffer.concat([Buffer.of(1, 2), Buffer.alloc(32 * (MAX_GET_IDS + 1))])
    expectCode(() => decodeRequest(get), 'CHUNK_FRAME_TOO_LARGE')
    expectCode(() => encodeRequest({ type: 'get', ids: Array.from({ length: MAX_GET_IDS + 1 }, () => id(1)) }), 'BAD_REQUEST')
    const chunk = Buffer.concat([Buffer.of(1, 0x82), Buffer.alloc(32 + MAX_SEALED_CHUNK_SIZE + 1)])
    expectCode(() => decodeResponse(chunk), 'CHUNK_FRAME_TOO_LARGE')
    expectCode(() => decodeResponse(Buffer.concat([Buffer.of(1, 0xff, 1), Buffer.alloc(1025)])), 'CHUNK_FRAME_TOO_LARGE')
  })

  it('refuses non-minimal lengths, empty frames and unknown kinds', () => {
    const padded = Buffer.of(0x85, 0x00)
    expectCode(() => readLength(i => padded[i]!, 2, MAX_REQUEST_FRAME), 'CHUNK_FRAME_MALFORMED')
    expectCode(() => readLength(() => 0, 1, MAX_REQUEST_FRAME), 'CHUNK_FRAME_MALFORMED')
    expectCode(() => readLength(() => 1, 1, MAX_REQUEST_FRAME), 'CHUNK_FRAME_MALFORMED')
    expectCode(() => decodeRequest(Buffer.concat([Buffer.of(1, 0x03), Buffer.alloc(32)])), 'CHUNK_FRAME_MALFORMED')
    expectCode(() => decodeRequest(Buffer.of(1, 0x01)), 'CHUNK_FRAME_MALFORMED')
    expectCode(() => decodeResponse(Buffer.concat([Buffer.of(1, 0x84), Buffer.alloc(32)])), 'CHUNK_FRAME_MALFORMED')
    expectCode(() => decodeResponse(Buffer.concat([Buffer.of(1, 0x01), Buffer.alloc(32)])), 'CHUNK_FRAME_MALFORMED')
  })

  it('refuses unknown versions, but reads an ERROR from any version', () => {
    const body = encodeRequest({ type: 'get', ids: [id(1)] })
    body[0] = 2
    expectCode(() => decodeRequest(body), 'UNSUPPORTED_VERSION')
    body[0] = 0
    expectCode(() => decodeRequest(body), 'UNSUPPORTED_VERSION')
    const missing = concat(encodeResponse({ type: 'missing', id: id(1) }))
    missing[0] = 9
    expectCode(() => decodeResponse(missing), 'UNSUPPORTED_VERSION')
    const error = concat(encodeResponse({ type: 'error', status: STATUS.UNSUPPORTED_VERSION, message: 'speak 1' }))
    error[0] = 9
    expect(decodeResponse(error)).toEqual({ type: 'error', status: STATUS.UNSUPPORTED_VERSION, message: 'speak 1' })
  })

  it('reads a bit-flipped id as another id, and refuses flipped spare bits', () => {
    const body = encodeRequest({ type: 'get', ids: [id(0)] })
    body[2 + 31]! ^= 1
    expect(decodeRequest(body)).toEqual({ type: 'get', ids: ['00'.repeat(31) + '01'] })
    const bits = encodeBits([true, false, true])
    expect(decodeBits(bits, 3)).toEqual([true, false, true])
    bits[0]! |= 0x01
    expectCode(() => decodeBits(bits, 3), 'CHUNK_FRAME_MALFORMED')
    expectCode(() => decodeBits(new Uint8Array(2), 3), 'CHUNK_FRAME_MALFORMED')
  })
  // random bytes into decodeRequest, decodeResponse and decodeFrame: test/fuzz/chunk-protocol.spec.ts, under the fuzz budget
})

/** Opens a raw chunk stream, sends `bytes`, closes our end and reads frames until the end. */
async function raw (client: KithLibp2p, peer: PeerId, bytes: Uint8Array[], close = true): Promise<{ responses: ReturnType<typeof decodeResponse>[], stream: Stream, error?: Error }> {
  const stream = await client.dialProtocol(peer, CHUNK_PROTOCOL)
  for (const b of bytes) stream.send(b)
  if (close) await stream.close()
  const reader = new FrameReader(stream, { maxFrame: MAX_RESPONSE_FRAME, highWater: MAX_RESPONSE_FRAME + 16, pause: true })
  const responses = []
  try {
    while (true) {
      const body = await reader.next({ signal: AbortSignal.timeout(5000) })
      if (body === undefined) break
      responses.push(decodeResponse(body))
    }
  } catch (err) {
    return { responses, stream, error: err as Error }
  } finally {
    reader.dispose()
  }
  return { responses, stream }
}

/** Waits until `value()` has not changed for `quietMs`. */
async function plateau (value: () => number, quietMs: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  let last = value()
  let since = Date.now()
  while (Date.now() - since < quietMs) {
    if (Date.now() > deadline) throw new Error('the value never settled')
    await new Promise(resolve => setTimeout(resolve, 20))
    if (value() !== last) {
      last = value()
      since = Date.now()
    }
  }
}

async function collect (items: AsyncIterable<ChunkItem>): Promise<ChunkItem[]> {
  const out: ChunkItem[] = []
  for await (const item of items) out.push(item)
  return out
}

describe('chunk protocol over libp2p', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let held: TempStore
  let chunks: Chunk[]
  let holder: InProcessSource
  let client: KithLibp2p
  const served: ServedEvent[] = []

  beforeAll(async () => {
    tmp = await tempDir()
    chunks = makeChunks(80, 4096)
    held = await openStore(tmp.dir, chunks)
    holder = await serve(held.store, { onServed: e => served.push(e) })
    client = await startNode()
    await learn(client, holder.peerId, holder.addrs)
  })

  afterAll(async () => {
    await client?.stop()
    await holder?.stop()
    await held?.close()
    await tmp?.cleanup()
  })

  it('answers HAVE with exactly what it holds, in batches past MAX_HAVE_IDS', async () => {
    const unknown = Array.from({ length: MAX_HAVE_IDS + 10 }, () => randomBytes(32).toString('hex'))
    const ask = [chunks[0]!.id, ...unknown.slice(0, MAX_HAVE_IDS - 2), chunks[1]!.id, ...unknown.slice(MAX_HAVE_IDS - 2), chunks[2]!.id]
    const before = served.length
    const have = await askHave(client, holder.peerId, ask, { signal: AbortSignal.timeout(10_000) })
    expect([...have].sort()).toEqual([chunks[0]!.id, chunks[1]!.id, chunks[2]!.id].sort())
    await until(() => served.length >= before + 2, 'the holder to log both HAVEs')
    expect(served.slice(before).map(e => [e.type, e.ids, e.held])).toEqual([['have', MAX_HAVE_IDS, 2], ['have', 13, 1]])
  })

  it('streams GET answers in order, missing ones marked, across several streams', async () => {
    const unknown = randomBytes(32).toString('hex')
    const ids = [...chunks.slice(0, 40).map(c => c.id), unknown, ...chunks.slice(40).map(c => c.id)]
    expect(ids.length).toBeGreaterThan(MAX_GET_IDS)
    const items = await collect(getChunks(client, holder.peerId, ids, { signal: AbortSignal.timeout(10_000) }))
    expect(items.map(i => i.id)).toEqual(ids)
    items.forEach((item, i) => {
      if (i === 40) expect(item).toEqual({ id: unknown, missing: true })
      else expect(Buffer.from((item as { sealed: Uint8Array }).sealed).equals(chunks[i < 40 ? i : i - 1]!.sealed)).toBe(true)
    })
  })

  it('answers bad requests with a typed ERROR and keeps serving', async () => {
    const version2 = encodeRequest({ type: 'have', ids: [chunks[0]!.id] })
    version2[0] = 2
    const cases: Array<{ bytes: Uint8Array[], status: number }> = [
      { bytes: frame([Buffer.of(1, 0x07, 1, 2, 3)]), status: STATUS.MALFORMED },
      { bytes: [encodeVarint(MAX_REQUEST_FRAME + 1), Buffer.alloc(100)], status: STATUS.TOO_LARGE },
      { bytes: frame([version2]), status: STATUS.UNSUPPORTED_VERSION },
      { bytes: [concat(frame([encodeRequest({ type: 'get', ids: [chunks[0]!.id] })])).subarray(0, 20)], status: STATUS.MALFORMED },
      { bytes: frame([Buffer.concat([Buffer.of(1, 2), Buffer.alloc(32 * (MAX_GET_IDS + 1))])]), status: STATUS.TOO_LARGE }
    ]
    for (const c of cases) {
      const { responses, error } = await raw(client, holder.peerId, c.bytes)
      expect(error).toBeUndefined()
      expect(responses).toHaveLength(1)
      expect(responses[0]).toMatchObject({ type: 'error', status: c.status })
    }
    expect(await askHave(client, holder.peerId, [chunks[3]!.id])).toEqual(new Set([chunks[3]!.id]))
  })

  it('resets a stream that sends more than one request, and keeps serving', async () => {
    const request = concat(frame([encodeRequest({ type: 'get', ids: [chunks[0]!.id] })]))
    const stream = await client.dialProtocol(holder.peerId, CHUNK_PROTOCOL)
    stream.send(request)
    // a second frame: first one whose length is past what a request may be, then junk. Bytes after a
    // frame the holder can't read are dropped but still count against its limit, so it resets at once
    stream.send(encodeVarint(MAX_REQUEST_FRAME + 1))
    for (let i = 0; i < 8; i++) stream.send(randomBytes(64 * 1024))
    await until(() => stream.status === 'reset' || stream.status === 'closed', 'the holder to reset the stream')
    expect(stream.status).toBe('reset')
    expect(await askHave(client, holder.peerId, [chunks[3]!.id])).toEqual(new Set([chunks[3]!.id]))
  })

  it('maps what a bad holder sends into typed errors', async () => {
    let mode = ''
    const fake = await startNode()
    const sealed = randomBytes(100)
    const want = [id(1), id(2)]
    await fake.handle(CHUNK_PROTOCOL, async (stream: Stream) => {
      const reader = new FrameReader(stream, { maxFrame: MAX_REQUEST_FRAME, highWater: MAX_REQUEST_FRAME + 16, pause: false })
      await reader.next()
      const out: Uint8Array[] = []
      const respond = (parts: Uint8Array[]): void => { out.push(...frame(parts)) }
      if (mode === 'wrong-id') respond(encodeResponse({ type: 'chunk', id: id(3), sealed }))
      if (mode === 'flipped-id') {
        const parts = encodeResponse({ type: 'chunk', id: want[0]!, sealed })
        parts[0]![2]! ^= 0x10
        respond(parts)
      }
      if (mode === 'oversize') out.push(encodeVarint(MAX_RESPONSE_FRAME + 1))
      if (mode === 'version') { const p = encodeResponse({ type: 'missing', id: want[0]! }); p[0]![0] = 2; respond(p) }
      if (mode === 'short') respond(encodeResponse({ type: 'missing', id: want[0]! }))
      if (mode === 'truncated') out.push(concat(frame(encodeResponse({ type: 'chunk', id: want[0]!, sealed }))).subarray(0, 50))
      if (mode === 'extra') for (const i of [0, 1, 1]) respond(encodeResponse({ type: 'missing', id: want[i]! }))
      if (mode === 'busy') respond(encodeResponse({ type: 'error', status: STATUS.BUSY, message: 'later' }))
      if (mode === 'refused') respond(encodeResponse({ type: 'error', status: 77, message: 'no' }))
      for (const b of out) stream.send(b)
      await stream.close()
      reader.dispose()
    })
    await learn(client, fake.peerId, fake.getMultiaddrs())
    try {
      const expected: Record<string, string> = {
        'wrong-id': 'CHUNK_FRAME_MALFORMED',
        'flipped-id': 'CHUNK_FRAME_MALFORMED',
        oversize: 'CHUNK_FRAME_TOO_LARGE',
        version: 'UNSUPPORTED_VERSION',
        short: 'CHUNK_FRAME_MALFORMED',
        truncated: 'CHUNK_FRAME_MALFORMED',
        extra: 'CHUNK_FRAME_MALFORMED',
        busy: 'CHUNK_PEER_BUSY',
        refused: 'CHUNK_PEER_REFUSED'
      }
      for (const [m, code] of Object.entries(expected)) {
        mode = m
        const err = await expectCodeAsync(collect(getChunks(client, fake.peerId, want, { signal: AbortSignal.timeout(5000) })), code as any)
        expect(err.message).not.toBe('')
      }
      mode = 'busy'
      await expectCodeAsync(askHave(client, fake.peerId, want, { signal: AbortSignal.timeout(5000) }), 'CHUNK_PEER_BUSY')
    } finally {
      await fake.stop()
    }
  })

  it('says CHUNK_PEER_UNREACHABLE for a peer that is not there', async () => {
    const nobody = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
    await learn(client, nobody, [multiaddr('/ip4/127.0.0.1/tcp/1')])
    await expectCodeAsync(askHave(client, nobody, [id(1)], { signal: AbortSignal.timeout(5000) }), 'CHUNK_PEER_UNREACHABLE')
    await expectCodeAsync(collect(getChunks(client, nobody, [id(1)], { signal: AbortSignal.timeout(5000) })), 'CHUNK_PEER_UNREACHABLE')
  })

  it('answers BUSY past maxConcurrentGets', async () => {
    let release: () => void = () => {}
    const gate = new Promise<void>(resolve => { release = resolve })
    let entered: () => void = () => {}
    const serving = new Promise<void>(resolve => { entered = resolve })
    const slow = await serve({
      has: async i => await held.store.has(i),
      getParts: async i => { entered(); await gate; return await held.store.getParts(i) }
    }, { maxConcurrentGets: 1 })
    await learn(client, slow.peerId, slow.addrs)
    try {
      const first = collect(getChunks(client, slow.peerId, [chunks[0]!.id], { signal: AbortSignal.timeout(20_000) }))
      // the first GET holds the one slot once the holder reads its chunk
      await serving
      await expectCodeAsync(collect(getChunks(client, slow.peerId, [chunks[1]!.id], { signal: AbortSignal.timeout(20_000) })), 'CHUNK_PEER_BUSY')
      release()
      expect((await first).map(i => i.id)).toEqual([chunks[0]!.id])
    } finally {
      release()
      await slow.stop()
    }
  })

  it('bounds both ends while the requester is slower than the holder', async () => {
    const big = await tempDir()
    // 16 MiB: more than the requester may take in while it sits (MAX_RESPONSE_FRAME * 2 + 2 MiB, 10 MiB), so a
    // requester that does not pause takes in more than that and fails; one that does takes in ~5 MiB, whatever the size
    const bigChunks = makeChunks(16, 1024 * 1024)
    const bigStore = await openStore(big.dir, bigChunks)
    const streams: Stream[] = []
    const node = await startNode()
    const handler = chunkHandler({ store: bigStore.store })
    await node.handle(CHUNK_PROTOCOL, async (stream, connection) => { streams.push(stream); await handler(stream, connection) })
    await learn(client, node.peerId, node.getMultiaddrs())
    try {
      let maxQueued = 0
      const sampler = setInterval(() => {
        for (const s of streams) maxQueued = Math.max(maxQueued, s.writeBufferLength)
      }, 2)
      const items: ChunkItem[] = []
      let received = 0
      let receivedWhileSitting = 0
      for await (const item of getChunks(client, node.peerId, bigChunks.map(c => c.id), { signal: AbortSignal.timeout(20_000), onBytes: b => { received += b } })) {
        items.push(item)
        if (items.length === 1) {
          // sit on the first chunk until nothing more comes in
          await plateau(() => received, 300, 10_000)
          receivedWhileSitting = received
        }
      }
      clearInterval(sampler)
      expect(items.every((item, i) => 'sealed' in item && Buffer.from(item.sealed).equals(bigChunks[i]!.sealed))).toBe(true)
      // the requester paused the stream: it took in about one frame past its high-water mark, not the whole answer
      expect(receivedWhileSitting).toBeLessThan(MAX_RESPONSE_FRAME * 2 + 2 * 1024 * 1024)
      expect(maxQueued).toBeLessThanOrEqual(SEND_HIGH_WATER + SEND_SLICE)
    } finally {
      await node.stop()
      await bigStore.close()
      await big.cleanup()
    }
  })

  it('sends the chunks of small files several to a muxer message, in order', async () => {
    const small = await tempDir()
    const smallChunks = makeChunks(MAX_GET_IDS, 4096)
    const smallStore = await openStore(small.dir, smallChunks)
    const node = await startNode()
    const handler = chunkHandler({ store: smallStore.store })
    let sends = 0
    await node.handle(CHUNK_PROTOCOL, async (stream, connection) => {
      const send = stream.send.bind(stream)
      stream.send = data => { sends++; return send(data) }
      await handler(stream, connection)
    })
    await learn(client, node.peerId, node.getMultiaddrs())
    try {
      const items = await collect(getChunks(client, node.peerId, smallChunks.map(c => c.id), { signal: AbortSignal.timeout(20_000) }))
      expect(items.map(item => 'sealed' in item && Buffer.from(item.sealed).equals(smallChunks.find(c => c.id === item.id)!.sealed))).toEqual(smallChunks.map(() => true))
      expect(items.map(item => item.id)).toEqual(smallChunks.map(c => c.id))
      // 64 frames of ~4 KiB: a send (a muxer message) for each part of each before; one per COALESCE_BYTES now
      expect(COALESCE_BYTES).toBeGreaterThanOrEqual(15 * 4200)
      expect(sends).toBeLessThanOrEqual(MAX_GET_IDS / 8)
    } finally {
      await node.stop()
      await smallStore.close()
      await small.cleanup()
    }
  })

  it('sends a chunk in whole Noise messages, its header, pieces and tag together', async () => {
    // a sealed chunk as the store hands it over: a nonce, 64 KiB pieces of ciphertext, a tag
    const sealed = [randomBytes(SEAL_OVERHEAD - 16), ...Array.from({ length: 16 }, () => randomBytes(64 * 1024)), randomBytes(16)]
    const sealedBytes = sealed.reduce((sum, p) => sum + p.byteLength, 0)
    const id = createHash('sha256').update(Buffer.concat(sealed)).digest('hex')
    const chunkCount = 4
    const receiver = await startNode()
    const sender = await startNode()
    try {
      const got = Promise.withResolvers<number>()
      await receiver.handle('/test/whole-messages/1.0.0', async (stream) => {
        const reader = new FrameReader(stream, { maxFrame: MAX_RESPONSE_FRAME, highWater: MAX_RESPONSE_FRAME + 16, pause: true })
        let bytes = 0
        for (let body = await reader.next(); body !== undefined; body = await reader.next()) bytes += body.byteLength
        got.resolve(bytes)
        await stream.close()
      })
      // identify's exchange is over before the counting starts
      const identified = Promise.all([sender, receiver].map(async node => { await new Promise(resolve => { node.addEventListener('peer:identify', resolve, { once: true }) }) }))
      const stream = await sender.dialProtocol(receiver.getMultiaddrs()[0]!, '/test/whole-messages/1.0.0')
      await identified
      // every Noise message the receiver decrypts from here on
      const noise = (receiver.getConnections(sender.peerId)[0] as unknown as { muxer: { maConn: NoiseMessageStream } }).muxer.maConn
      const decrypt = noise.handshake.decrypt.bind(noise.handshake)
      let messages = 0
      noise.handshake.decrypt = (ciphertext, dst) => { messages++; return decrypt(ciphertext, dst) }
      for (let i = 0; i < chunkCount; i++) await sendFrame(stream, encodeChunk(id, sealed), { signal: AbortSignal.timeout(10_000), peer: sender.peerId })
      await stream.close()
      expect(await got.promise).toBe(chunkCount * (34 + sealedBytes))
      // Noise carries at most 65,519 bytes a message: 16 whole ones a chunk and one not full at its end. Sent a part at a
      // time, each 64 KiB piece with yamux's 12-byte header was a whole message and one of 29 bytes: 35 a chunk. The bound
      // leaves room for the window updates, pings and identify of the connection, and frames yamux cuts while the window is small
      expect(messages, 'a chunk no longer goes in whole Noise messages (yamux\'s header or Noise\'s message size changed?)').toBeLessThan(24 * chunkCount)
    } finally {
      await sender.stop()
      await receiver.stop()
    }
  })

  it('gives up cleanly on abort, and the holder carries on', async () => {
    const controller = new AbortController()
    const before = served.length
    const seen: ChunkItem[] = []
    const run = (async () => {
      for await (const item of getChunks(client, holder.peerId, chunks.map(c => c.id), { signal: controller.signal })) {
        seen.push(item)
        if (seen.length === 3) controller.abort(new Error('stop'))
      }
    })()
    await expect(run).rejects.toThrow('stop')
    expect(seen).toHaveLength(3)
    await until(() => served.length > before, 'the holder to finish the aborted request')
    expect(await askHave(client, holder.peerId, [chunks[5]!.id])).toEqual(new Set([chunks[5]!.id]))
  })
})
