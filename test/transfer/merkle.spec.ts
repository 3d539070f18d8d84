import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { merkleProof, merkleRoot, verifyMerkleProof } from '../../src/transfer/merkle.ts'

const sha = (...parts: Uint8Array[]): Buffer => {
  const h = createHash('sha256')
  for (const p of parts) h.update(p)
  return h.digest()
}

/** RFC 6962 section 2.1, recursively, as the reference. */
function mth (leaves: Buffer[]): Buffer {
  if (leaves.length === 0) return sha()
  if (leaves.length === 1) return sha(Buffer.from([0]), leaves[0]!)
  let k = 1
  while (k * 2 < leaves.length) k *= 2
  return sha(Buffer.from([1]), mth(leaves.slice(0, k)), mth(leaves.slice(k)))
}

function ids (n: number): { list: Buffer[], joined: Buffer } {
  const list = Array.from({ length: n }, (_, i) => sha(Buffer.from(`chunk ${i}`)))
  return { list, joined: Buffer.concat(list) }
}

describe('merkle', () => {
  it('matches RFC 6962 for 0 to 33 leaves', () => {
    for (let n = 0; n <= 33; n++) {
      const { list, joined } = ids(n)
      expect(merkleRoot(joined).toString('hex'), `n=${n}`).toBe(mth(list).toString('hex'))
    }
  })

  it('proves every leaf of trees up to 20 leaves', () => {
    for (let n = 1; n <= 20; n++) {
      const { list, joined } = ids(n)
      const root = merkleRoot(joined)
      for (let i = 0; i < n; i++) {
        const proof = merkleProof(joined, i)
        expect(verifyMerkleProof(root, list[i]!, i, n, proof), `n=${n} i=${i}`).toBe(true)
        if (n > 1) {
          expect(verifyMerkleProof(root, list[i]!, (i + 1) % n, n, proof)).toBe(false)
          expect(verifyMerkleProof(root, list[(i + 1) % n]!, i, n, proof)).toBe(false)
        }
        if (proof.length > 0) expect(verifyMerkleProof(root, list[i]!, i, n, proof.slice(1))).toBe(false)
      }
    }
  })

  // As in RFC 6962 the root does not commit to the leaf count on its own: a
  // left-side proof for n leaves also checks out for some larger n. The count
  // must come from the signed manifest, never from the prover.

  it('refuses partial ids and out-of-range leaves', () => {
    expect(() => merkleRoot(Buffer.alloc(33))).toThrow(RangeError)
    expect(() => merkleProof(ids(3).joined, 3)).toThrow(RangeError)
    const { list, joined } = ids(3)
    expect(verifyMerkleProof(merkleRoot(joined), list[0]!, 5, 3, merkleProof(joined, 0))).toBe(false)
  })
})
