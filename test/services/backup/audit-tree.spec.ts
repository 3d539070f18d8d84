import { createHash, randomBytes } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { AUDIT_LEAF_SIZE, LEGACY_AUDIT_LEAF_SIZE, auditProof, auditRoot, leafCount, leafSizeOf, verifyAudit } from '../../../src/services/backup/audit-tree.ts'
import { MAX_SEALED_CHUNK_SIZE } from '../../../src/transfer/constants.ts'
import { merkleRoot } from '../../../src/transfer/merkle.ts'

describe('audit tree', () => {
  it('counts leaves by the leaf size, a short last leaf included; a record without one is 4 KiB', () => {
    for (const size of [AUDIT_LEAF_SIZE, LEGACY_AUDIT_LEAF_SIZE]) {
      expect(leafCount(0, size)).toBe(0)
      expect(leafCount(1, size)).toBe(1)
      expect(leafCount(size, size)).toBe(1)
      expect(leafCount(size + 1, size)).toBe(2)
      expect(() => leafCount(-1, size)).toThrow(RangeError)
      expect(() => leafCount(1.5, size)).toThrow(RangeError)
    }
    expect(AUDIT_LEAF_SIZE).toBe(16 * 1024)
    expect(leafSizeOf({})).toBe(LEGACY_AUDIT_LEAF_SIZE)
    expect(leafSizeOf({ auditLeaf: AUDIT_LEAF_SIZE })).toBe(AUDIT_LEAF_SIZE)
  })

  it('proves every leaf of blobs of awkward sizes, and only at its own index, at both leaf sizes', () => {
    for (const leafSize of [AUDIT_LEAF_SIZE, LEGACY_AUDIT_LEAF_SIZE] as const) {
      for (const size of [29, leafSize, leafSize + 1, 5 * leafSize - 7, 8 * leafSize]) {
        const blob = randomBytes(size)
        const root = auditRoot(blob, leafSize)
        expect(root.length).toBe(32)
        const n = leafCount(size, leafSize)
        for (let i = 0; i < n; i++) {
          const answer = auditProof(blob, i, leafSize)
          expect(verifyAudit(root, i, n, answer, leafSize), `size=${size} leaf=${i}`).toBe(true)
          if (n > 1) expect(verifyAudit(root, (i + 1) % n, n, answer, leafSize)).toBe(false)
        }
      }
    }
  })

  it('keeps 4 KiB roots made before 16 KiB leaves: the same root as then, and neither size passes for the other', () => {
    const blob = randomBytes(3 * AUDIT_LEAF_SIZE + 5)
    // the 4 KiB root is what records without a leaf size hold: RFC 6962 over sha256 of each 4 KiB leaf
    const old = auditRoot(blob, LEGACY_AUDIT_LEAF_SIZE)
    const leaves = Array.from({ length: Math.ceil(blob.length / 4096) }, (_, i) => createHash('sha256').update(blob.subarray(i * 4096, (i + 1) * 4096)).digest())
    expect(Buffer.from(old)).toEqual(merkleRoot(Buffer.concat(leaves)))
    expect(Buffer.from(old)).not.toEqual(Buffer.from(auditRoot(blob)))
    const n = leafCount(blob.length, LEGACY_AUDIT_LEAF_SIZE)
    expect(verifyAudit(old, 2, n, auditProof(blob, 2, LEGACY_AUDIT_LEAF_SIZE), LEGACY_AUDIT_LEAF_SIZE)).toBe(true)
    // a 16 KiB leaf's answer does not pass against the 4 KiB root, nor the other way round
    expect(verifyAudit(old, 0, n, auditProof(blob, 0, AUDIT_LEAF_SIZE), LEGACY_AUDIT_LEAF_SIZE)).toBe(false)
    const m = leafCount(blob.length, AUDIT_LEAF_SIZE)
    expect(verifyAudit(auditRoot(blob), 0, m, auditProof(blob, 0, LEGACY_AUDIT_LEAF_SIZE), AUDIT_LEAF_SIZE)).toBe(false)
  })

  it('refuses an answer from a host that changed, dropped or swapped bytes', () => {
    const size = AUDIT_LEAF_SIZE
    const blob = randomBytes(6 * size + 100)
    const root = auditRoot(blob, size)
    const n = leafCount(blob.length, size)
    const good = auditProof(blob, 3, size)
    const flipped = Uint8Array.from(good.leaf)
    flipped[17]! ^= 1
    expect(verifyAudit(root, 3, n, { leaf: flipped, path: good.path }, size)).toBe(false)
    expect(verifyAudit(root, 3, n, { leaf: good.leaf.subarray(1), path: good.path }, size)).toBe(false)
    expect(verifyAudit(root, 3, n, { leaf: good.leaf, path: good.path.slice(1) }, size)).toBe(false)
    expect(verifyAudit(root, 3, n, { leaf: good.leaf, path: [...good.path, new Uint8Array(32)] }, size)).toBe(false)
    // another blob's leaf, with its own valid path, does not pass for this one
    const other = randomBytes(blob.length)
    expect(verifyAudit(root, 3, n, auditProof(other, 3, size), size)).toBe(false)
    // the last leaf must not be padded to a whole leaf
    const last = auditProof(blob, n - 1, size)
    expect(last.leaf.length).toBe(100)
    expect(verifyAudit(root, n - 1, n, { leaf: Buffer.concat([last.leaf, Buffer.alloc(1)]), path: last.path }, size)).toBe(false)
    // out of range and malformed answers
    expect(verifyAudit(root, n, n, good, size)).toBe(false)
    expect(verifyAudit(root, -1, n, good, size)).toBe(false)
    expect(verifyAudit(root, 3, n, { leaf: good.leaf, path: 'x' as never }, size)).toBe(false)
    expect(() => auditProof(blob, n, size)).toThrow(RangeError)
  })

  it('keeps a whole-size sealed chunk cheap: a path of at most 9 hashes at 16 KiB (11 at 4 KiB)', () => {
    const blob = randomBytes(MAX_SEALED_CHUNK_SIZE)
    for (const [size, most] of [[AUDIT_LEAF_SIZE, 9], [LEGACY_AUDIT_LEAF_SIZE, 11]] as const) {
      const root = auditRoot(blob, size)
      const n = leafCount(blob.length, size)
      const answer = auditProof(blob, n - 1, size)
      expect(answer.path.length).toBeLessThanOrEqual(most)
      expect(verifyAudit(root, n - 1, n, answer, size)).toBe(true)
    }
  })
})
