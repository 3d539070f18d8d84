import { z } from 'zod'
import type { Connection, PeerId, Stream, AbortOptions } from '@libp2p/interface'
import { KithError, isErrorCode } from '../../../errors.ts'
import { decodeCanonical, encodeCanonical } from '../../../peer/canonical.ts'
import { failureSchema, serveOnce, TRAILER } from '../../../peer/request-response.ts'
import { dialProtocol } from '../../../peer/dial.ts'
import type { BandwidthScheduler } from '../../../transfer/scheduler/index.ts'
import { MAX_URL_LENGTH } from '../../downloads/constants.ts'
import { MAX_CLASS_URLS } from '../constants.ts'
import { MAX_CHUNKS_PER_ASK, MAX_HOLDINGS, MAX_SWARM_CHUNKS, MAX_SWARM_REQUEST, MAX_SWARM_RESPONSE, SWARM_CHUNK_SIZE, SWARM_PROTOCOL, SWARM_TIMEOUT_MS } from './constants.ts'
import { validatorSchema, type SignedHashList } from './hash-list.ts'
import type { Holding, SwarmIndex } from './holdings.ts'
import { lengthPrefixed } from '../../../peer/length-decoders.ts'

/**
 * `/kith/swarm/2.0.0` (docs/protocols.md): friends ask each other for what
 * they downloaded whole, one length-prefixed canonical CBOR request and one
 * answer per stream. Only friends I granted `files` get in (the gate
 * middleware); config.json's `proxy.serveFriends: false` leaves the
 * protocol unregistered. No policy here: the proxy's pull decides whom to
 * ask and what to trust.
 *
 *   { v:2, op:'who', urls:[url] }            -> { v:2, ok:true, holdings:[{ hash, length, etag, lastModified }] }
 *   { v:2, op:'list', hash }                 -> { v:2, ok:true, body, sig }   (the signed hash list)
 *   { v:2, op:'chunks', hash, index, count } -> { v:2, ok:true, lengths:[n] }, then chunks index..index+count-1,
 *                                               one raw frame each (not CBOR; each sent through the scheduler,
 *                                               class friend); a file that changes mid-way resets the stream
 *   any failure                              -> { v:2, ok:false, code, message }
 *
 * Version 1 asked one chunk per stream: a fresh yamux stream starts with a
 * 256 KiB window, so every 1 MiB chunk waited several round trips for
 * window updates and a stream negotiation; a run of chunks on one stream
 * lets the window grow and the holder read ahead.
 */
const VERSION = 2
/**
 * Room for one ask's whole answer in the asker's read buffer: its chunk
 * frames (each with a length prefix of at most 8 bytes) and the answer. The
 * reader takes bytes off the stream as they come, so yamux grants the friend
 * more window meanwhile, whatever pace askChunks' caller takes chunks at;
 * with libp2p's default 4 MiB a friend faster than the proxy's writes cut
 * the stream ('Read buffer overflow'). A friend can't send more than it
 * announced without a PROTOCOL_VIOLATION, so this bounds an ask's memory.
 */
const MAX_ASK_BUFFER = MAX_CHUNKS_PER_ASK * (SWARM_CHUNK_SIZE + 8) + MAX_SWARM_RESPONSE
const hashHex = z.string().regex(/^[0-9a-f]{64}$/)

const requestSchema = z.discriminatedUnion('op', [
  z.object({ v: z.literal(VERSION), op: z.literal('who'), urls: z.array(z.string().min(1).max(MAX_URL_LENGTH)).min(1).max(MAX_CLASS_URLS) }).strict(),
  z.object({ v: z.literal(VERSION), op: z.literal('list'), hash: hashHex }).strict(),
  z.object({ v: z.literal(VERSION), op: z.literal('chunks'), hash: hashHex, index: z.number().int().min(0).max(MAX_SWARM_CHUNKS - 1), count: z.number().int().min(1).max(MAX_CHUNKS_PER_ASK) }).strict()
])
export type SwarmRequest = z.infer<typeof requestSchema>

const holdingSchema = z.object({ hash: hashHex, length: z.number().int().min(1).max(MAX_SWARM_CHUNKS * SWARM_CHUNK_SIZE), etag: validatorSchema, lastModified: validatorSchema }).strict()
const failure = failureSchema(VERSION)
const ok = <T extends z.ZodRawShape>(shape: T) => z.union([z.object({ v: z.literal(VERSION), ok: z.literal(true), ...shape }).strict(), failure])

/** The answers, as the asker parses them (exported for the fuzz tests). */
export const whoAnswer = ok({ holdings: z.array(holdingSchema).max(MAX_HOLDINGS) })
export const listAnswer = ok({ body: z.instanceof(Uint8Array).refine(b => b.length <= MAX_SWARM_RESPONSE - 1024), sig: z.instanceof(Uint8Array).refine(b => b.length === 64) })
export const chunksAnswer = ok({ lengths: z.array(z.number().int().min(1).max(SWARM_CHUNK_SIZE)).min(1).max(MAX_CHUNKS_PER_ASK) })

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
      const lengths = await init.index.lengths(request.hash, request.index, request.count)
      if (lengths == null) throw new KithError('SWARM_NOT_HELD', `this node does not hold chunks ${request.index} to ${request.index + request.count - 1} of that file (any longer)`)
      return { lengths, [TRAILER]: paced(init.index.read(request.hash, request.index, request.count), init.bandwidth, peer) }
    })
  }
}

