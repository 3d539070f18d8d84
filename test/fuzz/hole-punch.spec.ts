import fc from 'fast-check'
import { describe, expect, it, beforeAll, afterAll } from 'vitest'
import { lpStream } from '@libp2p/utils'
import type { Connection, Stream } from '@libp2p/interface'
import { MAX_PUNCH_MESSAGE, PUNCH_VERSION, decodePunchMessage, encodePunchMessage, type PunchMessage } from '../../src/peer/hole-punch.ts'
import { encodeCanonical } from '../../src/peer/canonical.ts'
import { isSafeText } from '../../src/peer/text.ts'
import type { KithLibp2p } from '../../src/peer/node.ts'
import { learn, startNode } from '../helpers/chunks.ts'
import { anyText, cborBytes, mutateField } from './arbitraries.ts'
import { flipBit, fuzz, fuzzAsync, rejects, rejectsOrValid } from './budget.ts'

/**
 * Hole-punch messages (src/peer/hole-punch.ts): the codec, and the
 * responder's side of the exchange fed by a friend that speaks it wrongly.
 */
const CODES = ['PUNCH_MALFORMED', 'PUNCH_TOO_LARGE', 'UNSUPPORTED_VERSION'] as const

const endpoint = fc.record({
  ip: fc.oneof(fc.ipV4(), fc.ipV6()),
  port: fc.integer({ min: 1, max: 65535 })
})
const safe = (max: number, min = 0): fc.Arbitrary<string> => anyText(max, min).filter(isSafeText)
const message: fc.Arbitrary<PunchMessage> = fc.oneof(
  endpoint.map((e): PunchMessage => ({ v: PUNCH_VERSION, t: 'offer', ...e })),
  endpoint.map((e): PunchMessage => ({ v: PUNCH_VERSION, t: 'answer', ...e })),
  fc.record({ code: safe(64, 1), message: safe(160) }).map((r): PunchMessage => ({ v: PUNCH_VERSION, t: 'refuse', ...r })),
  fc.constant<PunchMessage>({ v: PUNCH_VERSION, t: 'go' })
).filter(m => encodeCanonical(m).length <= MAX_PUNCH_MESSAGE)
const encoded = message.map(encodePunchMessage)

/** A message that decodes passes the schema again, and is encoded exactly as it came. */
function wellFormed (bytes: Uint8Array): (m: PunchMessage) => void {
  return m => { expect(Buffer.from(encodePunchMessage(m)).equals(Buffer.from(bytes))).toBe(true) }
}

describe('punch messages, fuzzed', () => {
  it('round-trip: every message decodes to itself', () => {
    fuzz(fc.property(message, m => { expect(decodePunchMessage(encodePunchMessage(m))).toEqual(m) }))
  })

  it('refuses every truncation with PUNCH_MALFORMED', () => {
    fuzz(fc.property(encoded.chain(b => fc.nat(b.length - 1).map(n => b.subarray(0, n))), bytes => {
      rejects(() => decodePunchMessage(bytes), ['PUNCH_MALFORMED'], bytes)
    }))
  })

  it('after any single bit flip (the messages are not signed: Noise protects them), refuses with a punch code or decodes to a well-formed message', () => {
    fuzz(fc.property(encoded.chain(b => fc.nat(b.length * 8 - 1).map(bit => flipBit(b, bit))), bytes => {
      rejectsOrValid(() => decodePunchMessage(bytes), CODES, wellFormed(bytes), bytes)
    }))
  })

  it('on random bytes, random CBOR and messages with a damaged field, refuses with a punch code or decodes to a well-formed message', () => {
    const junk = fc.oneof(
      fc.uint8Array({ maxLength: MAX_PUNCH_MESSAGE }),
      cborBytes,
      message.chain(m => mutateField(m as unknown as Record<string, unknown>)).map(encodeCanonical)
    )
    fuzz(fc.property(junk, bytes => { rejectsOrValid(() => decodePunchMessage(bytes), CODES, wellFormed(bytes), bytes) }))
  })

  it('refuses anything over MAX_PUNCH_MESSAGE bytes with PUNCH_TOO_LARGE before decoding it', () => {
    fuzz(fc.property(encoded, fc.integer({ min: 1, max: 64 * 1024 }), (valid, extra) => {
      const bytes = Buffer.concat([valid, Buffer.alloc(MAX_PUNCH_MESSAGE + extra - valid.length)])
      rejects(() => decodePunchMessage(bytes), ['PUNCH_TOO_LARGE'], bytes.subarray(0, 64))
    }))
  })
})

describe('the punch responder, fuzzed over libp2p', () => {
  const PROTOCOL = '/kith/fuzz/punch/1.0.0'
  let responder: KithLibp2p
  let friend: KithLibp2p
  let outcome: Promise<unknown>
  let settle: (value: unknown) => void

  beforeAll(async () => {
    responder = await startNode()
    // as reachability.ts does, but without a public address, so nothing is ever dialled: it reads the offer and refuses
    await responder.handle(PROTOCOL, (stream: Stream, connection: Connection) => {
      responder.services.punch.respond(stream, connection, null).then(settle, err => { settle(err instanceof Error ? err : new Error(String(err))) })
    })
    friend = await startNode()
    await learn(friend, responder.peerId, responder.getMultiaddrs())
  })

  afterAll(async () => {
    await friend?.stop()
    await responder?.stop()
  })

  it('never throws and dials nothing, whatever comes: a valid offer is refused with a well-formed refuse, anything else ends the exchange', async () => {
    const sent = fc.oneof(
      encoded.map(b => ({ framed: true, bytes: b })),
      encoded.chain(b => fc.nat(b.length * 8 - 1).map(bit => ({ framed: true, bytes: flipBit(b, bit) }))),
      fc.uint8Array({ maxLength: 400 }).map(b => ({ framed: true, bytes: b })),
      // raw bytes, length prefix included: oversize announcements, broken varints, nothing at all
      fc.uint8Array({ maxLength: 20 }).map(b => ({ framed: false, bytes: b }))
    )
    await fuzzAsync(fc.asyncProperty(sent, async ({ framed, bytes }) => {
      outcome = new Promise(resolve => { settle = resolve })
      const stream = await friend.dialProtocol(responder.peerId, PROTOCOL)
      const lp = lpStream(stream, { maxDataLength: MAX_PUNCH_MESSAGE })
      if (framed) await lp.write(bytes)
      else stream.send(bytes)
      await stream.close().catch(() => {})
      // the responder must settle by itself: null, no connection, no error
      expect(await outcome).toBeNull()
      let offer: PunchMessage | undefined
      try {
        offer = decodePunchMessage(bytes)
      } catch {}
      if (framed && offer?.t === 'offer') {
        const answer = decodePunchMessage((await lp.read({ signal: AbortSignal.timeout(5000) })).subarray())
        expect(answer).toMatchObject({ t: 'refuse', code: 'PUNCH_REFUSED' })
      }
    }), 0.2)
  })
})
