import { createHash, type Hash } from 'node:crypto'
import { KithError } from '../errors.ts'
import { CanonicalListWriter, canonicalListSteps } from '../peer/canonical.ts'
import { atOnce, inSlices } from '../peer/slices.ts'
import { PUBLIC_KEY_LENGTH, SIGNATURE_LENGTH, sign, verify } from '../peer/signing.ts'
import { isSafeText } from '../peer/text.ts'
import {
  ID_LENGTH, MAX_CHUNK_SIZE, MAX_CHUNKS, MAX_ENTRIES, MAX_FILE_SIZE, MAX_MANIFEST_BYTES, MAX_PATH_DEPTH,
  MAX_PATH_LENGTH, MAX_SEGMENT_LENGTH, MAX_SHARE_NAME_LENGTH, MIN_CHUNK_SIZE, PARTIAL_SUFFIX
} from './constants.ts'
import { merkleRoot } from './merkle.ts'
import { isId } from './seal.ts'

/**
 * Share manifests: what a share holds, signed by its owner.
 *
 *   envelope = { body: bstr, pub: bstr(32), sig: bstr(64) }      canonical CBOR
 *   sig      = Ed25519(owner, "kith/manifest/1\0" || sha256(body))
 *   body     = { v: 2, share: bstr(32), ver: uint, name: tstr, at: uint,
 *                cs: uint, entries: [entry], packs: bstr(32 * m), root: bstr(32) }
 *   entry    = { t: "f", p: tstr, s: uint, x: bool, h: bstr(32), c: bstr(32 * n) }
 *            | { t: "f", p: tstr, s: uint, x: bool, h: bstr(32), k: uint }
 *            | { t: "d", p: tstr }
 *
 * `c` is the file's chunk ids concatenated, n = ceil(s / cs); `h` is the sha256
 * of the whole plaintext file. A small file is instead packed (`k`): small
 * files are concatenated, in entry order, into shared chunks of at most `cs`
 * plaintext bytes, `packs` lists those chunks' ids, and `k` is the index of
 * the file's pack. A file's offset in its pack is the sum of the sizes of the
 * pack's files before it, so files of a pack can neither overlap nor leave
 * gaps; packed files have 1..cs bytes, `k` starts at 0 and grows by at most
 * one from one packed file to the next, a pack's files add up to at most
 * `cs`, and every listed pack holds a file. A pack is sealed at (share,
 * sha256 of its files' `h` concatenated in order, index 0) (`packHash`), so it
 * is bound to exactly these files in this order. `root` is the Merkle root
 * (merkle.ts) over every unpacked file's chunk ids in entry order followed by
 * the pack ids. Entries are sorted by the UTF-8 bytes of their paths. A
 * file's chunks are sealed at (share, `h`, chunk index) (seal.ts), not at the
 * version or the entry's index, so a file unchanged between versions keeps
 * its chunk ids.
 *
 * Format 1 is format 2 without `packs` and `k`; both are read. Other format
 * versions are refused with UNSUPPORTED_VERSION.
 *
 * Decoding checks, in order, each before the next step's work: byte length,
 * envelope shape, owner, signature, body format version, scalar fields, entry
 * count, then per entry path rules, order, size, pack placement and the
 * running chunk count, all by arithmetic on the claimed sizes. Only then are
 * chunk ids hashed into the Merkle root and turned into strings.
 */

/** The format `createManifest` writes. */
export const MANIFEST_FORMAT = 2
/** Formats `decodeManifest` reads. */
const READABLE_FORMATS = new Set([1, 2])

export interface ManifestFile {
  type: 'file'
  /** Relative POSIX path, validated by `checkPath`. */
  path: string
  size: number
  executable: boolean
  /** Lowercase hex sha256 of the whole plaintext file. */
  sha256: string
  /**
   * Lowercase hex ids of the sealed chunks, in order; for a packed file, its
   * pack's id alone (in a decoded manifest, one array shared by the pack's
   * files: not to be changed).
   */
  chunks: string[]
  /** Set for a file packed with others into one chunk (see the module doc): `chunks[0]` is the pack. */
  pack?: PackPlace
}

/**
 * A file entry as `decodeManifest` gives it, small for a share of many
 * files: its sha256 stays bytes in one buffer shared by the manifest's files
 * (hex only when asked for), a packed file's `chunks` is its pack's one
 * array, and its place in the pack two numbers. So a file costs its path
 * and a few fields, not four more objects and strings.
 */
