import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { MAX_SEALED_CHUNK_SIZE, SEAL_OVERHEAD } from '../../src/transfer/constants.ts'
import { SHARE_KEY_LENGTH, chunkId, deriveSealKeys, openChunk, sealChunk, verifySealed, type ChunkPosition } from '../../src/transfer/seal.ts'
import { WRAPPED_OVERHEAD, unwrapKey, wrapKey } from '../../src/peer/key-wrap.ts'
import { keys } from './arbitraries.ts'
import { flipBit, fuzz, rejects } from './budget.ts'

/**
 * Bytes a friend hands over that are authenticated rather than parsed:
 * sealed chunks (src/transfer/seal.ts `openChunk`, `verifySealed`) and share
 * keys wrapped to me (src/peer/key-wrap.ts `unwrapKey`). Any change to them
 * is refused with a KithError, never opened into something else.
 */
const hexId = fc.uint8Array({ minLength: 32, maxLength: 32 }).map(b => Buffer.from(b).toString('hex'))
const shareKey = fc.uint8Array({ minLength: SHARE_KEY_LENGTH, maxLength: SHARE_KEY_LENGTH })
const position: fc.Arbitrary<ChunkPosition> = fc.record({ shareId: hexId, fileHash: hexId, index: fc.oneof(fc.nat(100), fc.constant(0xffff_ffff)) })

const sealed = fc.record({ key: shareKey, position, plaintext: fc.uint8Array({ maxLength: 2048 }) }).map(r => {
  const sealKeys = deriveSealKeys(r.key, r.position.shareId)
  return { ...r, sealKeys, bytes: sealChunk(sealKeys, r.position, r.plaintext) }
})

const OPEN_CODES = ['CHUNK_DECRYPT_FAILED', 'UNSUPPORTED_VERSION'] as const

describe('sealed chunks, fuzzed', () => {
  it('round-trip: a sealed chunk opens to its plaintext at its position, and its id is its hash', () => {
    fuzz(fc.property(sealed, s => {
      expect(Buffer.from(openChunk(s.sealKeys, s.position, s.bytes)).equals(Buffer.from(s.plaintext))).toBe(true)
      expect(() => { verifySealed(chunkId(s.bytes), s.bytes) }).not.toThrow()
    }))
  })

  it('refuses every truncation, every bit flip and any other position with a KithError', () => {
    const damaged = sealed.chain(s => fc.oneof(
      fc.nat(s.bytes.length - 1).map(n => ({ s, bytes: s.bytes.subarray(0, n), at: s.position })),
      fc.nat(s.bytes.length * 8 - 1).map(bit => ({ s, bytes: flipBit(s.bytes, bit), at: s.position })),
      fc.oneof(
        hexId.map(fileHash => ({ ...s.position, fileHash })),
        fc.nat(0xffff_ffff).filter(i => i !== s.position.index).map(index => ({ ...s.position, index }))
      ).map(at => ({ s, bytes: s.bytes, at }))
    ))
    fuzz(fc.property(damaged, ({ s, bytes, at }) => {
      rejects(() => openChunk(s.sealKeys, at, bytes), OPEN_CODES, bytes)
      if (bytes !== s.bytes) rejects(() => { verifySealed(chunkId(s.bytes), bytes) }, ['CHUNK_HASH_MISMATCH', 'CHUNK_TOO_LARGE'], bytes)
    }))
  })

  it('refuses random bytes, and sizes no sealed chunk can have before decrypting', () => {
    const bytes = fc.oneof(
      fc.uint8Array({ maxLength: 300 }),
      fc.integer({ min: 1, max: 1024 }).map(over => new Uint8Array(MAX_SEALED_CHUNK_SIZE + over).fill(2))
    )
    fuzz(fc.property(shareKey, position, bytes, (key, at, b) => {
      rejects(() => openChunk(deriveSealKeys(key, at.shareId), at, b), OPEN_CODES, b.subarray(0, 64))
      if (b.length < SEAL_OVERHEAD || b.length > MAX_SEALED_CHUNK_SIZE) rejects(() => { verifySealed(chunkId(b), b) }, ['CHUNK_TOO_LARGE'])
    }), 0.3)
  })
})

describe('wrapped share keys, fuzzed', () => {
  const pair = fc.tuple(keys, keys, shareKey)

  it('round-trip: a key wrapped by the sender to the recipient unwraps to itself, and only there', () => {
    fuzz(fc.property(pair, keys, ([sender, recipient, key], other) => {
      const wrapped = wrapKey(key, recipient.publicKey, sender.secretKey)
      expect(unwrapKey(wrapped, sender.publicKey, recipient.secretKey)).toEqual(key)
      rejects(() => unwrapKey(wrapped, other.publicKey, recipient.secretKey), ['KEY_UNWRAP_FAILED'])
      rejects(() => unwrapKey(wrapped, sender.publicKey, other.secretKey), ['KEY_UNWRAP_FAILED'])
    }), 0.3)
  })

  it('refuses every truncation, bit flip and random bytes with KEY_UNWRAP_FAILED', () => {
    const damaged = pair.chain(([sender, recipient, key]) => {
      const wrapped = wrapKey(key, recipient.publicKey, sender.secretKey)
      return fc.oneof(
        fc.nat(wrapped.length - 1).map(n => wrapped.subarray(0, n)),
        fc.nat(wrapped.length * 8 - 1).map(bit => flipBit(wrapped, bit)),
        fc.uint8Array({ maxLength: WRAPPED_OVERHEAD + 100 })
      ).map(bytes => ({ sender, recipient, bytes }))
    })
    fuzz(fc.property(damaged, ({ sender, recipient, bytes }) => {
      rejects(() => unwrapKey(bytes, sender.publicKey, recipient.secretKey), ['KEY_UNWRAP_FAILED'], bytes)
    }), 0.3)
  })
})
