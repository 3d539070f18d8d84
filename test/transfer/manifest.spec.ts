import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { encodeCanonical } from '../../src/peer/canonical.ts'
import { sign } from '../../src/peer/signing.ts'
import {
  MAX_CHUNK_SIZE, MAX_CHUNKS, MAX_ENTRIES, MAX_FILE_SIZE, MAX_MANIFEST_BYTES, MAX_PATH_DEPTH, MAX_PATH_LENGTH, MAX_SEGMENT_LENGTH,
  MIN_CHUNK_SIZE
} from '../../src/transfer/constants.ts'
import { checkPath, chunkLength, comparePaths, createManifest, decodeManifest, packHash, type ManifestEntry, type ManifestFile } from '../../src/transfer/manifest.ts'
import { merkleRoot } from '../../src/transfer/merkle.ts'
import { KithError } from '../../src/errors.ts'
import { expectCode, hex, keypair, plainEntries } from './helpers.ts'

const owner = keypair(1)
const stranger = keypair(2)
const CS = MIN_CHUNK_SIZE
const sha = (s: string): Buffer => createHash('sha256').update(s).digest()
const id = (s: string): string => sha(s).toString('hex')

const entries: ManifestEntry[] = [
  { type: 'file', path: 'a.txt', size: 0, executable: false, sha256: id(''), chunks: [] },
  { type: 'dir', path: 'docs' },
  { type: 'file', path: 'docs/big.bin', size: 2 * CS + 5, executable: false, sha256: id('big'), chunks: [id('c0'), id('c1'), id('c2')] },
  { type: 'dir', path: 'docs/empty' },
  { type: 'file', path: 'run.sh', size: 10, executable: true, sha256: id('run'), chunks: [id('c3')] },
  { type: 'file', path: 'ünïcødé/名前.txt', size: CS, executable: false, sha256: id('u'), chunks: [id('c4')] }
]

const init = { secretKey: owner.secretKey, publicKey: owner.publicKey, shareId: hex(0x11), version: 4, name: 'Holiday photos', created: 1_700_000_000_000, chunkSize: CS, entries }

// Wire-level helpers: bodies signed by the owner but built by hand, to reach
// the checks that come after the signature.
type Wire = Record<string, unknown>
function wireFile (path: string, size: number, chunks: number, extra: Wire = {}): Wire {
  return { t: 'f', p: path, s: size, x: false, h: sha(path), c: Buffer.concat(Array.from({ length: chunks }, (_, i) => sha(`${path}/${i}`))), ...extra }
}
/** The Merkle root over the files' chunk lists, or zeros where they are not whole ids. */
function rootOf (list: Wire[]): Buffer {
  const ids = Buffer.concat(list.filter(e => e.t === 'f' && e.c !== undefined).map(e => e.c as Buffer))
  return ids.length % 32 === 0 ? merkleRoot(ids) : Buffer.alloc(32)
}
/** A format 1 body, with the root of its files unless `extra` gives one. */
function wireBody (list: Wire[], extra: Wire = {}): Wire {
  return { v: 1, share: Buffer.alloc(32, 0x11), ver: 1, name: 'test', at: 0, cs: CS, entries: list, root: 'root' in extra ? extra.root : rootOf(list), ...extra }
}
function wirePacked (path: string, size: number, k: unknown): Wire {
  return { t: 'f', p: path, s: size, x: false, h: sha(path), k }
}
/** A format 2 body with `packs` pack ids (sha of `pack<i>`) and a matching root. */
function wireBody2 (list: Wire[], packs: number, extra: Wire = {}): Wire {
  const packIds = Buffer.concat(Array.from({ length: packs }, (_, i) => sha(`pack${i}`)))
  const ids = Buffer.concat([...list.filter(e => e.t === 'f' && e.c !== undefined).map(e => e.c as Buffer), packIds])
  return { ...wireBody(list), v: 2, packs: packIds, root: merkleRoot(ids), ...extra }
}
function signed (body: unknown, key = owner): Uint8Array {
  const bodyBytes = encodeCanonical(body)
  return encodeCanonical({ body: bodyBytes, pub: key.publicKey, sig: sign('manifest/1', bodyBytes, key.secretKey) })
}

