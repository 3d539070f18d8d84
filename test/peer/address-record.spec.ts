import { createHash } from 'node:crypto'
import nacl from 'tweetnacl'
import { describe, expect, it } from 'vitest'
import { codeOf } from '../helpers/errors.ts'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { encodeCanonical } from '../../src/peer/canonical.ts'
import { sign, type SigningDomain } from '../../src/peer/signing.ts'
import {
  createAddressRecord,
  parseAddressRecord,
  checkReplaces,
  dhtRecordKey,
  dhtRecordRules,
  DHT_RECORD_NAMESPACE,
  MAX_RECORD_BYTES,
  MAX_RECORD_ADDRS,
  MAX_CLOCK_SKEW_MS,
  type AddressRecord
} from '../../src/peer/address-record.ts'

/** Fixed keypairs so that failures reproduce. */
const alice = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(1))
const mallory = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(2))
const alicePeer = peerIdFromPublicKey(publicKeyFromRaw(alice.publicKey))
const NOW = 1_750_000_000_000
const ADDRS = ['/ip4/192.168.1.20/tcp/4001', '/ip4/127.0.0.1/tcp/4001']

function record (init: Partial<{ seq: number, time: number, addrs: string[], key: nacl.SignKeyPair }> = {}): AddressRecord {
  const key = init.key ?? alice
  return createAddressRecord({ secretKey: key.secretKey, publicKey: key.publicKey, addrs: init.addrs ?? ADDRS, seq: init.seq ?? 7, time: init.time ?? NOW })
}

/** Signs any body, valid or not, the way a record is signed. */
function envelope (body: Record<string, unknown>, signer = alice, domain: SigningDomain = 'address-record/1'): Uint8Array {
  const bodyBytes = encodeCanonical(body)
  return encodeCanonical({ body: bodyBytes, sig: sign(domain, bodyBytes, signer.secretKey) })
}

function body (fields: Record<string, unknown> = {}): Record<string, unknown> {
  return { v: 1, pub: alice.publicKey, addrs: ADDRS, seq: 7, t: NOW, ...fields }
}

