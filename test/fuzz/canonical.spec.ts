import fc from 'fast-check'
import { encode } from 'cborg'
import { describe, expect, it } from 'vitest'
import { MAX_NESTING, decodeCanonical, encodeCanonical } from '../../src/peer/canonical.ts'
import { fuzz, rejects, rejectsOrValid, truncated, withFlip, randomBytes } from './budget.ts'

/**
 * Canonical CBOR (src/peer/canonical.ts), under every signed record and
 * request/response message: one value, one encoding. Whatever bytes come in,
 * the decoder either refuses them with the caller's code or returns a value
 * whose canonical encoding is exactly those bytes.
 */
const CODE = 'RECORD_MALFORMED' as const

/** Well-formed text, so that encoding can't silently replace a lone surrogate. */
const text = fc.string({ unit: 'binary', maxLength: 24 }).filter(s => s.isWellFormed())
/** Keys an attacker would pick to reach the prototype, beside ordinary ones. */
const key = fc.oneof(text, fc.constantFrom('__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', ''))

/** Values canonical CBOR carries: everything kith's formats use, and floats besides. */
const { value: cborValue } = fc.letrec<{ value: unknown }>(tie => ({
  value: fc.oneof(
    { depthSize: 'small', maxDepth: MAX_NESTING, withCrossShrink: true },
    fc.constant(null),
    fc.boolean(),
    fc.maxSafeInteger(),
    fc.integer({ min: -300, max: 70_000 }),
    // -0 is written as the integer 0 (kith carries no floats)
    fc.double({ noNaN: true }).filter(d => !Object.is(d, -0)),
    text,
    fc.uint8Array({ maxLength: 40 }),
    fc.array(tie('value'), { maxLength: 5 }),
    fc.dictionary(text.filter(k => k !== '__proto__'), tie('value'), { maxKeys: 5, noNullPrototype: true })
  )
}))

/** The canonical encoding of any value: what a valid sender puts on the wire. */
const encoded = cborValue.map(v => encodeCanonical(v))

/** Decodes `bytes`: a KithError with the caller's code, or a value that encodes back to exactly `bytes`. */
function decodesCanonically (bytes: Uint8Array): void {
  rejectsOrValid(() => decodeCanonical(bytes, CODE, 'the fuzzed value'), [CODE], value => {
    expect(Buffer.from(encodeCanonical(value)).equals(Buffer.from(bytes))).toBe(true)
  }, bytes)
}

