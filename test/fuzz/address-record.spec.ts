import fc from 'fast-check'
import { describe, expect, it, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import {
  ADDRESS_RECORD_VERSION, MAX_CLOCK_SKEW_MS, MAX_RECORD_ADDRS, MAX_RECORD_BYTES, MAX_RECORD_TIME_MS, createAddressRecord, dhtRecordKey,
  dhtRecordRules, isRecordAddr, parseAddressRecord, type AddressRecord
} from '../../src/peer/address-record.ts'
import { encodeCanonical } from '../../src/peer/canonical.ts'
import { openDatabase, sublevel, type Database } from '../../src/peer/database.ts'
import { RecordStore } from '../../src/services/locate/record-store.ts'
import { isMultiaddr } from '../../src/trust/invite.ts'
import { anyText, cborBytes, keys, mutateField, multiaddrText, signFast, type Keys } from './arbitraries.ts'
import { flipBit, fuzz, fuzzAsync, rejects, rejectsAsync, rejectsOrValid } from './budget.ts'

/**
 * Signed address records (src/peer/address-record.ts): parsing, and the
 * sequence numbers that stop a replayed older record, in the record store
 * (src/services/locate/record-store.ts) and the DHT validator.
 */
const NOW = 1_750_000_000_000
const seq = fc.oneof(fc.nat(1000), fc.maxSafeNat())
const time = fc.integer({ min: 0, max: NOW + MAX_CLOCK_SKEW_MS })
const addrs = fc.uniqueArray(multiaddrText.filter(isRecordAddr), { maxLength: MAX_RECORD_ADDRS })

interface Made { keys: Keys, body: Record<string, unknown>, bytes: Uint8Array }

function signed (body: Record<string, unknown>, signer: Keys): Uint8Array {
  const bodyBytes = encodeCanonical(body)
  return encodeCanonical({ body: bodyBytes, sig: signFast('address-record/1', bodyBytes, signer) })
}

/** A valid record of a random peer, as createAddressRecord would sign it. */
const made: fc.Arbitrary<Made> = fc.record({ keys, addrs, seq, time }).map(r => {
  const body = { v: ADDRESS_RECORD_VERSION, pub: r.keys.publicKey, addrs: r.addrs, seq: r.seq, t: r.time }
  return { keys: r.keys, body, bytes: signed(body, r.keys) }
})

const PARSE_CODES = ['RECORD_MALFORMED', 'RECORD_BAD_SIGNATURE'] as const

/** What any accepted record must satisfy, whatever bytes it came from. */
function checkAccepted (record: AddressRecord): void {
  expect(record.addrs.length).toBeLessThanOrEqual(MAX_RECORD_ADDRS)
  for (const a of record.addrs) expect(isRecordAddr(a)).toBe(true)
  expect(Number.isSafeInteger(record.seq) && record.seq >= 0).toBe(true)
  expect(record.time).toBeLessThanOrEqual(NOW + MAX_CLOCK_SKEW_MS)
  expect(peerIdFromString(record.peerId).publicKey?.raw).toEqual(record.publicKey)
}

describe('address records, fuzzed', () => {
  it('round-trip: createAddressRecord signs what parseAddressRecord gives back, byte for byte', () => {
    fuzz(fc.property(fc.record({ keys, addrs, seq, time }), r => {
      const record = createAddressRecord({ secretKey: r.keys.secretKey, publicKey: r.keys.publicKey, addrs: r.addrs, seq: r.seq, time: r.time })
      const body = { v: ADDRESS_RECORD_VERSION, pub: r.keys.publicKey, addrs: r.addrs, seq: r.seq, t: r.time }
      expect(record.bytes).toEqual(signed(body, r.keys))
      expect(parseAddressRecord(record.bytes, { subject: r.keys.peerId, now: NOW })).toEqual(record)
    }), 0.2)
  })

  it('refuses every truncation with RECORD_MALFORMED', () => {
    fuzz(fc.property(made.chain(m => fc.nat(m.bytes.length - 1).map(n => m.bytes.subarray(0, n))), bytes => {
      rejects(() => parseAddressRecord(bytes, { now: NOW }), ['RECORD_MALFORMED'], bytes)
    }))
  })

  it('refuses any single bit flip', () => {
    fuzz(fc.property(made.chain(m => fc.nat(m.bytes.length * 8 - 1).map(bit => flipBit(m.bytes, bit))), bytes => {
      rejects(() => parseAddressRecord(bytes, { now: NOW }), PARSE_CODES, bytes)
    }))
  })

  it('refuses random bytes and random CBOR with RECORD_MALFORMED', () => {
    fuzz(fc.property(fc.oneof(fc.uint8Array({ maxLength: 600 }), cborBytes), bytes => {
      rejects(() => parseAddressRecord(bytes, { now: NOW }), ['RECORD_MALFORMED'], bytes)
    }))
  })

  it('refuses anything over MAX_RECORD_BYTES with RECORD_TOO_LARGE before decoding it', () => {
    // a valid record padded past the limit would be RECORD_MALFORMED if it were decoded first
    const big = fc.tuple(made, fc.integer({ min: 1, max: 4 * MAX_RECORD_BYTES }), fc.nat(255))
      .map(([m, extra, fill]) => Buffer.concat([m.bytes, Buffer.alloc(MAX_RECORD_BYTES + extra - m.bytes.length, fill)]))
    fuzz(fc.property(big, bytes => { rejects(() => parseAddressRecord(bytes, { now: NOW }), ['RECORD_TOO_LARGE'], bytes) }), 0.3)
  })

  it('refuses any validly signed body with a damaged field, or parses it into a valid record', () => {
    fuzz(fc.property(made.chain(m => mutateField(m.body).map(body => ({ m, body }))), ({ m, body }) => {
      rejectsOrValid(() => parseAddressRecord(signed(body, m.keys), { now: NOW }),
        ['RECORD_MALFORMED', 'RECORD_BAD_SIGNATURE', 'UNSUPPORTED_VERSION', 'RECORD_FUTURE'], checkAccepted, body)
    }))
  })

  it('refuses a validly signed record dated past what a Date can show (year 275760) as malformed, not with a RangeError', () => {
    // such a record was refused by formatting its date into RECORD_FUTURE's message, which threw RangeError
    const far = fc.integer({ min: MAX_RECORD_TIME_MS + 1, max: Number.MAX_SAFE_INTEGER })
    fuzz(fc.property(made, far, fc.option(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER })), (m, t, now) => {
      const bytes = signed({ ...m.body, t }, m.keys)
      rejects(() => parseAddressRecord(bytes, now === null ? {} : { now }), ['RECORD_MALFORMED'], bytes)
    }))
  })

  it('refuses a valid record about another peer than the one asked for, and one dated ahead of the clock', () => {
    fuzz(fc.property(made, keys, fc.integer({ min: 1, max: 2 ** 40 }), (m, other, ahead) => {
      rejects(() => parseAddressRecord(m.bytes, { subject: other.peerId, now: NOW }), ['RECORD_WRONG_PEER'])
      const t = m.body.t as number
      rejects(() => parseAddressRecord(m.bytes, { now: t - MAX_CLOCK_SKEW_MS - ahead }), ['RECORD_FUTURE'])
    }))
  })
})

