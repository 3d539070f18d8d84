import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { createHash, randomBytes } from 'node:crypto'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { createLibp2p, type Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import type { Stream } from '@libp2p/interface'
import { createNode } from '../../src/peer/node.ts'
import { halfWindowUpdates } from '../../src/peer/yamux-window.ts'
import { waitFor } from '../helpers/testnet.ts'

/**
 * src/peer/yamux-window.ts: a stream's receiver grants window once half of it
 * is used, not after every data frame, and data still moves whole and in
 * order, paused and resumed, with the smallest window yamux allows.
 * The first test also fails the day yamux no longer needs this (it stops
 * answering every frame itself) or the rule stops applying.
 */

const KiB = 1024
const MiB = 1024 * KiB
const PROTOCOL = '/test/yamux-window/1.0.0'
/** yamux's frame types and flags (frame.js) */
const DATA = 0
const WINDOW_UPDATE = 1

interface Header { type: number, flag: number, streamID: number, length: number }
interface Muxer { sendFrame: (header: Header, data?: unknown) => boolean }

/** Frames each node's muxer sends from here on; wrapped before a stream is made, as each stream binds the muxer's sendFrame. */
interface Counts { data: number, updates: number, granted: number, smallest: number }

function countFrames (node: Libp2p, peer: Libp2p): Counts {
  const counts = { data: 0, updates: 0, granted: 0, smallest: Infinity }
  const muxer = (node.getConnections(peer.peerId)[0] as unknown as { muxer: Muxer }).muxer
  const send = muxer.sendFrame.bind(muxer)
  muxer.sendFrame = (header, data) => {
    if (header.streamID !== 0 && header.type === DATA) counts.data++
    // flagged updates (SYN, ACK, FIN) open and close streams; the rule is about the others
    if (header.streamID !== 0 && header.type === WINDOW_UPDATE && header.flag === 0) {
      counts.updates++
      counts.granted += header.length
      counts.smallest = Math.min(counts.smallest, header.length)
    }
    return send(header, data)
  }
  return counts
}

interface Moved { bytes: number, sha: string, sent: Counts, received: Counts }

/**
 * Sends `data` from `from` to `to` in `piece`-byte sends; what the handler
 * read, and the frames each side sent. In `lockstep`, each send waits until
 * the one before was read, so each is a data frame of its own.
 */
async function move (from: Libp2p, to: Libp2p, data: Uint8Array, piece: number, opts: { lockstep?: boolean, reader?: (stream: Stream) => void } = {}): Promise<Moved> {
  await from.dial(to.getMultiaddrs()[0]!)
  await waitFor(() => to.getConnections(from.peerId).length > 0, 'the inbound connection', 10_000, 5)
  const sent = countFrames(from, to)
  const received = countFrames(to, from)
  const got = Promise.withResolvers<{ bytes: number, sha: string }>()
  let read = 0
  let reached: { bytes: number, resolve: () => void } | undefined
  await to.handle(PROTOCOL, async (stream) => {
    opts.reader?.(stream)
    const hash = createHash('sha256')
    // the sender closes once all is read: libp2p 3 can end the iterator on the remote's close before the last data is dispatched
    for await (const chunk of stream) {
      hash.update(chunk.subarray())
      read += chunk.byteLength
      if (reached != null && read >= reached.bytes) reached.resolve()
      if (read >= data.length) break
    }
    got.resolve({ bytes: read, sha: hash.digest('hex') })
    await stream.close()
  }, { force: true })
  const stream = await from.dialProtocol(to.peerId, PROTOCOL)
  for (let at = 0; at < data.length; at += piece) {
    const end = Math.min(at + piece, data.length)
    const arrived = Promise.withResolvers<void>()
    reached = { bytes: end, resolve: arrived.resolve }
    if (!stream.send(data.subarray(at, end))) await stream.onDrain()
    if (opts.lockstep === true && read < end) await arrived.promise
  }
  const result = await got.promise
  await stream.close()
  return { ...result, sent, received }
}

const sha = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex')

describe('yamux window updates (kith nodes: 4 MiB largest window)', () => {
  let x: Libp2p, y: Libp2p
  beforeAll(async () => {
    const make = async (): Promise<Libp2p> => await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
    ;[x, y] = [await make(), await make()]
  })
  afterEach(() => { halfWindowUpdates() })
  afterAll(async () => {
    await x?.stop()
    await y?.stop()
  })

  it('grants window once half of it is used; yamux alone grants it after every frame', async () => {
    const data = randomBytes(4 * MiB)
    // 32 KiB sends, each read before the next: a data frame each
    const halves = await move(y, x, data, 32 * KiB, { lockstep: true })
    expect(halves.bytes).toBe(data.length)
    expect(halves.sha).toBe(sha(data))
    expect(halves.sent.data).toBeGreaterThanOrEqual(data.length / (32 * KiB))
    // half the smallest window (256 KiB) or more at a time: 32 updates at most for 4 MiB
    expect(halves.received.smallest).toBeGreaterThanOrEqual(128 * KiB)
    expect(halves.received.updates).toBeLessThanOrEqual(data.length / (128 * KiB) + 2)

    halfWindowUpdates(false)
    const every = await move(y, x, data, 32 * KiB, { lockstep: true })
    expect(every.sha).toBe(sha(data))
    // if these fail, yamux batches its window updates itself: src/peer/yamux-window.ts is no longer needed
    expect(every.received.updates, 'yamux no longer answers every data frame with a window update').toBeGreaterThanOrEqual(every.sent.data - 2)
    expect(every.received.smallest).toBeLessThanOrEqual(32 * KiB)
  })

  it('a reader that pauses and resumes gets every byte, and a paused stream takes in at most a window', async () => {
    const data = randomBytes(12 * MiB)
    let readable = 0
    let pausedAt = 0
    let mostWhilePaused = 0
    let pauses = 0
    let inbound: Stream | undefined
    const got = move(y, x, data, 64 * KiB, { reader: (stream) => {
      inbound = stream
      stream.addEventListener('message', (event) => {
        readable += event.data.byteLength
        // pause every MiB read, until the sender is out of window
        if (readable - pausedAt >= MiB && stream.readStatus === 'readable') {
          pausedAt = readable
          pauses++
          stream.pause()
        }
      })
    } })
    // resume each pause once the paused stream has stopped taking bytes in (its window is used up)
    let done = false
    void got.finally(() => { done = true })
    while (!done) {
      await waitFor(() => done || (inbound?.readStatus === 'paused' && inbound.readBufferLength > 0), 'a pause', 20_000, 5)
      if (done) break
      let buffered = -1
      await waitFor(() => {
        const now = inbound!.readBufferLength
        const still = now === buffered
        buffered = now
        return done || still
      }, 'the paused stream to stop taking bytes in', 20_000, 20)
      mostWhilePaused = Math.max(mostWhilePaused, inbound!.readBufferLength)
      inbound!.resume()
    }
    const result = await got
    expect(result.bytes).toBe(data.length)
    expect(result.sha).toBe(sha(data))
    // each pause takes in at most a window (4 MiB) before its resume, and a resume's bytes arrive at once: 2 pauses or more
    expect(pauses).toBeGreaterThanOrEqual(2)
    expect(mostWhilePaused).toBeLessThanOrEqual(4 * MiB)
  })
})

describe('yamux window updates with the smallest window (256 KiB)', () => {
  let x: Libp2p, y: Libp2p
  beforeAll(async () => {
    halfWindowUpdates()
    const make = async (): Promise<Libp2p> => await createLibp2p({
      privateKey: await generateKeyPair('Ed25519'),
      addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
      transports: [tcp()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux({ streamOptions: { maxStreamWindowSize: 256 * KiB } })]
    })
    ;[x, y] = [await make(), await make()]
  })
  afterAll(async () => {
    await x?.stop()
    await y?.stop()
  })

  it('moves data whole, granting 128 KiB or more at a time', async () => {
    const data = randomBytes(4 * MiB)
    // uneven sends, some larger than the window
    const result = await move(y, x, data, 300 * KiB + 7)
    expect(result.bytes).toBe(data.length)
    expect(result.sha).toBe(sha(data))
    expect(result.received.updates).toBeGreaterThanOrEqual(data.length / (256 * KiB) - 2)
    expect(result.received.updates).toBeLessThanOrEqual(data.length / (128 * KiB) + 2)
  })
})