/** A friend's fetch: class friend, above public and backup traffic, within this node's upload caps. */
async function * paced (chunks: AsyncIterable<Uint8Array>, bandwidth: BandwidthScheduler, peer: string): AsyncGenerator<Uint8Array> {
  const flow = bandwidth.flow({ direction: 'up', peer, class: 'friend', label: 'swarm' })
  try {
    for await (const bytes of chunks) {
      await flow.take(bytes.length, AbortSignal.timeout(SWARM_TIMEOUT_MS))
      yield bytes
    }
  } finally {
    flow.close()
  }
}

export interface Dialer {
  dialProtocol: (peer: PeerId, protocol: string, options?: AbortOptions) => Promise<Stream>
}

/**
 * One question to a friend on a stream of its own: the answer, and the
 * stream's length-prefixed reader and the signal for any frames that follow.
 * Their failure answer as a KithError with their code, a broken or malformed
 * answer as FRIEND_OFFLINE / PROTOCOL_VIOLATION.
 */
async function open<T> (dialer: Dialer, peer: PeerId, request: SwarmRequest, schema: z.ZodType<T>, options: AbortOptions): Promise<{ answer: T, stream: Stream, lp: ReturnType<typeof lengthPrefixed> }> {
  const signal = AbortSignal.any([options.signal ?? new AbortController().signal, AbortSignal.timeout(SWARM_TIMEOUT_MS)])
  let stream: Stream
  try {
    stream = await dialProtocol(dialer, peer, SWARM_PROTOCOL, { signal })
  } catch (err) {
    throw new KithError('FRIEND_OFFLINE', `can't ask ${peer.toString()} (${(err as Error).message}); they may be offline, not serve the swarm, or not grant you files`, { cause: err })
  }
  const lp = lengthPrefixed(stream, { maxDataLength: MAX_SWARM_RESPONSE, maxBufferSize: MAX_ASK_BUFFER })
  try {
    await lp.write(encodeCanonical(request), { signal })
    return { answer: parseAnswer((await lp.read({ signal })).subarray(), schema, peer.toString()), stream, lp }
  } catch (err) {
    throw broken(stream, err, peer)
  }
}

function broken (stream: Stream, err: unknown, peer: PeerId): KithError {
  stream.abort(err as Error)
  if (err instanceof KithError) return err
  return new KithError('FRIEND_OFFLINE', `the connection to ${peer.toString()} broke (${(err as Error).message})`, { cause: err })
}

async function ask<T> (dialer: Dialer, peer: PeerId, request: SwarmRequest, schema: z.ZodType<T>, options: AbortOptions): Promise<T> {
  const { answer, stream } = await open(dialer, peer, request, schema, options)
  await stream.close({ signal: AbortSignal.timeout(SWARM_TIMEOUT_MS) }).catch(() => {})
  return answer
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
  return (await ask(dialer, peer, { v: VERSION, op: 'who', urls: [...urls] }, whoAnswer, options) as { holdings: Holding[] }).holdings
}

export async function askList (dialer: Dialer, peer: PeerId, hash: string, options: AbortOptions = {}): Promise<SignedHashList> {
  const { body, sig } = await ask(dialer, peer, { v: VERSION, op: 'list', hash }, listAnswer, options) as { body: Uint8Array, sig: Uint8Array }
  return { body, sig }
}

/**
 * Chunks `index` to `index + count - 1` (count ≤ MAX_CHUNKS_PER_ASK), each
 * yielded as it arrives, unverified: the caller checks each against the
 * hash list. Each frame may take SWARM_TIMEOUT_MS; one not of the length
 * the answer announced, or a stream cut short, fails with
 * PROTOCOL_VIOLATION / FRIEND_OFFLINE after the chunks that came whole.
 */
export async function * askChunks (dialer: Dialer, peer: PeerId, hash: string, index: number, count: number, options: AbortOptions = {}): AsyncGenerator<Uint8Array> {
  const { answer, stream, lp } = await open(dialer, peer, { v: VERSION, op: 'chunks', hash, index, count }, chunksAnswer, options)
  const { lengths } = answer as { lengths: number[] }
  let done = false
  try {
    if (lengths.length !== count) throw new KithError('PROTOCOL_VIOLATION', `${peer.toString()} announced ${lengths.length} chunks, ${count} were asked`)
    for (const length of lengths) {
      const signal = AbortSignal.any([options.signal ?? new AbortController().signal, AbortSignal.timeout(SWARM_TIMEOUT_MS)])
      // the frame's length prefix is checked against MAX_SWARM_RESPONSE before anything is read, then against the answer's
      const bytes = (await lp.read({ signal })).subarray()
      if (bytes.length !== length) throw new KithError('PROTOCOL_VIOLATION', `${peer.toString()} announced ${length} bytes and sent ${bytes.length}`)
      yield bytes
    }
    done = true
    await stream.close({ signal: AbortSignal.timeout(SWARM_TIMEOUT_MS) }).catch(() => {})
  } catch (err) {
    throw broken(stream, err, peer)
  } finally {
    // the caller stopped taking (the pull ended): the rest is not wanted
    if (!done) stream.abort(new KithError('FETCH_ABORTED', 'the asker stopped taking chunks'))
  }
}
