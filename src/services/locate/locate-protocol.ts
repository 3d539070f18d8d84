import { z } from 'zod'
import type { Connection, Stream, PeerId, AbortOptions } from '@libp2p/interface'
import { KithError, isErrorCode } from '../../errors.ts'
import { encodeCanonical, decodeCanonical } from '../../peer/canonical.ts'
import { failureSchema, serveOnce } from '../../peer/request-response.ts'
import { dialProtocol } from '../../peer/dial.ts'
import { parseAddressRecord, type AddressRecord } from '../../peer/address-record.ts'
import { LOCATE_PROTOCOL, LOCATE_PROTOCOL_VERSION as VERSION, MAX_LOCATE_MESSAGE, LOCATE_STREAM_TIMEOUT_MS } from './constants.ts'
import { lengthPrefixed } from '../../peer/length-decoders.ts'

/**
 * `/kith/locate/1.0.0`: one request, one answer, canonical CBOR, each
 * length-prefixed and under MAX_LOCATE_MESSAGE.
 *
 *   { v:1, op:'push', record: bstr }     -> { v:1, ok:true }
 *   { v:1, op:'query', peer: text }      -> { v:1, ok:true, record: bstr | null }
 *   any failure                          -> { v:1, ok:false, code, message }
 *
 * A push carries the pusher's own record and nobody else's. The protocol
 * holds no policy: who may ask, about whom, and what is kept are decided by
 * the callbacks (see index.ts).
 */

// the size of a record is checked by parseAddressRecord (RECORD_TOO_LARGE); lpStream caps the message
const recordBytes = z.instanceof(Uint8Array)
const peerIdText = z.string().min(1).max(128).regex(/^[1-9A-HJ-NP-Za-km-z]+$/, 'must be a base58 peer id')

const requestSchema = z.discriminatedUnion('op', [
  z.object({ v: z.literal(VERSION), op: z.literal('push'), record: recordBytes }).strict(),
  z.object({ v: z.literal(VERSION), op: z.literal('query'), peer: peerIdText }).strict()
])

const failure = failureSchema(VERSION)
const pushResponse = z.union([z.object({ v: z.literal(VERSION), ok: z.literal(true) }).strict(), failure])
const queryResponse = z.union([z.object({ v: z.literal(VERSION), ok: z.literal(true), record: z.union([recordBytes, z.null()]) }).strict(), failure])

export interface LocateHandlerInit {
  /** A verified record its subject pushed; throw (RECORD_STALE...) to refuse it. */
  onPush: (record: AddressRecord, from: string) => Promise<void>
  /** What to answer `asker` about `subject`: signed record bytes, or null. Throw to refuse. */
  onQuery: (asker: string, subject: string) => Promise<Uint8Array | null>
}

export function locateHandler (init: LocateHandlerInit) {
  return async (stream: Stream, connection: Connection): Promise<void> => {
    const remote = connection.remotePeer.toString()
    await serveOnce(stream, { version: VERSION, schema: requestSchema, maxRequest: MAX_LOCATE_MESSAGE, timeoutMs: LOCATE_STREAM_TIMEOUT_MS, what: 'the locate request' }, async (request) => {
      if (request.op === 'push') {
        await init.onPush(parseAddressRecord(request.record, { subject: remote }), remote)
        return {}
      }
      return { record: await init.onQuery(remote, request.peer) }
    })
  }
}

export interface Dialer {
  dialProtocol: (peer: PeerId, protocol: string, options?: AbortOptions & { runOnLimitedConnection?: boolean }) => Promise<Stream>
}

async function exchange<T> (dialer: Dialer, peer: PeerId, request: unknown, schema: z.ZodType<T>, options: AbortOptions): Promise<T> {
  const signal = options.signal != null
    ? AbortSignal.any([options.signal, AbortSignal.timeout(LOCATE_STREAM_TIMEOUT_MS)])
    : AbortSignal.timeout(LOCATE_STREAM_TIMEOUT_MS)
  let stream: Stream
  try {
    // one small record each way: may run over a relayed connection with a budget
    stream = await dialProtocol(dialer, peer, LOCATE_PROTOCOL, { signal, runOnLimitedConnection: true })
  } catch (err) {
    throw new KithError('FRIEND_OFFLINE', `can't open the locate protocol with ${peer.toString()} (${(err as Error).message})`, { cause: err })
  }
  const lp = lengthPrefixed(stream, { maxDataLength: MAX_LOCATE_MESSAGE })
  let data: T
  try {
    await lp.write(encodeCanonical(request), { signal })
    const reply = schema.safeParse(decodeCanonical((await lp.read({ signal })).subarray(), 'PROTOCOL_VIOLATION', 'the locate answer'))
    await stream.close({ signal }).catch(() => {})
    if (!reply.success) throw new KithError('PROTOCOL_VIOLATION', `${peer.toString()} sent a malformed locate answer`)
    data = reply.data
  } catch (err) {
    stream.abort(err as Error)
    if (err instanceof KithError) throw err
    throw new KithError('FRIEND_OFFLINE', `the locate exchange with ${peer.toString()} broke (${(err as Error).message})`, { cause: err })
  }
  const answer = data as { ok: boolean, code?: string, message?: string }
  if (!answer.ok) throw new KithError(isErrorCode(answer.code) ? answer.code : 'PROTOCOL_VIOLATION', answer.message ?? 'refused')
  return data
}

/** Pushes my own signed record to a friend. Throws with the friend's refusal code (RECORD_STALE...). */
export async function pushRecord (dialer: Dialer, peer: PeerId, record: Uint8Array, options: AbortOptions = {}): Promise<void> {
  await exchange(dialer, peer, { v: VERSION, op: 'push', record }, pushResponse, options)
}

/**
 * Asks a friend for its newest record of `subject`. Returns the raw bytes,
 * unverified: the caller verifies them against the subject it asked about.
 */
export async function queryRecord (dialer: Dialer, peer: PeerId, subject: string, options: AbortOptions = {}): Promise<Uint8Array | null> {
  const reply = await exchange(dialer, peer, { v: VERSION, op: 'query', peer: subject }, queryResponse, options) as { record: Uint8Array | null }
  return reply.record
}
