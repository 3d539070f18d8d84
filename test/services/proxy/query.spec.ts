import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { KithError } from '../../../src/errors.ts'
import { parseProxyQuery } from '../../../src/services/proxy/query.ts'
import { parseRange, resolveRange } from '../../../src/services/proxy/range.ts'
import { checkCaller, isPrivateAddress } from '../../../src/services/proxy/guard.ts'
import { serviceFor } from '../../../src/services/proxy/content-kind.ts'

/** The proxy's parsers of outside input: the /proxy query, a client's Range, the caller's headers, addresses. */
const A = 'https://example.org/a.iso'
const B = 'http://mirror.example.net/pub/a.iso?x=1&y=2'
const enc = encodeURIComponent

describe('the /proxy query', () => {
  it('takes pairs in any order; several url= form one class in order; the last service and qos win', () => {
    const q = parseProxyQuery(`qos=10&url=${enc(A)}&service=streaming&url=${enc(B)}&url=${enc(A)}&service=min_rate_data&qos=50000`)
    expect(q.urls.map(u => u.href)).toEqual([A, B])
    expect(q.service).toBe('min_rate_data')
    expect(q.qos).toBe(50000)
    expect(parseProxyQuery(`url=${enc(A)}`)).toMatchObject({ service: null, qos: 0 })
  })

  it('keeps + as a plus and drops the fragment', () => {
    expect(parseProxyQuery(`url=${enc('https://e.org/a+b.bin#part')}`).urls[0]!.href).toBe('https://e.org/a+b.bin')
    expect(parseProxyQuery('url=https://e.org/a+b').urls[0]!.pathname).toBe('/a+b')
  })

  it('answers every truncation and every bit flip of a valid query with a query or a typed KithError', () => {
    const valid = `url=${enc(A)}&url=${enc(B)}&service=streaming&qos=123456`
    for (let n = 0; n <= valid.length; n++) expectParsedOrTyped(valid.slice(0, n))
    fc.assert(fc.property(fc.nat(valid.length - 1), fc.nat(7), (at, bit) => {
      const flipped = valid.slice(0, at) + String.fromCharCode(valid.charCodeAt(at) ^ (1 << bit)) + valid.slice(at + 1)
      expectParsedOrTyped(flipped)
    }), { numRuns: 500 })
    fc.assert(fc.property(fc.string({ maxLength: 200 }), raw => expectParsedOrTyped(raw)), { numRuns: 500 })
  })

  it('refuses an oversize query before splitting it', () => {
    expect(() => parseProxyQuery(`url=${enc(A)}&${'a'.repeat(70_000)}`)).toThrow(expect.objectContaining({ code: 'PROXY_BAD_QUERY' }))
  })
})

function expectParsedOrTyped (raw: string): void {
  try {
    const q = parseProxyQuery(raw)
    expect(q.urls.length).toBeGreaterThan(0)
    for (const u of q.urls) expect(['http:', 'https:']).toContain(u.protocol)
  } catch (err) {
    expect(err).toBeInstanceOf(KithError)
  }
}

describe('a client\'s Range', () => {
  it('reads one range of bytes and answers whole what it does not take', () => {
    expect(parseRange('bytes=0-')).toEqual({ start: 0, end: null, suffix: null })
    expect(parseRange('bytes=10-19')).toEqual({ start: 10, end: 19, suffix: null })
    expect(parseRange('bytes=-5')).toEqual({ start: null, end: null, suffix: 5 })
    for (const h of [undefined, 'bytes=0-1,5-6', 'items=0-1', 'bytes=5-1', 'bytes=-', 'bytes=x-']) expect(parseRange(h)).toBeNull()
    expect(resolveRange(parseRange('bytes=10-')!, 100)).toEqual([10, 99])
    expect(resolveRange(parseRange('bytes=90-200')!, 100)).toEqual([90, 99])
    expect(resolveRange(parseRange('bytes=-5')!, 100)).toEqual([95, 99])
    expect(resolveRange(parseRange('bytes=100-')!, 100)).toBeNull()
    expect(resolveRange(parseRange('bytes=-5')!, 0)).toBeNull()
  })
})

describe('the guards', () => {
  it('knows loopback, private, link-local and mapped addresses from public ones', () => {
    for (const a of ['127.0.0.1', '127.9.9.9', '10.1.2.3', '172.16.0.1', '172.31.255.255', '192.168.1.1', '169.254.169.254', '100.64.0.1', '0.0.0.0', '::1', '::', 'fd00::1', 'fe80::1', '::ffff:127.0.0.1', '::ffff:10.0.0.1', '224.0.0.1']) expect({ a, p: isPrivateAddress(a) }).toEqual({ a, p: true })
    for (const a of ['93.184.216.34', '172.32.0.1', '8.8.8.8', '2606:4700::1111', '::ffff:8.8.8.8', 'example.org']) expect({ a, p: isPrivateAddress(a) }).toEqual({ a, p: false })
  })

  it('lets a local program and the proxy\'s own page in, and nobody else', () => {
    expect(() => checkCaller({ host: '127.0.0.1:9900' }, 9900)).not.toThrow()
    expect(() => checkCaller({ host: 'localhost:9900', origin: 'http://localhost:9900', 'sec-fetch-site': 'same-origin' }, 9900)).not.toThrow()
    expect(() => checkCaller({ host: '127.0.0.1:9900', origin: 'http://localhost:9901' }, 9900)).toThrow(expect.objectContaining({ code: 'PROXY_CROSS_SITE' }))
    expect(() => checkCaller({}, 9900)).toThrow(expect.objectContaining({ code: 'PROXY_BAD_HOST' }))
    expect(() => checkCaller({ host: '[::1]:9900' }, 9900)).toThrow(expect.objectContaining({ code: 'PROXY_BAD_HOST' }))
  })

  it('decides streaming by extension, then by content type, unless the request said', () => {
    expect(serviceFor(null, new URL('http://e.org/v.MKV'), null)).toBe('streaming')
    expect(serviceFor(null, new URL('http://e.org/v'), 'audio/ogg; codecs=opus')).toBe('streaming')
    expect(serviceFor(null, new URL('http://e.org/a.iso'), 'application/octet-stream')).toBe('min_rate_data')
    expect(serviceFor('min_rate_data', new URL('http://e.org/v.mp4'), 'video/mp4')).toBe('min_rate_data')
  })
})
