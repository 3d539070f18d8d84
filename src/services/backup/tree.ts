/**
 * Tree blobs: one folder's listing (docs/backup.md, Formats).
 *
 *   tree  = { v: 1, e: [entry] }                                  canonical CBOR
 *   entry = { n: name, t: "f", m: mode, mt: mtime, s: size, c: bstr(32 * k) }   a file: its data blobs in order
 *         | { n: name, t: "d", m: mode, mt: mtime, c: bstr(32 * k) }            a folder: its tree's blobs in order
 *         | { n: name, t: "l", m: mode, mt: mtime, l: target }                  a symbolic link, kept as a link
 *
 * `n` is one path segment (not "." or "..", no "/" or NUL, at most 255 bytes
 * of UTF-8); entries are sorted by the UTF-8 bytes of their names, each name
 * once. `m` is the permission bits (at most 0o7777), `mt` the modification
 * time in microseconds since the epoch. `c` concatenates plaintext blob ids.
 * A folder's encoded tree larger than one blob is cut into several tree blobs
 * with the same keyed chunker as files (so a big folder that changed a
 * little shares most of its blobs with the last snapshot).
 *
 * Decoding checks the byte length first, then the CBOR (canonical, so one
 * tree has one encoding and one id), then each entry's fields and order, and
 * the chunk count a file's size allows, all before any id list is sliced.
 */
import { KithError } from '../../errors.ts'
import { decodeCanonical, encodeCanonical } from '../../peer/canonical.ts'
import { BACKUP_CDC_SIZES } from '../../transfer/cdc.ts'
import { MAX_SEGMENT_LENGTH } from '../../transfer/constants.ts'
import { comparePaths } from '../../transfer/manifest.ts'

export const TREE_FORMAT = 1
const KiB = 1024
const MiB = 1024 * KiB
/** One folder's encoded listing: a million short names, or a file of 2 TiB's chunk list, fit. */
export const MAX_TREE_BYTES = 64 * MiB
/** Entries in one folder. */
export const MAX_TREE_ENTRIES = 1_000_000
/** UTF-8 bytes of a symbolic link's target: Linux's PATH_MAX. */
export const MAX_LINK_TARGET = 4096
/** Blobs one folder's tree is cut into: its size over the chunker's minimum, plus the last. */
export const MAX_TREE_BLOBS = Math.ceil(MAX_TREE_BYTES / BACKUP_CDC_SIZES.min) + 1
const ID_BYTES = 32

export type EntryType = 'file' | 'dir' | 'symlink'

interface Common {
  name: string
  /** permission bits, <= 0o7777 */
  mode: number
  /** modification time, microseconds since the epoch */
  mtime: number
}
export interface FileEntry extends Common { type: 'file', size: number, chunks: string[] }
export interface DirEntry extends Common { type: 'dir', tree: string[] }
export interface LinkEntry extends Common { type: 'symlink', target: string }
export type TreeEntry = FileEntry | DirEntry | LinkEntry

const TYPE_CODE = { file: 'f', dir: 'd', symlink: 'l' } as const

function bad (message: string): KithError {
  return new KithError('TREE_MALFORMED', `a backup tree ${message}; it was damaged or forged`)
}

export function checkName (name: unknown): string {
  if (typeof name !== 'string' || name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0') ||
    !name.isWellFormed() || Buffer.byteLength(name, 'utf8') > MAX_SEGMENT_LENGTH) {
    throw bad(`holds the name ${JSON.stringify(String(name).slice(0, 80))}, which no file in a folder can have`)
  }
  return name
}

function idsToBytes (ids: string[]): Uint8Array {
  return Buffer.from(ids.join(''), 'hex')
}

function bytesToIds (bytes: Uint8Array): string[] {
  const hex = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex')
  const ids: string[] = []
  for (let i = 0; i < hex.length; i += 2 * ID_BYTES) ids.push(hex.slice(i, i + 2 * ID_BYTES))
  return ids
}

/** Entries sorted by name, encoded; throws INTERNAL on a duplicate (the scanner never makes one). */
export function encodeTree (entries: TreeEntry[]): Uint8Array {
  const sorted = [...entries].sort((a, b) => comparePaths(a.name, b.name))
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i - 1]!.name === sorted[i]!.name) throw new KithError('INTERNAL', `two entries named ${JSON.stringify(sorted[i]!.name)} in one tree`)
  }
  const e = sorted.map(entry => {
    const common = { n: entry.name, t: TYPE_CODE[entry.type], m: entry.mode, mt: entry.mtime }
    switch (entry.type) {
      case 'file': return { ...common, s: entry.size, c: idsToBytes(entry.chunks) }
      case 'dir': return { ...common, c: idsToBytes(entry.tree) }
      case 'symlink': return { ...common, l: entry.target }
    }
  })
  const bytes = encodeCanonical({ v: TREE_FORMAT, e })
  if (bytes.length > MAX_TREE_BYTES) throw new KithError('TREE_TOO_LARGE', `a folder's listing takes ${bytes.length} bytes, more than the ${MAX_TREE_BYTES} a backup tree may; split the folder`)
  return bytes
}

