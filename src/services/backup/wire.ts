import { createHash } from 'node:crypto'
import { z } from 'zod'
import type { LengthPrefixedStream } from '@libp2p/utils'
import { KithError } from '../../errors.ts'
import { decodeCanonical, encodeCanonical } from '../../peer/canonical.ts'
import { fillNoiseMessages } from '../../peer/noise-fit.ts'
import { failureSchema } from '../../peer/request-response.ts'
import { sign, verify, SIGNATURE_LENGTH } from '../../peer/signing.ts'
import { MAX_SEALED_CHUNK_SIZE, SEAL_OVERHEAD } from '../../transfer/constants.ts'
import { AUDIT_LEAF_SIZES, LEGACY_AUDIT_LEAF_SIZE } from './audit-tree.ts'
import type { Flow } from '../../transfer/scheduler/index.ts'

/**
 * `/kith/backup/1.0.0`: the messages, their limits and the signed requests
 * (protocol.ts moves them; docs/backup.md, "Wire protocol").
 *
 * Every message is one length-prefixed frame. A header is canonical CBOR;
 * bulk bytes (a blob, a recovery record) follow their header as frames of at
 * most BODY_SLICE bytes, their total announced in the header and checked
 * against its limit before anything is allocated. One request per stream:
 *
 *   owner -> { v:1, op:'usage' }                          host -> { v, ok, used, quota, blobs, lastWrite, counter }
 *   owner -> { v:1, op:'has', ids }                       host -> { v, ok, held: bool[] }
 *   owner -> { v:1, op:'put', id, size }                  host -> { v, ok, go:true } | { v, ok, stored:false, used, quota }
 *   owner -> body (size bytes)                            host -> { v, ok, stored:true, used, quota }
 *   owner -> { v:1, op:'get', id }                        host -> { v, ok, size }, body
 *   owner -> { v:1, op:'put-many', blobs:[{id,size}] }    host -> { v, ok, status:['go'|'held'|'full'|'busy'], used, quota }
 *   owner -> the bodies of the 'go' blobs, in order       host -> { v, ok, stored, used, quota }
 *   owner -> { v:1, op:'get-many', ids }                  host -> per id, in order: { v, ok, size }, body | { v, ok, missing:true }
 *   owner -> { v:1, op:'remove', ids, counter, sig }      host -> { v, ok, freed, used }
 *   owner -> { v:1, op:'list', after, limit }             host -> { v, ok, ids:[{id,size}], next }
 *   owner -> { v:1, op:'audit', challenges:[{id,leaf,leafSize?}] }  host -> { v, ok, answers:[{id,leaf,leafBytes,path}|{id,leaf,missing:true}] }
 *                                                        (leafBytes empty, path []: the host found its copy damaged)
 *   owner -> { v:1, op:'put-record', size, counter, sig } host -> { v, ok, go:true }
 *   owner -> body (size bytes)                            host -> { v, ok }
 *   owner -> { v:1, op:'get-record' }                     host -> { v, ok, size, counter }, body
 *   any refusal                                           host -> { v, ok:false, code, message }
 *
 * `put` asks before sending: the host reserves the quota (or says it holds
 * the blob already) first, so a refused or duplicate blob costs no transfer.
 *
 * remove and put-record are signed by the owner (domain 'backup-request/1')
 * over { op, host, counter, ids | sha256 }: bound to one host, and refused
 * unless the counter is above the last the host accepted from this owner, so
 * a replayed delete deletes nothing.
 */
export const BACKUP_PROTOCOL = '/kith/backup/1.0.0'
export const BACKUP_VERSION = 1

const KiB = 1024
const MiB = 1024 * KiB

