import * as varint from 'uint8-varint'
import type { Uint8ArrayList } from 'uint8arraylist'

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

/** The bytes a varint length holds at most (uint8-varint decodes up to 8) */
const MAX_VARINT = 8

/** uint8-varint's `decode`, for `lpStream`'s `lengthDecoder` */
export function varintLength (buf: Uint8ArrayList | Uint8Array): number {
  const have = Math.min(buf.byteLength, MAX_VARINT)
  for (let i = 0; i < have; i++) {
    if ((buf instanceof Uint8Array ? buf[i]! : buf.get(i)) < 0x80) return varint.decode(buf)
  }
  // eight bytes and no last one: uint8-varint's own RangeError, as before
  if (have === MAX_VARINT) return varint.decode(buf)
  throw NOT_YET
}

/** Noise's `uint16BEDecode`: a message's 2-byte big-endian length */
export function uint16Length (buf: Uint8ArrayList | Uint8Array): number {
  if (buf.byteLength < 2) throw NOT_YET
  return buf instanceof Uint8Array ? (buf[0]! << 8) + buf[1]! : buf.getUint16(0)
}
