import fc from 'fast-check'
import type { z } from 'zod'
import { describe, expect, it } from 'vitest'
import { Uint8ArrayList } from 'uint8arraylist'
import { encodeCanonical } from '../../src/peer/canonical.ts'
import { BandwidthScheduler } from '../../src/transfer/scheduler/index.ts'
import {
  MAX_AUDIT_CHALLENGES, MAX_BATCH_IDS, MAX_MANY_BLOBS, MAX_MANY_BYTES, decodeHeader, readBody, requestSchema, responseSchemas, signRequest, signedBody, verifyRequest,
  type Frames
} from '../../src/services/backup/wire.ts'
import { cborBytes, keys, mutateField } from './arbitraries.ts'
import { fuzz, fuzzAsync, rejects, rejectsAsync, rejectsOrValid, withFlip } from './budget.ts'

/**
 * The backup protocol's messages (src/services/backup/wire.ts): every request
 * a host can be sent decodes to a valid request or is refused with
 * PROTOCOL_VIOLATION, whatever its bytes; signed requests bind op, host,
 * counter and subject; bodies never run past what their header announced.
 */
const hexId = fc.uint8Array({ minLength: 32, maxLength: 32 }).map(b => Buffer.from(b).toString('hex'))
const ids = fc.array(hexId, { minLength: 1, maxLength: 8 })
const counter = fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER })
const sig = fc.uint8Array({ minLength: 64, maxLength: 64 })

const request: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
  fc.constant({ v: 1, op: 'usage' }),
  ids.map(i => ({ v: 1, op: 'has', ids: i })),
  fc.tuple(hexId, fc.integer({ min: 29, max: 4 * 1024 * 1024 + 29 })).map(([id, size]) => ({ v: 1, op: 'put', id, size })),
  hexId.map(id => ({ v: 1, op: 'get', id })),
  fc.tuple(ids, counter, sig).map(([i, c, s]) => ({ v: 1, op: 'remove', ids: i, counter: c, sig: s })),
  fc.tuple(fc.option(hexId), fc.integer({ min: 1, max: 1000 })).map(([after, limit]) => ({ v: 1, op: 'list', after, limit })),
  fc.array(fc.record({ id: hexId, leaf: fc.nat(1023) }), { minLength: 1, maxLength: 4 }).map(challenges => ({ v: 1, op: 'audit', challenges })),
  fc.tuple(fc.integer({ min: 1, max: 16 * 1024 * 1024 }), counter, sig).map(([size, c, s]) => ({ v: 1, op: 'put-record', size, counter: c, sig: s })),
  fc.constant({ v: 1, op: 'get-record' }),
  fc.uniqueArray(fc.record({ id: hexId, size: fc.integer({ min: 29, max: 4 * 1024 * 1024 + 29 }) }), { minLength: 1, maxLength: 4, selector: b => b.id })
    .map(blobs => ({ v: 1, op: 'put-many', blobs })),
  fc.uniqueArray(hexId, { minLength: 1, maxLength: 8 }).map(i => ({ v: 1, op: 'get-many', ids: i }))
)
const decode = (bytes: Uint8Array): unknown => decodeHeader(bytes, requestSchema, 'the backup request')
const isRequest = (value: unknown): void => { expect(requestSchema.safeParse(value).success).toBe(true) }

/** Frames read from memory, as lpStream hands them over. */
function frames (list: Uint8Array[]): Frames {
  const queue = [...list]
  return {
    // (the uint8arraylist libp2p uses may be another copy of the package than this one: same class, other type)
    read: (async () => new Uint8ArrayList(queue.shift() ?? new Uint8Array())) as unknown as Frames['read'],
    write: async () => {}
  }
}