describe('manifest codec', () => {
  it('round-trips', () => {
    const { manifest, bytes } = createManifest(init)
    expect(manifest.shareId).toBe(hex(0x11))
    expect(manifest.version).toBe(4)
    expect(manifest.name).toBe('Holiday photos')
    expect(manifest.created).toBe(1_700_000_000_000)
    expect(manifest.chunkSize).toBe(CS)
    expect(plainEntries(manifest.entries)).toEqual(entries)
    expect(manifest.chunkCount).toBe(5)
    expect(manifest.totalSize).toBe(3 * CS + 15)
    expect(Buffer.from(manifest.owner).equals(Buffer.from(owner.publicKey))).toBe(true)
    expect(manifest.root).toBe(merkleRoot(Buffer.from(['c0', 'c1', 'c2', 'c3', 'c4'].map(id).join(''), 'hex')).toString('hex'))
    expect(plainEntries(decodeManifest(bytes).entries)).toEqual(plainEntries(manifest.entries))
    expect({ ...decodeManifest(bytes, { owner: owner.publicKey }), entries: [] }).toEqual({ ...manifest, entries: [] })
  })

  it('is deterministic and matches the format 2 fixture', () => {
    const { bytes } = createManifest(init)
    expect(Buffer.from(createManifest(init).bytes).equals(Buffer.from(bytes))).toBe(true)
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(MANIFEST_FIXTURE_SHA256)
  })

  it('still reads format 1: the bytes an older kith made decode to the same entries', () => {
    const wire = entries.map(e => e.type === 'dir'
      ? { t: 'd', p: e.path }
      : { t: 'f', p: e.path, s: e.size, x: e.executable, h: Buffer.from(e.sha256, 'hex'), c: Buffer.from(e.chunks.join(''), 'hex') })
    const ids = Buffer.from(entries.flatMap(e => e.type === 'file' ? e.chunks : []).join(''), 'hex')
    const v1 = signed({ v: 1, share: Buffer.from(init.shareId, 'hex'), ver: init.version, name: init.name, at: init.created, cs: CS, entries: wire, root: merkleRoot(ids) })
    expect(createHash('sha256').update(v1).digest('hex')).toBe(FORMAT_1_FIXTURE_SHA256)
    const manifest = decodeManifest(v1, { owner: owner.publicKey })
    expect(plainEntries(manifest.entries)).toEqual(entries)
    expect(manifest.packs).toEqual([])
    // a format 1 body can't carry packs
    expectCode(() => decodeManifest(signed(wireBody([wirePacked('a', 5, 0)], { packs: sha('pack0') }))), 'MANIFEST_MALFORMED')
  })

  it('refuses a manifest signed by someone other than the expected owner', () => {
    const { bytes } = createManifest({ ...init, secretKey: stranger.secretKey, publicKey: stranger.publicKey })
    expectCode(() => decodeManifest(bytes, { owner: owner.publicKey }), 'MANIFEST_WRONG_OWNER')
  })

  it('refuses a signature by another key than the one it names', () => {
    const bodyBytes = encodeCanonical(wireBody([]))
    const bytes = encodeCanonical({ body: bodyBytes, pub: owner.publicKey, sig: sign('manifest/1', bodyBytes, stranger.secretKey) })
    expectCode(() => decodeManifest(bytes), 'MANIFEST_BAD_SIGNATURE')
  })

  it('checks the signature before parsing the body', () => {
    const bytes = encodeCanonical({ body: Buffer.from([0xff, 0xff, 0x00]), pub: owner.publicKey, sig: Buffer.alloc(64, 1) })
    expectCode(() => decodeManifest(bytes), 'MANIFEST_BAD_SIGNATURE')
  })

  it('refuses a signature made for another record type', () => {
    const bodyBytes = encodeCanonical(wireBody([]))
    const bytes = encodeCanonical({ body: bodyBytes, pub: owner.publicKey, sig: sign('invite/1', bodyBytes, owner.secretKey) })
    expectCode(() => decodeManifest(bytes), 'MANIFEST_BAD_SIGNATURE')
  })

  it('refuses every single bit flip', () => {
    const { bytes } = createManifest(init)
    for (let i = 0; i < bytes.length; i++) {
      const bad = Buffer.from(bytes)
      bad[i]! ^= 1 << (i % 8)
      let code: string | undefined
      try {
        decodeManifest(bad)
      } catch (err) {
        code = (err as { code: string }).code
      }
      expect(['MANIFEST_MALFORMED', 'MANIFEST_BAD_SIGNATURE'], `byte ${i}`).toContain(code)
    }
  })

  it('refuses every truncation and trailing bytes', () => {
    const { bytes } = createManifest(init)
    for (let n = 0; n < bytes.length; n++) expectCode(() => decodeManifest(bytes.subarray(0, n)), 'MANIFEST_MALFORMED')
    expectCode(() => decodeManifest(Buffer.concat([bytes, Buffer.from([0])])), 'MANIFEST_MALFORMED')
  })

  it('checks the byte length before decoding', () => {
    expectCode(() => decodeManifest(new Uint8Array(MAX_MANIFEST_BYTES + 1)), 'MANIFEST_TOO_LARGE')
  })

  it('refuses a non-canonical envelope or extra fields', () => {
    const bodyBytes = encodeCanonical(wireBody([]))
    const sig = sign('manifest/1', bodyBytes, owner.secretKey)
    expectCode(() => decodeManifest(encodeCanonical({ body: bodyBytes, pub: owner.publicKey, sig, extra: 1 })), 'MANIFEST_MALFORMED')
    expectCode(() => decodeManifest(encodeCanonical({ body: bodyBytes, pub: owner.publicKey })), 'MANIFEST_MALFORMED')
    expectCode(() => decodeManifest(encodeCanonical([bodyBytes, owner.publicKey, sig])), 'MANIFEST_MALFORMED')
    // Keys out of canonical order (canonical is pub, sig, body: shorter keys
    // first): same content, different bytes.
    const canonical = Buffer.from(encodeCanonical({ body: bodyBytes, pub: owner.publicKey, sig }))
    const part = (value: object): Buffer => Buffer.from(encodeCanonical(value)).subarray(1)
    const swapped = Buffer.concat([Buffer.from([0xa3]), part({ body: bodyBytes }), part({ pub: owner.publicKey }), part({ sig })])
    expect(swapped.length).toBe(canonical.length)
    expect(swapped.equals(canonical)).toBe(false)
    expectCode(() => decodeManifest(swapped), 'MANIFEST_MALFORMED')
    // the body's length written longer than it needs (4 bytes for a short body): valid CBOR, not canonical
    const headAt = canonical.length - bodyBytes.length - (bodyBytes.length < 0x100 ? 2 : 3)
    const long = Buffer.alloc(5)
    long[0] = 0x5a
    long.writeUInt32BE(bodyBytes.length, 1)
    expect(decodeManifest(canonical).version).toBe(1)
    expectCode(() => decodeManifest(Buffer.concat([canonical.subarray(0, headAt), long, bodyBytes])), 'MANIFEST_MALFORMED')
    // or as a text string
    const text = Buffer.from(canonical)
    text[headAt] = text[headAt]! + 0x20
    expectCode(() => decodeManifest(text), 'MANIFEST_MALFORMED')
  })

  it('reads the body entry by entry, and still refuses an entry or a body key out of canonical order', () => {
    const part = (value: object): Buffer => Buffer.from(encodeCanonical(value)).subarray(1)
    const signBody = (bodyBytes: Uint8Array): Uint8Array =>
      encodeCanonical({ body: bodyBytes, pub: owner.publicKey, sig: sign('manifest/1', bodyBytes, owner.secretKey) })
    const file = wireFile('a', 5, 1)
    const body = Buffer.from(encodeCanonical(wireBody([file])))
    expect(decodeManifest(signBody(body)).entries).toHaveLength(1)
    // the entry's keys swapped (canonical is c, h, p, s, t, x): same content, other bytes
    const entry = Buffer.from(encodeCanonical(file))
    const swapped = Buffer.concat([entry.subarray(0, 1), part({ h: file.h }), part({ c: file.c }), part({ p: file.p, s: file.s, t: file.t, x: file.x })])
    expect(swapped.length).toBe(entry.length)
    const at = body.indexOf(entry)
    const altered = Buffer.concat([body.subarray(0, at), swapped, body.subarray(at + entry.length)])
    expect(expectCode(() => decodeManifest(signBody(altered)), 'MANIFEST_MALFORMED').message).toMatch(/canonical/)
    // body keys out of order: 'v' moved after 'at'
    const fields = wireBody([file])
    const { v, at: when, ...others } = fields
    const reordered = Buffer.concat([body.subarray(0, 1), part({ at: when }), part({ v }), part(others)])
    expect(reordered.length).toBe(body.length)
    expect(expectCode(() => decodeManifest(signBody(reordered)), 'MANIFEST_MALFORMED').message).toMatch(/out of order/)
    // bytes after the body's end
    expectCode(() => decodeManifest(signBody(Buffer.concat([body, Buffer.from([0])]))), 'MANIFEST_MALFORMED')
  })

  it('refuses an unknown body format version', () => {
    for (const v of [0, 3, 99]) expectCode(() => decodeManifest(signed(wireBody([], { v }))), 'UNSUPPORTED_VERSION')
  })
})

