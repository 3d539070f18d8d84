import { describe, expect, it } from 'vitest'
import { randomBytes } from 'node:crypto'
import { lpStream, streamPair } from '@libp2p/utils'
import * as varint from 'uint8-varint'
import { Uint8ArrayList } from 'uint8arraylist'
import { uint16Length, varintLength } from '../../src/peer/length-decoders.ts'

/**
 * src/peer/length-decoders.ts: the same lengths as the decoders they stand in
 * for, whole or in pieces, and a RangeError for a length not yet whole, the
 * same one each time (no stack captured per call); and libp2p's lpStream
 * still reads lengths through the decoder it is given, a byte at a time (if
 * not, backup's lpStream no longer uses varintLength, or no longer needs it).
 */

/** `bytes` as lpStream's reader builds them: a byte at a time */
const byBytes = (bytes: Uint8Array): Uint8ArrayList => new Uint8ArrayList(...Array.from(bytes, b => Uint8Array.of(b)))

const thrown = (f: () => unknown): unknown => {
  try { f() } catch (err) { return err }
  throw new Error('did not throw')
}

describe('length decoders', () => {
  it('varintLength decodes what uint8-varint does, from one piece or many', () => {
    for (const value of [0, 1, 127, 128, 300, 16_383, 16_384, 327_580, 2 ** 21, 2 ** 31 + 5, 2 ** 40, 2 ** 53 - 1]) {
      const encoded = varint.encode(value)
      expect(varintLength(encoded)).toBe(value)
      expect(varintLength(byBytes(encoded))).toBe(value)
      // bytes after the length are not its
      expect(varintLength(new Uint8ArrayList(encoded, Uint8Array.of(1, 2, 3)))).toBe(varint.decode(new Uint8ArrayList(encoded, Uint8Array.of(1, 2, 3))))
    }
  })

  it('varintLength throws one RangeError for every length not yet whole, and uint8-varint\'s own for 8 bytes that never end', () => {
    const encoded = varint.encode(327_580)
    const first = thrown(() => varintLength(byBytes(encoded.subarray(0, 1))))
    expect(first).toBeInstanceOf(RangeError)
    expect(thrown(() => varintLength(byBytes(encoded.subarray(0, 2))))).toBe(first)
    expect(thrown(() => varintLength(new Uint8ArrayList()))).toBe(first)
    const endless = new Uint8Array(8).fill(0x80)
    const err = thrown(() => varintLength(byBytes(endless)))
    expect(err).toBeInstanceOf(RangeError)
    expect(err).not.toBe(first)
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
    const reader = lpStream(inbound, { maxDataLength: 400_000, lengthDecoder: (buf) => { calls.push(buf.byteLength); return varintLength(buf) } })
    const writer = lpStream(outbound)
    const frame = randomBytes(327_580)
    const [, got] = await Promise.all([writer.write(frame), reader.read()])
    expect(Buffer.from(got.subarray()).equals(frame)).toBe(true)
    // 327,580 is a 3-byte varint: tried after its first, second and third byte
    expect(calls).toEqual([1, 2, 3])
    await Promise.all([outbound.close(), inbound.close()])
  })
})
