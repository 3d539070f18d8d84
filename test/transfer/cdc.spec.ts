import { createCipheriv, createHash, randomBytes } from 'node:crypto'
import { beforeAll, describe, expect, it } from 'vitest'
import { BACKUP_CDC_SIZES, cdcCut, cdcRead, cdcWindowSize, findBoundary, gearTable, type CdcSizes } from '../../src/transfer/cdc.ts'

/** Deterministic pseudo-random bytes (AES-CTR of zeros under a fixed key). */
function bytes (length: number, seed = 1): Uint8Array {
  const key = Buffer.alloc(32, seed)
  return new Uint8Array(createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length)))
}

const gearA = gearTable(bytes(1024, 7))
const gearB = gearTable(bytes(1024, 8))

/** `data` cut by cdcRead from reads of at most `piece` bytes (short reads, as a file or a pipe may give), each chunk copied out of the window. */
async function cut (data: Uint8Array, gear: Int32Array, sizes: CdcSizes = BACKUP_CDC_SIZES, piece = 100_000): Promise<Uint8Array[]> {
  let at = 0
  const read = async (into: Uint8Array): Promise<number> => {
    const n = Math.min(piece, into.length, data.length - at)
    into.set(data.subarray(at, at + n))
    at += n
    return n
  }
  const out: Uint8Array[] = []
  for await (const chunk of cdcRead(read, gear, new Uint8Array(cdcWindowSize(sizes)), sizes)) out.push(chunk.slice())
  return out
}

const lengths = (chunks: Uint8Array[]): number[] => chunks.map(c => c.length)
const hashes = (chunks: Uint8Array[]): string[] => chunks.map(c => createHash('sha256').update(c).digest('hex'))

describe('keyed FastCDC', () => {
  const data = bytes(12 * 1024 * 1024)
  /** data cut under key A, read 100 000 bytes at a time */
  let base: Uint8Array[] = []
  beforeAll(async () => { base = await cut(data, gearA) })

  it('cuts the same stream the same way under one key, whatever the read sizes, and loses no byte', async () => {
    const b = await cut(data, gearA, BACKUP_CDC_SIZES, 4 * 1024 * 1024 + 17)
    expect(lengths(base)).toEqual(lengths(b))
    expect(Buffer.concat(base).equals(data)).toBe(true)
    // in memory, without a window: the same cuts, as views of the data
    const views = [...cdcCut(data, gearA)]
    expect(hashes(views)).toEqual(hashes(base))
    expect(views.every(v => v.buffer === data.buffer)).toBe(true)
  })

  it('cuts where the gear hash taken one byte at a time cuts (the loop takes eight a turn; cut positions are a stored format)', () => {
    /** the definition: FastCDC's loop, one byte a turn */
    const reference = (buf: Uint8Array, start: number, sizes: CdcSizes): number => {
      if (buf.length - start <= sizes.min) return buf.length
      const end = Math.min(buf.length, start + sizes.max)
      const bits = Math.log2(sizes.avg)
      let fp = 0
      for (let i = start + sizes.min; i < end; i++) {
        fp = (fp << 1) + gearA[buf[i]!]! | 0
        const mask = i < start + sizes.avg ? (0xffffffff << (32 - bits - 2)) | 0 : (0xffffffff << (32 - bits + 2)) | 0
        if ((fp & mask) === 0) return i + 1
      }
      return end
    }
    const small = data.subarray(0, 512 * 1024)
    // the second: fewer than 32 bytes (the hash's reach) between min and avg, so the large part rolls on from a hash of fewer
    for (const sizes of [{ min: 64, avg: 256, max: 1024 }, { min: 250, avg: 256, max: 1024 }]) {
      let cuts = 0
      for (let start = 0; start < small.length; cuts++) {
        // every start, and ends cut short by 0 to 8 bytes: each length of the unrolled loop's tails is met
        const length = small.length - (cuts % 9)
        const expected = reference(small.subarray(0, length), start, sizes)
        expect(findBoundary(small, start, length, gearA, sizes)).toBe(expected)
        start = expected
      }
      expect(cuts).toBeGreaterThan(1000)
    }
  })

  it('refuses a window smaller than two maximum chunks', async () => {
    const small = cdcRead(async () => 0, gearA, new Uint8Array(cdcWindowSize() - 1))
    await expect(small.next()).rejects.toMatchObject({ code: 'INTERNAL' })
  })

  it('keeps sizes within 256 KiB..4 MiB, about 1 MiB on average; only the last chunk may be short', async () => {
    const chunks = base
    const { min, max } = BACKUP_CDC_SIZES
    for (const c of chunks.slice(0, -1)) {
      expect(c.length).toBeGreaterThanOrEqual(min)
      expect(c.length).toBeLessThanOrEqual(max)
    }
    const mean = data.length / chunks.length
    expect(mean).toBeGreaterThan(0.7 * 1024 * 1024)
    expect(mean).toBeLessThan(1.8 * 1024 * 1024)
  })

  it('cuts elsewhere under another key: boundaries depend on the key, not only the content', async () => {
    const a = lengths(base)
    const b = lengths(await cut(data, gearB))
    const ends = (ls: number[]): Set<number> => { let at = 0; return new Set(ls.map(l => (at += l))) }
    const shared = [...ends(a)].filter(e => ends(b).has(e) && e !== data.length)
    expect(shared.length).toBeLessThanOrEqual(1)
  })

  it('forces a cut at max on data with no boundary, and leaves a short stream whole', async () => {
    const zeros = new Uint8Array(9 * 1024 * 1024)
    // a gear table whose every entry sets the top bit never brings the top bits to zero
    const flat = new Int32Array(256).fill(-0x80000000)
    expect(lengths(await cut(zeros, flat))).toEqual([4, 4, 1].map(n => n * 1024 * 1024))
    expect(lengths(await cut(data.subarray(0, 1000), gearA))).toEqual([1000])
    expect(await cut(new Uint8Array(0), gearA)).toEqual([])
  })

  it('an insertion early in a file changes only the chunks around it: the rest deduplicate', async () => {
    const before = hashes(base)
    const changed = Buffer.concat([data.subarray(0, 1_500_000), randomBytes(100), data.subarray(1_500_000)])
    const after = hashes(await cut(changed, gearA))
    const old = new Set(before)
    const fresh = after.filter(h => !old.has(h))
    expect(fresh.length).toBeGreaterThanOrEqual(1)
    expect(fresh.length).toBeLessThanOrEqual(3)
  })
})
