import { readFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'

/**
 * Checks a LevelDB folder's files against their own checksums before the
 * database is opened: what LevelDB's `paranoid_checks` would do, which
 * classic-level does not let us turn on. Without it LevelDB drops a damaged
 * log record while recovering (and deletes the log once replayed), and reads
 * a damaged table block without checking it: records vanish or change
 * silently.
 *
 * Checked, in the format of the LevelDB that classic-level bundles
 * (doc/log_format.md, doc/table_format.md):
 * - CURRENT names a MANIFEST, whose records all pass their CRC;
 * - every live write-ahead log (numbered at or above the manifest's log
 *   number): every record's CRC, length and type. A record cut short at the
 *   very end is what a crash leaves and LevelDB ignores it; so do we;
 * - every table the manifest lists: present, of the size it records, its
 *   footer, and the CRC of every block (data, index, meta and filter).
 *
 * Tables and logs the manifest no longer lists (left by a crash mid
 * compaction) are not checked: LevelDB deletes them when it opens.
 */

/** One thing wrong, naming the file: "000005.ldb: block at 4096 (3810 bytes) fails its checksum". */
export type Problem = string

export async function checkDatabaseFiles (dir: string): Promise<Problem[]> {
  let current: string
  try {
    current = await readFile(join(dir, 'CURRENT'), 'utf8')
  } catch (err) {
    return [`CURRENT: can't be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`]
  }
  const manifestName = /^(MANIFEST-\d+)\n$/.exec(current)?.[1]
  if (manifestName == null) return [`CURRENT: does not name a MANIFEST file (${JSON.stringify(current.slice(0, 40))})`]
  let manifest: ManifestState
  try {
    manifest = parseManifest(await readFile(join(dir, manifestName)))
  } catch (err) {
    return [`${manifestName}: ${(err as Error).message}`]
  }

  const problems: Problem[] = []
  const names = await readdir(dir)
  for (const name of names) {
    const match = /^(\d+)\.log$/.exec(name)
    if (match == null) continue
    const number = Number(match[1])
    if (number < manifest.logNumber && number !== manifest.prevLogNumber) continue
    for (const p of checkLog(await readFile(join(dir, name))).problems) problems.push(`${name}: record at ${p.at} ${p.why}`)
  }
  for (const [number, size] of manifest.tables) {
    const name = [tableName(number, 'ldb'), tableName(number, 'sst')].find(n => names.includes(n))
    if (name == null) {
      problems.push(`${tableName(number, 'ldb')}: missing, but the manifest lists it`)
      continue
    }
    const bytes = await readFile(join(dir, name))
    if (bytes.length !== size) {
      problems.push(`${name}: ${bytes.length} bytes, but the manifest says ${size}`)
      continue
    }
    const check = checkTable(bytes)
    if (check.problem != null) problems.push(`${name}: ${check.problem}`)
    for (const block of check.badBlocks) problems.push(`${name}: block at ${block.offset} (${block.size} bytes) fails its checksum`)
  }
  return problems
}

export function tableName (number: number, ext: 'ldb' | 'sst'): string {
  return `${String(number).padStart(6, '0')}.${ext}`
}

// crc32c (Castagnoli), as LevelDB stores it: masked -----------------------------

const CRC_TABLE = (() => {
  const table = new Uint32Array(256)
  for (let i = 0; i < 256; i++) {
    let c = i
    for (let k = 0; k < 8; k++) c = (c & 1) !== 0 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1
    table[i] = c >>> 0
  }
  return table
})()

export function crc32c (bytes: Uint8Array, start = 0, end = bytes.length): number {
  let crc = 0xffffffff
  for (let i = start; i < end; i++) crc = CRC_TABLE[(crc ^ bytes[i]!) & 0xff]! ^ (crc >>> 8)
  return (crc ^ 0xffffffff) >>> 0
}

/** LevelDB stores CRCs rotated and offset, so a CRC of data that holds CRCs stays meaningful. */
function unmask (masked: number): number {
  const rot = (masked - 0xa282ead8) >>> 0
  return ((rot >>> 17) | (rot << 15)) >>> 0
}

// the log format: write-ahead logs and the MANIFEST ------------------------------

const LOG_BLOCK = 32768
const LOG_HEADER = 7
const FULL = 1
const FIRST = 2
const MIDDLE = 3
const LAST = 4

/**
 * A damaged log record. `drop`: what must go with it, as LevelDB's checksummed
 * reader would drop it: the record alone (it fails its checksum but the next
 * record passes, so its length can be trusted), or the rest of its 32 KiB
 * block; null when the record reads back but does not fit (a fragment out of
 * order, an unknown type), which even an unchecked reader notices.
 */
export interface LogProblem {
  at: number
  why: string
  drop: 'record' | 'block' | null
}

/**
 * Reads a log file's records the way LevelDB's reader does (db/log_reader.cc)
 * and lists what it would drop. Returns the whole (reassembled) records that
 * read back.
 */
export function checkLog (bytes: Uint8Array): { records: Uint8Array[], problems: LogProblem[] } {
  const records: Uint8Array[] = []
  const problems: LogProblem[] = []
  let fragments: Uint8Array[] | null = null
  for (let block = 0; block < bytes.length; block += LOG_BLOCK) {
    const end = Math.min(block + LOG_BLOCK, bytes.length)
    const lastBlock = end === bytes.length && end - block < LOG_BLOCK
    let at = block
    // fewer bytes than a header left in a block are padding
    while (end - at >= LOG_HEADER) {
      const record = physicalRecord(bytes, at, end)
      if (record === 'past-end') {
        // cut short at the end of the file: a crash mid write, ignored
        if (!lastBlock) problems.push({ at, why: 'runs past its block (bad length)', drop: 'block' })
        break
      }
      if (record === 'padding') break // preallocated space
      const next = at + LOG_HEADER + record.payload.length
      if (!record.intact) {
        fragments = null
        const following = end - next < LOG_HEADER ? 'padding' : physicalRecord(bytes, next, end)
        // its length may be what is damaged: trusted only if the record after it checks out
        if (following === 'padding' || (typeof following === 'object' && following.intact)) {
          problems.push({ at, why: 'fails its checksum', drop: 'record' })
          at = next
          continue
        }
        problems.push({ at, why: 'fails its checksum', drop: 'block' })
        break
      }
      const { type, payload } = record
      if (type === FULL || type === FIRST) {
        // an empty FIRST left at a block's end by old LevelDB writers is no damage
        if (fragments?.some(f => f.length > 0) === true) problems.push({ at, why: 'starts before the previous record ended', drop: null })
        fragments = null
        if (type === FULL) records.push(payload)
        else fragments = [payload]
      } else if (type === MIDDLE || type === LAST) {
        if (fragments == null) {
          problems.push({ at, why: 'continues a record that never started', drop: null })
        } else {
          fragments.push(payload)
          if (type === LAST) {
            records.push(Buffer.concat(fragments))
            fragments = null
          }
        }
      } else {
        problems.push({ at, why: `has unknown type ${type}`, drop: null })
      }
      at = next
    }
  }
  // a record whose last fragment never got written: a crash mid write, ignored
  return { records, problems }
}

function physicalRecord (bytes: Uint8Array, at: number, end: number): 'past-end' | 'padding' | { type: number, payload: Uint8Array, intact: boolean } {
  const length = bytes[at + 4]! | (bytes[at + 5]! << 8)
  const type = bytes[at + 6]!
  if (at + LOG_HEADER + length > end) return 'past-end'
  if (type === 0 && length === 0) return 'padding'
  const stored = unmask(new DataView(bytes.buffer, bytes.byteOffset + at, 4).getUint32(0, true))
  const intact = crc32c(bytes, at + 6, at + LOG_HEADER + length) === stored
  return { type, payload: bytes.subarray(at + LOG_HEADER, at + LOG_HEADER + length), intact }
}

interface ManifestState {
  logNumber: number
  prevLogNumber: number
  /** live tables: file number -> size in bytes */
  tables: Map<number, number>
}

/** Replays the MANIFEST's version edits (db/version_edit.cc) to find the live files; throws on damage. */
export function parseManifest (bytes: Uint8Array): ManifestState {
  const { records, problems } = checkLog(bytes)
  if (problems.length > 0) throw new Error(`record at ${problems[0]!.at} ${problems[0]!.why}`)
  if (records.length === 0) throw new Error('holds no version')
  const state: ManifestState = { logNumber: 0, prevLogNumber: 0, tables: new Map() }
  const live = new Map<string, { number: number, size: number }>()
  for (const record of records) {
    const r = new Reader(record)
    const added: Array<[string, { number: number, size: number }]> = []
    while (!r.done) {
      const tag = r.varint()
      switch (tag) {
        case 1: r.slice(); break // comparator name
        case 2: state.logNumber = r.varint(); break
        case 3: r.varint(); break // next file number
        case 4: r.varint(); break // last sequence
        case 5: r.varint(); r.slice(); break // compaction pointer
        case 6: live.delete(`${r.varint()}/${r.varint()}`); break
        case 7: {
          const level = r.varint()
          const number = r.varint()
          const size = r.varint()
          r.slice()
          r.slice()
          added.push([`${level}/${number}`, { number, size }])
          break
        }
        case 9: state.prevLogNumber = r.varint(); break
        default: throw new Error(`a version edit has unknown tag ${tag}`)
      }
    }
    // LevelDB applies an edit's deletions before its additions (a file moved down a level)
    for (const [key, file] of added) live.set(key, file)
  }
  for (const file of live.values()) state.tables.set(file.number, file.size)
  return state
}

// tables (.ldb, .sst) -------------------------------------------------------------

const FOOTER = 48
const TABLE_MAGIC = Buffer.from([0x57, 0xfb, 0x80, 0x8b, 0x24, 0x75, 0x47, 0xdb])
const TRAILER = 5
const NO_COMPRESSION = 0
const SNAPPY = 1

export interface BlockHandle { offset: number, size: number }

export interface TableCheck {
  /** damage that makes the whole table unreadable: its footer, index or meta blocks */
  problem: string | null
  /** data and filter blocks that fail their checksum (the rest of the table is good) */
  badBlocks: BlockHandle[]
  /** every data block, for whoever needs to mark some (kith repair) */
  dataBlocks: BlockHandle[]
}

export function checkTable (bytes: Uint8Array): TableCheck {
  const result: TableCheck = { problem: null, badBlocks: [], dataBlocks: [] }
  try {
    if (bytes.length < FOOTER) throw new Error(`${bytes.length} bytes, too short for a table`)
    const footer = bytes.subarray(bytes.length - FOOTER)
    if (Buffer.compare(footer.subarray(FOOTER - 8), TABLE_MAGIC) !== 0) throw new Error('its footer is damaged (bad magic number); it may be truncated')
    const r = new Reader(footer.subarray(0, FOOTER - 8))
    const metaindex = r.handle()
    const index = r.handle()
    const limit = bytes.length - FOOTER
    result.dataBlocks = readBlock(bytes, index, limit, 'index').map(entry => new Reader(entry).handle())
    for (const handle of result.dataBlocks) {
      if (!blockIntact(bytes, handle, limit)) result.badBlocks.push(handle)
    }
    for (const entry of readBlock(bytes, metaindex, limit, 'meta index')) {
      const filter = new Reader(entry).handle()
      if (!blockIntact(bytes, filter, limit)) result.badBlocks.push(filter)
    }
  } catch (err) {
    result.problem = (err as Error).message
  }
  return result
}

function blockIntact (bytes: Uint8Array, handle: BlockHandle, limit: number): boolean {
  const end = handle.offset + handle.size
  if (end + TRAILER > limit) return false
  const stored = unmask(new DataView(bytes.buffer, bytes.byteOffset + end + 1, 4).getUint32(0, true))
  return crc32c(bytes, handle.offset, end + 1) === stored && (bytes[end] === NO_COMPRESSION || bytes[end] === SNAPPY)
}

/** Reads a block of key/value entries (table/block.cc) and returns the values. */
function readBlock (bytes: Uint8Array, handle: BlockHandle, limit: number, what: string): Uint8Array[] {
  if (!blockIntact(bytes, handle, limit)) throw new Error(`its ${what} block fails its checksum`)
  const stored = bytes.subarray(handle.offset, handle.offset + handle.size)
  const block = bytes[handle.offset + handle.size] === SNAPPY ? snappyDecompress(stored) : stored
  if (block.length < 4) throw new Error(`its ${what} block is too short`)
  const view = new DataView(block.buffer, block.byteOffset, block.length)
  const restarts = view.getUint32(block.length - 4, true)
  const entriesEnd = block.length - 4 * (restarts + 1)
  if (restarts < 1 || entriesEnd < 0) throw new Error(`its ${what} block is malformed`)
  const values: Uint8Array[] = []
  const r = new Reader(block.subarray(0, entriesEnd))
  while (!r.done) {
    r.varint() // bytes shared with the previous key
    const keyLength = r.varint()
    const valueLength = r.varint()
    r.bytes(keyLength)
    values.push(r.bytes(valueLength))
  }
  return values
}

/** Snappy's block format (format_description.txt): a length, then literals and back-references. */
export function snappyDecompress (input: Uint8Array): Uint8Array {
  const r = new Reader(input)
  const out = new Uint8Array(r.varint())
  let o = 0
  while (!r.done) {
    const tag = r.byte()
    let length: number
    let offset: number
    switch (tag & 3) {
      case 0: {
        length = (tag >>> 2) + 1
        if (length > 60) {
          const extra = length - 60
          length = 1
          for (let i = 0; i < extra; i++) length += r.byte() * 2 ** (8 * i)
        }
        if (o + length > out.length) throw new Error('a compressed block is damaged')
        out.set(r.bytes(length), o)
        o += length
        continue
      }
      case 1:
        length = ((tag >>> 2) & 7) + 4
        offset = ((tag >>> 5) << 8) | r.byte()
        break
      case 2:
        length = (tag >>> 2) + 1
        offset = r.byte() | (r.byte() << 8)
        break
      default:
        length = (tag >>> 2) + 1
        offset = (r.byte() | (r.byte() << 8) | (r.byte() << 16) | (r.byte() << 24)) >>> 0
    }
    if (offset === 0 || offset > o || o + length > out.length) throw new Error('a compressed block is damaged')
    // byte by byte: a copy may overlap what it writes (a run)
    for (let i = 0; i < length; i++, o++) out[o] = out[o - offset]!
  }
  if (o !== out.length) throw new Error('a compressed block is damaged')
  return out
}

/** Little-endian varints and length-prefixed slices; every read is bounds-checked. */
class Reader {
  private at = 0
  private readonly buf: Uint8Array

  constructor (buf: Uint8Array) {
    this.buf = buf
  }

  get done (): boolean {
    return this.at >= this.buf.length
  }

  byte (): number {
    if (this.at >= this.buf.length) throw new Error('a record ends early')
    return this.buf[this.at++]!
  }

  varint (): number {
    let value = 0
    for (let shift = 0; shift < 64; shift += 7) {
      const b = this.byte()
      value += (b & 0x7f) * 2 ** shift
      if ((b & 0x80) === 0) return value
    }
    throw new Error('a number is malformed')
  }

  bytes (length: number): Uint8Array {
    if (this.at + length > this.buf.length) throw new Error('a record ends early')
    const out = this.buf.subarray(this.at, this.at + length)
    this.at += length
    return out
  }

  slice (): Uint8Array {
    return this.bytes(this.varint())
  }

  handle (): BlockHandle {
    return { offset: this.varint(), size: this.varint() }
  }
}