class DecodedFile implements ManifestFile {
  readonly type = 'file' as const
  readonly path: string
  readonly size: number
  readonly executable: boolean
  chunks: string[]
  readonly #hashes: Buffer
  /** byte offset of its sha256 in `#hashes` */
  readonly #hashAt: number
  /** its pack's index, -1 if it is not packed */
  readonly #packIndex: number
  readonly #packOffset: number

  constructor (path: string, size: number, executable: boolean, hashes: Buffer, hashAt: number, chunks: string[], pack?: PackPlace) {
    this.path = path
    this.size = size
    this.executable = executable
    this.chunks = chunks
    this.#hashes = hashes
    this.#hashAt = hashAt
    this.#packIndex = pack?.index ?? -1
    this.#packOffset = pack?.offset ?? 0
  }

  get sha256 (): string {
    return this.#hashes.toString('hex', this.#hashAt, this.#hashAt + ID_LENGTH)
  }

  get pack (): PackPlace | undefined {
    return this.#packIndex < 0 ? undefined : { index: this.#packIndex, offset: this.#packOffset }
  }
}

/** Where a packed file lies: `size` bytes at `offset` of pack `index`'s plaintext. */
export interface PackPlace {
  index: number
  offset: number
}

/** A chunk holding several small files' bytes, concatenated in entry order. */
export interface ManifestPack {
  /** Lowercase hex chunk id. */
  id: string
  /** Plaintext bytes: its files' sizes added up. */
  size: number
  /** What it is sealed at in place of a file's sha256 (`packHash` of its files' hashes). */
  hash: string
}

export interface ManifestDir {
  type: 'dir'
  path: string
}

export type ManifestEntry = ManifestFile | ManifestDir

export interface Manifest {
  /** The owner's Ed25519 public key, which signed this manifest. */
  owner: Uint8Array
  shareId: string
  /** Grows with every update of the share; receivers refuse to go back. */
  version: number
  name: string
  /** When this version was made, milliseconds since the epoch (owner's clock). */
  created: number
  chunkSize: number
  entries: ManifestEntry[]
  /** Chunks holding small files, by `PackPlace.index`; empty in format 1. */
  packs: ManifestPack[]
  /** Lowercase hex Merkle root over all chunk ids. */
  root: string
  chunkCount: number
  totalSize: number
}

export interface CreateManifestInit {
  secretKey: Uint8Array
  publicKey: Uint8Array
  shareId: string
  version: number
  name: string
  created?: number
  chunkSize: number
  /**
   * Already sorted by `comparePaths`; each file's chunks sealed at its
   * `sha256` (seal.ts), each pack at `packHash` of its files.
   */
  entries: ManifestEntry[]
  /** The packs' ids, by `PackPlace.index`. @default none */
  packs?: string[]
}

export interface DecodeManifestOptions {
  /** If set, the manifest must be signed by this key (MANIFEST_WRONG_OWNER otherwise). */
  owner?: Uint8Array
}

interface WireFile { t: 'f', p: string, s: number, x: boolean, h: Uint8Array, c: Uint8Array }
interface WirePacked { t: 'f', p: string, s: number, x: boolean, h: Uint8Array, k: number }
interface WireDir { t: 'd', p: string }
interface WireBody {
  v: number
  share: Uint8Array
  ver: number
  name: string
  at: number
  cs: number
  entries: Array<WireFile | WirePacked | WireDir>
  packs?: Uint8Array
  root: Uint8Array
}

const ENVELOPE_KEYS = ['body', 'pub', 'sig']
const BODY_KEYS: Record<number, string[]> = {
  1: ['v', 'share', 'ver', 'name', 'at', 'cs', 'entries', 'root'],
  2: ['v', 'share', 'ver', 'name', 'at', 'cs', 'entries', 'packs', 'root']
}
const FILE_KEYS = ['t', 'p', 's', 'x', 'h', 'c']
const PACKED_KEYS = ['t', 'p', 's', 'x', 'h', 'k']
const DIR_KEYS = ['t', 'p']

function malformed (why: string): KithError {
  return new KithError('MANIFEST_MALFORMED', `this share manifest is not valid (${why}); ask the owner to share it again`)
}

function limit (why: string): KithError {
  return new KithError('MANIFEST_LIMIT', `this share manifest is beyond what kith accepts (${why}); the owner should split the share`)
}

function badPath (path: string, why: string): KithError {
  const shown = JSON.stringify(path.length > 80 ? path.slice(0, 80) + '…' : path)
  return new KithError('MANIFEST_BAD_PATH', `the share holds an unsafe path ${shown} (${why}); it was refused so nothing is written outside the destination`)
}

function isRecord (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array)
}

