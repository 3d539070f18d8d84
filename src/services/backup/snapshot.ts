/**
 * Snapshot blobs: one backup run, signed by its owner (docs/backup.md, Formats).
 *
 *   snapshot = { body: bstr, sig: bstr(64) }                                   canonical CBOR
 *   sig      = Ed25519(identity, "kith/backup-snapshot/1\0" || sha256(body))
 *   body     = { v: 1, owner: tstr, seq: uint, at: uint, label: tstr | null,
 *                paths: [tstr], tree: bstr(32 * k),
 *                stats: { files: uint, dirs: uint, links: uint, bytes: uint } }
 *
 * `owner` is the owner's peer id, `seq` the owner's snapshot counter (never
 * reused, so an older snapshot served for a newer one is caught), `at` when
 * it was made (ms since the epoch), `paths` the absolute paths backed up,
 * `tree` the root tree's blobs (one entry per path, named by its last
 * segment). The blob is sealed like any other (blob.ts, kind "snapshot"); the
 * signature lets a new machine holding only the phrase trust a snapshot it
 * fetched before it trusts anything the snapshot names.
 */
import { KithError } from '../../errors.ts'
import { decodeCanonical, encodeCanonical } from '../../peer/canonical.ts'
import { SIGNATURE_LENGTH, sign, verify } from '../../peer/signing.ts'
import { isSafeText } from '../../peer/text.ts'
import { MAX_TREE_BLOBS } from './tree.ts'

export const SNAPSHOT_FORMAT = 1
/** A whole encoded snapshot; the root tree's blob list dominates. */
export const MAX_SNAPSHOT_BYTES = 64 * 1024
export const MAX_SNAPSHOT_PATHS = 256
export const MAX_LABEL_LENGTH = 255
const MAX_PATH_BYTES = 4096
const ID_BYTES = 32

export interface SnapshotStats {
  files: number
  dirs: number
  links: number
  /** plaintext bytes of every file */
  bytes: number
}

export interface Snapshot {
  owner: string
  seq: number
  /** ms since the epoch */
  at: number
  label: string | null
  paths: string[]
  /** the root tree's blobs, plaintext ids */
  tree: string[]
  stats: SnapshotStats
}

function bad (message: string): KithError {
  return new KithError('SNAPSHOT_MALFORMED', `a backup snapshot ${message}; it was damaged or forged`)
}

function isUint (value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0
}

export function checkLabel (label: unknown): string {
  if (typeof label !== 'string' || label === '' || Buffer.byteLength(label, 'utf8') > MAX_LABEL_LENGTH || !isSafeText(label)) {
    throw new KithError('BAD_REQUEST', `a snapshot name is 1 to ${MAX_LABEL_LENGTH} bytes of printable text`)
  }
  return label
}

/** The signed, encoded snapshot (the plaintext of a snapshot blob). */
export function encodeSnapshot (snapshot: Snapshot, secretKey: Uint8Array): Uint8Array {
  const body = encodeCanonical({
    v: SNAPSHOT_FORMAT,
    owner: snapshot.owner,
    seq: snapshot.seq,
    at: snapshot.at,
    label: snapshot.label,
    paths: snapshot.paths,
    tree: Buffer.from(snapshot.tree.join(''), 'hex'),
    stats: { files: snapshot.stats.files, dirs: snapshot.stats.dirs, links: snapshot.stats.links, bytes: snapshot.stats.bytes }
  })
  return encodeCanonical({ body, sig: sign('backup-snapshot/1', body, secretKey) })
}

/**
 * A snapshot from a snapshot blob's plaintext, checked: size, shape,
 * signature by `publicKey`, then the body. The caller compares owner, seq
 * and id with what it expects (SNAPSHOT_MISMATCH).
 */
export function decodeSnapshot (bytes: Uint8Array, publicKey: Uint8Array): Snapshot {
  if (!(bytes instanceof Uint8Array)) throw bad('is not bytes')
  if (bytes.length > MAX_SNAPSHOT_BYTES) throw new KithError('SNAPSHOT_TOO_LARGE', `a backup snapshot of ${bytes.length} bytes is more than the ${MAX_SNAPSHOT_BYTES} one may be`)
  const envelope = decodeCanonical(bytes, 'SNAPSHOT_MALFORMED', 'a backup snapshot')
  if (envelope === null || typeof envelope !== 'object' || Array.isArray(envelope) || Object.keys(envelope).sort().join() !== 'body,sig') throw bad('is not a signed envelope')
  const { body, sig } = envelope as Record<string, unknown>
  if (!(body instanceof Uint8Array) || !(sig instanceof Uint8Array) || sig.length !== SIGNATURE_LENGTH) throw bad('has no body or signature')
  if (!verify('backup-snapshot/1', body, sig, publicKey)) throw new KithError('SNAPSHOT_BAD_SIGNATURE', 'a backup snapshot is not signed by this identity; it was forged, or belongs to someone else')
  const value = decodeCanonical(body, 'SNAPSHOT_MALFORMED', 'a backup snapshot body')
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw bad('body is not a map')
  const r = value as Record<string, unknown>
  if (r.v !== SNAPSHOT_FORMAT) throw new KithError('UNSUPPORTED_VERSION', `a backup snapshot has format ${String(r.v)}; this kith reads format ${SNAPSHOT_FORMAT}. Update kith to restore it`)
  if (Object.keys(r).sort().join() !== 'at,label,owner,paths,seq,stats,tree,v') throw bad(`has the fields ${Object.keys(r).sort().join()}`)
  if (typeof r.owner !== 'string' || r.owner === '' || r.owner.length > 128) throw bad('names no owner')
  if (!isUint(r.seq) || !isUint(r.at)) throw bad('has no sequence number or time')
  if (r.label !== null) {
    try { checkLabel(r.label) } catch { throw bad('has a name that is not printable text') }
  }
  if (!Array.isArray(r.paths) || r.paths.length === 0 || r.paths.length > MAX_SNAPSHOT_PATHS ||
    !r.paths.every(p => typeof p === 'string' && p.startsWith('/') && !p.includes('\0') && Buffer.byteLength(p, 'utf8') <= MAX_PATH_BYTES)) {
    throw bad(`lists paths that are not 1 to ${MAX_SNAPSHOT_PATHS} absolute paths`)
  }
  const tree = r.tree
  if (!(tree instanceof Uint8Array) || tree.length === 0 || tree.length % ID_BYTES !== 0 || tree.length / ID_BYTES > MAX_TREE_BLOBS) throw bad('has no root tree')
  const stats = r.stats
  if (stats === null || typeof stats !== 'object' || Array.isArray(stats) || Object.keys(stats).sort().join() !== 'bytes,dirs,files,links' ||
    !Object.values(stats).every(isUint)) throw bad('has no counts')
  const hex = Buffer.from(tree).toString('hex')
  return {
    owner: r.owner,
    seq: r.seq,
    at: r.at,
    label: r.label as string | null,
    paths: r.paths as string[],
    tree: Array.from({ length: tree.length / ID_BYTES }, (_, i) => hex.slice(i * 64, (i + 1) * 64)),
    stats: stats as SnapshotStats
  }
}