describe('backup wire codecs', () => {
  it('decodes every valid request as it was sent', () => {
    fuzz(fc.property(request, r => { expect(decode(encodeCanonical(r))).toEqual(r) }))
  })

  it('refuses every truncation of a valid request', () => {
    fuzz(fc.property(request.chain(r => { const b = encodeCanonical(r); return fc.nat(b.length - 1).map(n => b.subarray(0, n)) }),
      cut => { rejects(() => decode(cut), ['PROTOCOL_VIOLATION'], cut) }))
  })

  it('refuses or reads as valid a request with a bit flipped, any CBOR, and any field changed', () => {
    fuzz(fc.property(withFlip(request.map(r => encodeCanonical(r))), ([, flipped]) => { rejectsOrValid(() => decode(flipped), ['PROTOCOL_VIOLATION'], isRequest, flipped) }))
    fuzz(fc.property(cborBytes, bytes => { rejectsOrValid(() => decode(bytes), ['PROTOCOL_VIOLATION'], isRequest, bytes) }))
    fuzz(fc.property(request.chain(mutateField), r => { const b = encodeCanonical(r); rejectsOrValid(() => decode(b), ['PROTOCOL_VIOLATION'], isRequest, r) }))
  })

  it('refuses oversize batches, blobs and records before anything is allocated for them', () => {
    const id = 'a'.repeat(64)
    for (const r of [
      { v: 1, op: 'has', ids: Array.from({ length: MAX_BATCH_IDS + 1 }, () => id) },
      { v: 1, op: 'put', id, size: 4 * 1024 * 1024 + 30 },
      { v: 1, op: 'put-record', size: 16 * 1024 * 1024 + 1, counter: 1, sig: new Uint8Array(64) },
      { v: 1, op: 'audit', challenges: Array.from({ length: MAX_AUDIT_CHALLENGES + 1 }, () => ({ id, leaf: 0 })) },
      { v: 1, op: 'list', after: null, limit: 1001 },
      { v: 1, op: 'remove', ids: [id], counter: 0, sig: new Uint8Array(64) },
      // put-many: more blobs or bytes than one may carry, a blob named twice; get-many likewise
      { v: 1, op: 'put-many', blobs: Array.from({ length: MAX_MANY_BLOBS + 1 }, (_, i) => ({ id: i.toString(16).padStart(64, '0'), size: 100 })) },
      { v: 1, op: 'put-many', blobs: Array.from({ length: 5 }, (_, i) => ({ id: i.toString(16).padStart(64, '0'), size: MAX_MANY_BYTES / 4 })) },
      { v: 1, op: 'put-many', blobs: [{ id, size: 100 }, { id, size: 100 }] },
      { v: 1, op: 'get-many', ids: Array.from({ length: MAX_MANY_BLOBS + 1 }, (_, i) => i.toString(16).padStart(64, '0')) },
      { v: 1, op: 'get-many', ids: [id, id] }
    ]) rejects(() => decode(encodeCanonical(r)), ['PROTOCOL_VIOLATION'], r)
  })

  it('refuses an answer that is not one, on the owner\'s side', () => {
    const schemas: Array<z.ZodType<unknown>> = [responseSchemas.usage, responseSchemas.statuses, responseSchemas.storedMany, responseSchemas.item]
    for (const schema of schemas) {
      fuzz(fc.property(cborBytes, bytes => { rejectsOrValid(() => decodeHeader(bytes, schema, 'the answer'), ['PROTOCOL_VIOLATION'], v => { expect(schema.safeParse(v).success).toBe(true) }, bytes) }))
    }
    // put-many's and get-many's answers, truncated or bit-flipped
    const answers: Array<[Record<string, unknown>, z.ZodType<unknown>]> = [
      [{ v: 1, ok: true, status: ['go', 'held', 'full', 'busy'], used: 10, quota: 20 }, responseSchemas.statuses],
      [{ v: 1, ok: true, size: 4096 }, responseSchemas.item]
    ]
    for (const [answer, schema] of answers) {
      const bytes = encodeCanonical(answer)
      for (let n = 0; n < bytes.length; n++) rejects(() => decodeHeader(bytes.subarray(0, n), schema, 'the answer'), ['PROTOCOL_VIOLATION'], n)
      fuzz(fc.property(withFlip(fc.constant(bytes)), ([, flipped]) => {
        rejectsOrValid(() => decodeHeader(flipped, schema, 'the answer'), ['PROTOCOL_VIOLATION'], v => { expect(schema.safeParse(v).success).toBe(true) }, flipped)
      }))
    }
    // a blob announced bigger than a sealed blob can be
    rejects(() => decodeHeader(encodeCanonical({ v: 1, ok: true, size: 4 * 1024 * 1024 + 30 }), responseSchemas.item, 'the answer'), ['PROTOCOL_VIOLATION'])
  })

  it('binds a signed request to its op, host, counter and subject', () => {
    fuzz(fc.property(keys, fc.constantFrom('remove' as const, 'put-record' as const), hexId, counter, ids, (k, op, host, c, i) => {
      const subject = op === 'remove' ? i : Buffer.from(i.join(''))
      const s = signRequest(signedBody(op, host, c, subject), k.secretKey)
      expect(verifyRequest(signedBody(op, host, c, subject), s, k.publicKey)).toBe(true)
      expect(verifyRequest(signedBody(op, host, c + 1, subject), s, k.publicKey)).toBe(false)
      expect(verifyRequest(signedBody(op, `${host}x`, c, subject), s, k.publicKey)).toBe(false)
      expect(verifyRequest(signedBody(op === 'remove' ? 'put-record' : 'remove', host, c, subject), s, k.publicKey)).toBe(false)
      const other = op === 'remove' ? [...i, i[0]!] : Buffer.concat([subject as Buffer, Buffer.from('x')])
      expect(verifyRequest(signedBody(op, host, c, other), s, k.publicKey)).toBe(false)
    }), 0.1)
  })

  it('reads a body of exactly its announced size, however it is framed, and refuses one that runs past it', async () => {
    const bandwidth = new BandwidthScheduler()
    const flow = bandwidth.flow({ direction: 'down', class: 'backup' })
    const signal = new AbortController().signal
    await fuzzAsync(fc.asyncProperty(fc.array(fc.uint8Array({ minLength: 1, maxLength: 64 }), { minLength: 1, maxLength: 8 }), fc.boolean(), async (parts, extra) => {
      const whole = Buffer.concat(parts)
      if (!extra) {
        expect(Buffer.from(await readBody(frames(parts), whole.length, flow, signal, 'the owner'))).toEqual(whole)
        return
      }
      const over = [...parts.slice(0, -1), Buffer.concat([parts.at(-1)!, Buffer.from([0])])]
      await rejectsAsync(async () => await readBody(frames(over), whole.length, flow, signal, 'the owner'), ['PROTOCOL_VIOLATION'], over)
    }))
    await rejectsAsync(async () => await readBody(frames([new Uint8Array(0)]), 10, flow, signal, 'the owner'), ['PROTOCOL_VIOLATION'])
    flow.close()
    bandwidth.close()
  })
})
