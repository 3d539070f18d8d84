import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { BACKUP_CDC_SIZES } from '../../src/transfer/cdc.ts'
import { decodeTree, encodeTree, type TreeEntry } from '../../src/services/backup/tree.ts'
import { decodeSnapshot, encodeSnapshot, type Snapshot } from '../../src/services/backup/snapshot.ts'
import { humanText, keys } from './arbitraries.ts'
import { flipBit, fuzz, rejects, rejectsOrValid, truncated, withFlip } from './budget.ts'

/**
 * Backup's tree and snapshot blobs (src/services/backup/tree.ts, snapshot.ts)
 * as a host that damaged or forged them gives them back: any truncation and
 * any single bit flip is refused with a typed error, or (a tree, which is
 * unsigned) decodes to a tree that encodes to the same bytes.
 * test/services/backup/formats.spec.ts flips a bit of every byte of one of
 * each; this flips any bit of any.
 */
const id = fc.uint8Array({ minLength: 32, maxLength: 32 }).map(b => Buffer.from(b).toString('hex'))
const name = humanText(40).filter(n => n !== '.' && n !== '..' && !n.includes('/') && !n.includes('\0') && Buffer.byteLength(n) <= 255)
const common = { name, mode: fc.integer({ min: 0, max: 0o7777 }), mtime: fc.maxSafeInteger() }
const entry: fc.Arbitrary<TreeEntry> = fc.oneof(
  fc.record({ ...common, type: fc.constant('file' as const), size: fc.constant(0), chunks: fc.constant<string[]>([]) }),
  fc.record({ ...common, type: fc.constant('file' as const), size: fc.integer({ min: 1, max: BACKUP_CDC_SIZES.max }), chunks: id.map(c => [c]) }),
  fc.record({ ...common, type: fc.constant('dir' as const), tree: fc.array(id, { minLength: 1, maxLength: 3 }) }),
  fc.record({ ...common, type: fc.constant('symlink' as const), target: humanText(80).filter(t => !t.includes('\0')) })
)
const tree = fc.uniqueArray(entry, { selector: e => e.name, maxLength: 6 }).map(encodeTree)

const snapshot: fc.Arbitrary<Snapshot> = fc.record({
  owner: fc.string({ minLength: 1, maxLength: 60 }),
  seq: fc.nat(),
  at: fc.nat(),
  label: fc.constantFrom(null, 'nightly', 'before the move'),
  paths: fc.array(humanText(40, 0).filter(p => !p.includes('\0')).map(p => `/${p}`), { minLength: 1, maxLength: 4 }),
  tree: fc.array(id, { minLength: 1, maxLength: 3 }),
  stats: fc.record({ files: fc.nat(), dirs: fc.nat(), links: fc.nat(), bytes: fc.maxSafeNat() })
})
const signed = fc.tuple(snapshot, keys).map(([s, k]) => ({ bytes: encodeSnapshot(s, k.secretKey), publicKey: k.publicKey }))

/** A tree that decodes is one the encoder makes: the same bytes again. */
function sameTree (bytes: Uint8Array): (entries: TreeEntry[]) => void {
  return entries => { expect(Buffer.from(encodeTree(entries)).equals(Buffer.from(bytes))).toBe(true) }
}

describe('backup tree and snapshot blobs, fuzzed', () => {
  it('round-trip: a tree decodes to its entries, a snapshot to itself under its signer\'s key', () => {
    fuzz(fc.property(tree, bytes => { expect(Buffer.from(encodeTree(decodeTree(bytes))).equals(Buffer.from(bytes))).toBe(true) }))
    fuzz(fc.property(snapshot, keys, (s, k) => { expect(decodeSnapshot(encodeSnapshot(s, k.secretKey), k.publicKey)).toEqual(s) }))
  })

  it('refuses every truncation: TREE_MALFORMED, SNAPSHOT_MALFORMED or SNAPSHOT_BAD_SIGNATURE', () => {
    fuzz(fc.property(truncated(tree), bytes => { rejects(() => decodeTree(bytes), ['TREE_MALFORMED'], bytes) }))
    fuzz(fc.property(signed.chain(s => fc.nat(s.bytes.length - 1).map(n => ({ ...s, bytes: s.bytes.subarray(0, n) }))), ({ bytes, publicKey }) => {
      rejects(() => decodeSnapshot(bytes, publicKey), ['SNAPSHOT_MALFORMED', 'SNAPSHOT_BAD_SIGNATURE'], bytes)
    }))
  })

  it('after any single bit flip, refuses a snapshot, and refuses a tree or decodes it to one encoded exactly so', () => {
    fuzz(fc.property(withFlip(tree), ([, flipped]) => { rejectsOrValid(() => decodeTree(flipped), ['TREE_MALFORMED', 'UNSUPPORTED_VERSION'], sameTree(flipped), flipped) }))
    fuzz(fc.property(signed.chain(s => fc.nat(s.bytes.length * 8 - 1).map(bit => ({ ...s, flipped: flipBit(s.bytes, bit) }))), ({ flipped, publicKey }) => {
      rejects(() => decodeSnapshot(flipped, publicKey), ['SNAPSHOT_MALFORMED', 'SNAPSHOT_BAD_SIGNATURE'], flipped)
    }))
  })
})
