import { createHash } from 'node:crypto'
import nacl from 'tweetnacl'
import { describe, expect, it } from 'vitest'
import {
  PUBLIC_KEY_LENGTH,
  SIGNATURE_LENGTH,
  isCanonicalSignature,
  sign,
  signedMessage,
  verify,
  type SigningDomain
} from '../../src/peer/signing.ts'

/**
 * The Ed25519 group order, computed here from RFC 8032's definition rather than
 * copied from the module under test, as 32 little-endian bytes.
 */
const L_BIG = 2n ** 252n + 27742317777372353535851937790883648493n
const L_BYTES = toLittleEndian(L_BIG)

const DOMAINS: SigningDomain[] = ['invite/1', 'address-record/1', 'manifest/1', 'redeem/1']

function toLittleEndian (n: bigint): Uint8Array {
  const out = new Uint8Array(32)
  for (let i = 0; i < 32; i++) {
    out[i] = Number(n & 0xffn)
    n >>= 8n
  }
  return out
}

function fromLittleEndian (bytes: Uint8Array): bigint {
  let n = 0n
  for (let i = bytes.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(bytes[i]!)
  return n
}

/** S' = S + L: a little-endian 256-bit add on bytes 32..63 of the signature. */
function malleate (signature: Uint8Array): Uint8Array {
  const out = Uint8Array.from(signature)
  let carry = 0
  for (let i = 0; i < 32; i++) {
    const sum = out[32 + i]! + L_BYTES[i]! + carry
    out[32 + i] = sum & 0xff
    carry = sum >> 8
  }
  expect(carry).toBe(0) // S < L < 2^253, so S + L always fits in 256 bits
  return out
}

/** A signature with the given R half and S scalar. */
function withS (signature: Uint8Array, s: bigint): Uint8Array {
  const out = Uint8Array.from(signature)
  out.set(toLittleEndian(s), 32)
  return out
}

/** A fixed keypair so that failures reproduce. */
function keyPair (seedByte: number): nacl.SignKeyPair {
  return nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(seedByte))
}

const alice = keyPair(1)
const bob = keyPair(2)
const body = new TextEncoder().encode('a record body that is signed')

describe('signedMessage', () => {
  it('is "kith/<domain>\\0" followed by sha256(body)', () => {
    const message = signedMessage('invite/1', body)
    const expected = Buffer.concat([
      Buffer.from('kith/invite/1\0', 'utf8'),
      createHash('sha256').update(body).digest()
    ])
    expect(Buffer.from(message).equals(expected)).toBe(true)
  })

  it('differs for every domain, for the same body', () => {
    const messages = DOMAINS.map(d => Buffer.from(signedMessage(d, body)).toString('hex'))
    expect(new Set(messages).size).toBe(DOMAINS.length)
  })

  it('has a fixed size whatever the body length', () => {
    expect(signedMessage('manifest/1', new Uint8Array(0)).length)
      .toBe(signedMessage('manifest/1', new Uint8Array(100_000)).length)
  })
})

describe('sign and verify', () => {
  it('round-trips in every domain', () => {
    for (const domain of DOMAINS) {
      const signature = sign(domain, body, alice.secretKey)
      expect(signature.length).toBe(SIGNATURE_LENGTH)
      expect(verify(domain, body, signature, alice.publicKey)).toBe(true)
    }
  })

  it('round-trips an empty body', () => {
    const empty = new Uint8Array(0)
    expect(verify('redeem/1', empty, sign('redeem/1', empty, alice.secretKey), alice.publicKey)).toBe(true)
  })

  it('signs deterministically (Ed25519)', () => {
    expect(Buffer.from(sign('invite/1', body, alice.secretKey)))
      .toEqual(Buffer.from(sign('invite/1', body, alice.secretKey)))
  })

  it('is a plain Ed25519 signature over the domain-separated message', () => {
    const signature = sign('address-record/1', body, alice.secretKey)
    expect(nacl.sign.detached.verify(signedMessage('address-record/1', body), signature, alice.publicKey)).toBe(true)
    // and not a signature over the raw body
    expect(nacl.sign.detached.verify(body, signature, alice.publicKey)).toBe(false)
  })

  it('makes the bytes tweetnacl makes for the same key and message', () => {
    // signing moved from tweetnacl to node:crypto (95fb3bb): records signed before and after must not differ.
    // A domain only changes the message signed (signedMessage), so each key signs each message in one domain,
    // and each domain is signed in once: tweetnacl takes ~9 ms a signature here, the whole product 0.45 s
    const same = (domain: SigningDomain, message: Uint8Array, keys: nacl.SignKeyPair): void => {
      expect(Buffer.from(sign(domain, message, keys.secretKey)))
        .toEqual(Buffer.from(nacl.sign.detached(signedMessage(domain, message), keys.secretKey)))
    }
    for (const seedByte of [1, 2, 0x7f, 0xff]) {
      const keys = keyPair(seedByte)
      for (const message of [new Uint8Array(0), body, new Uint8Array(4096).fill(seedByte)]) same('invite/1', message, keys)
    }
    for (const domain of DOMAINS.slice(1)) same(domain, body, bob)
  })

  it('fails in any other domain', () => {
    for (const signedIn of DOMAINS) {
      const signature = sign(signedIn, body, alice.secretKey)
      for (const checkedIn of DOMAINS) {
        expect(verify(checkedIn, body, signature, alice.publicKey)).toBe(signedIn === checkedIn)
      }
    }
  })

  it('fails with the wrong public key', () => {
    const signature = sign('invite/1', body, alice.secretKey)
    expect(verify('invite/1', body, signature, bob.publicKey)).toBe(false)
  })

  it('fails for another body, including a one-bit change', () => {
    const signature = sign('invite/1', body, alice.secretKey)
    const changed = Uint8Array.from(body)
    changed[0]! ^= 1
    expect(verify('invite/1', changed, signature, alice.publicKey)).toBe(false)
    expect(verify('invite/1', body.subarray(1), signature, alice.publicKey)).toBe(false)
  })

  it('fails when a bit of any signature byte is flipped', () => {
    // one bit per byte, walking the bit position: tweetnacl verifies take
    // milliseconds each, so all 512 flips would make this test slow
    const signature = sign('manifest/1', body, alice.secretKey)
    for (let i = 0; i < SIGNATURE_LENGTH; i++) {
      const bit = i % 8
      const flipped = Uint8Array.from(signature)
      flipped[i]! ^= 1 << bit
      expect(verify('manifest/1', body, flipped, alice.publicKey), `byte ${i} bit ${bit}`).toBe(false)
    }
  })
})

