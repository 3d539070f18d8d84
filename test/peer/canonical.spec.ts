import { describe, expect, it } from 'vitest'
import { decodeCanonical, decodeCanonicalList, encodeCanonical, encodeCanonicalList } from '../../src/peer/canonical.ts'
import { KithError, isErrorCode, type ErrorCode } from '../../src/errors.ts'

const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'))
const toHex = (b: Uint8Array): string => Buffer.from(b).toString('hex')
/** A CBOR text string header + bytes, for strings shorter than 24 bytes. */
const tstr = (s: string): string => (0x60 + Buffer.byteLength(s)).toString(16) + Buffer.from(s).toString('hex')

function expectRejected (bytes: Uint8Array, code: ErrorCode = 'INVITE_MALFORMED', what = 'the test record'): KithError {
  let caught: unknown
  try {
    decodeCanonical(bytes, code, what)
  } catch (err) {
    caught = err
  }
  expect(caught, `0x${toHex(bytes)} should be rejected`).toBeInstanceOf(KithError)
  const err = caught as KithError
  expect(isErrorCode(err.code)).toBe(true)
  expect(err.code).toBe(code)
  expect(err.message).toContain(what)
  return err
}

describe('encodeCanonical / decodeCanonical round-trip', () => {
  const values: Array<[string, unknown]> = [
    ['zero', 0],
    ['small int', 23],
    ['one-byte int', 24],
    ['two-byte int', 256],
    ['four-byte int', 65536],
    ['eight-byte int', 2 ** 40],
    ['max safe int', Number.MAX_SAFE_INTEGER],
    ['negative ints', [-1, -24, -25, -256, -257, -(2 ** 40)]],
    ['floats', [1.5, -0.25, 3.141592653589793, 1e300]],
    ['booleans and null', [true, false, null]],
    ['strings', ['', 'a', 'ünïcødé ✓', 'x'.repeat(300)]],
    ['bytes', new Uint8Array([0, 1, 2, 255])],
    ['empty bytes', new Uint8Array(0)],
    ['nested', { b: [1, { c: new Uint8Array(3) }], a: 'x', aa: [], z: {} }]
  ]

  for (const [name, value] of values) {
    it(name, () => {
      const bytes = encodeCanonical(value)
      expect(decodeCanonical(bytes, 'BAD_REQUEST', 'value')).toEqual(value)
      // and encoding is a fixed point
      expect(toHex(encodeCanonical(decodeCanonical(bytes, 'BAD_REQUEST', 'value')))).toBe(toHex(bytes))
    })
  }

  it('encodes maps the same whatever the key insertion order', () => {
    const one = encodeCanonical({ b: 1, aa: 2, a: 3, c: { y: 1, x: 2 } })
    const two = encodeCanonical({ c: { x: 2, y: 1 }, a: 3, aa: 2, b: 1 })
    expect(toHex(one)).toBe(toHex(two))
  })

  it('orders map keys shortest first, then bytewise (RFC 7049 canonical)', () => {
    expect(toHex(encodeCanonical({ aa: 1, b: 2, a: 3 })))
      .toBe('a3' + tstr('a') + '03' + tstr('b') + '02' + tstr('aa') + '01')
  })

  it('encodes integers in their shortest form', () => {
    expect(toHex(encodeCanonical(23))).toBe('17')
    expect(toHex(encodeCanonical(24))).toBe('1818')
    expect(toHex(encodeCanonical(255))).toBe('18ff')
    expect(toHex(encodeCanonical(256))).toBe('190100')
    expect(toHex(encodeCanonical(-1))).toBe('20')
  })

  it('accepts hand-written canonical bytes', () => {
    expect(decodeCanonical(hex('a2 6161 01 6162 02'), 'BAD_REQUEST', 'x')).toEqual({ a: 1, b: 2 })
    expect(decodeCanonical(hex('83 01 18 18 19 0100'), 'BAD_REQUEST', 'x')).toEqual([1, 24, 256])
  })
})

