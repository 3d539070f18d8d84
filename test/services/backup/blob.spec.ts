import { describe, expect, it } from 'vitest'
import { deriveBackupKeys, deriveBackupKey } from '../../../src/services/backup/keys.ts'
import { blobId, openBlob, sealBlob, sealedSize, BLOB_FORMAT } from '../../../src/services/backup/blob.ts'
import { chunkId } from '../../../src/transfer/seal.ts'
import { MAX_SEALED_CHUNK_SIZE, MAX_CHUNK_SIZE } from '../../../src/transfer/constants.ts'
import { codeOf } from '../../helpers/errors.ts'

const seed = new Uint8Array(32).fill(3)
const keys = deriveBackupKeys(seed)
const other = deriveBackupKeys(new Uint8Array(32).fill(4))
const owner = '12D3KooWowner'

describe('backup keys', () => {
  it('are fixed by the seed, one per purpose, and differ between seeds', () => {
    const again = deriveBackupKeys(new Uint8Array(32).fill(3))
    expect(Buffer.from(again.seal).equals(keys.seal)).toBe(true)
    expect(Buffer.from(again.gear.buffer).equals(Buffer.from(keys.gear.buffer))).toBe(true)
    const all = [keys.chunkId, keys.seal, keys.recovery, new Uint8Array(keys.gear.buffer).subarray(0, 32)].map(k => Buffer.from(k).toString('hex'))
    expect(new Set(all).size).toBe(4)
    expect(Buffer.from(other.seal).equals(keys.seal)).toBe(false)
    expect(keys.gear.length).toBe(256)
  })

  it('are HKDF-SHA256 with the documented info strings (a fixture: changing them loses every backup)', () => {
    expect(Buffer.from(deriveBackupKey(seed, 'seal')).toString('hex')).toBe(Buffer.from(keys.seal).toString('hex'))
    expect(Buffer.from(keys.chunkId).toString('hex').length).toBe(64)
    expect(codeOf(() => deriveBackupKeys(new Uint8Array(31)))).toBe('INTERNAL')
  })
})

describe('blobs', () => {
  const plain = new TextEncoder().encode('hello backup')

  it('seal deterministically, key their ids, and open back', () => {
    const a = sealBlob(keys, owner, 'data', plain)
    const b = sealBlob(keys, owner, 'data', plain)
    expect(a.sealedId).toBe(b.sealedId)
    expect(a.sealedId).toBe(chunkId(a.sealed))
    expect(a.id).toBe(blobId(keys, 'data', plain))
    expect(a.id).not.toBe(blobId(other, 'data', plain))
    expect(a.id).not.toBe(blobId(keys, 'tree', plain))
    expect(a.sealed[0]).toBe(BLOB_FORMAT)
    expect(a.sealed.length).toBe(plain.length + 29)
    expect(Buffer.from(openBlob(keys, owner, 'data', a.id, a.sealed)).toString()).toBe('hello backup')
  })

  it('seal into a reused buffer the same bytes as into a new one, and only into one of the sealed size', () => {
    const big = Buffer.alloc(300_000, 7)
    const fresh = sealBlob(keys, owner, 'data', big)
    const reused = Buffer.alloc(sealedSize(big.length), 0xee)
    const into = sealBlob(keys, owner, 'data', big, fresh.id, reused)
    expect(into.sealed.buffer).toBe(reused.buffer)
    expect(Buffer.compare(into.sealed, fresh.sealed)).toBe(0)
    expect(into.sealedId).toBe(fresh.sealedId)
    expect(codeOf(() => sealBlob(keys, owner, 'data', big, fresh.id, Buffer.alloc(big.length + 28)))).toBe('INTERNAL')
  })

  it('refuse to open as another owner, kind or id, under other keys, or after any bit flip', () => {
    const a = sealBlob(keys, owner, 'tree', plain)
    const b = sealBlob(keys, owner, 'tree', new TextEncoder().encode('another'))
    expect(codeOf(() => openBlob(keys, '12D3KooWother', 'tree', a.id, a.sealed))).toBe('BLOB_OPEN_FAILED')
    expect(codeOf(() => openBlob(keys, owner, 'data', a.id, a.sealed))).toBe('BLOB_OPEN_FAILED')
    expect(codeOf(() => openBlob(keys, owner, 'tree', b.id, a.sealed))).toBe('BLOB_OPEN_FAILED')
    expect(codeOf(() => openBlob(other, owner, 'tree', a.id, a.sealed))).toBe('BLOB_OPEN_FAILED')
    for (let bit = 0; bit < a.sealed.length * 8; bit++) {
      const flipped = Uint8Array.from(a.sealed)
      flipped[bit >> 3]! ^= 1 << (bit & 7)
      expect(['BLOB_OPEN_FAILED', 'BLOB_MALFORMED']).toContain(codeOf(() => openBlob(keys, owner, 'tree', a.id, flipped)))
    }
  })

  it('refuse truncated, oversize and malformed input before decrypting', () => {
    const a = sealBlob(keys, owner, 'data', plain)
    expect(codeOf(() => openBlob(keys, owner, 'data', a.id, a.sealed.subarray(0, 28)))).toBe('BLOB_MALFORMED')
    expect(codeOf(() => openBlob(keys, owner, 'data', a.id, a.sealed.subarray(0, a.sealed.length - 1)))).toBe('BLOB_OPEN_FAILED')
    expect(codeOf(() => openBlob(keys, owner, 'data', a.id, new Uint8Array(MAX_SEALED_CHUNK_SIZE + 1)))).toBe('BLOB_MALFORMED')
    expect(codeOf(() => openBlob(keys, owner, 'data', 'zz', a.sealed))).toBe('BLOB_MALFORMED')
    expect(codeOf(() => sealBlob(keys, owner, 'data', new Uint8Array(MAX_CHUNK_SIZE + 1)))).toBe('INTERNAL')
    const big = sealBlob(keys, owner, 'data', new Uint8Array(MAX_CHUNK_SIZE))
    expect(big.sealed.length).toBe(MAX_SEALED_CHUNK_SIZE)
  })
})