describe('manifest limits', () => {
  it('refuses chunk sizes outside MIN..MAX, zero and huge', () => {
    for (const cs of [0, 1, MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1, 2 ** 40, Number.MAX_SAFE_INTEGER]) {
      expectCode(() => decodeManifest(signed(wireBody([], { cs }))), 'MANIFEST_LIMIT')
    }
    expectCode(() => decodeManifest(signed(wireBody([], { cs: -1 }))), 'MANIFEST_MALFORMED')
    expectCode(() => decodeManifest(signed(wireBody([], { cs: 65536.5 }))), 'MANIFEST_MALFORMED')
    expect(decodeManifest(signed(wireBody([], { cs: MAX_CHUNK_SIZE }))).chunkSize).toBe(MAX_CHUNK_SIZE)
  })

  it('has room in MAX_MANIFEST_BYTES for 100,000 small files in folders of 1,000 (the small-files bench)', () => {
    const digest = Buffer.alloc(32, 7)
    // one folder of the tree; every folder's entries encode to as many bytes (the paths differ only in digits)
    const folder = (d: number): Wire[] => [
      { t: 'd', p: `d${String(d).padStart(4, '0')}` },
      ...Array.from({ length: 1000 }, (_, i) => ({ t: 'f', p: `d${String(d).padStart(4, '0')}/f${String(d * 1000 + i).padStart(6, '0')}.dat`, s: 4096, x: false, h: digest, c: digest }))
    ]
    const empty = signed(wireBody([])).length
    const one = signed({ ...wireBody([]), entries: folder(99) }).length - empty
    expect(one).toBeGreaterThan(1001 * 100) // about 105 bytes an entry
    expect(100 * 1001).toBeLessThanOrEqual(MAX_ENTRIES)
    // + 8: the entry list's length grows from one byte to five
    expect(empty + 100 * one + 8).toBeLessThan(MAX_MANIFEST_BYTES)
  })

  it('refuses more than MAX_ENTRIES entries', () => {
    const dirs = Array.from({ length: MAX_ENTRIES + 1 }, (_, i) => ({ t: 'd', p: `d${String(i).padStart(6, '0')}` }))
    expectCode(() => decodeManifest(signed(wireBody(dirs))), 'MANIFEST_LIMIT')
  })

  it('refuses a claim of 10^9 chunks at once, before touching chunk lists', () => {
    // One file claiming 10^9 chunks, with a one-id chunk list.
    const one = signed(wireBody([wireFile('huge', 1e9 * CS, 1)]))
    // A thousand files of 10^6 chunks each, still within MAX_FILE_SIZE.
    const many = signed(wireBody(Array.from({ length: 1000 }, (_, i) => wireFile(`f${String(i).padStart(4, '0')}`, 1e6 * CS, 0))))
    // Files each under MAX_FILE_SIZE whose sum passes MAX_CHUNKS, and a root that is wrong: the limit comes before
    // the root is computed over the chunk lists
    const sum = signed(wireBody([wireFile('a', (MAX_CHUNKS - 1) * CS, 0, { c: Buffer.alloc((MAX_CHUNKS - 1) * 32, 1) }), wireFile('b', 2 * CS, 0)], { root: Buffer.alloc(32) }))
    // What matters is that nothing proportional to 10^9 is allocated or
    // looped over: that would take minutes, so the bound is far above any
    // pause of a loaded machine (tests do not assert on speed).
    for (const bytes of [one, many, sum]) {
      const started = performance.now()
      expectCode(() => decodeManifest(bytes), 'MANIFEST_LIMIT')
      expect(performance.now() - started).toBeLessThan(10_000)
    }
  })

  it('refuses a file larger than MAX_FILE_SIZE', () => {
    expectCode(() => decodeManifest(signed(wireBody([wireFile('big', MAX_FILE_SIZE + 1, 0)], { cs: MAX_CHUNK_SIZE }))), 'MANIFEST_LIMIT')
  })

  it('refuses a chunk list that does not match the size', () => {
    expectCode(() => decodeManifest(signed(wireBody([wireFile('a', 2 * CS, 1)]))), 'MANIFEST_MALFORMED')
    expectCode(() => decodeManifest(signed(wireBody([wireFile('a', 2 * CS, 3)]))), 'MANIFEST_MALFORMED')
    expectCode(() => decodeManifest(signed(wireBody([wireFile('a', 0, 1)]))), 'MANIFEST_MALFORMED')
    expectCode(() => decodeManifest(signed(wireBody([wireFile('a', 10, 1, { c: Buffer.alloc(31) })]))), 'MANIFEST_MALFORMED')
  })

  it('refuses a Merkle root that does not match the chunk ids', () => {
    expectCode(() => decodeManifest(signed(wireBody([wireFile('a', CS, 1)], { root: Buffer.alloc(32) }))), 'MANIFEST_MALFORMED')
  })

  it('refuses wrong field types, missing and unknown fields', () => {
    const cases: Wire[] = [
      wireBody([], { share: Buffer.alloc(31) }),
      wireBody([], { ver: 0 }),
      wireBody([], { ver: 'one' }),
      wireBody([], { name: '' }),
      wireBody([], { name: 'bad\nname' }),
      wireBody([], { name: 'bad\u202ename' }),
      wireBody([], { name: 'bad\u0085name' }),
      wireBody([], { name: 'x'.repeat(256) }),
      wireBody([], { at: -1 }),
      wireBody([], { entries: {} }),
      wireBody([], { root: Buffer.alloc(31) }),
      wireBody([], { extra: true }),
      wireBody([wireFile('a', 10, 1, { x: 1 })]),
      wireBody([wireFile('a', 10, 1, { h: Buffer.alloc(31) })]),
      wireBody([wireFile('a', -1, 0)]),
      wireBody([wireFile('a', 10, 1, { extra: 1 })]),
      wireBody([{ t: 'd', p: 'a', s: 1 }]),
      wireBody([{ t: 'l', p: 'a' }]),
      wireBody([['a'] as unknown as Wire])
    ]
    const { entries: _, ...noEntries } = wireBody([])
    cases.push(noEntries)
    for (const [i, body] of cases.entries()) {
      const err = expectCode(() => decodeManifest(signed(body)), 'MANIFEST_MALFORMED')
      expect(err.message, `case ${i}`).toMatch(/not valid/)
    }
  })

  it('refuses unsorted entries and duplicates', () => {
    expectCode(() => decodeManifest(signed(wireBody([wireFile('b', 1, 1), wireFile('a', 1, 1)]))), 'MANIFEST_MALFORMED')
    expectCode(() => decodeManifest(signed(wireBody([wireFile('a', 1, 1), wireFile('a', 1, 1)]))), 'MANIFEST_BAD_PATH')
    expectCode(() => decodeManifest(signed(wireBody([{ t: 'd', p: 'a' }, wireFile('a', 1, 1)]))), 'MANIFEST_BAD_PATH')
    // Bytewise order, not locale order: '-' (0x2d) sorts before '/' (0x2f).
    expect(decodeManifest(signed(wireBody([{ t: 'd', p: 'a' }, wireFile('a-b', 1, 1), wireFile('a/b', 1, 1)]))).entries.length).toBe(3)
    expect(comparePaths('Z', 'a')).toBeLessThan(0)
  })

  it('refuses a file that is also a folder', () => {
    expectCode(() => decodeManifest(signed(wireBody([wireFile('a', 1, 1), wireFile('a/b', 1, 1)]))), 'MANIFEST_BAD_PATH')
    expectCode(() => decodeManifest(signed(wireBody([wireFile('a', 1, 1), wireFile('a-', 1, 1), { t: 'd', p: 'a/b/c' }]))), 'MANIFEST_BAD_PATH')
  })
})

