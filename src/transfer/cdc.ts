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
  const maskS = topMask(bits + 2)
  const maskL = topMask(bits - 2)
  let fp = 0
  let i = start + min
  // two bytes a turn, each checked: the same cuts as one a turn, for a fifth less of the loop's time
  for (; i + 1 < normal; i += 2) {
    fp = (fp << 1) + gear[buf[i]!]! | 0
    if ((fp & maskS) === 0) return i + 1
    fp = (fp << 1) + gear[buf[i + 1]!]! | 0
    if ((fp & maskS) === 0) return i + 2
  }
  for (; i < normal; i++) {
    fp = (fp << 1) + gear[buf[i]!]! | 0
    if ((fp & maskS) === 0) return i + 1
  }
  for (; i + 1 < end; i += 2) {
    fp = (fp << 1) + gear[buf[i]!]! | 0
    if ((fp & maskL) === 0) return i + 1
    fp = (fp << 1) + gear[buf[i + 1]!]! | 0
    if ((fp & maskL) === 0) return i + 2
  }
  for (; i < end; i++) {
    fp = (fp << 1) + gear[buf[i]!]! | 0
    if ((fp & maskL) === 0) return i + 1
  }
  return end
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
