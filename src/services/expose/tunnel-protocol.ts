import { z } from 'zod'
import type { AbortOptions, PeerId, Stream } from '@libp2p/interface'
import { KithError, isErrorCode } from '../../errors.ts'
import { decodeCanonical, encodeCanonical } from '../../peer/canonical.ts'
import { failureSchema, MAX_FAILURE_MESSAGE } from '../../peer/request-response.ts'
import { dialProtocol } from '../../peer/dial.ts'
import { cleanText } from '../../peer/text.ts'
import { Inbox, frameHeader } from './inbox.ts'
import { isServiceName } from './names.ts'
import { HIGH_WATER, MAX_ANSWER_HEADER, MAX_OPEN_HEADER, MAX_OUTBOUND_TUNNEL_STREAMS, TUNNEL_PROTOCOL } from './constants.ts'

/**
 * `/kith/service-stream/1.0.0`: one TCP connection to one exposed service
 * (docs/protocols.md, "Friend services").
 *
 *   asker  -> { v:1, service:NAME }                       2-byte length + canonical CBOR
 *   holder -> { v:1, ok:true } | { v:1, ok:false, code, message }
 *   then raw bytes both ways; each side's close of its writing end is the
 *   TCP FIN of its side, a stream reset is a TCP reset.
 *
 * The asker sends nothing after its header until the answer came, so the
 * holder never connects on behalf of bytes it has not checked; the holder
 * may send service bytes right behind its answer (a server that speaks
 * first, like SSH), which the asker's Inbox keeps. No policy here: the
 * holder's service (exposer.ts) decides who gets in.
 */
const VERSION = 1

const openSchema = z.object({
  v: z.literal(VERSION),
  service: z.string().max(63).refine(isServiceName, 'must be a service name')
}).strict()

const answerSchema = z.union([
  z.object({ v: z.literal(VERSION), ok: z.literal(true) }).strict(),
  failureSchema(VERSION)
])

/** The holder's side: reads and checks the opening header. PROTOCOL_VIOLATION on anything else. */
export async function readOpen (inbox: Inbox, signal: AbortSignal): Promise<{ service: string }> {
  const bytes = await inbox.header(MAX_OPEN_HEADER, signal)
  const parsed = openSchema.safeParse(decodeCanonical(bytes, 'PROTOCOL_VIOLATION', 'the service stream header'))
  if (!parsed.success) throw new KithError('PROTOCOL_VIOLATION', `the service stream header is malformed: ${parsed.error.issues[0]?.message ?? ''}`)
  return { service: parsed.data.service }
}

/** The holder's answer: ok, or the failure (its message cleaned, so the asker never refuses it). */
export function answerBytes (failure?: KithError): Uint8Array {
  return frameHeader(encodeCanonical(failure == null
    ? { v: VERSION, ok: true }
    : { v: VERSION, ok: false, code: failure.code, message: cleanText(failure.message, MAX_FAILURE_MESSAGE) }))
}

export interface Dialer {
  dialProtocol: (peer: PeerId, protocol: string, options?: AbortOptions & { runOnLimitedConnection?: boolean, maxOutboundStreams?: number }) => Promise<Stream>
}

export interface OpenedTunnel {
  stream: Stream
  /** reads the rest of the stream: what the holder sent behind its answer is already in it */
  inbox: Inbox
}

/**
 * The asker's side: opens a stream to `peer`'s service `service` and waits
 * for the answer. Relayed connections are allowed (runOnLimitedConnection):
 * a page or a chat fits a relay's budget; where it does not, the relay ends
 * the connection and the caller says why (exposer.ts). Throws FRIEND_OFFLINE
 * when the stream can't open, the holder's code (SERVICE_UNKNOWN,
 * SERVICE_DOWN, SERVICE_BUSY...) when it refuses.
 */
export async function openTunnel (dialer: Dialer, peer: PeerId, service: string, signal: AbortSignal): Promise<OpenedTunnel> {
  let stream: Stream
  try {
    stream = await dialProtocol(dialer, peer, TUNNEL_PROTOCOL, { signal, runOnLimitedConnection: true, maxOutboundStreams: MAX_OUTBOUND_TUNNEL_STREAMS })
  } catch (err) {
    throw new KithError('FRIEND_OFFLINE', `can't reach them (${(err as Error).message}); they may be offline, or not offering services to you`, { cause: err })
  }
  const inbox = new Inbox(stream, HIGH_WATER)
  try {
    stream.send(frameHeader(encodeCanonical({ v: VERSION, service })))
    const bytes = await inbox.header(MAX_ANSWER_HEADER, signal)
    const parsed = answerSchema.safeParse(decodeCanonical(bytes, 'PROTOCOL_VIOLATION', 'the service stream answer'))
    if (!parsed.success) throw new KithError('PROTOCOL_VIOLATION', 'they sent a malformed service stream answer')
    const answer = parsed.data
    if (!answer.ok) throw new KithError(isErrorCode(answer.code) ? answer.code : 'PROTOCOL_VIOLATION', answer.message)
    return { stream, inbox }
  } catch (err) {
    inbox.dispose()
    stream.abort(err as Error)
    if (err instanceof KithError) throw err
    throw new KithError('FRIEND_OFFLINE', `the stream broke before they answered (${(err as Error).message || (err as Error).name})`, { cause: err })
  }
}
