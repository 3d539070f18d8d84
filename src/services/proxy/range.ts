/**
 * A client's Range header, as a player or a resuming download manager
 * sends it: one range of bytes (`bytes=A-B`, `bytes=A-`, `bytes=-N`).
 * Several ranges or another unit are answered whole (200), as RFC 9110
 * allows a server to ignore Range.
 */
export interface ByteRange {
  /** first byte; null with a suffix range (the last `suffix` bytes) */
  start: number | null
  /** last byte, inclusive; null: to the end */
  end: number | null
  suffix: number | null
}

export function parseRange (header: string | undefined): ByteRange | null {
  if (header == null) return null
  const m = /^bytes=(\d{0,15})-(\d{0,15})$/.exec(header.trim())
  if (m == null || (m[1] === '' && m[2] === '')) return null
  if (m[1] === '') return { start: null, end: null, suffix: Number(m[2]) }
  const start = Number(m[1])
  const end = m[2] === '' ? null : Number(m[2])
  if (end != null && end < start) return null
  return { start, end, suffix: null }
}

/** The range within a file of `length` bytes: [first, last] inclusive, or null when it can't be satisfied (416). */
export function resolveRange (range: ByteRange, length: number): [number, number] | null {
  if (range.suffix != null) return range.suffix === 0 || length === 0 ? null : [Math.max(0, length - range.suffix), length - 1]
  const start = range.start!
  if (start >= length) return null
  return [start, Math.min(range.end ?? length - 1, length - 1)]
}

/** Whether the range asks for the whole file from its first byte (so the answer can be kept whole). */
export function fromStart (range: ByteRange | null): boolean {
  return range == null || (range.start === 0 && range.end == null)
}
