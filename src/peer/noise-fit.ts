/**
 * Sizes of what a kith protocol writes on a stream, fitted to Noise's
 * messages.
 *
 * A stream's write leaves as one yamux data frame (its 12-byte header, then
 * the bytes), which @chainsafe/libp2p-noise cuts into messages of at most
 * 65,519 bytes of plaintext (65,535 with the tag). A 64 KiB or 256 KiB piece
 * behind its own length prefix and yamux's header overflows by a few bytes:
 * every piece then costs one more message of a few dozen bytes, a whole
 * ChaCha20-Poly1305 seal and open, a socket write and a read event on the
 * receiver, for nothing. A piece of `fillNoiseMessages(n, overhead)` bytes
 * fills exactly n messages.
 *
 * That holds while yamux's send window takes the whole frame (a stream's
 * first 256 KiB may be cut at the window) and while the connection is not
 * waiting for the socket to drain (queued frames are then sealed together,
 * in whole messages anyway). test/peer/noise-fit.spec.ts fails if a fitted
 * write stops leaving as whole messages.
 */

/** Noise's largest message's plaintext: 65,535 bytes less the 16-byte tag (its NOISE_MSG_MAX_LENGTH_BYTES_WITHOUT_TAG) */
export const NOISE_MAX_PLAINTEXT = 65_519
/** yamux's frame header (its HEADER_LENGTH) */
export const YAMUX_HEADER = 12

/**
 * The largest piece that, behind `overhead` bytes of the caller's own
 * framing (a length prefix, a frame header) and yamux's header, fills
 * exactly `messages` Noise messages.
 */
export function fillNoiseMessages (messages: number, overhead: number): number {
  if (!Number.isSafeInteger(messages) || messages < 1) throw new RangeError(`${messages} is not a count of Noise messages`)
  const piece = messages * NOISE_MAX_PLAINTEXT - YAMUX_HEADER - overhead
  if (!Number.isSafeInteger(overhead) || overhead < 0 || piece < 1) throw new RangeError(`${overhead} bytes of framing leave no room in ${messages} Noise messages`)
  return piece
}
