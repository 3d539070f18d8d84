import { z } from 'zod'
import { lpStream } from '@libp2p/utils'
import type { Connection, PeerId, Stream, AbortOptions } from '@libp2p/interface'
import { KithError, isErrorCode } from '../../../errors.ts'
import { decodeCanonical, encodeCanonical } from '../../../peer/canonical.ts'
import { failureSchema, serveOnce, TRAILER } from '../../../peer/request-response.ts'
import type { BandwidthScheduler } from '../../../transfer/scheduler/index.ts'
import { MAX_URL_LENGTH } from '../../downloads/constants.ts'
import { MAX_CLASS_URLS } from '../constants.ts'
import { MAX_HOLDINGS, MAX_SWARM_CHUNKS, MAX_SWARM_REQUEST, MAX_SWARM_RESPONSE, SWARM_CHUNK_SIZE, SWARM_PROTOCOL, SWARM_TIMEOUT_MS } from './constants.ts'
import { validatorSchema, type SignedHashList } from './hash-list.ts'
import type { Holding, SwarmIndex } from './holdings.ts'

/**
 * `/kith/swarm/1.0.0` (docs/protocols.md): friends ask each other for what
 * they downloaded whole, one length-prefixed canonical CBOR request and one
 * answer per stream. Only friends I granted `files` get in (the gate
 * middleware); config.json's `proxy.serveFriends: false` leaves the
 * protocol unregistered. No policy here: the proxy's pull decides whom to
 * ask and what to trust.
 *
 *   { v:1, op:'who', urls:[url] }            -> { v:1, ok:true, holdings:[{ hash, length, etag, lastModified }] }
 *   { v:1, op:'list', hash }                 -> { v:1, ok:true, body, sig }   (the signed hash list)
 *   { v:1, op:'chunk', hash, index }         -> { v:1, ok:true, length }, then the chunk's bytes as a second frame
 *                                               (raw, not CBOR; sent through the scheduler, class friend)
 *   any failure                              -> { v:1, ok:false, code, message }
 */
const VERSION = 1
const hashHex = z.string().regex(/^[0-9a-f]{64}$/)

const requestSchema = z.discriminatedUnion('op', [
  z.object({ v: z.literal(VERSION), op: z.literal('who'), urls: z.array(z.string().min(1).max(MAX_URL_LENGTH)).min(1).max(MAX_CLASS_URLS) }).strict(),
  z.object({ v: z.literal(VERSION), op: z.literal('list'), hash: hashHex }).strict(),
  z.object({ v: z.literal(VERSION), op: z.literal('chunk'), hash: hashHex, index: z.number().int().min(0).max(MAX_SWARM_CHUNKS - 1) }).strict()
])
export type SwarmRequest = z.infer<typeof requestSchema>

const holdingSchema = z.object({ hash: hashHex, length: z.number().int().min(1).max(MAX_SWARM_CHUNKS * SWARM_CHUNK_SIZE), etag: validatorSchema, lastModified: validatorSchema }).strict()
const failure = failureSchema(VERSION)
const ok = <T extends z.ZodRawShape>(shape: T) => z.union([z.object({ v: z.literal(VERSION), ok: z.literal(true), ...shape }).strict(), failure])

/** The answers, as the asker parses them (exported for the fuzz tests). */
export const whoAnswer = ok({ holdings: z.array(holdingSchema).max(MAX_HOLDINGS) })
export const listAnswer = ok({ body: z.instanceof(Uint8Array).refine(b => b.length <= MAX_SWARM_RESPONSE - 1024), sig: z.instanceof(Uint8Array).refine(b => b.length === 64) })
export const chunkAnswer = ok({ length: z.number().int().min(1).max(SWARM_CHUNK_SIZE) })

export interface SwarmHandlerInit {
  index: SwarmIndex
  bandwidth: BandwidthScheduler
}

export function swarmHandler (init: SwarmHandlerInit) {
  return async (stream: Stream, connection: Connection): Promise<void> => {
    const peer = connection.remotePeer.toString()
    await serveOnce(stream, { version: VERSION, schema: requestSchema, maxRequest: MAX_SWARM_REQUEST, timeoutMs: SWARM_TIMEOUT_MS, what: 'the swarm request' }, async (request, signal) => {
      if (request.op === 'who') return { holdings: (await init.index.holdings(request.urls)).slice(0, MAX_HOLDINGS) }
      if (request.op === 'list') {
        const signed = await init.index.list(request.hash)
        if (signed == null) throw new KithError('SWARM_NOT_HELD', 'this node does not hold that file (any longer)')
        return { body: signed.body, sig: signed.sig }
      }
      const bytes = await init.index.chunk(request.hash, request.index)
      if (bytes == null) throw new KithError('SWARM_NOT_HELD', `this node does not hold chunk ${request.index} of that file (any longer)`)
      // a friend's fetch: class friend, above public and backup traffic, within this node's upload caps
      const flow = init.bandwidth.flow({ direction: 'up', peer, class: 'friend', label: 'swarm' })
      try {
        await flow.take(bytes.length, signal)
      } finally {
        flow.close()
      }
      return { length: bytes.length, [TRAILER]: bytes }
    })
  }
}

