import { createHash, createPrivateKey, createPublicKey, sign as cryptoSign, verify as cryptoVerify } from 'node:crypto'

/**
 * Domain-separated Ed25519 signatures for kith's signed records.
 *
 * The signed message is `"kith/<domain>\0" || sha256(body)`, so a signature
 * made for one record type (an invite, an address record, a manifest) can never
 * be replayed as another, whatever the body bytes.
 *
 * Both sides use node:crypto (OpenSSL): Ed25519 signatures are deterministic,
 * so they are the bytes tweetnacl made for the same key and message, for a
 * thirtieth of the CPU or less (0.14 ms a signature against 5 ms). A signature
 * whose scalar S is not fully reduced (S >= L, a malleated copy of a valid
 * one, which tweetnacl accepts) is rejected before verifying, as RFC 8032
 * asks.
 */

export const SIGNATURE_LENGTH = 64
export const PUBLIC_KEY_LENGTH = 32

/** The order of the Ed25519 base point, little-endian. */
const L = Uint8Array.from([
  0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10
])

export type SigningDomain = 'invite/1' | 'address-record/1' | 'manifest/1' | 'redeem/1' | 'backup-request/1' | 'backup-snapshot/1' | 'backup-recovery/1' | 'swarm-list/1'

export function signedMessage (domain: SigningDomain, body: Uint8Array): Uint8Array {
  const prefix = Buffer.from(`kith/${domain}\0`, 'utf8')
  const digest = createHash('sha256').update(body).digest()
  return Buffer.concat([prefix, digest])
}

/** PKCS#8 DER of an Ed25519 private key, up to its 32-byte seed (RFC 8410) */
const ED25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex')

/** Signs with a 64-byte secret key in tweetnacl's layout (seed || public key); the seed alone makes the key. */
export function sign (domain: SigningDomain, body: Uint8Array, secretKey: Uint8Array): Uint8Array {
  const key = createPrivateKey({ key: Buffer.concat([ED25519_PKCS8_PREFIX, secretKey.subarray(0, 32)]), format: 'der', type: 'pkcs8' })
  const signature = cryptoSign(null, signedMessage(domain, body), key)
  return new Uint8Array(signature)
}

/** True when S, the second half of the signature, is below the group order. */
export function isCanonicalSignature (signature: Uint8Array): boolean {
  if (signature.length !== SIGNATURE_LENGTH) return false
  for (let i = 31; i >= 0; i--) {
    const s = signature[32 + i]!
    const l = L[i]!
    if (s < l) return true
    if (s > l) return false
  }
  return false // S == L
}

export function verify (domain: SigningDomain, body: Uint8Array, signature: Uint8Array, publicKey: Uint8Array): boolean {
  if (publicKey.length !== PUBLIC_KEY_LENGTH || !isCanonicalSignature(signature)) return false
  try {
    const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(publicKey).toString('base64url') }, format: 'jwk' })
    return cryptoVerify(null, signedMessage(domain, body), key, signature)
  } catch {
    return false // not a point on the curve
  }
}
