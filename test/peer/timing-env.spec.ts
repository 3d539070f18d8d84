import { describe, it, expect } from 'vitest'
import { backoffCap, msFromEnv, MIN_ENV_MS } from '../../src/peer/timing-env.ts'
import { KithError } from '../../src/errors.ts'

const refusal = (read: () => number): KithError => {
  try { read() } catch (err) { return err as KithError }
  throw new Error('not refused')
}

describe('a duration from the environment', () => {
  it('is the default unless the variable is set, and may be set from MIN_ENV_MS to its maximum', () => {
    expect(msFromEnv('KITH_X_MS', 5000, 10_000, {})).toBe(5000)
    expect(msFromEnv('KITH_X_MS', 5000, 10_000, { KITH_X_MS: '' })).toBe(5000)
    expect(msFromEnv('KITH_X_MS', 5000, 10_000, { KITH_X_MS: '1000' })).toBe(1000)
    expect(msFromEnv('KITH_X_MS', 5000, 10_000, { KITH_X_MS: String(MIN_ENV_MS) })).toBe(MIN_ENV_MS)
    expect(msFromEnv('KITH_X_MS', 5000, 10_000, { KITH_X_MS: '10000' })).toBe(10_000)
  })

  it('refuses what is not a whole number of ms in range, naming the variable and the range', () => {
    for (const raw of ['0', '99', '10001', '1e9', '2.5', '-2000', 'soon', ' ', 'Infinity', '0x10']) {
      const error = refusal(() => msFromEnv('KITH_X_MS', 5000, 10_000, { KITH_X_MS: raw }))
      expect(error, raw).toBeInstanceOf(KithError)
      expect(error.code).toBe('CONFIG_INVALID')
      expect(error.message).toContain(`KITH_X_MS=${raw} is not a whole number of milliseconds from ${MIN_ENV_MS} to 10000`)
    }
  })
})

describe('a retry backoff cap from the environment', () => {
  it('is the default unless the variable is set, and may be lowered to MIN_ENV_MS', () => {
    expect(backoffCap('KITH_X_MAX_MS', 30_000, {})).toBe(30_000)
    expect(backoffCap('KITH_X_MAX_MS', 30_000, { KITH_X_MAX_MS: '' })).toBe(30_000)
    expect(backoffCap('KITH_X_MAX_MS', 30_000, { KITH_X_MAX_MS: '2000' })).toBe(2000)
    expect(backoffCap('KITH_X_MAX_MS', 30_000, { KITH_X_MAX_MS: String(MIN_ENV_MS) })).toBe(MIN_ENV_MS)
    expect(backoffCap('KITH_X_MAX_MS', 30_000, { KITH_X_MAX_MS: '30000' })).toBe(30_000)
  })

  it('refuses what is not a whole number of ms in range, naming the variable (never raised, never 0)', () => {
    for (const raw of ['0', '99', '30001', '1e9', '2.5', '-2000', 'soon', ' ', 'Infinity', '0x10']) {
      const error = refusal(() => backoffCap('KITH_X_MAX_MS', 30_000, { KITH_X_MAX_MS: raw }))
      expect(error, raw).toBeInstanceOf(KithError)
      expect(error.code).toBe('CONFIG_INVALID')
      expect(error.message).toContain(`KITH_X_MAX_MS=${raw} `)
    }
  })
})
