import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { MAX_CHUNK_SIZE, SEAL_OVERHEAD } from '../../src/transfer/constants.ts'
import {
  AD_LENGTH, SEAL_FORMAT, associatedData, chunkId, deriveSealKeys, generateShareId, generateShareKey, isId, openChunk, sealChunk,
  type ChunkPosition
} from '../../src/transfer/seal.ts'
import { expectCode, hex, pseudoRandom } from './helpers.ts'

const key = new Uint8Array(32).fill(7)
const shareId = hex(0xaa)
const otherShare = hex(0xbb)
const keys = deriveSealKeys(key, shareId)
const at: ChunkPosition = { shareId, version: 3, file: 2, index: 5 }
const plaintext = pseudoRandom(100_000)

describe('seal', () => {
  it('round-trips chunks of many sizes', () => {
    for (const size of [0, 1, 15, 16, 17, 4096, 65_536, 1 << 20]) {
      const data = pseudoRandom(size, `s${size}`)
      const sealed = sealChunk(keys, at, data)
      expect(sealed.length).toBe(size + SEAL_OVERHEAD)
      expect(sealed[0]).toBe(SEAL_FORMAT)
      expect(Buffer.from(openChunk(keys, at, sealed)).equals(data)).toBe(true)
    }
  })

  it('is deterministic, so every holder serves the same bytes under the same id', () => {
    const a = sealChunk(keys, at, plaintext)
    const b = sealChunk(deriveSealKeys(key, shareId), { ...at }, Buffer.from(plaintext))
    expect(Buffer.from(a).equals(b)).toBe(true)
    expect(chunkId(a)).toBe(chunkId(b))
  })

  it('never reuses a nonce for different plaintexts at one position', () => {
    const other = Buffer.from(plaintext)
    other[0]! ^= 1
    const a = sealChunk(keys, at, plaintext)
    const b = sealChunk(keys, at, other)
    expect(Buffer.from(a.subarray(1, 13)).equals(b.subarray(1, 13))).toBe(false)
  })

  it('gives different bytes at different positions', () => {
    const ids = new Set([
      at, { ...at, index: 6 }, { ...at, file: 3 }, { ...at, version: 4 }
    ].map(p => chunkId(sealChunk(keys, p, plaintext))))
    expect(ids.size).toBe(4)
  })

  it('refuses a chunk moved to another index, file, version or share', () => {
    const sealed = sealChunk(keys, at, plaintext)
    expectCode(() => openChunk(keys, { ...at, index: 4 }, sealed), 'CHUNK_DECRYPT_FAILED')
    expectCode(() => openChunk(keys, { ...at, file: 1 }, sealed), 'CHUNK_DECRYPT_FAILED')
    expectCode(() => openChunk(keys, { ...at, version: 2 }, sealed), 'CHUNK_DECRYPT_FAILED')
    // Same encryption key, other share id in the AD: the AD alone must refuse it.
    expectCode(() => openChunk({ ...keys, shareId: otherShare }, { ...at, shareId: otherShare }, sealed), 'CHUNK_DECRYPT_FAILED')
    // The same share key used for another share derives other keys.
    const otherKeys = deriveSealKeys(key, otherShare)
    expectCode(() => openChunk(otherKeys, { ...at, shareId: otherShare }, sealed), 'CHUNK_DECRYPT_FAILED')
  })

  it('refuses keys of another share for a position', () => {
    const sealed = sealChunk(keys, at, plaintext)
    expectCode(() => openChunk(keys, { ...at, shareId: otherShare }, sealed), 'BAD_REQUEST')
  })

  it('refuses a wrong key', () => {
    const sealed = sealChunk(keys, at, plaintext)
    expectCode(() => openChunk(deriveSealKeys(generateShareKey(), shareId), at, sealed), 'CHUNK_DECRYPT_FAILED')
  })

  it('refuses any flipped bit in nonce, ciphertext or tag', () => {
    const sealed = sealChunk(keys, at, pseudoRandom(64))
    for (let i = 1; i < sealed.length; i++) {
      const bad = Buffer.from(sealed)
      bad[i]! ^= 1 << (i % 8)
      expectCode(() => openChunk(keys, at, bad), 'CHUNK_DECRYPT_FAILED')
    }
  })

  it('refuses an unknown format, truncation and oversize', () => {
    const sealed = Buffer.from(sealChunk(keys, at, plaintext))
    const future = Buffer.from(sealed)
    future[0] = 2
    expectCode(() => openChunk(keys, at, future), 'UNSUPPORTED_VERSION')
    expectCode(() => openChunk(keys, at, sealed.subarray(0, sealed.length - 1)), 'CHUNK_DECRYPT_FAILED')
    expectCode(() => openChunk(keys, at, sealed.subarray(0, SEAL_OVERHEAD - 1)), 'CHUNK_DECRYPT_FAILED')
    expectCode(() => openChunk(keys, at, Buffer.concat([sealed, Buffer.alloc(1)])), 'CHUNK_DECRYPT_FAILED')
    expectCode(() => sealChunk(keys, at, Buffer.alloc(MAX_CHUNK_SIZE + 1)), 'CHUNK_TOO_LARGE')
  })

  it('checks positions and keys', () => {
    expectCode(() => associatedData({ ...at, version: 0 }), 'BAD_REQUEST')
    expectCode(() => associatedData({ ...at, index: -1 }), 'BAD_REQUEST')
    expectCode(() => associatedData({ ...at, file: 2 ** 32 }), 'BAD_REQUEST')
    expectCode(() => associatedData({ ...at, shareId: 'AA'.repeat(32) }), 'BAD_REQUEST')
    expectCode(() => deriveSealKeys(new Uint8Array(31), shareId), 'BAD_REQUEST')
    expect(isId(generateShareId())).toBe(true)
  })

  it('lays out the associated data as documented', () => {
    const ad = associatedData({ shareId, version: 0x0102030405, file: 0x0a0b0c0d, index: 7 })
    expect(ad.length).toBe(AD_LENGTH)
    expect(ad.toString('hex')).toBe(
      Buffer.from('kith/chunk/1\0').toString('hex') + '01' + shareId + '0000000102030405' + '0a0b0c0d' + '00000007'
    )
  })

  it('names a chunk by the sha256 of its sealed bytes', () => {
    const sealed = sealChunk(keys, at, plaintext)
    expect(chunkId(sealed)).toBe(createHash('sha256').update(sealed).digest('hex'))
  })

  it('matches the format 1 fixture', () => {
    const sealed = sealChunk(keys, { shareId, version: 1, file: 0, index: 0 }, Buffer.from('hello, friend'))
    expect(Buffer.from(sealed).toString('hex')).toBe(SEAL_FIXTURE)
    expect(Buffer.from(openChunk(keys, { shareId, version: 1, file: 0, index: 0 }, Buffer.from(SEAL_FIXTURE, 'hex'))).toString()).toBe('hello, friend')
  })
})

// Sealed under key 07*32, share aa*32, version 1, file 0, index 0. If this
// changes, every chunk id changes: bump SEAL_FORMAT instead.
const SEAL_FIXTURE = '01baae5e89e8953a1f9ebfca0713b8975c087fe7e53b77c33875239c88717dda1cde26e88ba673f9089d'