/** Ids in one has or remove: 4096 × 64 hex characters, about 270 KiB of header. */
export const MAX_BATCH_IDS = 4096
/** Blobs one list answer names at most. */
export const MAX_LIST_LIMIT = 1000
/** Blobs in one put-many or get-many. */
export const MAX_MANY_BLOBS = 256
/** Sealed bytes one put-many announces, or one get-many's blobs hold, at most. */
export const MAX_MANY_BYTES = 16 * MiB
/** Challenges in one audit: each costs the host one blob read. */
export const MAX_AUDIT_CHALLENGES = 32
/** Leaf bytes one audit asks for, at most: its answer stays one header (MAX_HEADER), paths included. */
export const MAX_AUDIT_BYTES = 256 * KiB
/** The largest recovery record a host keeps (opaque sealed bytes). */
export const MAX_RECORD_SIZE = 16 * MiB
/** The largest header frame: a full has or remove. */
export const MAX_HEADER = 320 * KiB
/**
 * Bulk bytes travel in frames of at most this; each goes through the
 * bandwidth scheduler on its own. Five whole Noise messages with the
 * frame's length (a 3-byte varint) and yamux's header (noise-fit.ts):
 * 327,580 bytes, where 256 KiB cost a sixth message of 83 bytes. Under
 * MAX_HEADER, the most a receiver takes in one frame, so hosts and owners
 * from before it read these frames.
 */
export const BODY_SLICE = fillNoiseMessages(5, 3)
/** Longest wait for a request's header once the stream is open. */
export const HEADER_TIMEOUT_MS = 10_000
/** Longest wait for any one frame (or for the bandwidth scheduler to let it go) before the request is given up. */
export const STALL_TIMEOUT_MS = 60_000
/** Longest a whole request may take, bulk bytes included: a 16 MiB record at 30 KB/s. */
export const REQUEST_TIMEOUT_MS = 600_000
/** Backup streams one host serves at once, over all owners; a blob in flight holds up to its size in memory. */
export const MAX_INBOUND_BACKUP_STREAMS = 16
/** Of those, the most one owner holds: one friend can't take every slot. */
export const MAX_STREAMS_PER_OWNER = 8
/** Recovery records being received at once, over all owners (16 MiB of memory each). */
export const MAX_RECORDS_IN_FLIGHT = 2

const hexId = z.string().regex(/^[0-9a-f]{64}$/, 'must be a 64-character hex id')
const counter = z.number().int().min(1).max(Number.MAX_SAFE_INTEGER)
const signature = z.instanceof(Uint8Array).refine(s => s.length === SIGNATURE_LENGTH, 'must be a 64-byte signature')
const v = z.literal(BACKUP_VERSION)

export const requestSchema = z.discriminatedUnion('op', [
  z.object({ v, op: z.literal('usage') }).strict(),
  z.object({ v, op: z.literal('has'), ids: z.array(hexId).min(1).max(MAX_BATCH_IDS) }).strict(),
  z.object({ v, op: z.literal('put'), id: hexId, size: z.number().int().min(SEAL_OVERHEAD).max(MAX_SEALED_CHUNK_SIZE) }).strict(),
  z.object({ v, op: z.literal('get'), id: hexId }).strict(),
  z.object({ v, op: z.literal('put-many'), blobs: z.array(z.object({ id: hexId, size: z.number().int().min(SEAL_OVERHEAD).max(MAX_SEALED_CHUNK_SIZE) }).strict()).min(1).max(MAX_MANY_BLOBS) }).strict()
    .refine(r => r.blobs.reduce((sum, b) => sum + b.size, 0) <= MAX_MANY_BYTES, `announces more than ${MAX_MANY_BYTES} bytes`)
    .refine(r => new Set(r.blobs.map(b => b.id)).size === r.blobs.length, 'names a blob twice'),
  z.object({ v, op: z.literal('get-many'), ids: z.array(hexId).min(1).max(MAX_MANY_BLOBS) }).strict()
    .refine(r => new Set(r.ids).size === r.ids.length, 'names a blob twice'),
  z.object({ v, op: z.literal('remove'), ids: z.array(hexId).min(1).max(MAX_BATCH_IDS), counter, sig: signature }).strict(),
  z.object({ v, op: z.literal('list'), after: hexId.nullable(), limit: z.number().int().min(1).max(MAX_LIST_LIMIT) }).strict(),
  // leafSize: the owner's root's (audit-tree.ts); absent, the 4 KiB of owners before it was sent
  z.object({
    v,
    op: z.literal('audit'),
    challenges: z.array(z.object({ id: hexId, leaf: z.number().int().min(0).max(0xffff_ffff), leafSize: z.union(AUDIT_LEAF_SIZES.map(size => z.literal(size))).optional() }).strict())
      .min(1).max(MAX_AUDIT_CHALLENGES)
      .refine(cs => cs.reduce((sum, c) => sum + (c.leafSize ?? LEGACY_AUDIT_LEAF_SIZE), 0) <= MAX_AUDIT_BYTES, `asks for more than ${MAX_AUDIT_BYTES} bytes of leaves`)
  }).strict(),
  z.object({ v, op: z.literal('put-record'), size: z.number().int().min(1).max(MAX_RECORD_SIZE), counter, sig: signature }).strict(),
  z.object({ v, op: z.literal('get-record') }).strict()
])
export type BackupRequest = z.infer<typeof requestSchema>