const BAD_PATHS: Array<[string, string]> = [
  ['', 'empty'],
  ['/etc/passwd', 'absolute'],
  ['..', 'parent'],
  ['../x', 'parent'],
  ['a/../../x', 'parent inside'],
  ['.', 'dot'],
  ['a/./b', 'dot inside'],
  ['a//b', 'empty segment'],
  ['a/', 'trailing slash'],
  ['a\\..\\b', 'backslash'],
  ['C:\\Windows', 'backslash'],
  ['a\0b', 'NUL'],
  ['a\nb', 'newline'],
  ['a\u001bb', 'escape'],
  ['a\u007fb', 'DEL'],
  ['a\u009b2Jb', 'C1 CSI'],
  ['invoice\u202efdp.exe', 'bidi override'],
  ['a\u2067b', 'bidi isolate'],
  ['a\u200fb', 'bidi mark'],
  ['a\u200bb', 'zero-width space'],
  ['a\u2028b', 'line separator'],
  ['a\u{e0041}b', 'tag character'],
  ['x'.repeat(MAX_PATH_LENGTH + 1), 'too long'],
  [Array.from({ length: 8 }, () => 'é'.repeat(100)).join('/'), 'too long in bytes'],
  ['y'.repeat(MAX_SEGMENT_LENGTH + 1), 'segment too long'],
  [Array.from({ length: MAX_PATH_DEPTH + 1 }, () => 'd').join('/'), 'too deep'],
  ['photo.jpg.kith-partial', 'partial suffix']
]

