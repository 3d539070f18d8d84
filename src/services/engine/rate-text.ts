import type { LimitRate } from './limits.ts'

/**
 * Rates as people write them ("16MB/s", "512KiB/s", "unlimited"), for the
 * start flags, `kith limits`, config.json and the API alike. Light on
 * purpose: the thin CLI loads it.
 */

const RATE_UNITS: Record<string, number> = { '': 1, b: 1, kb: 1e3, mb: 1e6, gb: 1e9, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, k: 1e3, m: 1e6, g: 1e9 }

/** Parses "16MB/s", "512KiB/s", "2.5M" into bytes per second; undefined if malformed or zero. */
export function parseRate (text: string): number | undefined {
  const match = /^(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?(?:\/s)?$/i.exec(text.trim())
  if (match == null) return undefined
  const unit = RATE_UNITS[(match[2] ?? '').toLowerCase()]
  const value = Number(match[1]) * (unit ?? NaN)
  return Number.isFinite(value) && value >= 1 ? Math.round(value) : undefined
}

/** "10MB/s", "512KiB/s", "0", "unlimited" (or a number of bytes/s) as a LimitRate (limits.ts); undefined if malformed. */
export function parseLimitRate (value: unknown): LimitRate | undefined {
  if (typeof value === 'number') return Number.isFinite(value) && value >= 0 ? value : undefined
  if (typeof value !== 'string') return undefined
  const text = value.trim().toLowerCase()
  if (text === 'unlimited' || text === 'none' || text === 'off') return 'unlimited'
  if (/^0+(?:\.0+)?\s*(?:[kmg]i?b?|b)?(?:\/s)?$/.test(text)) return 0
  return parseRate(text)
}
