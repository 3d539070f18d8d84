import { createHash, hash } from 'node:crypto'
import { merkleProof, merkleRoot, verifyMerkleProof } from '../../transfer/merkle.ts'

/**
 * Audit trees: how an owner checks that a host still holds a sealed blob,
 * keeping only 32 bytes per blob.
 *
 * The sealed blob is cut into leaves of the record's leaf size (the last one
 * may be shorter); the root is the RFC 6962 Merkle tree of
 * src/transfer/merkle.ts over sha256(leaf bytes), so leaf and node hashes
 * stay domain-separated:
 *
 *   root = MTH(sha256(leaf 0), sha256(leaf 1), ...)
 *
 * To answer a challenge (blob, leaf i) the host sends leaf i's bytes and its
 * audit path. The owner recomputes the root from them; a host that dropped or
 * changed the blob can't, since it would need a sha256 preimage. Answering
 * costs the host one read of the blob (<= MAX_SEALED_CHUNK_SIZE) per challenge.
 *
 * Leaf sizes: 16 KiB (AUDIT_LEAF_SIZE) for every root made now; 4 KiB
 * (LEGACY_AUDIT_LEAF_SIZE) for roots made before 2026-12 (records without a
 * leaf size), still checked. The root's cost is in its hash calls, not its
 * bytes: at 4 KiB a MiB took about 770 of them (its leaves, their RFC 6962
 * leaf hashes and the nodes), at 16 KiB about 190.
 *
 * The leaf count is the owner's (from the blob size and leaf size it
 * recorded), never the host's: the root alone does not commit to it (see
 * merkle.ts).
 */

/** The leaf size of every audit root made now. */
export const AUDIT_LEAF_SIZE = 16 * 1024
/** The leaf size of roots made before AUDIT_LEAF_SIZE (a record without one). */
export const LEGACY_AUDIT_LEAF_SIZE = 4 * 1024
export const AUDIT_LEAF_SIZES = [LEGACY_AUDIT_LEAF_SIZE, AUDIT_LEAF_SIZE] as const
export type AuditLeafSize = typeof AUDIT_LEAF_SIZES[number]

/** The leaf size of a record's root: the one it names, or the legacy 4 KiB. */
export function leafSizeOf (record: { auditLeaf?: AuditLeafSize }): AuditLeafSize {
  return record.auditLeaf ?? LEGACY_AUDIT_LEAF_SIZE
}

/** One answered challenge: the leaf's bytes and its path, nearest sibling first. */
export interface AuditAnswer {
  leaf: Uint8Array
  path: Uint8Array[]
}

/** Leaves in a blob of `size` bytes (0 for an empty blob, which can't be audited). */
export function leafCount (size: number, leafSize: AuditLeafSize): number {
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`blob size ${size} is not a byte count`)
  return Math.ceil(size / leafSize)
}

function leafHashes (sealed: Uint8Array, leafSize: AuditLeafSize): Buffer {
  const count = leafCount(sealed.length, leafSize)
  const ids = Buffer.allocUnsafe(count * 32)
  // one-shot hashes: a Hash object per leaf cost about as much as the hashing
  for (let i = 0; i < count; i++) ids.set(hash('sha256', leafAt(sealed, i, leafSize), 'buffer'), i * 32)
  return ids
}

function leafAt (sealed: Uint8Array, index: number, leafSize: AuditLeafSize): Uint8Array {
  return sealed.subarray(index * leafSize, Math.min(sealed.length, (index + 1) * leafSize))
}

/** The 32-byte audit root the owner keeps for a sealed blob. */
export function auditRoot (sealed: Uint8Array, leafSize: AuditLeafSize = AUDIT_LEAF_SIZE): Uint8Array {
  return merkleRoot(leafHashes(sealed, leafSize))
}

/** The host's answer to a challenge on leaf `leaf` of a blob it holds, cut in leaves of `leafSize` (the owner's). */
export function auditProof (sealed: Uint8Array, leaf: number, leafSize: AuditLeafSize): AuditAnswer {
  const count = leafCount(sealed.length, leafSize)
  if (!Number.isSafeInteger(leaf) || leaf < 0 || leaf >= count) throw new RangeError(`leaf ${leaf} is not in a blob of ${count} leaves`)
  return { leaf: Uint8Array.from(leafAt(sealed, leaf, leafSize)), path: merkleProof(leafHashes(sealed, leafSize), leaf) }
}

/**
 * Checks a host's answer against the root, leaf size and leaf count the
 * owner recorded. Every leaf but the last must be whole; the last holds 1 to
 * `leafSize` bytes.
 */
export function verifyAudit (root: Uint8Array, leafIndex: number, leafTotal: number, answer: AuditAnswer, leafSize: AuditLeafSize): boolean {
  if (!Number.isSafeInteger(leafIndex) || !Number.isSafeInteger(leafTotal) || leafIndex < 0 || leafIndex >= leafTotal) return false
  const { leaf, path } = answer
  if (!(leaf instanceof Uint8Array) || !Array.isArray(path)) return false
  const last = leafIndex === leafTotal - 1
  if (last ? (leaf.length === 0 || leaf.length > leafSize) : leaf.length !== leafSize) return false
  if (path.length > 64 || !path.every(p => p instanceof Uint8Array)) return false
  return verifyMerkleProof(root, createHash('sha256').update(leaf).digest(), leafIndex, leafTotal, path)
}