describe('manifest paths', () => {
  for (const [path, why] of BAD_PATHS) {
    it(`refuses ${why}: ${JSON.stringify(path.slice(0, 24))}`, () => {
      expectCode(() => decodeManifest(signed(wireBody([wireFile(path, 1, 1)]))), 'MANIFEST_BAD_PATH')
      expectCode(() => decodeManifest(signed(wireBody([{ t: 'd', p: path }]))), 'MANIFEST_BAD_PATH')
      expectCode(() => createManifest({ ...init, entries: [{ type: 'dir', path }] }), 'MANIFEST_BAD_PATH')
    })
  }

  it('refuses a path that is not text or not well-formed Unicode', () => {
    expectCode(() => decodeManifest(signed(wireBody([wireFile('a', 1, 1, { p: 5 })]))), 'MANIFEST_BAD_PATH')
    expectCode(() => createManifest({ ...init, entries: [{ type: 'dir', path: 'a\ud800' }] }), 'MANIFEST_BAD_PATH')
    expectCode(() => checkPath('\udc00'), 'MANIFEST_BAD_PATH')
  })

  it('accepts ordinary names', () => {
    for (const path of ['a', '.hidden', 'a/.b', '...', 'a..b', 'with space/and:colon', 'x'.repeat(MAX_SEGMENT_LENGTH), '名前/ファイル.txt', 'می‌خواهم.txt', '👨‍👩‍👧.jpg']) {
      expect(() => checkPath(path)).not.toThrow()
    }
  })

  it('measures chunk lengths', () => {
    expect(chunkLength(2 * CS + 5, CS, 0)).toBe(CS)
    expect(chunkLength(2 * CS + 5, CS, 2)).toBe(5)
    expect(chunkLength(2 * CS, CS, 1)).toBe(CS)
  })
})