function isUint (value: unknown, max = Number.MAX_SAFE_INTEGER): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= max
}

function idList (value: unknown, what: string, max: number): string[] {
  if (!(value instanceof Uint8Array) || value.length % ID_BYTES !== 0) throw bad(`lists the blobs of ${what} in ${value instanceof Uint8Array ? value.length : 'no'} bytes, not a multiple of ${ID_BYTES}`)
  if (value.length / ID_BYTES > max) throw bad(`lists ${value.length / ID_BYTES} blobs for ${what}, more than the ${max} it can have`)
  return bytesToIds(value)
}

function decodeEntry (raw: unknown, index: number): TreeEntry {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw) || raw instanceof Uint8Array) throw bad(`has entry ${index} that is not a map`)
  const r = raw as Record<string, unknown>
  const name = checkName(r.n)
  const what = JSON.stringify(name)
  if (!isUint(r.m, 0o7777)) throw bad(`gives ${what} the mode ${String(r.m)}, not permission bits`)
  if (typeof r.mt !== 'number' || !Number.isSafeInteger(r.mt)) throw bad(`gives ${what} the time ${String(r.mt)}, not microseconds`)
  const common = { name, mode: r.m, mtime: r.mt }
  const keys = Object.keys(r).sort().join()
  switch (r.t) {
    case 'f': {
      if (keys !== 'c,m,mt,n,s,t') throw bad(`has the fields ${keys} for the file ${what}`)
      if (!isUint(r.s)) throw bad(`gives the file ${what} the size ${String(r.s)}`)
      const size = r.s
      // the chunker's bounds: every chunk but the last is min..max bytes
      const most = size === 0 ? 0 : Math.floor(size / BACKUP_CDC_SIZES.min) + 1
      const least = Math.ceil(size / BACKUP_CDC_SIZES.max)
      const chunks = idList(r.c, `the file ${what}`, most)
      if (chunks.length < least) throw bad(`lists ${chunks.length} blobs for the file ${what} of ${size} bytes, fewer than the ${least} it needs`)
      return { ...common, type: 'file', size, chunks }
    }
    case 'd': {
      if (keys !== 'c,m,mt,n,t') throw bad(`has the fields ${keys} for the folder ${what}`)
      const tree = idList(r.c, `the folder ${what}`, MAX_TREE_BLOBS)
      if (tree.length === 0) throw bad(`gives the folder ${what} no tree`)
      return { ...common, type: 'dir', tree }
    }
    case 'l': {
      if (keys !== 'l,m,mt,n,t') throw bad(`has the fields ${keys} for the link ${what}`)
      if (typeof r.l !== 'string' || r.l === '' || r.l.includes('\0') || Buffer.byteLength(r.l, 'utf8') > MAX_LINK_TARGET) throw bad(`gives the link ${what} a target no link can have`)
      return { ...common, type: 'symlink', target: r.l }
    }
    default:
      throw bad(`gives ${what} the type ${JSON.stringify(r.t)}, not f, d or l`)
  }
}

/** A folder's entries from its encoded tree (the tree blobs' plaintexts, concatenated). */
export function decodeTree (bytes: Uint8Array): TreeEntry[] {
  if (!(bytes instanceof Uint8Array)) throw bad('is not bytes')
  if (bytes.length > MAX_TREE_BYTES) throw new KithError('TREE_TOO_LARGE', `a backup tree of ${bytes.length} bytes is more than the ${MAX_TREE_BYTES} one may be; it was damaged or forged`)
  const value = decodeCanonical(bytes, 'TREE_MALFORMED', 'a backup tree')
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw bad('is not a map')
  const { v, e } = value as Record<string, unknown>
  if (Object.keys(value).sort().join() !== 'e,v') throw bad(`has the fields ${Object.keys(value).sort().join()}, not e and v`)
  if (v !== TREE_FORMAT) throw new KithError('UNSUPPORTED_VERSION', `a backup tree has format ${String(v)}; this kith reads format ${TREE_FORMAT}. Update kith to restore it`)
  if (!Array.isArray(e)) throw bad('has no entry list')
  if (e.length > MAX_TREE_ENTRIES) throw new KithError('TREE_TOO_LARGE', `a backup tree lists ${e.length} entries, more than the ${MAX_TREE_ENTRIES} one may`)
  const entries = e.map(decodeEntry)
  for (let i = 1; i < entries.length; i++) {
    if (comparePaths(entries[i - 1]!.name, entries[i]!.name) >= 0) throw bad(`lists ${JSON.stringify(entries[i]!.name)} out of order or twice`)
  }
  return entries
}

/** Microseconds since the epoch from a stat's mtime in nanoseconds. */
export function micros (mtimeNs: bigint): number {
  return Number(mtimeNs / 1000n)
}
