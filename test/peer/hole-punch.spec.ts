import { describe, expect, it } from 'vitest'
import { encode } from 'cborg'
import { decodePunchMessage, encodePunchMessage, simultaneousOpen, MAX_PUNCH_MESSAGE, PUNCH_VERSION, type PunchMessage } from '../../src/peer/hole-punch.ts'
import { KithError, type ErrorCode } from '../../src/errors.ts'

function rejected (bytes: Uint8Array): KithError {
  let caught: unknown
  try {
    decodePunchMessage(bytes)
  } catch (err) {
    caught = err
  }
  expect(caught, `0x${Buffer.from(bytes).toString('hex')} should be rejected`).toBeInstanceOf(KithError)
  return caught as KithError
}

const PARSER_CODES: ErrorCode[] = ['PUNCH_MALFORMED', 'PUNCH_TOO_LARGE', 'UNSUPPORTED_VERSION']

const messages: PunchMessage[] = [
  { v: PUNCH_VERSION, t: 'offer', ip: '7.7.1.2', port: 41234 },
  { v: PUNCH_VERSION, t: 'answer', ip: '2001:db8::1', port: 1 },
  { v: PUNCH_VERSION, t: 'refuse', code: 'PUNCH_REFUSED', message: 'I do not know my public address yet' },
  { v: PUNCH_VERSION, t: 'go' }
]

describe('punch messages', () => {
  it('round-trip', () => {
    for (const m of messages) expect(decodePunchMessage(encodePunchMessage(m))).toEqual(m)
  })

  it('every truncation is refused with a typed error', () => {
    for (const m of messages) {
      const bytes = encodePunchMessage(m)
      for (let n = 0; n < bytes.length; n++) {
        const err = rejected(bytes.subarray(0, n))
        expect(err.code).toBe('PUNCH_MALFORMED')
      }
    }
  })

  // a bit of every byte, the bit turning with the byte's place (every position every 8 bytes);
  // test/fuzz/hole-punch.spec.ts flips any bit of any message
  it('a bit flip in every byte is refused or still a well-formed message, never a crash', () => {
    for (const m of messages) {
      const bytes = encodePunchMessage(m)
      for (let i = 0; i < bytes.length; i++) {
        const flipped = Uint8Array.from(bytes)
        flipped[i]! ^= 1 << (i % 8)
        let out: PunchMessage | undefined
        try {
          out = decodePunchMessage(flipped)
        } catch (err) {
          expect(err).toBeInstanceOf(KithError)
          expect(PARSER_CODES).toContain((err as KithError).code)
          continue
        }
        // a flip that still parses (a changed port or IP digit) gives a message that passes the schema again
        expect(decodePunchMessage(encodePunchMessage(out))).toEqual(out)
      }
    }
  })

  it('oversize input is refused before it is decoded', () => {
    const big = new Uint8Array(MAX_PUNCH_MESSAGE + 1)
    expect(rejected(big).code).toBe('PUNCH_TOO_LARGE')
    expect(() => encodePunchMessage({ v: PUNCH_VERSION, t: 'refuse', code: 'X'.repeat(64), message: 'y'.repeat(300) } as PunchMessage)).toThrow(KithError)
  })

  it('refuses other versions, unknown types, extra fields, bad addresses and ports', () => {
    expect(rejected(encode({ v: 2, t: 'go' })).code).toBe('UNSUPPORTED_VERSION')
    const bad: unknown[] = [
      { v: PUNCH_VERSION, t: 'hello' },
      { v: PUNCH_VERSION, t: 'go', extra: 1 },
      { v: PUNCH_VERSION, t: 'offer', ip: 'not-an-ip', port: 4001 },
      { v: PUNCH_VERSION, t: 'offer', ip: '7.7.1.2', port: 0 },
      { v: PUNCH_VERSION, t: 'offer', ip: '7.7.1.2', port: 65536 },
      { v: PUNCH_VERSION, t: 'offer', ip: '7.7.1.2', port: 1.5 },
      { v: PUNCH_VERSION, t: 'offer', ip: '7.7.1.2' },
      { v: PUNCH_VERSION, t: 'refuse', code: '', message: 'x' },
      { t: 'go' },
      [PUNCH_VERSION, 'go'],
      'go',
      null
    ]
    for (const value of bad) expect(rejected(encode(value)).code).toBe('PUNCH_MALFORMED')
  })

  it('refuses non-canonical CBOR', () => {
    // { "t": "go", "v": 1 } with the keys out of canonical order
    const unsorted = Uint8Array.from(Buffer.from('a2617601617462676f', 'hex'))
    expect(rejected(unsorted).code).toBe('PUNCH_MALFORMED')
  })
})

// (the simultaneous open itself is tested where it can be: between NATs in test/integration/nat.spec.ts;
// on loopback the two SYNs would have to cross within microseconds)
describe('simultaneousOpen', () => {
  it('gives up with PUNCH_FAILED when nobody answers', async () => {
    const { createServer } = await import('node:net')
    const port = await new Promise<number>(resolve => {
      const server = createServer().listen(0, '127.0.0.1', () => {
        const p = (server.address() as { port: number }).port
        server.close(() => { resolve(p) })
      })
    })
    // nothing listens on port 9 of loopback: every attempt is refused until the window ends
    const err = await simultaneousOpen({ ip: '127.0.0.1', port: 9 }, port, AbortSignal.timeout(5_000), 300).catch(e => e)
    expect(err).toBeInstanceOf(KithError)
    expect((err as KithError).code).toBe('PUNCH_FAILED')
  })
})
