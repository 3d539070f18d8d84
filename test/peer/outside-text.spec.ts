import nacl from 'tweetnacl'
import { describe, expect, it } from 'vitest'
import { codeOf } from '../helpers/errors.ts'
import { encodeCanonical, decodeCanonical } from '../../src/peer/canonical.ts'
import { sign } from '../../src/peer/signing.ts'
import { failureSchema, MAX_FAILURE_MESSAGE } from '../../src/peer/request-response.ts'
import { cleanText } from '../../src/peer/text.ts'
import { parseAddressRecord } from '../../src/peer/address-record.ts'
import { decodePunchMessage } from '../../src/peer/hole-punch.ts'
import { parseInvite, INVITE_VERSION } from '../../src/trust/invite.ts'
import { redeemRequestSchema, redeemResponseSchema } from '../../src/trust/redeem.ts'
import { checkLabel } from '../../src/trust/friends.ts'
import { listResponse } from '../../src/services/files/files-protocol.ts'
import { responseSchema as dialBackResponse } from '../../src/services/reachability.ts'
import { decodeResponse, encodeResponse, STATUS } from '../../src/transfer/chunk-protocol.ts'

/**
 * Every parser that takes text from another node refuses characters that act
 * on a terminal (src/peer/text.ts): display names in invites and redeem
 * messages, share names in listings, messages and codes in failure answers,
 * addresses (a DNS name may hold anything), punch refusals, friend labels.
 * Manifests (share names, paths) are checked in test/transfer/manifest.spec.ts.
 */
const NASTY: Array<[string, string]> = [
  ['an ESC sequence', 'al\u001b[2Jice'],
  ['a carriage return', 'alice\rmallory'],
  ['DEL', 'alice\u007f'],
  ['a C1 CSI', 'alice\u009b31m'],
  ['a bidi override', 'alice\u202eecila'],
  ['a bidi isolate', 'alice\u2066x\u2069'],
  ['a bidi mark', 'alice\u061c'],
  ['a zero-width space', 'ali\u200bce'],
  ['a tag character', 'alice\u{e0041}'],
  ['a line separator', 'alice\u2028bob']
]

const keys = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(7))

/** The bytes a peer would send: canonical CBOR, decoded as the receiver does. */
function wire (value: unknown): unknown {
  return decodeCanonical(encodeCanonical(value), 'PROTOCOL_VIOLATION', 'the message')
}

function invite (fields: Record<string, unknown>): string {
  const body = {
    v: INVITE_VERSION,
    pub: keys.publicKey,
    name: 'alice',
    addrs: ['/ip4/192.0.2.10/tcp/4001'],
    nbf: 1_750_000_000,
    exp: 1_750_100_000,
    secret: new Uint8Array(32).fill(0x5e),
    uses: 1,
    grants: ['files'],
    ...fields
  }
  const bodyBytes = encodeCanonical(body)
  const b64 = Buffer.from(encodeCanonical({ body: bodyBytes, sig: sign('invite/1', bodyBytes, keys.secretKey) })).toString('base64')
  return ['-----BEGIN KITH INVITE-----', ...(b64.match(/.{1,64}/g) ?? []), '-----END KITH INVITE-----', ''].join('\n')
}

const listing = { id: 'ab'.repeat(32), name: 'photos', version: 1, size: 10, files: 1, chunks: 1, updated: '2025-01-01T00:00:00.000Z' }
const redeemRequest = { v: 1, id: '0123456789abcdef', proof: new Uint8Array(32), name: 'bob', addrs: ['/ip4/192.0.2.7/tcp/4001'], grants: ['files'] }

