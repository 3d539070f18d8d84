import type { MessageStream } from '@libp2p/interface'
import { lpStream, type LengthPrefixedStream } from '@libp2p/utils'
import * as varint from 'uint8-varint'
import type { Uint8ArrayList } from 'uint8arraylist'
import { KithError } from '../errors.ts'

/**
 * Length decoders for libp2p's length-prefixed readers that say "not enough
 * bytes yet" without making an error each time.
 *
 * Both readers learn that a length is not whole from a thrown RangeError,
 * and go on reading: @libp2p/utils' `lpStream` reads a varint length a byte
 * at a time and tries to decode it after each one (uint8-varint, through
 * uint8arraylist's `get`, throws for a byte not there yet), so a 3-byte
 * length (any body frame of backup's, up to BODY_SLICE) throws twice; Noise's
 * decoder (@chainsafe/libp2p-noise 17.0.0, its `uint16BEDecode`) throws
 * whenever a socket read ends on a message's end. Each new RangeError
 * captures the JS stack, and with V8's optimized frames that costs tens of
 * µs: 0.3 to 0.5 CPU ms/MB on each of a backup's three daemons in perf
 * (docs/backup.md, eleventh pass). These throw one RangeError made once (its
 * stack is where this module was loaded, and says nothing), and decode the
 * same values as the decoders they stand in for.
 */
const NOT_YET = new RangeError('not enough bytes for a length yet')

/**
 * A varint length decoder for `lpStream` that refuses a length longer than
 * any `maxDataLength` can need: once `varint.encodingLength(maxDataLength)`
 * bytes hold no last byte, it throws PROTOCOL_VIOLATION. libp2p's lpStream
 * (@libp2p/utils 7) reads on after any RangeError and checks
 * `maxLengthLength` only once a length decodes, so with uint8-varint's
 * decoder a peer sending 0x80 bytes kept a read going until the protocol's
 * own timeout, its buffer growing by ~160 bytes of heap a byte (V's fault 4,
 * session 15: 188 MB in 44 s over one stream). test/peer/length-decoders.spec.ts
 * guards both.
 */
export function varintLengthUpTo (maxDataLength: number): (buf: Uint8ArrayList | Uint8Array) => number {
  const most = varint.encodingLength(maxDataLength)
  return (buf) => {
    const have = Math.min(buf.byteLength, most)
    for (let i = 0; i < have; i++) {
      if ((buf instanceof Uint8Array ? buf[i]! : buf.get(i)) < 0x80) return varint.decode(buf)
    }
    if (have === most) throw new KithError('PROTOCOL_VIOLATION', `the peer sent a frame length of more than ${most} bytes, longer than any frame of this protocol (at most ${maxDataLength} bytes) needs`)
    throw NOT_YET
  }
}

/**
 * libp2p's `lpStream`, its lengths read by `varintLengthUpTo(maxDataLength)`:
 * every length-prefixed protocol of kith's reads through this.
 */
export function lengthPrefixed<T extends MessageStream> (stream: T, opts: { maxDataLength: number, maxBufferSize?: number }): LengthPrefixedStream<T> {
  return lpStream(stream, { ...opts, lengthDecoder: varintLengthUpTo(opts.maxDataLength) })
}

/** Noise's `uint16BEDecode`: a message's 2-byte big-endian length */
export function uint16Length (buf: Uint8ArrayList | Uint8Array): number {
  if (buf.byteLength < 2) throw NOT_YET
  return buf instanceof Uint8Array ? (buf[0]! << 8) + buf[1]! : buf.getUint16(0)
}
