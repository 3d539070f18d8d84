import { decode, encode } from 'cborg'
import { KithError, type ErrorCode } from '../errors.ts'

/**
 * Canonical CBOR for signed records: deterministic encoding on the way out,
 * and on the way in a strict decode followed by a re-encode that must give the
 * same bytes. Anything with indefinite lengths, non-minimal integers, unsorted
 * or duplicate keys, undefined or bigints is refused, so one record has exactly
 * one encoding and the signed bytes are the parsed bytes.
 */

/**
 * Levels of arrays and maps a value may nest. kith's formats use three at
 * most (a manifest body's entries); deeper input is damage or an attack, and
 * costly: encoding it again (the canonical check) takes time quadratic in the
 * depth and, a few thousand levels down, more stack than there is.
 */
export const MAX_NESTING = 16

const DECODE_OPTIONS = {
  strict: true,
  allowIndefinite: false,
  allowUndefined: false,
  allowBigInt: false,
  rejectDuplicateMapKeys: true
} as const

export function encodeCanonical (value: unknown): Uint8Array {
  return encode(value)
}

export function decodeCanonical (bytes: Uint8Array, code: ErrorCode, what: string): unknown {
  let value: unknown
  try {
    value = decode(bytes, DECODE_OPTIONS)
  } catch (err) {
    throw new KithError(code, `${what} is not valid CBOR (${(err as Error).message}); it may be truncated or damaged`)
  }
  if (nestsDeeper(value, MAX_NESTING)) {
    throw new KithError(code, `${what} nests arrays or maps more than ${MAX_NESTING} levels deep, which nothing kith makes does; it was damaged or forged`)
  }
  const again = encode(value)
  if (Buffer.compare(Buffer.from(again), Buffer.from(bytes)) !== 0) {
    throw new KithError(code, `${what} is not in canonical form; it was altered after it was made`)
  }
  return value
}

/** Whether arrays and maps in `value` nest more than `max` levels (walked without recursion). */
function nestsDeeper (value: unknown, max: number): boolean {
  const pending: Array<[unknown, number]> = [[value, 0]]
  while (pending.length > 0) {
    const [item, depth] = pending.pop()!
    if (item === null || typeof item !== 'object' || item instanceof Uint8Array) continue
    if (depth === max) return true
    for (const child of Array.isArray(item) ? item : Object.values(item)) pending.push([child, depth + 1])
  }
  return false
}
