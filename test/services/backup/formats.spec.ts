import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import nacl from 'tweetnacl'
import { encode } from 'cborg'
import { decodeTree, encodeTree, MAX_TREE_BYTES, type TreeEntry } from '../../../src/services/backup/tree.ts'
import { decodeSnapshot, encodeSnapshot, MAX_SNAPSHOT_BYTES, type Snapshot } from '../../../src/services/backup/snapshot.ts'
import { codeOf } from '../../helpers/errors.ts'

const id = (n: number): string => n.toString(16).padStart(64, '0')
const entries: TreeEntry[] = [
  { name: 'b.txt', type: 'file', mode: 0o644, mtime: 1_700_000_000_123_456, size: 300_000, chunks: [id(1)] },
  { name: 'a dir', type: 'dir', mode: 0o755, mtime: 1_700_000_000_000_000, tree: [id(2), id(3)] },
  { name: 'link', type: 'symlink', mode: 0o777, mtime: -5, target: '../b.txt' },
  { name: 'empty', type: 'file', mode: 0o600, mtime: 0, size: 0, chunks: [] }
]
const keys = nacl.sign.keyPair()
const snapshot: Snapshot = {
  owner: '12D3KooWowner', seq: 7, at: 1_700_000_000_000, label: 'nightly', paths: ['/home/me/photos', '/etc'],
  tree: [id(9)], stats: { files: 3, dirs: 1, links: 1, bytes: 300_000 }
}

/**
 * A copy of `bytes` with a bit of every byte flipped in turn, the bit turning
 * with the byte's place (bit i % 8 of byte i), as manifest.spec does: every
 * byte and every bit position. test/fuzz/backup-formats.spec.ts flips any bit
 * of any tree and snapshot.
 */
function flips (bytes: Uint8Array, each: (flipped: Uint8Array) => void): void {
  for (let i = 0; i < bytes.length; i++) {
    const flipped = Uint8Array.from(bytes)
    flipped[i]! ^= 1 << (i % 8)
    each(flipped)
  }
}

describe('tree blobs', () => {
  it('round-trip, sorted by name bytes', () => {
    const decoded = decodeTree(encodeTree(entries))
    expect(decoded.map(e => e.name)).toEqual(['a dir', 'b.txt', 'empty', 'link'])
    expect(decoded).toEqual(expect.arrayContaining(entries))
  })

  it('refuse every truncation and a bit flip in every byte with a typed error (or decode to a valid tree)', () => {
    const bytes = encodeTree(entries)
    for (let n = 0; n < bytes.length; n++) expect(codeOf(() => decodeTree(bytes.subarray(0, n)))).toBe('TREE_MALFORMED')
    flips(bytes, flipped => expect(['ok', 'TREE_MALFORMED', 'UNSUPPORTED_VERSION']).toContain(codeOf(() => decodeTree(flipped))))
  })

  it('refuse bad names, modes, types, chunk counts, order, versions and oversize input', () => {
    const raw = (e: unknown[], v = 1): Uint8Array => encode({ e, v })
    const file = { n: 'f', t: 'f', m: 0o644, mt: 1, s: 10, c: Buffer.from(id(1), 'hex') }
    expect(codeOf(() => decodeTree(raw([file])))).toBe('ok')
    for (const name of ['', '.', '..', 'a/b', 'a\0b', 'x'.repeat(256)]) expect(codeOf(() => decodeTree(raw([{ ...file, n: name }])))).toBe('TREE_MALFORMED')
    expect(codeOf(() => decodeTree(raw([{ ...file, m: 0o10000 }])))).toBe('TREE_MALFORMED')
    expect(codeOf(() => decodeTree(raw([{ ...file, t: 'x' }])))).toBe('TREE_MALFORMED')
    expect(codeOf(() => decodeTree(raw([{ ...file, s: 10 * 1024 * 1024 }])))).toBe('TREE_MALFORMED') // 10 MiB in one chunk
    expect(codeOf(() => decodeTree(raw([{ ...file, c: Buffer.alloc(32 * 2) }])))).toBe('TREE_MALFORMED') // 10 bytes in two chunks
    expect(codeOf(() => decodeTree(raw([{ ...file, c: Buffer.alloc(31) }])))).toBe('TREE_MALFORMED')
    expect(codeOf(() => decodeTree(raw([{ ...file, extra: 1 }])))).toBe('TREE_MALFORMED')
    expect(codeOf(() => decodeTree(raw([{ ...file, n: 'b' }, { ...file, n: 'a' }])))).toBe('TREE_MALFORMED')
    expect(codeOf(() => decodeTree(raw([file, file])))).toBe('TREE_MALFORMED')
    expect(codeOf(() => decodeTree(raw([{ n: 'd', t: 'd', m: 0o755, mt: 1, c: Buffer.alloc(0) }])))).toBe('TREE_MALFORMED')
    expect(codeOf(() => decodeTree(raw([{ n: 'l', t: 'l', m: 0o777, mt: 1, l: '' }])))).toBe('TREE_MALFORMED')
    expect(codeOf(() => decodeTree(raw([file], 2)))).toBe('UNSUPPORTED_VERSION')
    expect(codeOf(() => decodeTree(new Uint8Array(MAX_TREE_BYTES + 1)))).toBe('TREE_TOO_LARGE')
  })
})

