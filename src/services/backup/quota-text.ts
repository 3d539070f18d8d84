import { KithError } from '../../errors.ts'

/**
 * Sizes as people write quotas: "20GB", "500MiB", "1.5T", "0" (stops new
 * writes), or a number of bytes. Decimal units are powers of 1000 (GB =
 * 10^9), binary ones of 1024 (GiB = 2^30), as `kith limits` reads rates.
 * Light on purpose: the thin CLI loads it.
 */
const UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, t: 1e12, tb: 1e12,
  kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, tib: 1024 ** 4
}

/** Bytes, or BAD_REQUEST naming what was given. */
export function parseSize (value: unknown): number {
  const text = typeof value === 'number' ? String(value) : typeof value === 'string' ? value.trim() : ''
  const match = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(text)
  const unit = match != null ? UNITS[match[2]!.toLowerCase()] : undefined
  const bytes = match != null && unit != null ? Math.floor(Number(match[1]) * unit) : NaN
  if (!Number.isSafeInteger(bytes) || bytes < 0) {
    throw new KithError('BAD_REQUEST', `a quota is a size like 20GB, 500MiB or 0 (no new writes); got ${JSON.stringify(String(value).slice(0, 40))}`)
  }
  return bytes
}
