import fc from 'fast-check'
import { isAbsolute, join, normalize, sep } from 'node:path'
import { describe, expect, it } from 'vitest'
import { encodeCanonical } from '../../src/peer/canonical.ts'
import {
  MAX_CHUNK_SIZE, MAX_ENTRIES, MAX_MANIFEST_BYTES, MAX_PATH_DEPTH, MAX_PATH_LENGTH, MAX_SEGMENT_LENGTH, MIN_CHUNK_SIZE, PARTIAL_SUFFIX
} from '../../src/transfer/constants.ts'
import {
  MANIFEST_FORMAT, checkPath, checkShareName, chunkCount, comparePaths, createManifest, decodeManifest, summarizeManifest, type Manifest, type ManifestEntry
} from '../../src/transfer/manifest.ts'
import { merkleRoot } from '../../src/transfer/merkle.ts'
import { plainEntries } from '../transfer/helpers.ts'
import { anyText, cborBytes, cborValue, humanText, keys, mutateField, signFast, type Keys } from './arbitraries.ts'
import { flipBit, fuzz, rejects, rejectsOrValid } from './budget.ts'

/**
 * Share manifests (src/transfer/manifest.ts `decodeManifest`, `checkPath`):
 * what a friend's node hands over before any chunk moves, and whose paths
 * become files on my disk.
 */
const id = fc.uint8Array({ minLength: 32, maxLength: 32 })
const hexId = id.map(b => Buffer.from(b).toString('hex'))
const segment = fc.oneof(
  fc.stringMatching(/^[a-c]{1,3}$/),
  humanText(12).filter(s => !s.includes('/'))
)

/** A tree of entries in manifest order: unique paths, no file with entries below it. */
function entriesFor (chunkSize: number): fc.Arbitrary<ManifestEntry[]> {
  const entry = fc.tuple(fc.array(segment, { minLength: 1, maxLength: 4 }), fc.boolean(), fc.oneof(fc.nat(3 * chunkSize), fc.constantFrom(0, chunkSize, chunkSize + 1)), fc.boolean())
  return fc.array(entry, { maxLength: 12 }).chain(list => {
    const byPath = new Map<string, { file: boolean, size: number, x: boolean }>()
    for (const [segments, file, size, x] of list) {
      const path = segments.join('/')
      try {
        checkPath(path)
      } catch {
        continue
      }
      byPath.set(path, { file, size, x })
    }
    const paths = [...byPath.keys()].filter(p => ![...byPath].some(([q, e]) => e.file && p.startsWith(q + '/'))).sort(comparePaths)
    const files = paths.filter(p => byPath.get(p)!.file)
    const counts = files.map(p => chunkCount(byPath.get(p)!.size, chunkSize))
    return fc.tuple(fc.array(id, { minLength: files.length, maxLength: files.length }), ...counts.map(n => fc.array(hexId, { minLength: n, maxLength: n })))
      .map(([hashes, ...chunks]) => paths.map((path): ManifestEntry => {
        const e = byPath.get(path)!
        if (!e.file) return { type: 'dir', path }
        const i = files.indexOf(path)
        return { type: 'file', path, size: e.size, executable: e.x, sha256: Buffer.from(hashes[i]!).toString('hex'), chunks: chunks[i]! }
      }))
  })
}

const shareName = humanText(40).filter(s => { try { checkShareName(s); return true } catch { return false } })

const fields = fc.record({
  keys,
  shareId: hexId,
  version: fc.oneof(fc.integer({ min: 1, max: 1000 }), fc.maxSafeNat().filter(n => n >= 1)),
  name: shareName,
  created: fc.maxSafeNat(),
  chunkSize: fc.oneof(fc.constantFrom(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE, 1024 * 1024), fc.integer({ min: MIN_CHUNK_SIZE, max: MAX_CHUNK_SIZE }))
}).chain(f => entriesFor(f.chunkSize).map(entries => ({ ...f, entries })))
type Fields = typeof fields extends fc.Arbitrary<infer T> ? T : never

function wireOf (entry: ManifestEntry): Record<string, unknown> {
  if (entry.type === 'dir') return { t: 'd', p: entry.path }
  return { t: 'f', p: entry.path, s: entry.size, x: entry.executable, h: Buffer.from(entry.sha256, 'hex'), c: Buffer.from(entry.chunks.join(''), 'hex') }
}

function bodyOf (f: Fields): Record<string, unknown> {
  const ids = Buffer.from(f.entries.flatMap(e => e.type === 'file' ? e.chunks : []).join(''), 'hex')
  return { v: MANIFEST_FORMAT, share: Buffer.from(f.shareId, 'hex'), ver: f.version, name: f.name, at: f.created, cs: f.chunkSize, entries: f.entries.map(wireOf), packs: Buffer.alloc(0), root: merkleRoot(ids) }
}

/** The manifest for a body, signed by `signer` (what createManifest writes, byte for byte, for a valid body). */
function signed (body: unknown, signer: Keys): Uint8Array {
  const bodyBytes = encodeCanonical(body)
  return encodeCanonical({ body: bodyBytes, pub: signer.publicKey, sig: signFast('manifest/1', bodyBytes, signer) })
}

