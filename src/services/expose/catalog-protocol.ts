import { z } from 'zod'
import type { AbortOptions, PeerId, Stream } from '@libp2p/interface'
import { KithError, isErrorCode } from '../../errors.ts'
import { decodeCanonical, encodeCanonical } from '../../peer/canonical.ts'
import { failureSchema, serveOnce } from '../../peer/request-response.ts'
import { dialProtocol } from '../../peer/dial.ts'
import { safeText } from '../../peer/safe-text.ts'
import { isServiceName } from './names.ts'
import { CATALOG_PROTOCOL, CATALOG_TIMEOUT_MS, MAX_CATALOG_REQUEST, MAX_CATALOG_RESPONSE, MAX_DESCRIPTION_LENGTH, MAX_EXPOSED } from './constants.ts'
import type { Dialer } from './tunnel-protocol.ts'
import { lengthPrefixed } from '../../peer/length-decoders.ts'

/**
 * `/kith/services/1.0.0`: what a friend offers me (docs/protocols.md,
 * "Friend services"). Any active friend may ask; each hears only of the
 * services granted to them (an empty list otherwise, so the answer does
 * not tell what others are offered).
 *
 *   { v:1, op:'list' }  ->  { v:1, ok:true, services:[{ name, description }] }
 *   any failure         ->  { v:1, ok:false, code, message }
 *
 * Names and descriptions are a friend's text: checked here (names as
 * service names, descriptions as safe text) and escaped again where printed.
 */
const VERSION = 1

export interface Offer {
  name: string
  description: string
}

const requestSchema = z.object({ v: z.literal(VERSION), op: z.literal('list') }).strict()

const offerSchema = z.object({
  name: z.string().max(63).refine(isServiceName, 'must be a service name'),
  description: safeText(MAX_DESCRIPTION_LENGTH)
}).strict()

/** The answer to `list`, as the asker parses it (exported for tests). */
export const catalogResponse = z.union([
  z.object({ v: z.literal(VERSION), ok: z.literal(true), services: z.array(offerSchema).max(MAX_EXPOSED) }).strict(),
  failureSchema(VERSION)
])

/** Answers with what `offers(peer)` says this friend may use. */
export function catalogHandler (offers: (peer: string) => Offer[]) {
  return async (stream: Stream, connection: { remotePeer: PeerId }): Promise<void> => {
    const peer = connection.remotePeer.toString()
    await serveOnce(stream, { version: VERSION, schema: requestSchema, maxRequest: MAX_CATALOG_REQUEST, timeoutMs: CATALOG_TIMEOUT_MS, what: 'the services request' },
      async () => ({ services: offers(peer) }))
  }
}

/** Asks `peer` what they offer me. FRIEND_OFFLINE when they can't be asked, PROTOCOL_VIOLATION on a bad answer. */
export async function askCatalog (dialer: Dialer, peer: PeerId, options: AbortOptions = {}): Promise<Offer[]> {
  const signal = options.signal ?? AbortSignal.timeout(CATALOG_TIMEOUT_MS)
  let stream: Stream
  try {
    stream = await dialProtocol(dialer, peer, CATALOG_PROTOCOL, { signal, runOnLimitedConnection: true })
  } catch (err) {
    throw new KithError('FRIEND_OFFLINE', `can't ask them (${(err as Error).message}); they may be offline, or run a kith without friend services`, { cause: err })
  }
  const lp = lengthPrefixed(stream, { maxDataLength: MAX_CATALOG_RESPONSE })
  try {
    await lp.write(encodeCanonical({ v: VERSION, op: 'list' }), { signal })
    const reply = catalogResponse.safeParse(decodeCanonical((await lp.read({ signal })).subarray(), 'PROTOCOL_VIOLATION', 'the services answer'))
    await stream.close({ signal }).catch(() => {})
    if (!reply.success) throw new KithError('PROTOCOL_VIOLATION', `they sent a malformed services answer: ${reply.error.issues[0]?.message ?? ''}`)
    const data = reply.data
    if (!data.ok) throw new KithError(isErrorCode(data.code) ? data.code : 'PROTOCOL_VIOLATION', data.message)
    return data.services
  } catch (err) {
    stream.abort(err as Error)
    if (err instanceof KithError) throw err
    throw new KithError('FRIEND_OFFLINE', `the connection broke while asking (${(err as Error).message || (err as Error).name})`, { cause: err })
  }
}