export interface Dialer {
  dialProtocol: (peer: PeerId, protocol: string, options?: AbortOptions) => Promise<Stream>
}

/**
 * One question to a friend; their failure answer as a KithError with their
 * code, a broken or malformed answer as FRIEND_OFFLINE / PROTOCOL_VIOLATION.
 * With `trailer`, the answer's raw frame that follows it too, of exactly
 * the length `trailer` reads from the answer.
 */
async function ask<T> (dialer: Dialer, peer: PeerId, request: SwarmRequest, schema: z.ZodType<T>, options: AbortOptions, trailer?: (answer: T) => number): Promise<{ answer: T, bytes: Uint8Array | null }> {
  const signal = AbortSignal.any([options.signal ?? new AbortController().signal, AbortSignal.timeout(SWARM_TIMEOUT_MS)])
  let stream: Stream
  try {
    stream = await dialer.dialProtocol(peer, SWARM_PROTOCOL, { signal })
  } catch (err) {
    throw new KithError('FRIEND_OFFLINE', `can't ask ${peer.toString()} (${(err as Error).message}); they may be offline, not serve the swarm, or not grant you files`, { cause: err })
  }
  const lp = lpStream(stream, { maxDataLength: MAX_SWARM_RESPONSE })
  try {
    await lp.write(encodeCanonical(request), { signal })
    const answer = parseAnswer((await lp.read({ signal })).subarray(), schema, peer.toString())
    let bytes: Uint8Array | null = null
    if (trailer != null) {
      // the frame's length prefix is checked against MAX_SWARM_RESPONSE before anything is read, then against the answer's
      bytes = (await lp.read({ signal })).subarray()
      if (bytes.length !== trailer(answer)) throw new KithError('PROTOCOL_VIOLATION', `${peer.toString()} announced ${trailer(answer)} bytes and sent ${bytes.length}`)
    }
    await stream.close({ signal }).catch(() => {})
    return { answer, bytes }
  } catch (err) {
    stream.abort(err as Error)
    if (err instanceof KithError) throw err
    throw new KithError('FRIEND_OFFLINE', `the connection to ${peer.toString()} broke (${(err as Error).message})`, { cause: err })
  }
}

/** An answer's bytes: canonical CBOR of the expected shape, a success, else the friend's code (exported for the fuzz tests). */
export function parseAnswer<T> (bytes: Uint8Array, schema: z.ZodType<T>, peer: string): T {
  const reply = schema.safeParse(decodeCanonical(bytes, 'PROTOCOL_VIOLATION', 'the swarm answer'))
  if (!reply.success) throw new KithError('PROTOCOL_VIOLATION', `${peer} sent a malformed swarm answer: ${reply.error.issues[0]?.message ?? ''}`)
  const data = reply.data as { ok: boolean, code?: string, message?: string }
  if (!data.ok) throw new KithError(isErrorCode(data.code) ? data.code : 'PROTOCOL_VIOLATION', `${peer}: ${data.message ?? 'refused'}`)
  return reply.data
}

export async function askWho (dialer: Dialer, peer: PeerId, urls: readonly string[], options: AbortOptions = {}): Promise<Holding[]> {
  return ((await ask(dialer, peer, { v: VERSION, op: 'who', urls: [...urls] }, whoAnswer, options)).answer as { holdings: Holding[] }).holdings
}

export async function askList (dialer: Dialer, peer: PeerId, hash: string, options: AbortOptions = {}): Promise<SignedHashList> {
  const { body, sig } = (await ask(dialer, peer, { v: VERSION, op: 'list', hash }, listAnswer, options)).answer as { body: Uint8Array, sig: Uint8Array }
  return { body, sig }
}

export async function askChunk (dialer: Dialer, peer: PeerId, hash: string, index: number, options: AbortOptions = {}): Promise<Uint8Array> {
  return (await ask(dialer, peer, { v: VERSION, op: 'chunk', hash, index }, chunkAnswer, options, answer => (answer as { length: number }).length)).bytes!
}
