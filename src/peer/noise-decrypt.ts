import { Socket } from 'node:net'
import type { ConnectionEncrypter } from '@libp2p/interface'
import { isUint8ArrayList, Uint8ArrayList } from 'uint8arraylist'
import { freeNow } from '../transfer/buffer-pool.ts'
import { uint16Length } from './length-decoders.ts'

/**
 * Noise decrypts each received message without first copying its ciphertext
 * into one piece, and on a TCP connection gives each socket read's memory
 * back as soon as its last message is decrypted.
 *
 * @chainsafe/libp2p-noise 17.0.0 (`EncryptedMessageStream.decrypt`) hands
 * each message's cipher a `dst` to decrypt into, made by `subarray` of the
 * message: when the message lies in two socket reads, which at full speed is
 * nearly every one (a message is 65,537 bytes on the wire, a read 65,536),
 * that is a 64 KiB copy. The cipher it uses for messages of 1,200 bytes and
 * more (node:crypto) ignores `dst` and returns new buffers, so the copy is
 * never read: per 64 KiB received, 64 KiB more made, copied and left for V8
 * to collect, in glibc's heap. This is the same method with no `dst` made:
 * the cipher makes its own output (as it does anyway above 1,200 bytes).
 *
 * The socket reads (64 KiB each, node:net's) then wait for V8 as well, though
 * nothing reads them once decrypted: Noise's decoder holds the bytes not yet
 * decrypted, and the plaintext is the cipher's own. So a read whose last
 * byte belongs to the message just decrypted is freed then (`freeNow`): every
 * byte before it in the read was an earlier message or its length. Only on a
 * TCP connection, whose reads are node:net's buffers that nothing else
 * holds; a relayed connection's are views of the carrying connection's
 * plaintext, shared with its other streams. Reads that were already waiting
 * when the method was replaced (the handshake's leftovers, perhaps decrypted
 * by Noise's own method, which writes small messages' plaintext into them)
 * are left to V8.
 *
 * Its decoder's length decoder is replaced too (`uint16Length`,
 * length-decoders.ts): Noise's makes a RangeError, stack and all, whenever a
 * read ends on a message's end.
 *
 * It replaces the method on each connection Noise makes (the class is not
 * exported). test/peer/noise-decrypt.spec.ts fails if Noise's connections
 * stop having the method this replaces, it stops being used or freeing
 * reads, or Noise stops copying.
 */
export function decryptWithoutCopy<T extends ConnectionEncrypter> (encrypter: T): T {
  const secureInbound = encrypter.secureInbound.bind(encrypter)
  const secureOutbound = encrypter.secureOutbound.bind(encrypter)
  encrypter.secureInbound = async (connection, options) => replaced(await secureInbound(connection, options), connection)
  encrypter.secureOutbound = async (connection, options) => replaced(await secureOutbound(connection, options), connection)
  return encrypter
}

/** Noise's largest message, tag included (its NOISE_MSG_MAX_LENGTH_BYTES) */
const MAX_MESSAGE = 65535
/** ChaCha20-Poly1305's tag */
const TAG = 16

/** the fields of Noise's EncryptedMessageStream (not exported) this reads */
export interface NoiseMessageStream {
  decrypt: (chunk: Uint8Array | Uint8ArrayList) => Uint8ArrayList
  handshake: { decrypt: (ciphertext: Uint8Array | Uint8ArrayList, dst?: Uint8Array) => Uint8Array | Uint8ArrayList }
  metrics?: { decryptedPackets: { increment: () => void }, decryptErrors: { increment: () => void } }
  /** its LengthPrefixedDecoder: the bytes of the next message, not yet whole, and how it reads their length */
  decoder?: { buffer?: unknown, lengthDecoder?: (buf: Uint8ArrayList | Uint8Array) => number }
  /** the connection under it: bytes received and not yet handed to Noise */
  stream?: { readBuffer?: unknown }
}

/** reads that were waiting when a connection's method was replaced, by connection: never freed */
const waiting = new WeakMap<object, WeakSet<ArrayBufferLike>>()

function replaced<R extends { connection: unknown }> (secured: R, raw: unknown): R {
  const stream = secured.connection as Partial<NoiseMessageStream>
  if (typeof stream.decrypt !== 'function' || typeof stream.handshake?.decrypt !== 'function') return secured
  stream.decrypt = decrypt
  if (typeof stream.decoder?.lengthDecoder === 'function') stream.decoder.lengthDecoder = uint16Length
  const pending = [stream.decoder?.buffer, stream.stream?.readBuffer]
  if ((raw as { socket?: unknown }).socket instanceof Socket && pending.every(list => isUint8ArrayList(list))) {
    const old = new WeakSet<ArrayBufferLike>()
    for (const list of pending as Uint8ArrayList[]) for (const piece of list) old.add(piece.buffer)
    waiting.set(stream, old)
  }
  return secured
}

/** EncryptedMessageStream.decrypt of 17.0.0, but for `dst`, and the reads freed; what `decryptWithoutCopy` puts on each connection */
export function decrypt (this: NoiseMessageStream, chunk: Uint8Array | Uint8ArrayList): Uint8ArrayList {
  const output = new Uint8ArrayList()
  for (let i = 0; i < chunk.byteLength; i += MAX_MESSAGE) {
    const end = Math.min(i + MAX_MESSAGE, chunk.byteLength)
    if (end - TAG < i) throw new Error('Invalid chunk')
    const encrypted = chunk instanceof Uint8Array ? chunk.subarray(i, end) : chunk.sublist(i, end)
    try {
      output.append(this.handshake.decrypt(encrypted))
      this.metrics?.decryptedPackets.increment()
    } catch (err) {
      this.metrics?.decryptErrors.increment()
      throw err
    }
  }
  const old = waiting.get(this)
  if (old !== undefined) {
    for (const piece of chunk instanceof Uint8Array ? [chunk] : chunk) {
      if (piece.byteOffset + piece.byteLength === piece.buffer.byteLength && !old.has(piece.buffer)) freeNow(new Uint8Array(piece.buffer))
    }
  }
  return output
}
