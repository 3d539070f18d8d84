import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { BufferPool } from '../../src/transfer/buffer-pool.ts'
import { MAX_CHUNK_SIZE, SEAL_OVERHEAD } from '../../src/transfer/constants.ts'
import {
  AD_LENGTH, SEAL_FORMAT, associatedData, chunkId, deriveSealKeys, generateShareId, generateShareKey, isId, openChunk, resealChunk, sealChunk,
  sealedNonce, type ChunkPosition
} from '../../src/transfer/seal.ts'
import { expectCode, hex, pseudoRandom } from './helpers.ts'

const key = new Uint8Array(32).fill(7)
const shareId = hex(0xaa)
const otherShare = hex(0xbb)
const fileHash = hex(0xcc)
const otherFile = hex(0xdd)
const keys = deriveSealKeys(key, shareId)
const at: ChunkPosition = { shareId, fileHash, index: 5 }
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

  it('opens into a pooled buffer, in slices, to the same bytes, reusing the buffer given back', () => {
    const pool = new BufferPool(2)
    let previous: Uint8Array | undefined
    for (const size of [0, 1, 65_535, 65_536, 65_537, 200_000, 1 << 20]) {
      const data = pseudoRandom(size, `p${size}`)
      const opened = openChunk(keys, at, sealChunk(keys, at, data), pool)
      expect(Buffer.from(opened).equals(data)).toBe(true)
      if (previous !== undefined && previous.buffer.byteLength >= size) expect(opened.buffer).toBe(previous.buffer)
      pool.give(opened)
      previous = opened
    }
  })

  it('wipes the pooled buffer it opened into when a chunk fails authentication', () => {
    const pool = new BufferPool(1)
    const taken: Buffer[] = []
    const take = pool.take.bind(pool)
    pool.take = (size: number) => { const b = take(size); taken.push(b); return b }
    const bad = Buffer.from(sealChunk(keys, at, plaintext))
    bad[bad.length - 1]! ^= 1
    expectCode(() => openChunk(keys, at, bad, pool), 'CHUNK_DECRYPT_FAILED')
    expect(taken).toHaveLength(1)
    expect(taken[0]!.length).toBe(plaintext.length)
    expect(taken[0]!.every(b => b === 0)).toBe(true)
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
      at, { ...at, index: 6 }, { ...at, fileHash: otherFile }
    ].map(p => chunkId(sealChunk(keys, p, plaintext))))
    expect(ids.size).toBe(3)
    const elsewhere = deriveSealKeys(key, otherShare)
    ids.add(chunkId(sealChunk(elsewhere, { ...at, shareId: otherShare }, plaintext)))
    expect(ids.size).toBe(4)
  })

  it('refuses a chunk moved to another index, file or share', () => {
    const sealed = sealChunk(keys, at, plaintext)
    expectCode(() => openChunk(keys, { ...at, index: 4 }, sealed), 'CHUNK_DECRYPT_FAILED')
    // Another file: another whole-file sha256.
    expectCode(() => openChunk(keys, { ...at, fileHash: otherFile }, sealed), 'CHUNK_DECRYPT_FAILED')
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
    future[0] = SEAL_FORMAT + 1
    expect(expectCode(() => openChunk(keys, at, future), 'UNSUPPORTED_VERSION').message).toMatch(/upgrade kith/)
    const past = Buffer.from(sealed)
    past[0] = 1 // format 1 bound version and file index instead of the file's hash
    expect(expectCode(() => openChunk(keys, at, past), 'UNSUPPORTED_VERSION').message).toMatch(/share it again/)
    expectCode(() => openChunk(keys, at, sealed.subarray(0, sealed.length - 1)), 'CHUNK_DECRYPT_FAILED')
    expectCode(() => openChunk(keys, at, sealed.subarray(0, SEAL_OVERHEAD - 1)), 'CHUNK_DECRYPT_FAILED')
    expectCode(() => openChunk(keys, at, Buffer.concat([sealed, Buffer.alloc(1)])), 'CHUNK_DECRYPT_FAILED')
    expectCode(() => sealChunk(keys, at, Buffer.alloc(MAX_CHUNK_SIZE + 1)), 'CHUNK_TOO_LARGE')
  })

  it('checks positions and keys', () => {
    expectCode(() => associatedData({ ...at, index: -1 }), 'BAD_REQUEST')
    expectCode(() => associatedData({ ...at, index: 2 ** 32 }), 'BAD_REQUEST')
    expectCode(() => associatedData({ ...at, index: 1.5 }), 'BAD_REQUEST')
    expectCode(() => associatedData({ ...at, shareId: 'AA'.repeat(32) }), 'BAD_REQUEST')
    expectCode(() => associatedData({ ...at, fileHash: 'CC'.repeat(32) }), 'BAD_REQUEST')
    expectCode(() => associatedData({ ...at, fileHash: 'cc'.repeat(31) }), 'BAD_REQUEST')
    expectCode(() => associatedData({ ...at, fileHash: undefined as unknown as string }), 'BAD_REQUEST')
    expectCode(() => deriveSealKeys(new Uint8Array(31), shareId), 'BAD_REQUEST')
    expect(isId(generateShareId())).toBe(true)
  })

  it('lays out the associated data as documented', () => {
    const ad = associatedData({ shareId, fileHash, index: 0x0a0b0c0d })
    expect(ad.length).toBe(AD_LENGTH)
    expect(AD_LENGTH).toBe(82)
    expect(ad.toString('hex')).toBe(
      Buffer.from('kith/chunk/2\0').toString('hex') + '02' + shareId + fileHash + '0a0b0c0d'
    )
  })

  it('names a chunk by the sha256 of its sealed bytes', () => {
    const sealed = sealChunk(keys, at, plaintext)
    expect(chunkId(sealed)).toBe(createHash('sha256').update(sealed).digest('hex'))
  })

  describe('sealing again from the plaintext and its nonce (resealChunk)', () => {
    it('gives back the very bytes sealChunk gave, for chunks of many sizes', () => {
      for (const size of [0, 1, 16, 4096, 100_000]) {
        const data = pseudoRandom(size, `r${size}`)
        const sealed = sealChunk(keys, at, data)
        const nonce = sealedNonce(sealed)
        expect(Buffer.from(nonce).equals(sealed.subarray(1, 13))).toBe(true)
        const again = resealChunk(keys, at, Buffer.from(data), Buffer.from(nonce))
        expect(Buffer.from(again).equals(sealed)).toBe(true)
        expect(chunkId(again)).toBe(chunkId(sealed))
      }
    })

    it('gives another chunk (another id) for a changed plaintext or another place', () => {
      const sealed = sealChunk(keys, at, plaintext)
      const nonce = sealedNonce(sealed)
      const changed = Buffer.from(plaintext)
      changed[77_777]! ^= 0x10
      const fromChanged = resealChunk(keys, at, changed, nonce)
      expect(fromChanged.length).toBe(sealed.length)
      expect(chunkId(fromChanged)).not.toBe(chunkId(sealed))
      expect(chunkId(resealChunk(keys, { ...at, index: 6 }, plaintext, nonce))).not.toBe(chunkId(sealed))
      expect(chunkId(resealChunk(keys, { ...at, fileHash: otherFile }, plaintext, nonce))).not.toBe(chunkId(sealed))
      // a nonce other than the one it was sealed with
      const otherNonce = Buffer.from(nonce)
      otherNonce[0]! ^= 1
      expect(chunkId(resealChunk(keys, at, plaintext, otherNonce))).not.toBe(chunkId(sealed))
    })

    it('refuses a nonce of the wrong length', () => {
      const nonce = sealedNonce(sealChunk(keys, at, plaintext))
      expectCode(() => resealChunk(keys, at, plaintext, nonce.subarray(0, 11)), 'BAD_REQUEST')
      expectCode(() => resealChunk(keys, at, plaintext, Buffer.concat([nonce, Buffer.alloc(1)])), 'BAD_REQUEST')
      expectCode(() => resealChunk(keys, at, plaintext, new Uint8Array(0)), 'BAD_REQUEST')
    })

    it("refuses keys of another share, an oversized plaintext and a too-short sealed chunk's nonce", () => {
      const nonce = sealedNonce(sealChunk(keys, at, plaintext))
      expectCode(() => resealChunk(deriveSealKeys(key, otherShare), at, plaintext, nonce), 'BAD_REQUEST')
      expectCode(() => resealChunk(keys, { ...at, shareId: otherShare }, plaintext, nonce), 'BAD_REQUEST')
      expectCode(() => resealChunk(keys, at, Buffer.alloc(MAX_CHUNK_SIZE + 1), nonce), 'CHUNK_TOO_LARGE')
      expectCode(() => sealedNonce(new Uint8Array(SEAL_OVERHEAD - 1)), 'CHUNK_DECRYPT_FAILED')
    })
  })

  it('matches the format 2 fixture', () => {
    const text = Buffer.from('hello, friend')
    const position: ChunkPosition = { shareId, fileHash: createHash('sha256').update(text).digest('hex'), index: 0 }
    const sealed = sealChunk(keys, position, text)
    expect(Buffer.from(sealed).toString('hex')).toBe(SEAL_FIXTURE)
    expect(Buffer.from(openChunk(keys, position, Buffer.from(SEAL_FIXTURE, 'hex'))).toString()).toBe('hello, friend')
  })
})

// The only chunk of a file holding 'hello, friend', sealed under key 07*32,
// share aa*32, fileHash sha256('hello, friend'), index 0. If this changes,
// every chunk id changes: bump SEAL_FORMAT instead.
const SEAL_FIXTURE = '0281640ba275373746f8a919b69850877e191d8b85bbe7ffcfbf3b59cf81111a567a72c53b5978e2948f'