/** Exactly these keys, no more, no fewer. */
function hasKeys (value: Record<string, unknown>, keys: string[]): boolean {
  const own = Object.keys(value)
  return own.length === keys.length && keys.every(k => Object.hasOwn(value, k))
}

function isBytes (value: unknown, length?: number): value is Uint8Array {
  return value instanceof Uint8Array && (length === undefined || value.length === length)
}

function isUint (value: unknown, max = Number.MAX_SAFE_INTEGER): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 && value <= max
}

/**
 * Throws MANIFEST_BAD_PATH unless `path` is a relative POSIX path that can't
 * leave the folder it is joined to: no absolute paths, no '.' or '..' or empty
 * segments, no NUL or backslash, safe text (src/peer/text.ts: no control,
 * format or line-separator characters), well-formed Unicode,
 * within the length and depth caps, and not named like a partial download.
 */
export function checkPath (path: unknown): asserts path is string {
  if (typeof path !== 'string') throw badPath(String(path), 'not text')
  if (path.length === 0) throw badPath(path, 'empty')
  if (path.length > MAX_PATH_LENGTH || Buffer.byteLength(path, 'utf8') > MAX_PATH_LENGTH) {
    throw badPath(path, `longer than ${MAX_PATH_LENGTH} bytes`)
  }
  if (!path.isWellFormed()) throw badPath(path, 'not well-formed Unicode')
  if (path.includes('\0')) throw badPath(path, 'contains NUL')
  if (path.includes('\\')) throw badPath(path, 'contains a backslash')
  // NUL and backslash are named above for clearer messages; the rest of src/peer/text.ts's rule here
  if (!isSafeText(path)) throw badPath(path, 'contains a control, format (such as bidi override) or line-separator character')
  if (path.startsWith('/')) throw badPath(path, 'absolute')
  const segments = path.split('/')
  if (segments.length > MAX_PATH_DEPTH) throw badPath(path, `nested deeper than ${MAX_PATH_DEPTH}`)
  for (const segment of segments) {
    if (segment === '') throw badPath(path, 'empty segment')
    if (segment === '.' || segment === '..') throw badPath(path, `'${segment}' segment`)
    if (Buffer.byteLength(segment, 'utf8') > MAX_SEGMENT_LENGTH) throw badPath(path, `a name longer than ${MAX_SEGMENT_LENGTH} bytes`)
  }
  if (path.endsWith(PARTIAL_SUFFIX)) throw badPath(path, `named like a partial download (${PARTIAL_SUFFIX})`)
}

/**
 * Manifest order: bytewise on UTF-8, so every platform sorts alike.
 *
 * UTF-8's byte order is code point order, which differs from JavaScript's
 * UTF-16 order only where a surrogate (half of a code point above U+FFFF)
 * meets a unit from U+E000 up: so this compares units and ranks a surrogate
 * above any other unit, encoding nothing. Paths are well-formed (checkPath).
 */
export function comparePaths (a: string, b: string): number {
  const length = Math.min(a.length, b.length)
  for (let i = 0; i < length; i++) {
    const x = a.charCodeAt(i)
    const y = b.charCodeAt(i)
    if (x === y) continue
    const xSurrogate = x >= 0xd800 && x <= 0xdfff
    const ySurrogate = y >= 0xd800 && y <= 0xdfff
    if (xSurrogate !== ySurrogate) return xSurrogate ? 1 : -1
    return x < y ? -1 : 1
  }
  return a.length === b.length ? 0 : (a.length < b.length ? -1 : 1)
}

export function checkShareName (name: unknown): asserts name is string {
  if (typeof name !== 'string' || name.length === 0 || Buffer.byteLength(name, 'utf8') > MAX_SHARE_NAME_LENGTH ||
    !isSafeText(name)) {
    throw malformed(`a share name is 1 to ${MAX_SHARE_NAME_LENGTH} bytes of text without control, format or line-separator characters`)
  }
}

/** Chunks a file of `size` bytes has at `chunkSize`. */
export function chunkCount (size: number, chunkSize: number): number {
  return Math.ceil(size / chunkSize)
}

/** Plaintext bytes of chunk `index` of a file: `chunkSize`, except a shorter last one. */
export function chunkLength (size: number, chunkSize: number, index: number): number {
  return Math.min(chunkSize, size - index * chunkSize)
}

/**
 * What a pack is sealed at, in place of a file's sha256: the sha256 of its
 * files' sha256s (32 bytes each), concatenated in entry order.
 */
export function packHash (fileHashes: Iterable<Uint8Array>): string {
  const hash = createHash('sha256')
  for (const h of fileHashes) hash.update(h)
  return hash.digest('hex')
}