describe('text from other nodes', () => {
  it('the baselines are accepted', () => {
    expect(parseInvite(invite({})).name).toBe('alice')
    expect(redeemRequestSchema.safeParse(wire(redeemRequest)).success).toBe(true)
    expect(redeemResponseSchema.safeParse(wire({ v: 1, ok: true, name: 'alice', grants: ['files'] })).success).toBe(true)
    expect(failureSchema(1).safeParse(wire({ v: 1, ok: false, code: 'SHARE_UNKNOWN', message: 'no such share' })).success).toBe(true)
    expect(listResponse.safeParse(wire({ v: 1, ok: true, shares: [listing] })).success).toBe(true)
    expect(dialBackResponse.safeParse(wire({ v: 1, ok: true, results: [{ addr: '/dns4/alice.example/tcp/1', ok: true }] })).success).toBe(true)
    expect(decodePunchMessage(encodeCanonical({ v: 1, t: 'refuse', code: 'PUNCH_REFUSED', message: 'not now' })).t).toBe('refuse')
    expect(checkLabel('alice')).toBe('alice')
  })

  for (const [what, text] of NASTY) {
    describe(`with ${what}`, () => {
      it('an invite\'s display name or address is refused (INVITE_MALFORMED)', () => {
        expect(codeOf(() => parseInvite(invite({ name: text })))).toBe('INVITE_MALFORMED')
        expect(codeOf(() => parseInvite(invite({ addrs: [`/dns4/${text}/tcp/1`] })))).toBe('INVITE_MALFORMED')
      })

      it('a redeem request\'s name or address, and a redeem answer\'s name or message, are refused', () => {
        expect(redeemRequestSchema.safeParse(wire({ ...redeemRequest, name: text })).success).toBe(false)
        expect(redeemRequestSchema.safeParse(wire({ ...redeemRequest, addrs: [`/dns4/${text}/tcp/1`] })).success).toBe(false)
        expect(redeemResponseSchema.safeParse(wire({ v: 1, ok: true, name: text, grants: [] })).success).toBe(false)
        expect(redeemResponseSchema.safeParse(wire({ v: 1, ok: false, code: 'INVITE_USED', message: text })).success).toBe(false)
      })

      it('a failure answer (files, locate, reach, redeem) with it in its message or code is refused', () => {
        expect(failureSchema(1).safeParse(wire({ v: 1, ok: false, code: 'SHARE_UNKNOWN', message: text })).success).toBe(false)
        expect(failureSchema(1).safeParse(wire({ v: 1, ok: false, code: text, message: 'no' })).success).toBe(false)
      })

      it('a files listing with it in a share name or date is refused', () => {
        expect(listResponse.safeParse(wire({ v: 1, ok: true, shares: [{ ...listing, name: text }] })).success).toBe(false)
        expect(listResponse.safeParse(wire({ v: 1, ok: true, shares: [{ ...listing, updated: text }] })).success).toBe(false)
      })

      it('a dial-back result address, a signed address record, a punch refusal and a friend label are refused', () => {
        expect(dialBackResponse.safeParse(wire({ v: 1, ok: true, results: [{ addr: `/dns4/${text}/tcp/1`, ok: true }] })).success).toBe(false)
        const body = { v: 1, pub: keys.publicKey, addrs: [`/dns4/${text}/tcp/1`], seq: 1, t: 1_750_000_000_000 }
        const bodyBytes = encodeCanonical(body)
        const signed = encodeCanonical({ body: bodyBytes, sig: sign('address-record/1', bodyBytes, keys.secretKey) })
        expect(codeOf(() => parseAddressRecord(signed, { now: 1_750_000_000_000 }))).toBe('RECORD_MALFORMED')
        expect(codeOf(() => decodePunchMessage(encodeCanonical({ v: 1, t: 'refuse', code: 'PUNCH_REFUSED', message: text })))).toBe('PUNCH_MALFORMED')
        expect(codeOf(() => checkLabel(text))).toBe('BAD_REQUEST')
      })

      it('what kith sends is cleaned first, so its own failure answers always parse', () => {
        const message = cleanText(`no friend is called ${text}`, MAX_FAILURE_MESSAGE)
        expect(failureSchema(1).safeParse(wire({ v: 1, ok: false, code: 'FRIEND_UNKNOWN', message })).success).toBe(true)
      })

      it('a chunk ERROR frame (its layout frozen, so it always reads) comes out cleaned', () => {
        const frame = encodeResponse({ type: 'error', status: STATUS.BUSY, message: 'x' })
        const body = Buffer.concat([Buffer.from(frame[0]!), Buffer.from(frame[1]!), Buffer.from(text, 'utf8')])
        const decoded = decodeResponse(body)
        expect(decoded).toMatchObject({ type: 'error', status: STATUS.BUSY })
        expect(decoded.type === 'error' && /[\p{Cc}\u202e\u2066\u061c\u200b\u{e0041}\u2028]/u.test(decoded.message)).toBe(false)
      })
    })
  }
})