describe('address records', () => {
  it('round-trips: what is signed is what is parsed, byte for byte', () => {
    const made = record()
    expect(made.peerId).toBe(alicePeer.toString())
    const parsed = parseAddressRecord(made.bytes, { subject: alicePeer.toString(), now: NOW })
    expect(parsed).toEqual(made)
    expect(Buffer.from(parsed.bytes).equals(Buffer.from(made.bytes))).toBe(true)
  })

  it('drops a trailing /p2p/<id> from addresses and caps their number', () => {
    const many = Array.from({ length: MAX_RECORD_ADDRS + 4 }, (_, i) => `/ip4/10.0.0.${i}/tcp/4001/p2p/${alicePeer.toString()}`)
    const made = record({ addrs: many })
    expect(made.addrs).toHaveLength(MAX_RECORD_ADDRS)
    expect(made.addrs[0]).toBe('/ip4/10.0.0.0/tcp/4001')
  })

  it('keeps relayed addresses whole: only a trailing /p2p/<id> goes, with or without one, and stripping twice changes nothing', () => {
    const relay = peerIdFromPublicKey(publicKeyFromRaw(mallory.publicKey)).toString()
    const circuit = `/ip4/7.7.0.10/tcp/4001/p2p/${relay}/p2p-circuit`
    const made = record({ addrs: [`${circuit}/p2p/${alicePeer.toString()}`, circuit] })
    expect(made.addrs).toEqual([circuit])
    // what the publisher hands over is already stripped once
    expect(record({ addrs: made.addrs }).addrs).toEqual([circuit])
  })

  it('refuses a record about someone else than the peer asked about', () => {
    const made = record({ key: mallory })
    expect(codeOf(() => parseAddressRecord(made.bytes, { subject: alicePeer.toString(), now: NOW }))).toBe('RECORD_WRONG_PEER')
  })

  it('refuses forgeries: a record for alice signed by mallory, an altered body, another domain, a malleated signature', () => {
    // mallory puts alice's key in the body and signs with her own
    expect(codeOf(() => parseAddressRecord(envelope(body(), mallory), { now: NOW }))).toBe('RECORD_BAD_SIGNATURE')
    // alice's genuine signature over another body (mallory's addresses)
    const genuine = record()
    const altered = encodeCanonical({ body: encodeCanonical(body({ addrs: ['/ip4/6.6.6.6/tcp/666'] })), sig: sign('address-record/1', encodeCanonical(body()), alice.secretKey) })
    expect(codeOf(() => parseAddressRecord(altered, { now: NOW }))).toBe('RECORD_BAD_SIGNATURE')
    // the same body signed for another record type
    expect(codeOf(() => parseAddressRecord(envelope(body(), alice, 'invite/1'), { now: NOW }))).toBe('RECORD_BAD_SIGNATURE')
    // S + L: tweetnacl would accept it
    const L = 2n ** 252n + 27742317777372353535851937790883648493n
    const decoded = { body: encodeCanonical(body()), sig: sign('address-record/1', encodeCanonical(body()), alice.secretKey) }
    let s = 0n
    for (let i = 31; i >= 0; i--) s = (s << 8n) | BigInt(decoded.sig[32 + i]!)
    let sl = s + L
    const malleated = Uint8Array.from(decoded.sig)
    for (let i = 0; i < 32; i++) { malleated[32 + i] = Number(sl & 0xffn); sl >>= 8n }
    const message = Buffer.concat([Buffer.from('kith/address-record/1\0'), createHash('sha256').update(decoded.body).digest()])
    expect(nacl.sign.detached.verify(message, malleated, alice.publicKey)).toBe(true)
    expect(codeOf(() => parseAddressRecord(encodeCanonical({ body: decoded.body, sig: malleated }), { now: NOW }))).toBe('RECORD_BAD_SIGNATURE')
    expect(codeOf(() => parseAddressRecord(genuine.bytes, { now: NOW }))).toBe('ok')
  })

  it('refuses replays: a record never replaces one with an equal or higher seq', () => {
    const current = record({ seq: 10 })
    expect(codeOf(() => checkReplaces(record({ seq: 10 }), current))).toBe('RECORD_STALE')
    expect(codeOf(() => checkReplaces(record({ seq: 9, time: NOW + 1000 }), current))).toBe('RECORD_STALE')
    expect(codeOf(() => checkReplaces(current, current))).toBe('RECORD_STALE')
    expect(codeOf(() => checkReplaces(record({ seq: 11 }), current))).toBe('ok')
    expect(codeOf(() => checkReplaces(record({ seq: 0 }), undefined))).toBe('ok')
  })

  it('refuses a record dated more than 5 minutes ahead, accepts one just inside', () => {
    expect(MAX_CLOCK_SKEW_MS).toBe(5 * 60 * 1000)
    expect(codeOf(() => parseAddressRecord(record({ time: NOW + MAX_CLOCK_SKEW_MS + 1 }).bytes, { now: NOW }))).toBe('RECORD_FUTURE')
    expect(codeOf(() => parseAddressRecord(record({ time: NOW + 365 * 86400_000 }).bytes, { now: NOW }))).toBe('RECORD_FUTURE')
    expect(codeOf(() => parseAddressRecord(record({ time: NOW + MAX_CLOCK_SKEW_MS }).bytes, { now: NOW }))).toBe('ok')
    // old records are fine: a friend who never moves signs rarely
    expect(codeOf(() => parseAddressRecord(record({ time: NOW - 365 * 86400_000 }).bytes, { now: NOW }))).toBe('ok')
  })

  it('refuses every truncation', () => {
    const bytes = record().bytes
    for (let n = 0; n < bytes.length; n++) {
      expect(codeOf(() => parseAddressRecord(bytes.subarray(0, n), { now: NOW })), `truncated to ${n}`).toBe('RECORD_MALFORMED')
    }
  })

  // a bit of every byte, the bit turning with the byte's place (every position every 8 bytes);
  // test/fuzz/address-record.spec.ts flips any bit of any record
  it('refuses a bit flip in every byte', () => {
    const bytes = record().bytes
    const seen = new Set<string>()
    for (let i = 0; i < bytes.length; i++) {
      const flipped = Uint8Array.from(bytes)
      flipped[i]! ^= 1 << (i % 8)
      const code = codeOf(() => parseAddressRecord(flipped, { now: NOW }))
      expect(['RECORD_MALFORMED', 'RECORD_BAD_SIGNATURE', 'RECORD_TOO_LARGE'], `byte ${i} bit ${i % 8}`).toContain(code)
      seen.add(code)
    }
    expect(seen).toContain('RECORD_BAD_SIGNATURE')
    expect(seen).toContain('RECORD_MALFORMED')
  })

  it('refuses oversize input before decoding it', () => {
    const big = new Uint8Array(MAX_RECORD_BYTES + 1) // not even CBOR: the size comes first
    expect(codeOf(() => parseAddressRecord(big, { now: NOW }))).toBe('RECORD_TOO_LARGE')
    // a signed body stuffed with a big field is too large as well
    expect(codeOf(() => parseAddressRecord(envelope(body({ pad: new Uint8Array(MAX_RECORD_BYTES) })), { now: NOW }))).toBe('RECORD_TOO_LARGE')
    // and too many or too long addresses can't be made
    expect(codeOf(() => record({ addrs: [`/dns4/${'a'.repeat(300)}.example/tcp/1`] }))).toBe('BAD_REQUEST')
    expect(codeOf(() => parseAddressRecord(envelope(body({ addrs: Array.from({ length: MAX_RECORD_ADDRS + 1 }, (_, i) => `/ip4/10.0.0.${i}/tcp/1`) })), { now: NOW }))).toBe('RECORD_MALFORMED')
  })

  it('refuses unknown versions, unknown fields, bad addresses and non-canonical encodings, even when signed', () => {
    expect(codeOf(() => parseAddressRecord(envelope(body({ v: 2 })), { now: NOW }))).toBe('UNSUPPORTED_VERSION')
    expect(codeOf(() => parseAddressRecord(envelope(body({ extra: 1 })), { now: NOW }))).toBe('RECORD_MALFORMED')
    expect(codeOf(() => parseAddressRecord(envelope(body({ addrs: ['not a multiaddr'] })), { now: NOW }))).toBe('RECORD_MALFORMED')
    expect(codeOf(() => parseAddressRecord(envelope(body({ addrs: [`/ip4/1.2.3.4/tcp/1/p2p/${alicePeer.toString()}`] })), { now: NOW }))).toBe('RECORD_MALFORMED')
    expect(codeOf(() => parseAddressRecord(envelope(body({ seq: -1 })), { now: NOW }))).toBe('RECORD_MALFORMED')
    expect(codeOf(() => parseAddressRecord(envelope(body({ seq: 1.5 })), { now: NOW }))).toBe('RECORD_MALFORMED')
    // map keys out of canonical order: the same content, other bytes
    const made = record()
    // { "body": h'00', "sig": h'00...' }: canonical order puts the shorter key "sig" first
    const reordered = Buffer.concat([Buffer.from([0xa2, 0x64]), Buffer.from('body'), Buffer.from([0x41, 0x00, 0x63]), Buffer.from('sig'), Buffer.from([0x58, 0x40]), Buffer.alloc(64)])
    expect(codeOf(() => parseAddressRecord(reordered, { now: NOW }))).toBe('RECORD_MALFORMED')
    expect(codeOf(() => parseAddressRecord(made.bytes, { now: NOW }))).toBe('ok')
  })

  it('parses a record of format version 1 made by an earlier build (fixture)', () => {
    const fixed = Buffer.from(FIXTURE_V1, 'base64')
    const parsed = parseAddressRecord(fixed, { subject: alicePeer.toString(), now: NOW })
    expect(parsed).toMatchObject({ addrs: ADDRS, seq: 7, time: NOW })
    expect(Buffer.from(record().bytes).toString('base64')).toBe(FIXTURE_V1) // signing is deterministic
  })
})