function toWire (entry: ManifestEntry): WireFile | WirePacked | WireDir {
  // Checked here too: encoding would silently replace a lone surrogate.
  checkPath(entry.path)
  if (entry.type === 'dir') return { t: 'd', p: entry.path }
  if (!isId(entry.sha256) || !entry.chunks.every(isId)) {
    throw new KithError('BAD_REQUEST', `file ${JSON.stringify(entry.path)} has a hash or chunk id that is not 64 lowercase hex characters`)
  }
  const common = { t: 'f' as const, p: entry.path, s: entry.size, x: entry.executable, h: Buffer.from(entry.sha256, 'hex') }
  if (entry.pack !== undefined) return { ...common, k: entry.pack.index }
  return { ...common, c: Buffer.from(entry.chunks.join(''), 'hex') }
}

/**
 * Signs a manifest and returns its bytes with the decoded form. The result is
 * decoded again before it is returned, so a manifest this function makes is
 * always one `decodeManifest` accepts; errors carry the same codes.
 */
export function createManifest (init: CreateManifestInit): { manifest: Manifest, bytes: Uint8Array } {
  const writer = new ManifestWriter(init)
  for (const entry of init.entries) writer.add(entry)
  const bytes = writer.finish({ ...init, packs: init.packs ?? [] })
  return { manifest: decodeManifest(bytes, { owner: init.publicKey }), bytes }
}

export interface ManifestHead {
  shareId: string
  version: number
  name: string
  /** @default now */
  created?: number
  chunkSize: number
}

/**
 * A manifest written entry by entry, in manifest order, as a share reads its
 * files: what it holds meanwhile is the entries' encodings (about 70 bytes
 * for a small file) and the unpacked files' chunk ids, not an object per
 * file. `finish` signs it; `summarizeManifest` checks what it made.
 */
export class ManifestWriter {
  private readonly head: ManifestHead
  private readonly list = new CanonicalListWriter()
  /** unpacked files' chunk ids, in entry order */
  private readonly ids: Uint8Array[] = []

  constructor (head: ManifestHead) {
    if (!isId(head.shareId)) throw new KithError('BAD_REQUEST', 'a share id must be 64 lowercase hex characters')
    try {
      checkShareName(head.name)
    } catch (err) {
      throw new KithError('BAD_REQUEST', `a share name is 1 to ${MAX_SHARE_NAME_LENGTH} bytes of text without control, format or line-separator characters`, { cause: err })
    }
    this.head = head
  }

  /** The next entry: after the one before in `comparePaths` order; a file's chunks sealed at its `sha256`, a packed file's `pack` placed. */
  add (entry: ManifestEntry): void {
    const wire = toWire(entry)
    if ('c' in wire) this.ids.push(wire.c)
    this.list.add(wire)
  }

  /** Signs the manifest: its packs' ids by `PackPlace.index`, each sealed at `packHash` of its files. */
  finish (init: { secretKey: Uint8Array, publicKey: Uint8Array, packs: string[] }): Uint8Array {
    if (!init.packs.every(isId)) throw new KithError('BAD_REQUEST', 'a pack id must be 64 lowercase hex characters')
    const packBytes = Buffer.from(init.packs.join(''), 'hex')
    const body: Omit<WireBody, 'entries'> = {
      v: MANIFEST_FORMAT,
      share: Buffer.from(this.head.shareId, 'hex'),
      ver: this.head.version,
      name: this.head.name,
      at: this.head.created ?? Date.now(),
      cs: this.head.chunkSize,
      packs: packBytes,
      root: merkleRoot(Buffer.concat([...this.ids, packBytes]))
    }
    const bodyBytes = this.list.finish(body, 'entries')
    return sealEnvelope(bodyBytes, init.publicKey, sign('manifest/1', bodyBytes, init.secretKey))
  }
}

/** What a manifest holds, without its entries: what a share's record and the chunk collector need of it. */
export interface ManifestSummary {
  shareId: string
  version: number
  name: string
  files: number
  chunkCount: number
  totalSize: number
  /** every chunk id it lists (unpacked files' in entry order, then the packs'), 32 bytes each */
  chunkIds: Buffer
}

/**
 * `decodeManifest`'s checks, every one, without keeping the entries: for a
 * manifest of 100,000 files, memory holds one entry and the set of paths
 * (for the file-is-not-a-folder check) at a time, not 100,000 objects.
 */
export function summarizeManifest (bytes: Uint8Array, options: DecodeManifestOptions = {}): ManifestSummary {
  const { body, pub } = openEnvelope(bytes, options)
  return atOnce(bodySteps(body, pub, false)) as ManifestSummary
}