const made = fields.map(f => ({ f, body: bodyOf(f), bytes: signed(bodyOf(f), f.keys) }))

const PARSE_CODES = ['MANIFEST_MALFORMED', 'MANIFEST_BAD_SIGNATURE', 'MANIFEST_WRONG_OWNER'] as const
const BODY_CODES = ['MANIFEST_MALFORMED', 'MANIFEST_LIMIT', 'MANIFEST_BAD_PATH', 'UNSUPPORTED_VERSION'] as const

/** What any accepted manifest must satisfy, whatever bytes it came from. */
function checkAccepted (manifest: Manifest): void {
  expect(manifest.entries.length).toBeLessThanOrEqual(MAX_ENTRIES)
  expect(manifest.chunkSize).toBeGreaterThanOrEqual(MIN_CHUNK_SIZE)
  expect(manifest.chunkSize).toBeLessThanOrEqual(MAX_CHUNK_SIZE)
  let previous: string | undefined
  let chunks = 0
  for (const entry of manifest.entries) {
    expect(() => { checkPath(entry.path) }).not.toThrow()
    if (previous !== undefined) expect(comparePaths(previous, entry.path)).toBeLessThan(0)
    previous = entry.path
    if (entry.type === 'file') {
      expect(entry.chunks).toHaveLength(chunkCount(entry.size, manifest.chunkSize))
      chunks += entry.chunks.length
    }
  }
  expect(manifest.chunkCount).toBe(chunks)
  expect(() => { checkShareName(manifest.name) }).not.toThrow()
}

