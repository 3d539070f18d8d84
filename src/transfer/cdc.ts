/**
 * Content-defined chunking: FastCDC with normalised chunking (Xia et al.,
 * "FastCDC: a Fast and Efficient Content-Defined Chunking Approach for Data
 * Deduplication", USENIX ATC 2016), over a gear table the caller derives from
 * a secret key.
 *
 * Boundaries fall where a rolling "gear" hash of the last 32 bytes has its top
 * bits zero, so an insertion or a deletion moves only the boundaries near it:
 * the chunks after it are the same bytes as before, and deduplicate. Because
 * the gear table is keyed, where a boundary falls says nothing about the
 * content to anyone without the key (with a public table, chunk sizes alone
 * can confirm that a known file is stored).
 *
 * Normalised chunking: between `min` and `avg` a boundary needs two more zero
 * bits than the average asks for (it is rarer), after `avg` two fewer (more
 * likely), which packs chunk sizes close to `avg`. The first `min` bytes of a
 * chunk are not hashed at all (cut-point skipping).
 *
 * cdcRead reads into a window of two maximum chunks the caller keeps and
 * reuses, and hands out views of it: no buffer is made per file or chunk.
 */
import { KithError } from '../errors.ts'

const KiB = 1024
const MiB = 1024 * KiB

export interface CdcSizes {
  /** no boundary before this many bytes (the last chunk of a stream may be shorter) */
  min: number
  /** the size chunks gather around; a power of two */
  avg: number
  /** a boundary is forced here */
  max: number
}

/** Backup's sizes: 256 KiB to 4 MiB, about 1 MiB on average. */
export const BACKUP_CDC_SIZES: CdcSizes = { min: 256 * KiB, avg: 1 * MiB, max: 4 * MiB }

/** Entries of a gear table: one 32-bit value per byte value. */
export const GEAR_ENTRIES = 256

/**
 * A gear table from 1024 bytes of key material (keys.ts derives them with
 * HKDF). Int32 so the hash stays in small-integer arithmetic: three times
 * faster in V8 than the same sums kept unsigned.
 */
export function gearTable (material: Uint8Array): Int32Array {
  if (material.length !== GEAR_ENTRIES * 4) throw new KithError('INTERNAL', `a gear table needs ${GEAR_ENTRIES * 4} bytes of key material, not ${material.length}`)
  const view = new DataView(material.buffer, material.byteOffset, material.byteLength)
  const gear = new Int32Array(GEAR_ENTRIES)
  for (let i = 0; i < GEAR_ENTRIES; i++) gear[i] = view.getInt32(i * 4, false)
  return gear
}

/** The `bits` highest bits of a 32-bit word set: those a boundary needs zero. */
function topMask (bits: number): number {
  return (0xffffffff << (32 - bits)) | 0
}

function checkSizes ({ min, avg, max }: CdcSizes): void {
  const ok = Number.isInteger(min) && Number.isInteger(max) && min >= 64 && min < avg && avg < max &&
    Number.isInteger(Math.log2(avg)) && Math.log2(avg) >= 8 && Math.log2(avg) <= 28
  if (!ok) throw new KithError('INTERNAL', `chunk sizes ${min}/${avg}/${max} are not 64 <= min < avg < max with avg a power of two`)
}

/**
 * The first cut in buf[from..to): the end of the first byte after which the
 * hash, rolled on from `fp` (its value at `from`), has `mask`'s bits zero;
 * -1 if none. Eight bytes a turn with one test for all eight (a cut is rare),
 * then the turn that holds one again a byte at a time: the same cuts as one
 * byte a turn, for about half of that loop's time.
 */
function scan (buf: Uint8Array, from: number, to: number, fp: number, gear: Int32Array, mask: number): number {
  let i = from
  for (; i + 7 < to; i += 8) {
    const f1 = (fp << 1) + gear[buf[i]!]! | 0
    const f2 = (f1 << 1) + gear[buf[i + 1]!]! | 0
    const f3 = (f2 << 1) + gear[buf[i + 2]!]! | 0
    const f4 = (f3 << 1) + gear[buf[i + 3]!]! | 0
    const f5 = (f4 << 1) + gear[buf[i + 4]!]! | 0
    const f6 = (f5 << 1) + gear[buf[i + 5]!]! | 0
    const f7 = (f6 << 1) + gear[buf[i + 6]!]! | 0
    const f8 = (f7 << 1) + gear[buf[i + 7]!]! | 0
    if ((f1 & mask) === 0 || (f2 & mask) === 0 || (f3 & mask) === 0 || (f4 & mask) === 0 ||
      (f5 & mask) === 0 || (f6 & mask) === 0 || (f7 & mask) === 0 || (f8 & mask) === 0) break
    fp = f8
  }
  for (; i < to; i++) {
    fp = (fp << 1) + gear[buf[i]!]! | 0
    if ((fp & mask) === 0) return i + 1
  }
  return -1
}

