import { decode, encode, Tokenizer, tokensToObject, Type } from 'cborg'
import { KithError, type ErrorCode } from '../errors.ts'
import { atOnce } from './slices.ts'

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

/**
 * `encodeCanonical({ ...fields, [listKey]: [...items] })`, encoded item by
 * item: the bytes are the same (a list's encoding is its header and its
 * items' encodings in turn), but no encoder state for the whole list is held
 * at once (cborg makes a token per item of the tree before writing any).
 * `listKey` must sort after every other key (canonical order: shorter keys
 * first), so that the list ends the map.
 */
export function encodeCanonicalList (fields: Record<string, unknown>, listKey: string, items: Iterable<unknown>): Uint8Array {
  const list = new CanonicalListWriter()
  for (const item of items) list.add(item)
  return list.finish(fields, listKey)
}

/**
 * `encodeCanonicalList` for items that come one at a time, with the map's
 * other fields given at the end (a manifest's Merkle root is known once its
 * last entry is): what is held meanwhile is the items' encodings, joined a
 * run at a time, not the items.
 */
export class CanonicalListWriter {
  private readonly parts: Uint8Array[] = []
  // a buffer per item, for a list of 100,000, would all live until the end
  // (and so be promoted and wait for a full collection)
  private run: Uint8Array[] = []
  private runBytes = 0
  private count = 0

  add (item: unknown): void {
    const encoded = encode(item)
    this.run.push(encoded)
    this.runBytes += encoded.length
    this.count++
    if (this.runBytes >= LIST_RUN_BYTES) this.endRun()
  }

  /** The map's bytes: `fields`, then the items under `listKey`, which must sort after every field's key. */
  finish (fields: Record<string, unknown>, listKey: string): Uint8Array {
    const keyBytes = Buffer.byteLength(listKey)
    for (const key of Object.keys(fields)) {
      const length = Buffer.byteLength(key)
      if (key === listKey || length > keyBytes || (length === keyBytes && Buffer.compare(Buffer.from(key), Buffer.from(listKey)) > 0)) {
        throw new Error(`${listKey} must be the last key of the map`)
      }
    }
    this.endRun()
    const head = encode({ ...fields, [listKey]: [] })
    return Buffer.concat([head.subarray(0, head.length - 1), arrayHeader(this.count), ...this.parts])
  }

  private endRun (): void {
    if (this.runBytes === 0) return
    this.parts.push(Buffer.concat(this.run, this.runBytes))
    this.run = []
    this.runBytes = 0
  }
}

/** Bytes of item encodings `CanonicalListWriter` joins into one buffer at a time. */
const LIST_RUN_BYTES = 256 * 1024

/** The canonical CBOR header of an array of `count` items (major type 4, shortest length). */
function arrayHeader (count: number): Uint8Array {
  if (count < 24) return Uint8Array.of(0x80 | count)
  if (count < 0x100) return Uint8Array.of(0x98, count)
  if (count < 0x10000) return Uint8Array.of(0x99, count >> 8, count & 0xff)
  const header = Buffer.alloc(5)
  header[0] = 0x9a
  header.writeUInt32BE(count, 1)
  return header
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

/** What `decodeCanonicalList` calls: `start` once the list's length is known (before any item is read), then `item` for each. */
export interface ListReader {
  start: (fields: Record<string, unknown>, count: number) => void
  item: (value: unknown, index: number) => void
}

const DONE = Symbol.for('DONE')
const BREAK = Symbol.for('BREAK')

/**
 * `decodeCanonical` for a map holding one long list (a manifest body's
 * entries), read item by item: the map's other fields and then each item of
 * the list under `listKey` are decoded, checked canonical (re-encoded one at
 * a time and compared with their own bytes; keys in canonical order), and
 * handed to `reader`, so memory holds one item's objects at a time rather
 * than the whole tree and a second encoding of it. `start` gets the fields
 * that came before the list (in canonical order, shorter keys first) and may
 * throw to refuse the count before any item is read. Returns every field
 * but the list.
 */
export function decodeCanonicalList (bytes: Uint8Array, code: ErrorCode, what: string, listKey: string, reader: ListReader): Record<string, unknown> {
  return atOnce(canonicalListSteps(bytes, code, what, listKey, reader))
}

/**
 * `decodeCanonicalList` as steps, one item each (slices.ts): a caller on
 * the daemon's event loop runs them `inSlices`. `bytes` must not change
 * until the last step.
 */
export function * canonicalListSteps (bytes: Uint8Array, code: ErrorCode, what: string, listKey: string, reader: ListReader): Generator<void, Record<string, unknown>> {
  const fail = (why: string): KithError => new KithError(code, `${what} is not valid (${why}); it was altered after it was made, or damaged`)
  const canonical = (value: unknown, from: number, to: number): void => {
    if (nestsDeeper(value, MAX_NESTING - 2)) throw fail(`it nests arrays or maps more than ${MAX_NESTING} levels deep`)
    if (Buffer.compare(Buffer.from(encode(value)), Buffer.from(bytes.buffer, bytes.byteOffset + from, to - from)) !== 0) throw fail('it is not in canonical form')
  }
  const tokens = new Tokenizer(bytes, DECODE_OPTIONS)
  const next = (): unknown => {
    const value = tokensToObject(tokens, DECODE_OPTIONS)
    if (value === DONE || value === BREAK) throw new Error('it ends too soon')
    return value
  }
  const fields: Record<string, unknown> = {}
  try {
    const head = tokens.next()
    if (!Type.equals(head.type, Type.map)) throw fail('it is not a map')
    let previous: Buffer | undefined
    for (let i = 0; i < head.value; i++) {
      const keyAt = tokens.pos()
      const key = next()
      if (typeof key !== 'string') throw fail('a key is not text')
      canonical(key, keyAt, tokens.pos())
      const keyBytes = Buffer.from(bytes.subarray(keyAt, tokens.pos()))
      // canonical order: shorter keys first, then bytewise; so no key twice
      if (previous !== undefined && (previous.length > keyBytes.length || (previous.length === keyBytes.length && Buffer.compare(previous, keyBytes) >= 0))) {
        throw fail('it is not in canonical form: its keys are out of order or repeated')
      }
      previous = keyBytes
      if (key !== listKey) {
        const at = tokens.pos()
        const value = next()
        canonical(value, at, tokens.pos())
        Object.defineProperty(fields, key, { value, enumerable: true, configurable: true, writable: true })
        continue
      }
      const list = tokens.next()
      if (!Type.equals(list.type, Type.array)) throw fail(`its ${listKey} is not a list`)
      reader.start(fields, list.value)
      for (let n = 0; n < list.value; n++) {
        const at = tokens.pos()
        const value = next()
        canonical(value, at, tokens.pos())
        reader.item(value, n)
        yield
      }
    }
    if (!tokens.done()) throw fail('bytes follow its end')
  } catch (err) {
    if (err instanceof KithError) throw err
    throw new KithError(code, `${what} is not valid CBOR (${(err as Error).message}); it may be truncated or damaged`)
  }
  return fields
}