describe('manifests, fuzzed', () => {
  it('comparePaths orders any two well-formed strings as their UTF-8 bytes do', () => {
    // Units from the places UTF-16 and UTF-8 order disagree: ASCII, the BMP above the surrogates, and astral code points.
    const char = fc.oneof(fc.constantFrom('a', 'b', '/', '-', '\uffff', '\ue000', '\u00e9', '\u{10000}', '\u{1f600}', '\u{10ffff}'), fc.string({ unit: 'grapheme', maxLength: 1 }))
    const text = fc.array(char, { maxLength: 6 }).map(parts => parts.join(''))
    fuzz(fc.property(text, text, (a, b) => {
      expect(Math.sign(comparePaths(a, b))).toBe(Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8')))
      expect(comparePaths(a, a)).toBe(0)
    }), 5)
  })

  it('round-trip: createManifest signs the canonical bytes of any valid manifest, and they decode to the same manifest', () => {
    fuzz(fc.property(fields, f => {
      const { manifest, bytes } = createManifest({
        secretKey: f.keys.secretKey, publicKey: f.keys.publicKey, shareId: f.shareId, version: f.version, name: f.name,
        created: f.created, chunkSize: f.chunkSize, entries: f.entries
      })
      expect(Buffer.from(bytes).equals(signed(bodyOf(f), f.keys))).toBe(true)
      expect(plainEntries(manifest.entries)).toEqual(f.entries)
      const again = decodeManifest(bytes, { owner: f.keys.publicKey })
      expect({ ...again, entries: plainEntries(again.entries) }).toEqual({ ...manifest, entries: f.entries })
    }), 0.2)
  })

  it('refuses every truncation with MANIFEST_MALFORMED', () => {
    fuzz(fc.property(made.chain(m => fc.nat(m.bytes.length - 1).map(n => m.bytes.subarray(0, n))), bytes => {
      rejects(() => decodeManifest(bytes), ['MANIFEST_MALFORMED'], bytes)
    }))
  })

  it('refuses any single bit flip, with or without the expected owner', () => {
    fuzz(fc.property(made.chain(m => fc.tuple(fc.constant(m), fc.nat(m.bytes.length * 8 - 1), fc.boolean())), ([m, bit, withOwner]) => {
      const flipped = flipBit(m.bytes, bit)
      rejects(() => decodeManifest(flipped, withOwner ? { owner: m.f.keys.publicKey } : {}), PARSE_CODES, flipped)
    }))
  })

  it('refuses random bytes and random CBOR with MANIFEST_MALFORMED', () => {
    fuzz(fc.property(fc.oneof(fc.uint8Array({ maxLength: 600 }), cborBytes), bytes => {
      rejects(() => decodeManifest(bytes), ['MANIFEST_MALFORMED'], bytes)
    }))
  })

  it('refuses anything over MAX_MANIFEST_BYTES with MANIFEST_TOO_LARGE before decoding it', () => {
    // a valid manifest padded past the limit would be MANIFEST_MALFORMED if it were decoded first
    fuzz(fc.property(made, fc.integer({ min: 1, max: 64 * 1024 }), fc.nat(255), (m, extra, fill) => {
      const bytes = Buffer.allocUnsafe(MAX_MANIFEST_BYTES + extra).fill(fill, m.bytes.length)
      bytes.set(m.bytes)
      rejects(() => decodeManifest(bytes), ['MANIFEST_TOO_LARGE'], m.bytes)
    }), 0.05)
  })

  it('refuses any validly signed body with a damaged field, or decodes it into a valid manifest', () => {
    fuzz(fc.property(made.chain(m => mutateField(m.body).map(body => ({ m, body }))), ({ m, body }) => {
      rejectsOrValid(() => decodeManifest(signed(body, m.f.keys)), BODY_CODES, checkAccepted, body)
    }))
  })

  it('refuses any validly signed entry with a damaged field, or decodes it into a valid manifest', () => {
    const damaged = made.filter(m => m.f.entries.length > 0).chain(m => {
      const entries = m.body.entries as Array<Record<string, unknown>>
      return fc.nat(entries.length - 1).chain(i => fc.oneof(mutateField(entries[i]!), cborValue).map(entry => {
        const list = [...entries]
        list[i] = entry as Record<string, unknown>
        return { m, body: { ...m.body, entries: list } }
      }))
    })
    fuzz(fc.property(damaged, ({ m, body }) => {
      rejectsOrValid(() => decodeManifest(signed(body, m.f.keys)), BODY_CODES, checkAccepted, body)
    }))
  })

  it('summarizeManifest refuses what decodeManifest refuses, with the same code, and sums up what it accepts', () => {
    const code = (fn: () => unknown): string | undefined => {
      try {
        fn()
        return undefined
      } catch (err) {
        return (err as { code?: string }).code ?? 'not a KithError'
      }
    }
    const damaged = made.chain(m => fc.oneof(
      fc.nat(m.bytes.length * 8 - 1).map(bit => flipBit(m.bytes, bit)),
      m.f.entries.length === 0
        ? fc.constant(m.bytes)
        : fc.nat(m.f.entries.length - 1).chain(i => {
          const entries = m.body.entries as Array<Record<string, unknown>>
          return fc.oneof(mutateField(entries[i]!), cborValue).map(entry => signed({ ...m.body, entries: entries.map((e, j) => j === i ? entry : e) }, m.f.keys))
        })
    ).map(bytes => ({ m, bytes })))
    fuzz(fc.property(damaged, ({ m, bytes }) => {
      const options = { owner: m.f.keys.publicKey }
      expect(code(() => summarizeManifest(bytes, options))).toBe(code(() => decodeManifest(bytes, options)))
      if (code(() => decodeManifest(bytes, options)) !== undefined) return
      const manifest = decodeManifest(bytes, options)
      const summary = summarizeManifest(bytes, options)
      const files = manifest.entries.filter(e => e.type === 'file')
      expect({ shareId: summary.shareId, version: summary.version, name: summary.name, files: summary.files, chunkCount: summary.chunkCount, totalSize: summary.totalSize })
        .toEqual({ shareId: manifest.shareId, version: manifest.version, name: manifest.name, files: files.length, chunkCount: manifest.chunkCount, totalSize: manifest.totalSize })
      const ids = new Set<string>()
      for (let at = 0; at < summary.chunkIds.length; at += 32) ids.add(summary.chunkIds.toString('hex', at, at + 32))
      expect(ids).toEqual(new Set(files.flatMap(f => f.chunks)))
    }))
  })

  it('refuses any entry path that could leave the destination, through a validly signed manifest too', () => {
    const path = fc.oneof(
      anyText(40),
      fc.array(fc.oneof(fc.constantFrom('..', '.', '', '~', 'a', 'b\\..', 'c:', '\u0000', '\u202e', 'x' + PARTIAL_SUFFIX), humanText(6)), { minLength: 1, maxLength: 6 })
        .map(parts => parts.join('/')),
      fc.constantFrom('/etc/passwd', '../x', 'a/../../x', 'a/./b', 'a//b', 'C:\\x', 'a/b/', `a${PARTIAL_SUFFIX}`, 'x'.repeat(MAX_PATH_LENGTH + 1),
        'y'.repeat(MAX_SEGMENT_LENGTH + 1), Array(MAX_PATH_DEPTH + 1).fill('d').join('/'))
    )
    fuzz(fc.property(path, keys, (p, signer) => {
      const outcome = rejectsOrValid(() => { checkPath(p); return p }, ['MANIFEST_BAD_PATH'], safe => {
        // what a fetch will do with it: join it to the destination folder
        const base = join(sep, 'dest')
        const target = join(base, safe)
        expect(isAbsolute(safe)).toBe(false)
        expect(target.startsWith(base + sep)).toBe(true)
        expect(normalize(safe)).toBe(safe)
        expect(safe.split('/')).not.toContain('..')
      }, p)
      // the manifest parser takes exactly the paths checkPath takes (CBOR can't carry a lone surrogate)
      if (!p.isWellFormed()) return
      const body = { v: MANIFEST_FORMAT, share: Buffer.alloc(32), ver: 1, name: 'n', at: 0, cs: MIN_CHUNK_SIZE, entries: [{ t: 'd', p }], packs: Buffer.alloc(0), root: merkleRoot(Buffer.alloc(0)) }
      const decoded = rejectsOrValid(() => decodeManifest(signed(body, signer)), ['MANIFEST_BAD_PATH', 'MANIFEST_MALFORMED'], checkAccepted, p)
      expect(decoded === undefined).toBe(outcome === undefined)
    }))
  })
})
