import type { ConnectionEncrypter } from '@libp2p/interface'
import { Uint8ArrayList } from 'uint8arraylist'

/**
 * Noise decrypts each received message without first copying its ciphertext
 * into one piece.
 *
 * @chainsafe/libp2p-noise 17.0.0 (`EncryptedMessageStream.decrypt`) hands
 * each message's cipher a `dst` to decrypt into, made by `subarray` of the
 * message: when the message lies in two socket reads, which at full speed is
 * nearly every one (a message is 65,537 bytes on the wire, a read 65,536),
 * that is a 64 KiB copy. The cipher it uses for messages of 1,200 bytes and
 * more (node:crypto) ignores `dst` and returns new buffers, so the copy is
 * never read: per 64 KiB received, 64 KiB more made, copied and left for V8
 * to collect, in glibc's heap. This is the same method with `dst` given only
 * where it is a view, no copy; the cipher makes its own output otherwise
 * (as it does anyway above 1,200 bytes).
 *
 * It replaces the method on each connection Noise makes (the class is not
 * exported). test/peer/noise-decrypt.spec.ts fails if Noise's connections
 * stop having the method this replaces, or it stops being used.
 */
export function decryptWithoutCopy<T extends ConnectionEncrypter> (encrypter: T): T {
  const secureInbound = encrypter.secureInbound.bind(encrypter)
  const secureOutbound = encrypter.secureOutbound.bind(encrypter)
  encrypter.secureInbound = async (connection, options) => replaced(await secureInbound(connection, options))
  encrypter.secureOutbound = async (connection, options) => replaced(await secureOutbound(connection, options))
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
}

function replaced<R extends { connection: unknown }> (secured: R): R {
  const stream = secured.connection as Partial<NoiseMessageStream>
  if (typeof stream.decrypt === 'function' && typeof stream.handshake?.decrypt === 'function') stream.decrypt = decrypt
  return secured
}

/** EncryptedMessageStream.decrypt of 17.0.0, but for how `dst` is made; what `decryptWithoutCopy` puts on each connection */
export function decrypt (this: NoiseMessageStream, chunk: Uint8Array | Uint8ArrayList): Uint8ArrayList {
  const output = new Uint8ArrayList()
  for (let i = 0; i < chunk.byteLength; i += MAX_MESSAGE) {
    const end = Math.min(i + MAX_MESSAGE, chunk.byteLength)
    if (end - TAG < i) throw new Error('Invalid chunk')
    const encrypted = chunk instanceof Uint8Array ? chunk.subarray(i, end) : chunk.sublist(i, end)
    // decrypted in place where the ciphertext is one piece (the cipher for small messages writes there)
    const dst = (encrypted instanceof Uint8Array ? encrypted : onePiece(encrypted))?.subarray(0, end - i - TAG)
    try {
      output.append(this.handshake.decrypt(encrypted, dst))
      this.metrics?.decryptedPackets.increment()
    } catch (err) {
      this.metrics?.decryptErrors.increment()
      throw err
    }
  }
  return output
}

/** The list's bytes as one view, if they are one piece */
function onePiece (list: Uint8ArrayList): Uint8Array | undefined {
  for (const piece of list) return piece.byteLength === list.byteLength ? piece : undefined
  return undefined
}