describe('decodeCanonical rejects non-canonical encodings', () => {
  describe('indefinite lengths', () => {
    const cases: Array<[string, string]> = [
      ['array', '9f 01 02 ff'],
      ['empty array', '9f ff'],
      ['map', 'bf 6161 01 ff'],
      ['byte string', '5f 42 0102 ff'],
      ['text string', '7f 61 61 ff'],
      ['nested inside a definite array', '81 9f ff']
    ]
    for (const [name, bytes] of cases) {
      it(name, () => {
        expectRejected(hex(bytes))
      })
    }
  })

  describe('unsorted map keys', () => {
    it('bytewise out of order', () => {
      const err = expectRejected(hex('a2' + tstr('b') + '01' + tstr('a') + '02'))
      expect(err.message).toMatch(/canonical/)
    })

    it('bytewise order that is not length-first order', () => {
      // "aa" < "b" bytewise, but canonical order puts the shorter key first
      expectRejected(hex('a2' + tstr('aa') + '01' + tstr('b') + '02'))
      expect(decodeCanonical(hex('a2' + tstr('b') + '02' + tstr('aa') + '01'), 'BAD_REQUEST', 'x')).toEqual({ aa: 1, b: 2 })
    })

    it('in a nested map', () => {
      expectRejected(hex('a1' + tstr('m') + 'a2' + tstr('y') + '01' + tstr('x') + '02'))
    })

    it('in a map inside an array', () => {
      expectRejected(hex('82 01 a2' + tstr('z') + '01' + tstr('a') + '02'))
    })
  })

  describe('non-minimal integers', () => {
    const cases: Array<[string, string]> = [
      ['0 in one extra byte', '18 00'],
      ['1 in one extra byte', '18 01'],
      ['23 in one extra byte', '18 17'],
      ['24 in two bytes', '19 0018'],
      ['255 in two bytes', '19 00ff'],
      ['256 in four bytes', '1a 00000100'],
      ['65536 in eight bytes', '1b 0000000000010000'],
      ['-1 in one extra byte', '38 00'],
      ['-25 in two bytes', '39 0018'],
      ['a non-minimal array length', '98 01 01'],
      ['a non-minimal map length', 'b8 01' + tstr('a') + '01'],
      ['a non-minimal text length', '78 01 61'],
      ['a non-minimal byte string length', '58 01 00'],
      ['a non-minimal integer inside a map', 'a1' + tstr('a') + '18 01']
    ]
    for (const [name, bytes] of cases) {
      it(name, () => {
        expectRejected(hex(bytes))
      })
    }
  })

  describe('duplicate map keys', () => {
    it('the same key twice', () => {
      expectRejected(hex('a2' + tstr('a') + '01' + tstr('a') + '02'))
    })

    it('the same key twice with the same value', () => {
      expectRejected(hex('a2' + tstr('a') + '01' + tstr('a') + '01'))
    })

    it('in a nested map', () => {
      expectRejected(hex('a1' + tstr('m') + 'a2' + tstr('k') + '01' + tstr('k') + '02'))
    })
  })

  describe('other ambiguity', () => {
    const cases: Array<[string, string]> = [
      ['an integer written as a half float (1.0)', 'f9 3c00'],
      ['an integer written as a double (2.0)', 'fb 4000000000000000'],
      ['a float wider than it needs (1.5 as a double)', 'fb 3ff8000000000000'],
      ['undefined', 'f7'],
      ['an integer beyond the safe range', '1b ffffffffffffffff'],
      ['a negative integer beyond the safe range', '3b ffffffffffffffff'],
      ['a tag', 'c1 00'],
      ['a non-string map key', 'a1 01 01'],
      ['invalid UTF-8 in a text string', '61 ff'],
      ['trailing bytes after the value', '01 02'],
      ['empty input', ''],
      ['a truncated array', '82 01'],
      ['a truncated byte string', '44 0102'],
      ['a reserved additional-info value', '1c'],
      ['a lone break byte', 'ff']
    ]
    for (const [name, bytes] of cases) {
      it(name, () => {
        expectRejected(hex(bytes))
      })
    }
  })

  it('rejects every strict prefix of a real encoding', () => {
    const bytes = encodeCanonical({ v: 1, name: 'alice', list: [1, 2, 3], data: new Uint8Array(40).fill(7) })
    for (let length = 0; length < bytes.length; length++) {
      expectRejected(bytes.subarray(0, length))
    }
  })

  it('uses whatever error code the caller gives', () => {
    const bad = hex('9f ff')
    const codes: ErrorCode[] = ['INVITE_MALFORMED', 'BAD_REQUEST', 'PROTOCOL_VIOLATION', 'DATABASE_CORRUPT']
    for (const code of codes) {
      const err = expectRejected(bad, code, 'the manifest')
      expect(err.message).toMatch(/^the manifest /)
    }
    // the same for the re-encode check
    for (const code of codes) {
      expectRejected(hex('f9 3c00'), code, 'the address record')
    }
  })
})

describe('a map with one long list, item by item', () => {
  it('encodes the same bytes as the whole map, and decodes them to the same fields and items', () => {
    // each length of the list's header: in its byte, 1, 2 and 4 more bytes; and 1,000 items of
    // 300-odd bytes, whose encodings are joined in several runs
    for (const count of [0, 23, 24, 255, 256, 1000, 65_536]) {
      const items = Array.from({ length: count }, (_, i) => count < 300 ? { p: `f${i}`, s: i } : count === 1000 ? { b: new Uint8Array(300).fill(i) } : i % 24)
      const fields = { v: 2, at: 5, name: 'n' }
      const bytes = encodeCanonicalList(fields, 'entries', items)
      expect(Buffer.from(bytes).equals(Buffer.from(encodeCanonical({ ...fields, entries: items }))), `${count} items`).toBe(true)
      const seen: unknown[] = []
      let started: [Record<string, unknown>, number] | undefined
      const rest = decodeCanonicalList(bytes, 'MANIFEST_MALFORMED', 'the test map', 'entries', {
        start: (before, n) => { started = [{ ...before }, n] },
        item: (item) => { seen.push(item) }
      })
      expect(started).toEqual([fields, count])
      expect(rest).toEqual(fields)
      expect(seen.length).toBe(count)
      expect(Buffer.from(encodeCanonical(seen)).equals(Buffer.from(encodeCanonical(items)))).toBe(true)
    }
  })

  it('refuses a list key that would not end the map', () => {
    expect(() => encodeCanonicalList({ zzzzzzzz: 1 }, 'entries', [])).toThrow(/last key/)
  })
})