const failure = failureSchema(BACKUP_VERSION)
const ok = z.literal(true)
const bytes = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER)
const when = z.number().int().min(0).nullable()

const go = z.object({ v, ok, go: z.literal(true) }).strict()
const stored = z.object({ v, ok, stored: z.boolean(), used: bytes, quota: bytes }).strict()

/** The answers, as the owner parses them; each also admits the shared failure answer (orFailure). */
export const responseSchemas = {
  usage: z.object({ v, ok, used: bytes, quota: bytes, blobs: bytes, lastWrite: when, counter: z.number().int().min(0) }).strict(),
  has: z.object({ v, ok, held: z.array(z.boolean()).max(MAX_BATCH_IDS) }).strict(),
  go,
  stored,
  /** put's first answer: send it, or not stored (held already, or past the quota) */
  goOrStored: z.union([go, stored]),
  /** put-many's first answer: per blob, send it ('go', reserved), held already, past the quota, or being written by another request */
  statuses: z.object({ v, ok, status: z.array(z.enum(['go', 'held', 'full', 'busy'])).max(MAX_MANY_BLOBS), used: bytes, quota: bytes }).strict(),
  storedMany: z.object({ v, ok, stored: z.number().int().min(0).max(MAX_MANY_BLOBS), used: bytes, quota: bytes }).strict(),
  /** one blob of a get-many */
  item: z.union([
    z.object({ v, ok, size: z.number().int().min(SEAL_OVERHEAD).max(MAX_SEALED_CHUNK_SIZE) }).strict(),
    z.object({ v, ok, missing: z.literal(true) }).strict()
  ]),
  body: z.object({ v, ok, size: z.number().int().min(1).max(MAX_RECORD_SIZE) }).strict(),
  remove: z.object({ v, ok, freed: bytes, used: bytes }).strict(),
  list: z.object({ v, ok, ids: z.array(z.object({ id: hexId, size: bytes }).strict()).max(MAX_LIST_LIMIT), next: hexId.nullable() }).strict(),
  audit: z.object({
    v,
    ok,
    answers: z.array(z.union([
      // an empty leaf (no leaf of a blob is empty): the host's copy was damaged; owners before it read that as wrong data
      z.object({ id: hexId, leaf: z.number().int().min(0), leafBytes: z.instanceof(Uint8Array), path: z.array(z.instanceof(Uint8Array)).max(64) }).strict(),
      z.object({ id: hexId, leaf: z.number().int().min(0), missing: z.literal(true) }).strict()
    ])).max(MAX_AUDIT_CHALLENGES)
  }).strict(),
  done: z.object({ v, ok }).strict(),
  failure
} as const

const withFailure = new WeakMap<z.ZodType, z.ZodType>()

/**
 * `schema`, or the shared failure answer: the union each answer is parsed
 * with, made once per schema. zod builds a union's parser on its first
 * parse: made anew for every answer (each put-many answer, each blob of a
 * get-many), it cost about three times the parse itself.
 */
export function orFailure<S> (schema: z.ZodType<S>): z.ZodType<S | z.infer<typeof failure>> {
  let union = withFailure.get(schema)
  if (union === undefined) withFailure.set(schema, union = z.union([schema, failure]))
  return union as z.ZodType<S | z.infer<typeof failure>>
}

