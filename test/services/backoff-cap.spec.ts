import { describe, it, expect } from 'vitest'
import { backoffCap, MIN_BACKOFF_CAP_MS } from '../../src/services/backoff-cap.ts'
import { KithError } from '../../src/errors.ts'

describe('a retry backoff cap from the environment', () => {
  it('is the default unless the variable is set, and may be lowered to MIN_BACKOFF_CAP_MS', () => {
    expect(backoffCap('KITH_X_MAX_MS', 30_000, {})).toBe(30_000)
    expect(backoffCap('KITH_X_MAX_MS', 30_000, { KITH_X_MAX_MS: '' })).toBe(30_000)
    expect(backoffCap('KITH_X_MAX_MS', 30_000, { KITH_X_MAX_MS: '2000' })).toBe(2000)
    expect(backoffCap('KITH_X_MAX_MS', 30_000, { KITH_X_MAX_MS: String(MIN_BACKOFF_CAP_MS) })).toBe(MIN_BACKOFF_CAP_MS)
    expect(backoffCap('KITH_X_MAX_MS', 30_000, { KITH_X_MAX_MS: '30000' })).toBe(30_000)
  })

  it('refuses what is not a whole number of ms in range, naming the variable (never raised, never 0)', () => {
    for (const raw of ['0', '99', '30001', '1e9', '2.5', '-2000', 'soon', ' ', 'Infinity', '0x10']) {
      let error: unknown
      try { backoffCap('KITH_X_MAX_MS', 30_000, { KITH_X_MAX_MS: raw }) } catch (err) { error = err }
      expect(error, raw).toBeInstanceOf(KithError)
      expect((error as KithError).code).toBe('CONFIG_INVALID')
      expect((error as KithError).message).toContain(`KITH_X_MAX_MS=${raw} `)
    }
  })
})