/**
 * Verifies and parses a manifest. Throws MANIFEST_TOO_LARGE, MANIFEST_MALFORMED,
 * MANIFEST_WRONG_OWNER, MANIFEST_BAD_SIGNATURE, UNSUPPORTED_VERSION,
 * MANIFEST_LIMIT or MANIFEST_BAD_PATH; nothing proportional to a claimed size
 * is allocated before that claim is checked.
 */
export function decodeManifest (bytes: Uint8Array, options: DecodeManifestOptions = {}): Manifest {
  const { body, pub } = openEnvelope(bytes, options)
  return atOnce(bodySteps(body, pub, true)) as Manifest
}

/**
 * `decodeManifest` on the daemon's event loop: the entries are read in
 * slices (src/peer/slices.ts), each a few ms, with the loop's other work
 * between them, not in one block (seconds for 100,000 files). `bytes`
 * must not change until it resolves.
 */
export async function decodeManifestInSlices (bytes: Uint8Array, options: DecodeManifestOptions = {}): Promise<Manifest> {
  const { body, pub } = openEnvelope(bytes, options)
  return await inSlices(bodySteps(body, pub, true)) as Manifest
}

/** What `summarizeManifestInSlices` hands over of each entry: its path and, for a file, its chunk ids (a packed file's: its pack's), 32 bytes each; null for a folder. */
export type EntryVisitor = (path: string, ids: Uint8Array | null) => void

/**
 * `summarizeManifest` on the daemon's event loop, in slices as
 * `decodeManifestInSlices`; `visit`, if given, sees each entry as it is
 * checked (views of `bytes`, not to be kept). Entries come before the
 * last checks (the Merkle root): what `visit` saw is the manifest's only
 * once this resolves.
 */
export async function summarizeManifestInSlices (bytes: Uint8Array, options: DecodeManifestOptions & { visit?: EntryVisitor } = {}): Promise<ManifestSummary> {
  const { body, pub } = openEnvelope(bytes, options)
  return await inSlices(bodySteps(body, pub, false, options.visit)) as ManifestSummary
}

/**
 * The envelope's one canonical encoding, in which only the body's length
 * varies (canonical order: the shorter keys pub and sig before body):
 *
 *   a3  63 "pub" 58 20 <32 bytes>  63 "sig" 58 40 <64 bytes>  64 "body" <byte string header> <body>
 *
 * written and read by hand, so a manifest of megabytes is neither copied
 * by the CBOR encoder nor decoded (cborg copies byte strings) and encoded
 * again to check that it is canonical: bytes that are not exactly this are
 * not a manifest.
 */
const ENVELOPE_PUB = Buffer.from([0xa3, 0x63, 0x70, 0x75, 0x62, 0x58, PUBLIC_KEY_LENGTH])
const ENVELOPE_SIG = Buffer.from([0x63, 0x73, 0x69, 0x67, 0x58, SIGNATURE_LENGTH])
const ENVELOPE_BODY = Buffer.from([0x64, 0x62, 0x6f, 0x64, 0x79])
const SIG_KEY_AT = ENVELOPE_PUB.length + PUBLIC_KEY_LENGTH
const BODY_KEY_AT = SIG_KEY_AT + ENVELOPE_SIG.length + SIGNATURE_LENGTH
const BODY_HEAD_AT = BODY_KEY_AT + ENVELOPE_BODY.length

/** The canonical CBOR header of a byte string of `length` bytes (major type 2, shortest form; below 2^32). */
function byteStringHeader (length: number): Buffer {
  if (length < 24) return Buffer.from([0x40 | length])
  if (length < 0x100) return Buffer.from([0x58, length])
  if (length < 0x10000) return Buffer.from([0x59, length >> 8, length & 0xff])
  const header = Buffer.alloc(5)
  header[0] = 0x5a
  header.writeUInt32BE(length, 1)
  return header
}

function sealEnvelope (body: Uint8Array, pub: Uint8Array, sig: Uint8Array): Uint8Array {
  if (pub.length !== PUBLIC_KEY_LENGTH || sig.length !== SIGNATURE_LENGTH) throw new KithError('BAD_REQUEST', 'a manifest is signed with an Ed25519 key')
  return Buffer.concat([ENVELOPE_PUB, pub, ENVELOPE_SIG, sig, ENVELOPE_BODY, byteStringHeader(body.length), body])
}

