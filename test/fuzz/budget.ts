import fc from 'fast-check'
import { expect } from 'vitest'
import { KithError, isErrorCode, type ErrorCode } from '../../src/errors.ts'

/**
 * The fuzz budget and the shared checks of test/fuzz.
 *
 * Every property runs `runs(scale)` cases: KITH_FUZZ_RUNS (default
 * DEFAULT_RUNS, sized so that all of test/fuzz takes about 15 s on a 2-core
 * machine inside `npm test`) times the property's scale, for properties that
 * cost more per case (a signature, a stream, an HTTP request). `npm run
 * test:unit` sets KITH_FUZZ_RUNS to 25 (the inner loop), `npm run fuzz`
 * runs test/fuzz alone with a much larger budget.
 *
 * A failure prints fast-check's report (the seed, the shrunk counterexample)
 * and the command that replays exactly that case: KITH_FUZZ_SEED and
 * KITH_FUZZ_PATH feed fast-check's `seed` and `path`.
 */
export const DEFAULT_RUNS = 100

function envInt (name: string): number | undefined {
  const text = process.env[name]
  if (text === undefined || text === '') return undefined
  const value = Number(text)
  if (!Number.isSafeInteger(value)) throw new Error(`${name} must be an integer, not ${JSON.stringify(text)}`)
  return value
}

const BASE = envInt('KITH_FUZZ_RUNS') ?? DEFAULT_RUNS
if (BASE < 1) throw new Error('KITH_FUZZ_RUNS must be at least 1')
const SEED = envInt('KITH_FUZZ_SEED')
const PATH = process.env.KITH_FUZZ_PATH

/** Cases for one property: the budget times `scale`, at least one. */
export function runs (scale = 1): number {
  return Math.max(1, Math.round(BASE * scale))
}

function parameters<Ts> (scale: number): fc.Parameters<Ts> {
  return {
    numRuns: runs(scale),
    ...(SEED !== undefined ? { seed: SEED } : {}),
    ...(PATH !== undefined && PATH !== '' ? { path: PATH } : {})
  }
}

function replay (details: { seed: number, counterexamplePath: string | null }): string {
  const state = expect.getState()
  const file = state.testPath !== undefined ? state.testPath.slice(state.testPath.indexOf('test/fuzz/')) : 'test/fuzz'
  const name = (state.currentTestName ?? '').split(' > ').at(-1) ?? ''
  return `replay: KITH_FUZZ_SEED=${details.seed} KITH_FUZZ_PATH=${details.counterexamplePath ?? ''} npx vitest run ${file} -t ${JSON.stringify(name)}`
}

/** Checks a synchronous property; on failure throws the report with its seed and replay command. */
export function fuzz<Ts> (property: fc.IProperty<Ts>, scale = 1): void {
  const details = fc.check(property, parameters<Ts>(scale))
  if (details.failed) throw new Error(`${fc.defaultReportMessage(details) ?? 'property failed'}\n${replay(details)}`, { cause: details.errorInstance })
}

/** A case of an asynchronous property that takes longer than this has hung. */
export const CASE_TIMEOUT_MS = 10_000

/**
 * Checks an asynchronous property; a case that runs past `timeoutMs` fails
 * (a hang is a finding too). On failure throws the report with its seed and
 * replay command.
 */
export async function fuzzAsync<Ts> (property: fc.IAsyncProperty<Ts>, scale = 1, timeoutMs = CASE_TIMEOUT_MS): Promise<void> {
  const details = await fc.check(property, { ...parameters<Ts>(scale), plugins: [fc.timeout(timeoutMs)] })
  if (details.failed) throw new Error(`${await fc.asyncDefaultReportMessage(details) ?? 'property failed'}\n${replay(details)}`, { cause: details.errorInstance })
}

