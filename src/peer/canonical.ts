import { decode, encode } from 'cborg'
import { KithError, type ErrorCode } from '../errors.ts'

/**
 * Canonical CBOR for signed records: deterministic encoding on the way out,
 * and on the way in a strict decode followed by a re-encode that must give the
 * same bytes. Anything with indefinite lengths, non-minimal integers, unsorted
 * or duplicate keys, undefined or bigints is refused, so one record has exactly
 * one encoding and the signed bytes are the parsed bytes.
 */

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
  const again = encode(value)
  if (Buffer.compare(Buffer.from(again), Buffer.from(bytes)) !== 0) {
    throw new KithError(code, `${what} is not in canonical form; it was altered after it was made`)
  }
  return value
}