/** The envelope's checks: size, its one encoding, owner and signature; returns the signed body (a view of `bytes`). */
function openEnvelope (bytes: Uint8Array, options: DecodeManifestOptions): { body: Uint8Array, pub: Uint8Array } {
  if (!(bytes instanceof Uint8Array)) throw malformed('expected bytes')
  if (bytes.length > MAX_MANIFEST_BYTES) {
    throw new KithError('MANIFEST_TOO_LARGE', `this share manifest is ${bytes.length} bytes, more than the ${MAX_MANIFEST_BYTES} kith accepts`)
  }
  const all = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length)
  const at = (part: Buffer, offset: number): boolean => all.length >= offset + part.length && all.subarray(offset, offset + part.length).equals(part)
  if (!at(ENVELOPE_PUB, 0) || !at(ENVELOPE_SIG, SIG_KEY_AT) || !at(ENVELOPE_BODY, BODY_KEY_AT) || all.length <= BODY_HEAD_AT) {
    throw malformed('the envelope must hold exactly pub (32 bytes), sig (64 bytes) and body, in canonical CBOR')
  }
  const head = all[BODY_HEAD_AT]!
  const size = head & 0x1f
  const lengthBytes = size < 24 ? 0 : size - 23 === 1 ? 1 : size - 23 === 2 ? 2 : size - 23 === 3 ? 4 : -1
  if ((head & 0xe0) !== 0x40 || lengthBytes < 0 || all.length < BODY_HEAD_AT + 1 + lengthBytes) throw malformed('the envelope\'s body must be a byte string')
  const length = lengthBytes === 0 ? size : all.readUIntBE(BODY_HEAD_AT + 1, lengthBytes)
  const start = BODY_HEAD_AT + 1 + lengthBytes
  if (!byteStringHeader(length).equals(all.subarray(BODY_HEAD_AT, start))) throw malformed('the envelope is not in canonical form')
  if (all.length !== start + length) throw malformed(all.length < start + length ? 'it ends too soon' : 'bytes follow its end')
  const pub = all.subarray(ENVELOPE_PUB.length, SIG_KEY_AT)
  const sig = all.subarray(SIG_KEY_AT + ENVELOPE_SIG.length, BODY_KEY_AT)
  const body = all.subarray(start)
  if (options.owner !== undefined && Buffer.compare(Buffer.from(options.owner), pub) !== 0) {
    throw new KithError('MANIFEST_WRONG_OWNER', 'this share manifest is signed by someone other than the share owner; it was refused')
  }
  if (!verify('manifest/1', body, sig, pub)) {
    throw new KithError('MANIFEST_BAD_SIGNATURE', 'the share manifest signature does not match its key: it was altered or forged; ask the owner to share it again')
  }
  return { body, pub }
}

/**
 * The body, read entry by entry (canonical.ts `canonicalListSteps`), a step each: the
 * fields before the entries are checked first (canonical order puts
 * `entries` last), then each entry is checked and turned into its decoded
 * form as it is read, so memory holds the result and one entry's CBOR, not
 * the whole tree and a second encoding of it.
 */
function * bodySteps (bodyBytes: Uint8Array, owner: Uint8Array, keep: boolean, visit?: EntryVisitor): Generator<void, Manifest | ManifestSummary> {
  let walk: EntryWalk | undefined
  let before = 0
  const rest = yield * canonicalListSteps(bodyBytes, 'MANIFEST_MALFORMED', 'the share manifest body', 'entries', {
    start: (fields, count) => {
      before = Object.keys(fields).length
      walk = new EntryWalk(parseHead(fields, count, true), count, keep, visit)
    },
    item: (entry) => { walk!.add(entry) }
  })
  // no entries list at all: the head's checks say what is wrong
  if (walk === undefined) parseHead(rest, 0, false)
  if (walk === undefined || Object.keys(rest).length !== before) throw malformed(`the body must hold exactly ${BODY_KEYS[MANIFEST_FORMAT]!.join(', ')}`)
  return keep ? walk.finish(owner) : walk.summary()
}

interface Head {
  share: Uint8Array
  version: number
  name: string
  created: number
  chunkSize: number
  packs: Uint8Array
  root: Uint8Array
}