/** An input as a failure message shows it: bytes in hex, records as JSON with their bytes in hex, cut to a readable length. */
function show (input: unknown): string {
  const bytes = (b: Uint8Array): string => {
    const hex = Buffer.from(b).toString('hex')
    return `0x${hex.length > 400 ? hex.slice(0, 400) + `… (${b.length} bytes)` : hex}`
  }
  if (input instanceof Uint8Array) return bytes(input)
  let text: string
  try {
    text = typeof input === 'object' && input !== null
      // the holder's own field, before a Buffer's toJSON turns it into { type, data }
      ? JSON.stringify(input, function (this: Record<string, unknown>, key, value: unknown) { const raw = this[key]; return raw instanceof Uint8Array ? bytes(raw) : value })
      : typeof input === 'string' ? JSON.stringify(input) : String(input)
  } catch {
    text = String(input)
  }
  return text.length > 600 ? text.slice(0, 600) + '…' : text
}

/**
 * The error `fn` threw, which must be a KithError with a known code, one of
 * `codes` if given: never another exception type, never a return.
 */
export function rejects (fn: () => unknown, codes?: readonly ErrorCode[], input?: unknown): KithError {
  let returned: unknown
  try {
    returned = fn()
  } catch (err) {
    return checkRejection(err, codes, input)
  }
  throw new Error(`accepted ${show(input)}: returned ${show(returned)}`)
}

export async function rejectsAsync (fn: () => Promise<unknown>, codes?: readonly ErrorCode[], input?: unknown): Promise<KithError> {
  try {
    await fn()
  } catch (err) {
    return checkRejection(err, codes, input)
  }
  throw new Error(`accepted ${show(input)}`)
}

/** `err` must be a KithError with a known code, one of `codes` if given. */
export function checkRejection (err: unknown, codes?: readonly ErrorCode[], input?: unknown): KithError {
  if (!(err instanceof KithError)) {
    throw new Error(`${show(input)} threw ${(err as Error)?.constructor?.name ?? typeof err}, not a KithError: ${(err as Error)?.message ?? String(err)}`, { cause: err })
  }
  if (!isErrorCode(err.code)) throw new Error(`${show(input)} threw a KithError with the unknown code ${String(err.code)}`)
  if (codes !== undefined && !codes.includes(err.code)) {
    throw new Error(`${show(input)} threw ${err.code} (${err.message}), expected one of ${codes.join(', ')}`, { cause: err })
  }
  return err
}

/**
 * Either a KithError with one of `codes`, or a value `check` accepts: what an
 * unsigned format must do with damaged input. Returns the value, or undefined.
 */
export function rejectsOrValid<T> (fn: () => T, codes: readonly ErrorCode[], check: (value: T) => void, input?: unknown): T | undefined {
  let value: T
  try {
    value = fn()
  } catch (err) {
    checkRejection(err, codes, input)
    return undefined
  }
  check(value)
  return value
}

// ---------------------------------------------------------------------------
// damage to valid encodings

/** A copy of `bytes` with bit `bit` (0 = the first byte's lowest bit) flipped. */
export function flipBit (bytes: Uint8Array, bit: number): Uint8Array {
  const out = Uint8Array.from(bytes)
  out[bit >> 3]! ^= 1 << (bit & 7)
  return out
}

/** Any valid encoding from `valid`, with one bit flipped: [original, flipped]. */
export function withFlip (valid: fc.Arbitrary<Uint8Array>): fc.Arbitrary<[Uint8Array, Uint8Array]> {
  return valid.chain(bytes => fc.nat(bytes.length * 8 - 1).map(bit => [bytes, flipBit(bytes, bit)] as [Uint8Array, Uint8Array]))
}

/** Any valid encoding from `valid`, cut short: every strict prefix, the empty one included. */
export function truncated (valid: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Uint8Array> {
  return valid.chain(bytes => fc.nat(bytes.length - 1).map(n => bytes.subarray(0, n)))
}

/** Bytes from noise up to a little over `max`. */
export function randomBytes (max: number): fc.Arbitrary<Uint8Array> {
  return fc.uint8Array({ minLength: 0, maxLength: max })
}
