import nacl from 'tweetnacl'
import { ed25519 } from '@noble/curves/ed25519.js'
import { KithError } from '../errors.ts'

/**
 * Wrapping a symmetric key (a share key, a backup key) to one friend:
 * tweetnacl box (X25519 + XSalsa20-Poly1305) between the two nodes' identity
 * keys, converted from Ed25519 to X25519 with @noble/curves.
 *
 *   wrapped = nonce(24) || box(key)
 *
 * Only the recipient's identity key opens it, and opening proves the sender's
 * identity key made it.
 */
export const WRAPPED_OVERHEAD = nacl.box.nonceLength + nacl.box.overheadLength

function x25519Secret (edSecretKey: Uint8Array): Uint8Array {
  return ed25519.utils.toMontgomerySecret(edSecretKey.subarray(0, 32))
}

function x25519Public (edPublicKey: Uint8Array): Uint8Array {
  try {
    return ed25519.utils.toMontgomery(edPublicKey)
  } catch (err) {
    throw new KithError('BAD_REQUEST', 'the peer\'s public key is not a valid Ed25519 key', { cause: err })
  }
}

export function wrapKey (key: Uint8Array, recipientPublicKey: Uint8Array, senderSecretKey: Uint8Array): Uint8Array {
  const nonce = nacl.randomBytes(nacl.box.nonceLength)
  const box = nacl.box(key, nonce, x25519Public(recipientPublicKey), x25519Secret(senderSecretKey))
  return Buffer.concat([nonce, box])
}

export function unwrapKey (wrapped: Uint8Array, senderPublicKey: Uint8Array, recipientSecretKey: Uint8Array): Uint8Array {
  if (wrapped.length <= WRAPPED_OVERHEAD || wrapped.length > WRAPPED_OVERHEAD + 64) {
    throw new KithError('KEY_UNWRAP_FAILED', 'a wrapped key has the wrong length; the sender may run an incompatible kith')
  }
  const opened = nacl.box.open(wrapped.subarray(nacl.box.nonceLength), wrapped.subarray(0, nacl.box.nonceLength),
    x25519Public(senderPublicKey), x25519Secret(recipientSecretKey))
  if (opened == null) throw new KithError('KEY_UNWRAP_FAILED', 'a wrapped key did not open: it was not made for this node by that peer')
  return opened
}
