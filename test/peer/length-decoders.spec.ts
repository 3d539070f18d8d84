import { describe, expect, it } from 'vitest'
import { randomBytes } from 'node:crypto'
import { lpStream, streamPair } from '@libp2p/utils'
import * as varint from 'uint8-varint'
import { Uint8ArrayList } from 'uint8arraylist'
import { lengthPrefixed, uint16Length, varintLengthUpTo } from '../../src/peer/length-decoders.ts'

/**
 * src/peer/length-decoders.ts: the same lengths as the decoders they stand in
 * for, whole or in pieces, and a RangeError for a length not yet whole, the
 * same one each time (no stack captured per call); a varint length longer
 * than the protocol's largest frame needs refused (V's fault 4, session 15);
 * and libp2p's lpStream still reads lengths through the decoder it is given,
 * a byte at a time, and still reads on through a length that never ends with
 * its own (if not, kith's readers no longer need varintLengthUpTo).
 */

/** `bytes` as lpStream's reader builds them: a byte at a time */
const byBytes = (bytes: Uint8Array): Uint8ArrayList => new Uint8ArrayList(...Array.from(bytes, b => Uint8Array.of(b)))

const thrown = (f: () => unknown): unknown => {
  try { f() } catch (err) { return err }
  throw new Error('did not throw')
}

describe('length decoders', () => {
  const anyLength = varintLengthUpTo(2 ** 53 - 1)

  it('varintLengthUpTo decodes what uint8-varint does, from one piece or many', () => {
    for (const value of [0, 1, 127, 128, 300, 16_383, 16_384, 327_580, 2 ** 21, 2 ** 31 + 5, 2 ** 40, 2 ** 53 - 1]) {
      const encoded = varint.encode(value)
      expect(anyLength(encoded)).toBe(value)
      expect(anyLength(byBytes(encoded))).toBe(value)
      // bytes after the length are not its
      expect(anyLength(new Uint8ArrayList(encoded, Uint8Array.of(1, 2, 3)))).toBe(varint.decode(new Uint8ArrayList(encoded, Uint8Array.of(1, 2, 3))))
    }
  })

  it('varintLengthUpTo throws one RangeError for every length not yet whole, and PROTOCOL_VIOLATION for one longer than its largest frame needs', () => {
    const upTo = varintLengthUpTo(327_580) // a 3-byte varint
    const encoded = varint.encode(327_580)
    const first = thrown(() => upTo(byBytes(encoded.subarray(0, 1))))
    expect(first).toBeInstanceOf(RangeError)
    expect(thrown(() => upTo(byBytes(encoded.subarray(0, 2))))).toBe(first)
    expect(thrown(() => upTo(new Uint8ArrayList()))).toBe(first)
    expect(thrown(() => upTo(byBytes(Uint8Array.of(0x80, 0x80))))).toBe(first)
    for (const endless of [new Uint8Array(3).fill(0x80), new Uint8Array(9).fill(0xff)]) {
      const err = thrown(() => upTo(byBytes(endless)))
      expect(err).not.toBeInstanceOf(RangeError)
      expect((err as { code?: string }).code).toBe('PROTOCOL_VIOLATION')
    }
  })

  it('uint16Length reads a big-endian length from one piece or two, and throws the same RangeError under 2 bytes', () => {
    expect(uint16Length(Uint8Array.of(0xff, 0xff, 9))).toBe(65_535)
    expect(uint16Length(new Uint8ArrayList(Uint8Array.of(0x01), Uint8Array.of(0x02, 7)))).toBe(258)
    const first = thrown(() => uint16Length(Uint8Array.of(1)))
    expect(first).toBeInstanceOf(RangeError)
    expect(thrown(() => uint16Length(new Uint8ArrayList()))).toBe(first)
  })

  it('lpStream reads a frame\'s length through the decoder it is given, trying after each byte', async () => {
    const [outbound, inbound] = await streamPair()
    const calls: number[] = []
    const upTo = varintLengthUpTo(400_000)
    const reader = lpStream(inbound, { maxDataLength: 400_000, lengthDecoder: (buf) => { calls.push(buf.byteLength); return upTo(buf) } })
    const writer = lpStream(outbound)
    const frame = randomBytes(327_580)
    const [, got] = await Promise.all([writer.write(frame), reader.read()])
    expect(Buffer.from(got.subarray()).equals(frame)).toBe(true)
    // 327,580 is a 3-byte varint: tried after its first, second and third byte
    expect(calls).toEqual([1, 2, 3])
    await Promise.all([outbound.close(), inbound.close()])
  })

  it('a length that never ends: lengthPrefixed refuses it; libp2p\'s own decoder reads on to the end of the stream', async () => {
    const outcome = async (open: (inbound: Awaited<ReturnType<typeof streamPair>>[1]) => { read: () => Promise<unknown> }): Promise<string> => {
      const [outbound, inbound] = await streamPair()
      const read = open(inbound).read().then(() => 'a frame', (e: Error & { code?: string }) => e.code ?? e.name)
      outbound.send(new Uint8Array(4096).fill(0x80))
      await outbound.close()
      const result = await read
      await inbound.close().catch(() => {})
      return result
    }
    expect(await outcome(inbound => lengthPrefixed(inbound, { maxDataLength: 65_536 }))).toBe('PROTOCOL_VIOLATION')
    expect(await outcome(inbound => lpStream(inbound, { maxDataLength: 65_536 })), 'libp2p\'s lpStream no longer reads a length that never ends to the end of the stream: varintLengthUpTo may no longer be needed (src/peer/length-decoders.ts)').toBe('UnexpectedEOFError')
  })
})