/** Encodes a header frame's body. */
export function encodeHeader (message: Record<string, unknown>): Uint8Array {
  return encodeCanonical(message)
}

/** Decodes and checks a header with `schema`; anything else is PROTOCOL_VIOLATION naming `what`. */
export function decodeHeader<T> (frame: Uint8Array, schema: z.ZodType<T>, what: string): T {
  const parsed = schema.safeParse(decodeCanonical(frame, 'PROTOCOL_VIOLATION', what))
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    throw new KithError('PROTOCOL_VIOLATION', `${what} is malformed: ${issue?.path.join('.') ?? ''} ${issue?.message ?? ''}`.trim())
  }
  return parsed.data
}

/** What an owner signs for a remove or a put-record: bound to the op, the host and the counter. */
export function signedBody (op: 'remove' | 'put-record', host: string, count: number, subject: string[] | Uint8Array): Uint8Array {
  const what = Array.isArray(subject) ? { ids: subject } : { sha256: createHash('sha256').update(subject).digest() }
  return encodeCanonical({ op, host, counter: count, ...what })
}

export function signRequest (body: Uint8Array, secretKey: Uint8Array): Uint8Array {
  return sign('backup-request/1', body, secretKey)
}

export function verifyRequest (body: Uint8Array, sig: Uint8Array, publicKey: Uint8Array): boolean {
  return verify('backup-request/1', body, sig, publicKey)
}

/** The part of lpStream bulk transfer needs. */
export type Frames = Pick<LengthPrefixedStream, 'read' | 'write'>

/**
 * A signal aborted after `ms` (and with `outer`), whose timer `clear` stops.
 * AbortSignal.timeout's timer outlives the request and keeps alive whatever
 * listens to its signal until it fires; a request clears its own.
 */
export function deadline (ms: number, outer?: AbortSignal): { signal: AbortSignal, clear: () => void, refresh: () => void } {
  const controller = new AbortController()
  const timer = setTimeout(() => { controller.abort(new DOMException(`no progress for ${ms} ms`, 'TimeoutError')) }, ms)
  return {
    signal: outer != null ? AbortSignal.any([outer, controller.signal]) : controller.signal,
    clear: () => { clearTimeout(timer) },
    refresh: () => { timer.refresh() }
  }
}

/** Sends `data` as body frames, each taken from `flow` (the 'backup' class) before it goes; `moved` after each. */
export async function writeBody (lp: Frames, data: Uint8Array, flow: Flow, signal: AbortSignal, moved?: () => void): Promise<void> {
  for (let at = 0; at < data.length; at += BODY_SLICE) {
    const slice = data.subarray(at, Math.min(data.length, at + BODY_SLICE))
    await flow.take(slice.length, signal)
    await lp.write(slice, { signal })
    moved?.()
  }
}

/**
 * Reads exactly `size` body bytes (already checked against its limit) into
 * one buffer, `into` when given (at least `size` bytes: the caller reuses
 * buffers), counting each frame on `flow` (`moved` after each). A frame that
 * would run past `size`, or an empty one, is PROTOCOL_VIOLATION.
 */
export async function readBody (lp: Frames, size: number, flow: Flow, signal: AbortSignal, what: string, moved?: () => void, into?: Uint8Array): Promise<Uint8Array> {
  const out = into != null && into.length >= size ? into.subarray(0, size) : Buffer.allocUnsafe(size)
  let at = 0
  while (at < size) {
    const frame = await lp.read({ signal })
    moved?.()
    if (frame.byteLength === 0 || frame.byteLength > size - at) {
      throw new KithError('PROTOCOL_VIOLATION', `${what} sent ${frame.byteLength === 0 ? 'an empty frame' : 'more bytes than it announced'}`)
    }
    // part by part: frame.subarray() would join the parts into a new buffer first (a frame is up to BODY_SLICE)
    for (const part of frame) {
      out.set(part, at)
      at += part.byteLength
    }
    await flow.take(frame.byteLength, signal)
  }
  return out
}