/**
 * The hash at `at` of bytes hashed from `from`: each byte's share is shifted
 * left once per byte after it, so only the last 32 count.
 */
function hashAt (buf: Uint8Array, from: number, at: number, gear: Int32Array): number {
  let fp = 0
  for (let i = Math.max(from, at - 32); i < at; i++) fp = (fp << 1) + gear[buf[i]!]! | 0
  return fp
}

/**
 * Where the chunk starting at buf[start] ends, looking at buf[start..length):
 * a cut found by the hash, start + `max`, or `length` when the data runs out
 * first (only the end of a stream may then cut there).
 */
export function findBoundary (buf: Uint8Array, start: number, length: number, gear: Int32Array, sizes: CdcSizes): number {
  const { min, avg, max } = sizes
  if (length - start <= min) return length
  const end = Math.min(length, start + max)
  const normal = Math.min(end, start + avg)
  const bits = Math.log2(avg)
  const first = start + min
  const small = scan(buf, first, normal, 0, gear, topMask(bits + 2))
  if (small !== -1) return small
  const large = scan(buf, normal, end, hashAt(buf, first, normal, gear), gear, topMask(bits - 2))
  return large !== -1 ? large : end
}

/** Bytes of the window cdcRead cuts in: two maximum chunks, so a refill moves at most one back. */
export function cdcWindowSize (sizes: CdcSizes = BACKUP_CDC_SIZES): number {
  return 2 * sizes.max
}

function checkGear (gear: Int32Array): void {
  if (gear.length !== GEAR_ENTRIES) throw new KithError('INTERNAL', `a gear table has ${GEAR_ENTRIES} entries, not ${gear.length}`)
}

/** Cuts bytes held in memory into content-defined chunks: views of `data`, nothing copied. */
export function * cdcCut (data: Uint8Array, gear: Int32Array, sizes: CdcSizes = BACKUP_CDC_SIZES): Generator<Uint8Array> {
  checkSizes(sizes)
  checkGear(gear)
  for (let start = 0; start < data.length;) {
    const cut = findBoundary(data, start, data.length, gear, sizes)
    yield data.subarray(start, cut)
    start = cut
  }
}

/**
 * Cuts what `read` gives (a file read into the buffer it is handed, 0 at the
 * end) into content-defined chunks, reading straight into `window` (at least
 * cdcWindowSize bytes; the caller may reuse it for the next file). Each chunk
 * is a view of the window, valid until the next one is asked for: a consumer
 * that keeps one copies it. Bytes are copied only when a refill moves the
 * unfinished tail (less than one maximum chunk) to the front.
 */
export async function * cdcRead (read: (into: Uint8Array) => Promise<number>, gear: Int32Array, window: Uint8Array, sizes: CdcSizes = BACKUP_CDC_SIZES): AsyncGenerator<Uint8Array> {
  checkSizes(sizes)
  checkGear(gear)
  if (window.length < cdcWindowSize(sizes)) throw new KithError('INTERNAL', `a chunking window holds at least ${cdcWindowSize(sizes)} bytes, not ${window.length}`)
  let length = 0
  let ended = false
  for (;;) {
    while (!ended && length < window.length) {
      const n = await read(window.subarray(length))
      if (n === 0) ended = true
      length += n
    }
    // a chunk whose max fits in what is buffered ends where it ends, whatever comes next
    let start = 0
    while (length - start >= sizes.max || (ended && start < length)) {
      const cut = findBoundary(window, start, length, gear, sizes)
      yield window.subarray(start, cut)
      start = cut
    }
    if (ended) return
    window.copyWithin(0, start, length)
    length -= start
  }
}
