import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { randomBytes } from 'node:crypto'
import { lpStream } from '@libp2p/utils'
import * as varint from 'uint8-varint'
import type { KithLibp2p } from '../../src/peer/node.ts'
import { NOISE_MAX_PLAINTEXT, fillNoiseMessages } from '../../src/peer/noise-fit.ts'
import { startNode } from '../helpers/chunks.ts'

/**
 * src/peer/noise-fit.ts: a length-prefixed write of a fitted size leaves a
 * kith node as whole Noise messages, over real TCP, Noise and yamux, and one
 * byte more costs a message more. Fails the day Noise's message size or
 * yamux's header changes, or a write stops leaving as one frame of its own.
 */

const PROTOCOL = '/test/noise-fit/1.0.0'

/** the part of Noise's connection (not exported) this watches: each call of `handshake.encrypt` is one message */
interface NoiseConnection { handshake: { encrypt: (plaintext: { byteLength: number }) => unknown } }

describe('pieces fitted to Noise messages', () => {
  let x: KithLibp2p, y: KithLibp2p
  beforeAll(async () => {
    ;[x, y] = [await startNode(), await startNode()]
  })
  afterAll(async () => {
    await x?.stop()
    await y?.stop()
  })

  it('refuses counts and framing that leave no room', () => {
    expect(fillNoiseMessages(1, 0)).toBe(NOISE_MAX_PLAINTEXT - 12)
    expect(() => fillNoiseMessages(0, 3)).toThrow(RangeError)
    expect(() => fillNoiseMessages(1, NOISE_MAX_PLAINTEXT)).toThrow(RangeError)
    expect(() => fillNoiseMessages(2, -1)).toThrow(RangeError)
  })

  it('a length-prefixed write of a fitted size leaves as whole messages; one byte more adds a message', async () => {
    // each frame read is answered with a byte, so every write leaves alone, not sealed together with the next
    await x.handle(PROTOCOL, async (stream) => {
      const lp = lpStream(stream, { maxDataLength: 1024 * 1024 })
      for (let frame = await lp.read().catch(() => null); frame != null && frame.byteLength > 1; frame = await lp.read().catch(() => null)) await lp.write(Uint8Array.of(1))
      await stream.close()
    })
    // a stream per size, each with yamux's first window (256 KiB), which updates come back to once half of
    // it is used: a piece of at most 3 messages is then never cut at the window. yamux grows a window only
    // when updates come within 4 of its measured round trips, so on a quiet machine (0-1 ms) maybe never
    const open = async (): Promise<{ send: (bytes: number) => Promise<void>, end: () => Promise<void> }> => {
      const stream = await y.dialProtocol(x.getMultiaddrs()[0]!, PROTOCOL)
      const lp = lpStream(stream, { maxDataLength: 16 })
      return {
        send: async (bytes) => {
          await lp.write(randomBytes(bytes))
          await lp.read()
        },
        end: async () => {
          await lp.write(Uint8Array.of(0))
          await stream.close()
        }
      }
    }
    await (await open()).end()

    const noise = (y.getConnections(x.peerId)[0] as unknown as { muxer: { maConn: NoiseConnection } }).muxer.maConn
    expect(typeof noise.handshake?.encrypt, 'the connection under yamux is no longer Noise\'s message stream').toBe('function')
    const encrypt = noise.handshake.encrypt.bind(noise.handshake)
    let messages: number[] = []
    noise.handshake.encrypt = (plaintext) => {
      messages.push(plaintext.byteLength)
      return encrypt(plaintext)
    }
    try {
      for (const count of [1, 3]) {
        const piece = fillNoiseMessages(count, 3)
        expect(piece + 1).toBeLessThan(256 * 1024)
        const { send, end } = await open()
        expect(varint.encodingLength(piece)).toBe(3)
        messages = []
        for (let i = 0; i < 4; i++) await send(piece)
        // anything else on the connection meanwhile (a ping's stream) is a frame of its own, 12 bytes or more, and under 1 KiB
        expect(messages.filter(n => n >= 1024), `${count} message(s) a piece`).toEqual(new Array(4 * count).fill(NOISE_MAX_PLAINTEXT))
        expect(messages.filter(n => n < 12), 'no tail messages').toEqual([])
        messages = []
        for (let i = 0; i < 4; i++) await send(piece + 1)
        expect(messages.filter(n => n < 12), `one byte more than ${count} message(s) holds: a 1-byte message more each`).toEqual([1, 1, 1, 1])
        await end()
      }
    } finally {
      noise.handshake.encrypt = encrypt
    }
  })
})