describe('address records in the DHT', () => {
  const key = dhtRecordKey(alicePeer.toMultihash().bytes)

  it('keys records under /kith-addr/<peer id>', () => {
    expect(Buffer.from(key.subarray(0, DHT_RECORD_NAMESPACE.length + 2)).toString()).toBe(`/${DHT_RECORD_NAMESPACE}/`)
  })

  it('validates by signature, subject and seq, and selects the highest seq', async () => {
    const { validators, selectors } = dhtRecordRules()
    const validate = validators[DHT_RECORD_NAMESPACE]!
    const select = selectors[DHT_RECORD_NAMESPACE]!
    await expect(validate(key, record({ seq: 5, time: Date.now() }).bytes)).resolves.toBeUndefined()
    // somebody else's record under alice's key
    await expect(validate(key, record({ key: mallory, time: Date.now() }).bytes)).rejects.toMatchObject({ code: 'RECORD_WRONG_PEER' })
    await expect(validate(key, envelope(body({ t: Date.now() }), mallory))).rejects.toMatchObject({ code: 'RECORD_BAD_SIGNATURE' })
    // once seq 9 was seen, older records can't be put back; equal is the same record again
    await expect(validate(key, record({ seq: 9, time: Date.now() }).bytes)).resolves.toBeUndefined()
    await expect(validate(key, record({ seq: 9, time: Date.now() }).bytes)).resolves.toBeUndefined()
    await expect(validate(key, record({ seq: 5, time: Date.now() }).bytes)).rejects.toMatchObject({ code: 'RECORD_STALE' })
    await expect(validate(new TextEncoder().encode('/pk/whatever'), record().bytes)).rejects.toMatchObject({ code: 'RECORD_MALFORMED' })
    // a node takes no record about itself from others
    const own = dhtRecordRules(alicePeer.toString()).validators[DHT_RECORD_NAMESPACE]!
    await expect(own(key, record({ seq: 50, time: Date.now() }).bytes)).rejects.toMatchObject({ code: 'RECORD_WRONG_PEER' })
    const candidates = [record({ seq: 3 }).bytes, new Uint8Array([1, 2, 3]), record({ seq: 12 }).bytes, record({ seq: 8 }).bytes, record({ seq: 99, key: mallory }).bytes]
    expect(select(key, candidates)).toBe(2)
  })
})

/** `record()` as signed by version 1: alice's key, ADDRS, seq 7, t NOW. */
const FIXTURE_V1 = 'omNzaWdYQFv8JLcj/5k/NqRN+TTVBTBFKrp7Q8VIBv27iY6V5iqhtzotqc7ke+KWzMQ8zkNFvM7UcD+BlK0f0GRTEe2iIQ5kYm9keVh1pWF0GwAAAZd0INwAYXYBY3B1Ylggiojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1xjc2VxB2VhZGRyc4J4Gi9pcDQvMTkyLjE2OC4xLjIwL3RjcC80MDAxdy9pcDQvMTI3LjAuMC4xL3RjcC80MDAx'