describe('addresses from outside, fuzzed', () => {
  /** Multiaddr text with one character changed, dropped or added: near misses of real addresses. */
  const nearMiss = fc.tuple(multiaddrText, fc.nat(), fc.constantFrom('change', 'drop', 'add'), fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }))
    .map(([text, at, how, c]) => {
      const i = at % (text.length + 1)
      return how === 'drop' ? text.slice(0, i) + text.slice(i + 1) : text.slice(0, i) + c + text.slice(how === 'change' ? i + 1 : i)
    })

  it('takes any text as an address in normal form or refuses it, never throws (records and invites)', () => {
    fuzz(fc.property(fc.oneof(nearMiss, anyText(80), multiaddrText), text => {
      for (const accepts of [isRecordAddr, isMultiaddr]) {
        let ok: boolean
        try {
          ok = accepts(text)
        } catch (err) {
          throw new Error(`${accepts.name}(${JSON.stringify(text)}) threw ${String(err)}`)
        }
        if (ok) expect(multiaddr(text).toString()).toBe(text)
      }
    }))
  })
})

describe('replayed address records, fuzzed', () => {
  let dir: string
  let db: Database
  let level: ReturnType<typeof sublevel<any>>

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kith-fuzz-records-'))
    db = await openDatabase(join(dir, 'db'))
    level = sublevel(db, 'records')
  })

  afterAll(async () => {
    await db?.close()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  /** Two records of one peer, the first with the higher or equal seq. */
  const pair = fc.tuple(keys, addrs, addrs, fc.nat(1000), fc.nat(1000)).map(([k, a, b, high, below]) => {
    const make = (s: number, at: string[]): AddressRecord =>
      parseAddressRecord(signed({ v: ADDRESS_RECORD_VERSION, pub: k.publicKey, addrs: at, seq: s, t: NOW }, k), { now: NOW })
    return { newer: make(high + below, a), older: make(high, b) }
  })

  it('the record store keeps the newer record: an older or equal seq is RECORD_STALE and changes nothing', async () => {
    await fuzzAsync(fc.asyncProperty(pair, async ({ newer, older }) => {
      const store = new RecordStore(level)
      try {
        await store.offer(newer, 'fuzz')
        await rejectsAsync(async () => { await store.offer(older, 'replay') }, ['RECORD_STALE'])
        await rejectsAsync(async () => { await store.offer(newer, 'replay') }, ['RECORD_STALE'])
        const kept = (await store.entry(newer.peerId))?.record.bytes
        expect(kept !== undefined && Buffer.from(kept).equals(newer.bytes)).toBe(true)
      } finally {
        await level.del(newer.peerId)
      }
    }), 0.5)
  })

  it('the DHT validator refuses a record older than one it saw valid, and the selector picks the highest seq', async () => {
    await fuzzAsync(fc.asyncProperty(pair, async ({ newer, older }) => {
      const rules = dhtRecordRules()
      const key = dhtRecordKey(peerIdFromString(newer.peerId).toMultihash().bytes)
      const validate = rules.validators['kith-addr']!
      await validate(key, newer.bytes)
      if (older.seq < newer.seq) await rejectsAsync(async () => { await validate(key, older.bytes) }, ['RECORD_STALE'])
      expect(rules.selectors['kith-addr']!(key, [older.bytes, newer.bytes])).toBe(older.seq < newer.seq ? 1 : 0)
    }), 0.5)
  })

  it('the DHT validator refuses any bytes under a key with a typed error, never another exception', async () => {
    const rules = dhtRecordRules()
    const validate = rules.validators['kith-addr']!
    const keyBytes = fc.oneof(fc.uint8Array({ maxLength: 60 }), keys.map(k => dhtRecordKey(peerIdFromString(k.peerId).toMultihash().bytes)))
    const value = fc.oneof(fc.uint8Array({ maxLength: 300 }), made.chain(m => fc.nat(m.bytes.length * 8 - 1).map(bit => flipBit(m.bytes, bit))))
    await fuzzAsync(fc.asyncProperty(keyBytes, value, async (key, bytes) => {
      await rejectsAsync(async () => { await validate(key, bytes) }, undefined, bytes)
      expect(rules.selectors['kith-addr']!(key, [bytes])).toBe(0)
    }))
  })
})