describe('snapshot blobs', () => {
  it('round-trip, signed by the identity', () => {
    expect(decodeSnapshot(encodeSnapshot(snapshot, keys.secretKey), keys.publicKey)).toEqual(snapshot)
  })

  it('refuse another signer, every truncation, a bit flip in every byte, and oversize input', () => {
    const bytes = encodeSnapshot(snapshot, keys.secretKey)
    expect(codeOf(() => decodeSnapshot(bytes, nacl.sign.keyPair().publicKey))).toBe('SNAPSHOT_BAD_SIGNATURE')
    for (let n = 0; n < bytes.length; n++) expect(['SNAPSHOT_MALFORMED', 'SNAPSHOT_BAD_SIGNATURE']).toContain(codeOf(() => decodeSnapshot(bytes.subarray(0, n), keys.publicKey)))
    flips(bytes, flipped => expect(['SNAPSHOT_MALFORMED', 'SNAPSHOT_BAD_SIGNATURE']).toContain(codeOf(() => decodeSnapshot(flipped, keys.publicKey))))
    expect(codeOf(() => decodeSnapshot(new Uint8Array(MAX_SNAPSHOT_BYTES + 1), keys.publicKey))).toBe('SNAPSHOT_TOO_LARGE')
  })

  it('refuse a well-signed body that breaks the format', () => {
    const signed = (body: Record<string, unknown>): Uint8Array => {
      const b = encode(body)
      return encode({ body: b, sig: nacl.sign.detached(Buffer.concat([Buffer.from('kith/backup-snapshot/1\0'), createHash('sha256').update(b).digest()]), keys.secretKey) })
    }
    const good = { v: 1, owner: 'o', seq: 1, at: 1, label: null, paths: ['/a'], tree: Buffer.alloc(32), stats: { files: 0, dirs: 0, links: 0, bytes: 0 } }
    expect(codeOf(() => decodeSnapshot(signed(good), keys.publicKey))).toBe('ok')
    expect(codeOf(() => decodeSnapshot(signed({ ...good, v: 2 }), keys.publicKey))).toBe('UNSUPPORTED_VERSION')
    expect(codeOf(() => decodeSnapshot(signed({ ...good, paths: ['relative'] }), keys.publicKey))).toBe('SNAPSHOT_MALFORMED')
    expect(codeOf(() => decodeSnapshot(signed({ ...good, tree: Buffer.alloc(0) }), keys.publicKey))).toBe('SNAPSHOT_MALFORMED')
    expect(codeOf(() => decodeSnapshot(signed({ ...good, seq: -1 }), keys.publicKey))).toBe('SNAPSHOT_MALFORMED')
    expect(codeOf(() => decodeSnapshot(signed({ ...good, label: 'a\u202eb' }), keys.publicKey))).toBe('SNAPSHOT_MALFORMED')
    expect(codeOf(() => decodeSnapshot(signed({ ...good, stats: { files: 1 } }), keys.publicKey))).toBe('SNAPSHOT_MALFORMED')
  })
})