describe('malleated signatures (S + L)', () => {
  it('the test constant L matches RFC 8032', () => {
    expect(fromLittleEndian(L_BYTES)).toBe(L_BIG)
    expect(Buffer.from(L_BYTES).toString('hex'))
      .toBe('edd3f55c1a631258d69cf7a2def9de14' + '00'.repeat(15) + '10')
  })

  it('byte-wise malleation adds exactly L to S', () => {
    const signature = sign('invite/1', body, alice.secretKey)
    const s = fromLittleEndian(signature.subarray(32))
    expect(fromLittleEndian(malleate(signature).subarray(32))).toBe(s + L_BIG)
    expect(Buffer.from(malleate(signature).subarray(0, 32))).toEqual(Buffer.from(signature.subarray(0, 32)))
  })

  it('are accepted by tweetnacl alone but rejected by verify', () => {
    for (const domain of DOMAINS) {
      const signature = sign(domain, body, alice.secretKey)
      const malleated = malleate(signature)
      expect(Buffer.from(malleated)).not.toEqual(Buffer.from(signature))
      // the reason the S < L check exists: tweetnacl takes S mod L
      expect(nacl.sign.detached.verify(signedMessage(domain, body), malleated, alice.publicKey)).toBe(true)
      expect(isCanonicalSignature(malleated)).toBe(false)
      expect(verify(domain, body, malleated, alice.publicKey)).toBe(false)
    }
  })

  it('are rejected for many different signatures', () => {
    for (let i = 0; i < 16; i++) {
      const b = new TextEncoder().encode(`body ${i}`)
      const signature = sign('address-record/1', b, bob.secretKey)
      expect(verify('address-record/1', b, signature, bob.publicKey)).toBe(true)
      expect(verify('address-record/1', b, malleate(signature), bob.publicKey)).toBe(false)
    }
  })
})

describe('isCanonicalSignature', () => {
  const signature = sign('invite/1', body, alice.secretKey)

  it('accepts real signatures', () => {
    expect(isCanonicalSignature(signature)).toBe(true)
  })

  it('accepts S = 0 and S = L - 1', () => {
    expect(isCanonicalSignature(withS(signature, 0n))).toBe(true)
    expect(isCanonicalSignature(withS(signature, L_BIG - 1n))).toBe(true)
  })

  it('rejects S = L', () => {
    const sIsL = withS(signature, L_BIG)
    expect(Buffer.from(sIsL.subarray(32))).toEqual(Buffer.from(L_BYTES))
    expect(isCanonicalSignature(sIsL)).toBe(false)
    expect(verify('invite/1', body, sIsL, alice.publicKey)).toBe(false)
  })

  it('rejects S = L + 1, S = 2^253 and S = 2^256 - 1', () => {
    for (const s of [L_BIG + 1n, 2n ** 253n, 2n ** 256n - 1n]) {
      expect(isCanonicalSignature(withS(signature, s)), s.toString(16)).toBe(false)
    }
  })

  it('rejects an S that only exceeds L in a low byte', () => {
    // same top bytes as L, larger in byte 0: must compare from the most significant byte down
    expect(isCanonicalSignature(withS(signature, L_BIG + 0x10n))).toBe(false)
    expect(isCanonicalSignature(withS(signature, L_BIG - 0x10n))).toBe(true)
  })

  it('looks only at S, never R', () => {
    const r = Uint8Array.from(signature)
    r.fill(0xff, 0, 32)
    expect(isCanonicalSignature(r)).toBe(true)
  })

  it('rejects wrong lengths', () => {
    for (const length of [0, 32, 63, 65, 128]) {
      expect(isCanonicalSignature(new Uint8Array(length)), `length ${length}`).toBe(false)
    }
  })
})

describe('wrong lengths', () => {
  const signature = sign('invite/1', body, alice.secretKey)

  it('reject short and long signatures without throwing', () => {
    const padded = new Uint8Array(SIGNATURE_LENGTH + 1)
    padded.set(signature)
    for (const bad of [new Uint8Array(0), signature.subarray(0, 63), padded, Buffer.concat([signature, signature])]) {
      expect(verify('invite/1', body, bad, alice.publicKey), `length ${bad.length}`).toBe(false)
    }
  })

  it('reject short and long public keys without throwing', () => {
    expect(PUBLIC_KEY_LENGTH).toBe(32)
    const long = new Uint8Array(33)
    long.set(alice.publicKey)
    for (const bad of [new Uint8Array(0), alice.publicKey.subarray(0, 31), long, alice.secretKey]) {
      expect(verify('invite/1', body, signature, bad), `length ${bad.length}`).toBe(false)
    }
  })
})
