import { createHash, hash } from 'node:crypto'
import { merkleProof, merkleRoot, verifyMerkleProof } from '../../transfer/merkle.ts'

/**
 * Audit trees: how an owner checks that a host still holds a sealed blob,
 * keeping only 32 bytes per blob.
 *
 * The sealed blob is cut into AUDIT_LEAF_SIZE leaves (the last one may be
 * shorter); the root is the RFC 6962 Merkle tree of src/transfer/merkle.ts over
 * sha256(leaf bytes), so leaf and node hashes stay domain-separated:
 *
 *   root = MTH(sha256(leaf 0), sha256(leaf 1), ...)
 *
 * To answer a challenge (blob, leaf i) the host sends leaf i's bytes and its
 * audit path. The owner recomputes the root from them; a host that dropped or
 * changed the blob can't, since it would need a sha256 preimage. Answering
 * costs the host one read of the blob (<= MAX_SEALED_CHUNK_SIZE) per challenge.
 *
 * The leaf count is the owner's (from the blob size it recorded), never the
 * host's: the root alone does not commit to it (see merkle.ts).
 */

export const AUDIT_LEAF_SIZE = 4096

/** One answered challenge: the leaf's bytes and its path, nearest sibling first. */
export interface AuditAnswer {
  leaf: Uint8Array
  path: Uint8Array[]
}

/** Leaves in a blob of `size` bytes (0 for an empty blob, which can't be audited). */
export function leafCount (size: number): number {
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`blob size ${size} is not a byte count`)
  return Math.ceil(size / AUDIT_LEAF_SIZE)
}

function leafHashes (sealed: Uint8Array): Buffer {
  const count = leafCount(sealed.length)
  const ids = Buffer.allocUnsafe(count * 32)
  // one-shot hashes: a Hash object per 4 KiB leaf cost about as much as the hashing
  for (let i = 0; i < count; i++) ids.set(hash('sha256', leafAt(sealed, i), 'buffer'), i * 32)
  return ids
}

function leafAt (sealed: Uint8Array, index: number): Uint8Array {
  return sealed.subarray(index * AUDIT_LEAF_SIZE, Math.min(sealed.length, (index + 1) * AUDIT_LEAF_SIZE))
}

/** The 32-byte audit root the owner keeps for a sealed blob. */
export function auditRoot (sealed: Uint8Array): Uint8Array {
  return merkleRoot(leafHashes(sealed))
}

/** The host's answer to a challenge on leaf `leaf` of a blob it holds. */
export function auditProof (sealed: Uint8Array, leaf: number): AuditAnswer {
  const count = leafCount(sealed.length)
  if (!Number.isSafeInteger(leaf) || leaf < 0 || leaf >= count) throw new RangeError(`leaf ${leaf} is not in a blob of ${count} leaves`)
  return { leaf: Uint8Array.from(leafAt(sealed, leaf)), path: merkleProof(leafHashes(sealed), leaf) }
}

/**
 * Checks a host's answer against the root and leaf count the owner recorded.
 * Every leaf but the last must be whole; the last holds 1 to AUDIT_LEAF_SIZE bytes.
 */
export function verifyAudit (root: Uint8Array, leafIndex: number, leafTotal: number, answer: AuditAnswer): boolean {
  if (!Number.isSafeInteger(leafIndex) || !Number.isSafeInteger(leafTotal) || leafIndex < 0 || leafIndex >= leafTotal) return false
  const { leaf, path } = answer
  if (!(leaf instanceof Uint8Array) || !Array.isArray(path)) return false
  const last = leafIndex === leafTotal - 1
  if (last ? (leaf.length === 0 || leaf.length > AUDIT_LEAF_SIZE) : leaf.length !== AUDIT_LEAF_SIZE) return false
  if (path.length > 64 || !path.every(p => p instanceof Uint8Array)) return false
  return verifyMerkleProof(root, createHash('sha256').update(leaf).digest(), leafIndex, leafTotal, path)
}