/** Every field but the entries (`listed`: they follow, `count` of them), checked before any entry is read. */
function parseHead (body: Record<string, unknown>, count: number, listed: boolean): Head {
  if (typeof body.v === 'number' && !READABLE_FORMATS.has(body.v)) {
    throw new KithError('UNSUPPORTED_VERSION', `this share manifest has format version ${body.v}, which this kith does not know; upgrade kith`)
  }
  const keys = BODY_KEYS[body.v as number]
  if (keys === undefined || !hasKeys(listed ? { ...body, entries: true } : body, keys)) throw malformed(`the body must hold exactly ${BODY_KEYS[MANIFEST_FORMAT]!.join(', ')}`)
  const { share, ver, name, at, cs, root } = body
  const packs = body.v === 1 ? new Uint8Array(0) : body.packs
  if (!isBytes(share, ID_LENGTH)) throw malformed('the share id must be 32 bytes')
  if (!isUint(ver) || ver < 1) throw malformed('the version must be a positive integer')
  checkShareName(name)
  if (!isUint(at)) throw malformed('the creation time must be a non-negative integer')
  if (!isUint(cs)) throw malformed('the chunk size must be a non-negative integer')
  if (cs < MIN_CHUNK_SIZE || cs > MAX_CHUNK_SIZE) throw limit(`chunk size ${cs} is outside ${MIN_CHUNK_SIZE}..${MAX_CHUNK_SIZE}`)
  if (!isBytes(root, ID_LENGTH)) throw malformed('the Merkle root must be 32 bytes')
  if (!isBytes(packs) || packs.length % ID_LENGTH !== 0) throw malformed('the pack ids must be 32 bytes each')
  if (packs.length / ID_LENGTH > MAX_CHUNKS) throw limit(`more than ${MAX_CHUNKS} chunks`)
  if (count > MAX_ENTRIES) throw limit(`${count} entries, more than ${MAX_ENTRIES}`)
  return { share, version: ver, name, created: at, chunkSize: cs, packs, root }
}

/**
 * The entries, checked and decoded one at a time: path rules, order, size,
 * pack placement and the running chunk count, all by arithmetic on the
 * claimed sizes before anything per chunk is made.
 */
class EntryWalk {
  private readonly head: Head
  private readonly entries: ManifestEntry[] = []
  private readonly files = new Set<string>()
  private readonly packIds: string[]
  private readonly packs: ManifestPack[] = []
  /** each pack's `chunks`, shared by its files */
  private readonly packChunks: string[][] = []
  /** the files' sha256s, 32 bytes each in entry order (sized by the entry count, checked before) */
  private readonly hashes: Buffer
  private fileCount = 0
  private packHasher: Hash | undefined
  /** unpacked files' chunk ids, in entry order (views of the body's bytes), and their entries */
  private readonly ids: Uint8Array[] = []
  private readonly unpacked: DecodedFile[] = []
  private previous: Buffer | undefined
  private totalChunks: number
  private totalSize = 0
  /** whether the entries are kept (`decodeManifest`) or only checked (`summarizeManifest`) */
  private readonly keep: boolean
  private readonly visit: EntryVisitor | undefined

  constructor (head: Head, count: number, keep: boolean, visit?: EntryVisitor) {
    this.head = head
    this.keep = keep
    this.visit = visit
    this.hashes = Buffer.allocUnsafe(keep ? count * ID_LENGTH : 0)
    this.packIds = splitIds(head.packs)
    this.totalChunks = this.packIds.length
  }