describe('canonical CBOR, fuzzed', () => {
  it('round-trips any value: decode(encode(v)) is v', () => {
    fuzz(fc.property(cborValue, value => {
      const decoded = decodeCanonical(encodeCanonical(value), CODE, 'the value')
      expect(decoded).toStrictEqual(value)
    }))
  })

  it('refuses every truncation of a valid encoding with the caller\'s code', () => {
    fuzz(fc.property(truncated(encoded), bytes => {
      rejects(() => decodeCanonical(bytes, CODE, 'the truncated value'), [CODE], bytes)
    }))
  })

  it('after any single bit flip, refuses with the caller\'s code or decodes to a value encoded exactly so', () => {
    fuzz(fc.property(withFlip(encoded), ([, flipped]) => { decodesCanonically(flipped) }))
  })

  it('on random bytes, refuses with the caller\'s code or decodes to a value encoded exactly so', () => {
    fuzz(fc.property(randomBytes(256), bytes => { decodesCanonically(bytes) }))
  })

  it('refuses what another CBOR encoder may write: unsorted or duplicate keys, long forms, indefinite lengths, tags, undefined', () => {
    // cborg without canonical options, and hand-made variants of canonical bytes
    const variant = fc.oneof(
      // a map written in insertion order, where that is not the canonical order
      fc.uniqueArray(text, { minLength: 2, maxLength: 6 })
        .map(keys => ({ keys, bytes: encode(new Map(keys.map((k, i) => [k, i])), { mapSorter: () => 0 }) }))
        .filter(({ keys, bytes }) => !Buffer.from(bytes).equals(encodeCanonical(Object.fromEntries(keys.map((k, i) => [k, i])))))
        .map(({ bytes }) => bytes),
      // an integer in a longer form than needed: 0x18 nn, 0x19 nnnn, 0x1a ..., 0x1b ...
      fc.tuple(fc.nat(23), fc.constantFrom(0x18, 0x19, 0x1a, 0x1b)).map(([n, head]) => {
        const width = { 0x18: 1, 0x19: 2, 0x1a: 4, 0x1b: 8 }[head]!
        const out = new Uint8Array(1 + width)
        out[0] = head
        out[width] = n
        return out
      }),
      // an indefinite-length array, string or map
      fc.constantFrom(Uint8Array.of(0x9f, 0x01, 0xff), Uint8Array.of(0x7f, 0x61, 0x61, 0xff), Uint8Array.of(0xbf, 0x61, 0x61, 0x01, 0xff)),
      // a tag (bignum, date), undefined, a simple value
      fc.constantFrom(Uint8Array.of(0xc2, 0x41, 0x01), Uint8Array.of(0xc1, 0x01), Uint8Array.of(0xf7), Uint8Array.of(0xf0)),
      // the same key twice
      text.map(k => Buffer.concat([Uint8Array.of(0xa2), encode(k), Uint8Array.of(0x01), encode(k), Uint8Array.of(0x02)]))
    )
    fuzz(fc.property(variant, bytes => {
      rejects(() => decodeCanonical(bytes, CODE, 'the variant'), [CODE], bytes)
    }))
  })

  it('never lets a map key reach an object\'s prototype', () => {
    // a map whose keys are written by hand, so "__proto__" can be one of them
    const map = fc.uniqueArray(key, { maxLength: 5 }).chain(keys => fc.tuple(fc.constant(keys), fc.array(cborValue, { minLength: keys.length, maxLength: keys.length })))
      .map(([keys, values]) => {
        const pairs = keys.map((k, i) => [encode(k), encode(values[i])] as const)
          .sort(([a], [b]) => a.length - b.length || Buffer.compare(a, b))
        return Buffer.concat([Uint8Array.of(0xa0 + keys.length), ...pairs.flat()])
      })
    fuzz(fc.property(map, bytes => {
      rejectsOrValid(() => decodeCanonical(bytes, CODE, 'the map'), [CODE], value => {
        expect(Object.getPrototypeOf(value)).toBe(Object.prototype)
        expect(Buffer.from(encodeCanonical(value)).equals(bytes)).toBe(true)
      }, bytes)
    }))
  })

  it('refuses arrays and maps nested deeper than MAX_NESTING with the caller\'s code, never a stack overflow', () => {
    // up to 10 000 levels, evenly: past the depths where decoding still fitted on the stack and encoding
    // again did not (maps about 2 700-5 400 deep, arrays 6 500-8 000 on Node's default stack)
    const depths = fc.oneof(fc.integer({ min: 1, max: 2 * MAX_NESTING }), fc.noBias(fc.integer({ min: 1, max: 10_000 })))
    fuzz(fc.property(depths, fc.constantFrom(0x81, 0xa1), (depth, head) => {
      // [[[...0]]] or {"": {"": ... 0}}
      const unit = head === 0x81 ? [0x81] : [0xa1, 0x60]
      const bytes = new Uint8Array(depth * unit.length + 1)
      for (let i = 0; i < depth; i++) bytes.set(unit, i * unit.length)
      if (depth > MAX_NESTING) rejects(() => decodeCanonical(bytes, CODE, 'the nested value'), [CODE], bytes)
      else expect(encodeCanonical(decodeCanonical(bytes, CODE, 'the nested value'))).toEqual(bytes)
    }))
  })
})
