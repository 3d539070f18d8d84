import { randomBytes } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { AUDIT_LEAF_SIZE, auditProof, auditRoot, leafCount, verifyAudit } from '../../../src/services/backup/audit-tree.ts'
import { MAX_SEALED_CHUNK_SIZE } from '../../../src/transfer/constants.ts'

describe('audit tree', () => {
  it('counts leaves by 4 KiB, a short last leaf included', () => {
    expect(leafCount(0)).toBe(0)
    expect(leafCount(1)).toBe(1)
    expect(leafCount(AUDIT_LEAF_SIZE)).toBe(1)
    expect(leafCount(AUDIT_LEAF_SIZE + 1)).toBe(2)
    expect(() => leafCount(-1)).toThrow(RangeError)
    expect(() => leafCount(1.5)).toThrow(RangeError)
  })

  it('proves every leaf of blobs of awkward sizes, and only at its own index', () => {
    for (const size of [29, AUDIT_LEAF_SIZE, AUDIT_LEAF_SIZE + 1, 5 * AUDIT_LEAF_SIZE - 7, 8 * AUDIT_LEAF_SIZE]) {
      const blob = randomBytes(size)
      const root = auditRoot(blob)
      expect(root.length).toBe(32)
      const n = leafCount(size)
      for (let i = 0; i < n; i++) {
        const answer = auditProof(blob, i)
        expect(verifyAudit(root, i, n, answer), `size=${size} leaf=${i}`).toBe(true)
        if (n > 1) expect(verifyAudit(root, (i + 1) % n, n, answer)).toBe(false)
      }
    }
  })

  it('refuses an answer from a host that changed, dropped or swapped bytes', () => {
    const blob = randomBytes(6 * AUDIT_LEAF_SIZE + 100)
    const root = auditRoot(blob)
    const n = leafCount(blob.length)
    const good = auditProof(blob, 3)
    const flipped = Uint8Array.from(good.leaf)
    flipped[17]! ^= 1
    expect(verifyAudit(root, 3, n, { leaf: flipped, path: good.path })).toBe(false)
    expect(verifyAudit(root, 3, n, { leaf: good.leaf.subarray(1), path: good.path })).toBe(false)
    expect(verifyAudit(root, 3, n, { leaf: good.leaf, path: good.path.slice(1) })).toBe(false)
    expect(verifyAudit(root, 3, n, { leaf: good.leaf, path: [...good.path, new Uint8Array(32)] })).toBe(false)
    // another blob's leaf, with its own valid path, does not pass for this one
    const other = randomBytes(blob.length)
    expect(verifyAudit(root, 3, n, auditProof(other, 3))).toBe(false)
    // the last leaf must not be padded to a whole leaf
    const last = auditProof(blob, n - 1)
    expect(last.leaf.length).toBe(100)
    expect(verifyAudit(root, n - 1, n, { leaf: Buffer.concat([last.leaf, Buffer.alloc(1)]), path: last.path })).toBe(false)
    // out of range and malformed answers
    expect(verifyAudit(root, n, n, good)).toBe(false)
    expect(verifyAudit(root, -1, n, good)).toBe(false)
    expect(verifyAudit(root, 3, n, { leaf: good.leaf, path: 'x' as never })).toBe(false)
    expect(() => auditProof(blob, n)).toThrow(RangeError)
  })

  it('keeps a whole-size sealed chunk cheap: 1 KiB of leaf hashes per path at most', () => {
    const blob = randomBytes(MAX_SEALED_CHUNK_SIZE)
    const root = auditRoot(blob)
    const n = leafCount(blob.length)
    const answer = auditProof(blob, n - 1)
    expect(answer.path.length).toBeLessThanOrEqual(11)
    expect(verifyAudit(root, n - 1, n, answer)).toBe(true)
  })
})