  add (entry: unknown): void {
    if (!isRecord(entry)) throw malformed('an entry is not a map')
    checkPath(entry.p)
    const path = entry.p
    const pathBytes = Buffer.from(path, 'utf8')
    if (this.previous !== undefined) {
      const order = Buffer.compare(this.previous, pathBytes)
      if (order === 0) throw badPath(path, 'listed twice')
      if (order > 0) throw malformed(`entries are not sorted (at ${JSON.stringify(path)})`)
    }
    this.previous = pathBytes
    // A file can't also be a folder holding other entries.
    for (let i = path.indexOf('/'); i !== -1; i = path.indexOf('/', i + 1)) {
      if (this.files.has(path.slice(0, i))) throw badPath(path, `${JSON.stringify(path.slice(0, i))} is a file, not a folder`)
    }
    if (entry.t === 'd') {
      if (!hasKeys(entry, DIR_KEYS)) throw malformed(`folder ${JSON.stringify(path)} must hold exactly t and p`)
      if (this.keep) this.entries.push({ type: 'dir', path })
      this.visit?.(path, null)
      return
    }
    if (entry.t !== 'f') throw malformed(`entry ${JSON.stringify(path)} has an unknown type`)
    const cs = this.head.chunkSize
    const packed = this.packIds.length > 0 && Object.hasOwn(entry, 'k')
    if (!hasKeys(entry, packed ? PACKED_KEYS : FILE_KEYS)) throw malformed(`file ${JSON.stringify(path)} must hold exactly ${FILE_KEYS.join(', ')} (or k for c, packed)`)
    this.files.add(path)
    const { s, x, h } = entry
    if (!isUint(s)) throw malformed(`file ${JSON.stringify(path)} has a size that is not a non-negative integer`)
    if (s > MAX_FILE_SIZE) throw limit(`file ${JSON.stringify(path)} claims ${s} bytes, more than ${MAX_FILE_SIZE}`)
    this.totalSize += s
    if (typeof x !== 'boolean') throw malformed(`file ${JSON.stringify(path)} has a non-boolean executable flag`)
    if (!isBytes(h, ID_LENGTH)) throw malformed(`file ${JSON.stringify(path)} has a hash that is not 32 bytes`)
    const hashAt = this.fileCount++ * ID_LENGTH
    if (this.keep) this.hashes.set(h, hashAt)
    if (packed) {
      const k = entry.k
      const used = this.packs.length
      if (s === 0 || s > cs) throw malformed(`packed file ${JSON.stringify(path)} has ${s} bytes; a packed file has 1 to ${cs}`)
      if (!isUint(k) || (k !== used - 1 && k !== used) || k >= this.packIds.length) {
        throw malformed(`packed file ${JSON.stringify(path)} names pack ${String(k)}; packs are named in order, from 0, below ${this.packIds.length}`)
      }
      if (k === used) {
        this.closePack()
        this.packs.push({ id: this.packIds[k]!, size: 0, hash: '' })
        this.packChunks.push([this.packIds[k]!])
        this.packHasher = createHash('sha256')
      }
      const pack = this.packs[k]!
      if (pack.size + s > cs) throw malformed(`pack ${k}'s files add up to more than its chunk of ${cs} bytes (at ${JSON.stringify(path)})`)
      if (this.keep) this.entries.push(new DecodedFile(path, s, x, this.hashes, hashAt, this.packChunks[k]!, { index: k, offset: pack.size }))
      pack.size += s
      this.packHasher!.update(h)
      this.visit?.(path, this.head.packs.subarray(k * ID_LENGTH, (k + 1) * ID_LENGTH))
      return
    }
    const n = chunkCount(s, cs)
    this.totalChunks += n
    if (this.totalChunks > MAX_CHUNKS) throw limit(`more than ${MAX_CHUNKS} chunks`)
    const { c } = entry
    if (!isBytes(c) || c.length !== n * ID_LENGTH) {
      throw malformed(`file ${JSON.stringify(path)} of ${s} bytes must list ${n} chunk ids`)
    }
    this.ids.push(c)
    this.visit?.(path, c)
    if (!this.keep) return
    // its ids become strings once every entry is checked: a claim past MAX_CHUNKS costs no string
    const decoded = new DecodedFile(path, s, x, this.hashes, hashAt, [])
    this.unpacked.push(decoded)
    this.entries.push(decoded)
  }

  private closePack (): void {
    if (this.packHasher !== undefined) this.packs.at(-1)!.hash = this.packHasher.digest('hex')
    this.packHasher = undefined
  }

  /** The last checks: every listed pack holds a file, and the root matches the ids; returns them all, 32 bytes each. */
  private check (): Buffer {
    this.closePack()
    if (this.packs.length !== this.packIds.length) throw malformed(`${this.packIds.length} packs are listed but files name ${this.packs.length}`)
    const ids = Buffer.concat([...this.ids, this.head.packs])
    if (!merkleRoot(ids).equals(this.head.root)) throw malformed('the Merkle root does not match the chunk ids')
    return ids
  }

  summary (): ManifestSummary {
    const chunkIds = this.check()
    const { head } = this
    return {
      shareId: Buffer.from(head.share).toString('hex'),
      version: head.version,
      name: head.name,
      files: this.fileCount,
      chunkCount: this.totalChunks,
      totalSize: this.totalSize,
      chunkIds
    }
  }

  finish (owner: Uint8Array): Manifest {
    this.check()
    const { head } = this
    this.unpacked.forEach((entry, i) => { entry.chunks = splitIds(this.ids[i]!) })
    return {
      owner: Uint8Array.from(owner),
      shareId: Buffer.from(head.share).toString('hex'),
      version: head.version,
      name: head.name,
      created: head.created,
      chunkSize: head.chunkSize,
      entries: this.entries,
      packs: this.packs,
      root: Buffer.from(head.root).toString('hex'),
      chunkCount: this.totalChunks,
      totalSize: this.totalSize
    }
  }
}

function splitIds (c: Uint8Array): string[] {
  const hex = Buffer.from(c.buffer, c.byteOffset, c.length).toString('hex')
  const out: string[] = new Array(c.length / ID_LENGTH)
  for (let i = 0; i < out.length; i++) out[i] = hex.slice(i * 64, (i + 1) * 64)
  return out
}