// sha256 of createManifest(init): a stored format 2 manifest must keep
// decoding and re-encoding to these bytes. Bump MANIFEST_FORMAT instead.
const MANIFEST_FIXTURE_SHA256 = '7dfb39415ffef5c2c2ef0aa76b82abab729ba85553c4d0d206fbb28a77e59187'
// sha256 of what kith wrote for createManifest(init) in format 1 (until format 2)
const FORMAT_1_FIXTURE_SHA256 = '1f8afbdea78174a0a0c64904b663a1df4361c1a219814b51d69ca1753bcc7d00'

describe('manifest packs (format 2)', () => {
  const packed = (path: string, size: number, index: number, offset: number, pack: string): ManifestEntry =>
    ({ type: 'file', path, size, executable: false, sha256: id(path), chunks: [id(pack)], pack: { index, offset } })
  const list: ManifestEntry[] = [
    packed('a/1', 10, 0, 0, 'p0'),
    { type: 'file', path: 'a/big', size: CS + 1, executable: false, sha256: id('big'), chunks: [id('b0'), id('b1')] },
    packed('a/c', CS - 10, 0, 10, 'p0'),
    { type: 'file', path: 'a/empty', size: 0, executable: false, sha256: id(''), chunks: [] },
    packed('a/full', CS, 1, 0, 'p1'),
    packed('b/1', 1, 2, 0, 'p2')
  ]

  it('round-trips packed files: each names its pack, its offset is the bytes before it in that pack', () => {
    const { manifest, bytes } = createManifest({ ...init, entries: list, packs: [id('p0'), id('p1'), id('p2')] })
    expect(plainEntries(manifest.entries)).toEqual(list)
    expect(manifest.packs).toEqual([
      { id: id('p0'), size: CS, hash: packHash([sha('a/1'), sha('a/c')]) },
      { id: id('p1'), size: CS, hash: packHash([sha('a/full')]) },
      { id: id('p2'), size: 1, hash: packHash([sha('b/1')]) }
    ])
    expect(manifest.chunkCount).toBe(5)
    expect(manifest.root).toBe(merkleRoot(Buffer.from(['b0', 'b1', 'p0', 'p1', 'p2'].map(id).join(''), 'hex')).toString('hex'))
    expect(plainEntries(decodeManifest(bytes).entries)).toEqual(plainEntries(manifest.entries))
  })

  it('holds a decoded file small: a pack\'s files share its chunk list, and hashes are copied out of the bytes they came from', () => {
    const { bytes } = createManifest({ ...init, entries: list, packs: [id('p0'), id('p1'), id('p2')] })
    const copy = Buffer.from(bytes)
    const decoded = decodeManifest(copy)
    const file = (path: string): ManifestFile => decoded.entries.find(e => e.path === path) as ManifestFile
    expect(file('a/1').chunks).toBe(file('a/c').chunks)
    expect(file('a/1').chunks).not.toBe(file('a/full').chunks)
    // the input may be reused once decoded: nothing read later comes from it
    copy.fill(0)
    expect(plainEntries(decoded.entries)).toEqual(list)
  })

  it('refuses packed files beyond their chunk, empty, out of order or naming packs that are not there', () => {
    const ok = signed(wireBody2([wirePacked('a', CS - 1, 0), wirePacked('b', 1, 0), wirePacked('c', 5, 1)], 2))
    expect(decodeManifest(ok).packs.map(p => p.size)).toEqual([CS, 5])
    const bad: Array<[string, Wire]> = [
      ['a pack over its chunk size', wireBody2([wirePacked('a', CS, 0), wirePacked('b', 1, 0)], 1)],
      ['a packed file bigger than a chunk', wireBody2([wirePacked('a', CS + 1, 0)], 1)],
      ['an empty packed file', wireBody2([wirePacked('a', 0, 0)], 1)],
      ['a first pack other than 0', wireBody2([wirePacked('a', 5, 1)], 2)],
      ['a pack skipped', wireBody2([wirePacked('a', 5, 0), wirePacked('b', 5, 2)], 3)],
      ['a pack named again after the next (overlap)', wireBody2([wirePacked('a', 5, 0), wirePacked('b', 5, 1), wirePacked('c', 5, 0)], 2)],
      ['a pack not listed', wireBody2([wirePacked('a', 5, 0), wirePacked('b', 5, 1)], 1)],
      ['a pack listed and unused', wireBody2([wirePacked('a', 5, 0)], 2)],
      ['a pack index that is not a number', wireBody2([wirePacked('a', 5, '0')], 1)],
      ['a negative pack index', wireBody2([wirePacked('a', 5, -1)], 1)],
      ['pack ids not 32 bytes each', wireBody2([wirePacked('a', 5, 0)], 1, { packs: Buffer.alloc(33) })],
      ['a file with both c and k', wireBody2([wireFile('a', 5, 1, { k: 0 })], 1)],
      ['packs missing from a format 2 body', (() => { const b = wireBody2([], 0); delete b.packs; return b })()],
      ['a wrong root', wireBody2([wirePacked('a', 5, 0)], 1, { root: Buffer.alloc(32) })]
    ]
    for (const [why, body] of bad) {
      const err = expectCode(() => decodeManifest(signed(body)), 'MANIFEST_MALFORMED')
      expect(err.message, why).toMatch(/not valid/)
    }
  })

  it('refuses every truncation and every bit flip of a manifest with packs', () => {
    const { bytes } = createManifest({ ...init, entries: list, packs: [id('p0'), id('p1'), id('p2')] })
    for (let length = 0; length < bytes.length; length++) expectCode(() => decodeManifest(bytes.subarray(0, length)), 'MANIFEST_MALFORMED')
    for (let bit = 0; bit < bytes.length * 8; bit += 7) {
      const flipped = Buffer.from(bytes)
      flipped[bit >> 3]! ^= 0x80 >> (bit & 7)
      expect(() => decodeManifest(flipped), `bit ${bit}`).toThrow(KithError)
    }
  })

  it('counts packs against MAX_CHUNKS before reading entries', () => {
    expectCode(() => decodeManifest(signed(wireBody2([], 0, { packs: Buffer.alloc((MAX_CHUNKS + 1) * 32) }))), 'MANIFEST_LIMIT')
  })
})
