import { z } from 'zod'
import type { Stream } from '@libp2p/interface'
import { KithError, type ErrorCode } from '../errors.ts'
import { encodeCanonical, decodeCanonical } from './canonical.ts'
import { cleanText } from './text.ts'
import { safeText } from './safe-text.ts'
import { lengthPrefixed } from './length-decoders.ts'

/**
 * The answering side of kith's one-request, one-answer protocols (redeem,
 * files, locate, reach): read one length-prefixed canonical CBOR request
 * under a size limit, validate it, answer `{ v, ok: true, ...result }` or
 * `{ v, ok: false, code, message }`, close. Nothing a peer sends can throw out
 * of here.
 */
/**
 * Raw bytes an answer sends after itself, as length-prefixed frames, so
 * bulk bytes skip CBOR (the chunks of /kith/swarm/2.0.0):
 * `return { lengths, [TRAILER]: frames }`, one frame per Uint8Array the
 * iterable yields. Each frame has the whole timeout to itself (a long run
 * of chunks under an upload cap is not cut for its length); one that
 * fails to come (a file changed mid-way) resets the stream, the one way
 * left to tell the asker after the answer said ok. Not part of the CBOR
 * answer (symbol keys are not encoded).
 */
export const TRAILER = Symbol('trailer')

/** Longest message in a failure answer; what is sent is cut to it. */
export const MAX_FAILURE_MESSAGE = 1024

/**
 * The failure answer every one of these protocols shares. The message is a
 * friend's text that may reach a terminal: safe text only (src/peer/text.ts).
 * The code is mapped to a local code by the asker (`isErrorCode`).
 */
export function failureSchema (version: number) {
  return z.object({
    v: z.literal(version),
    ok: z.literal(false),
    code: z.string().regex(/^[A-Z][A-Z0-9_]{0,63}$/, 'must be an error code'),
    message: safeText(MAX_FAILURE_MESSAGE)
  }).strict()
}

export interface ServeOnceInit<Req> {
  /** protocol message version, echoed in `v` */
  version: number
  schema: z.ZodType<Req>
  /** largest request accepted, checked before it is read */
  maxRequest: number
  timeoutMs: number
  /** what the request is called in error messages, e.g. "the locate request" */
  what: string
}

export async function serveOnce<Req> (stream: Stream, init: ServeOnceInit<Req>,
  handle: (request: Req, signal: AbortSignal) => Promise<Record<string, unknown>>): Promise<void> {
  const signal = AbortSignal.timeout(init.timeoutMs)
  const lp = lengthPrefixed(stream, { maxDataLength: init.maxRequest })
  let response: Record<string, unknown>
  try {
    let bytes: Uint8Array
    try {
      bytes = (await lp.read({ signal })).subarray()
    } catch (err) {
      throw new KithError('PROTOCOL_VIOLATION', `${init.what} could not be read (${(err as Error).message})`)
    }
    const parsed = init.schema.safeParse(decodeCanonical(bytes, 'PROTOCOL_VIOLATION', init.what))
    if (!parsed.success) throw new KithError('PROTOCOL_VIOLATION', `${init.what} is malformed: ${parsed.error.issues[0]?.message ?? ''}`)
    response = { v: init.version, ok: true, ...(await handle(parsed.data, signal)) }
  } catch (err) {
    const code: ErrorCode = err instanceof KithError ? err.code : 'INTERNAL'
    // cleaned, so the asker never refuses the answer over a name quoted in it
    response = { v: init.version, ok: false, code, message: cleanText(err instanceof KithError ? err.message : `${init.what} failed`, MAX_FAILURE_MESSAGE) }
  }
  try {
    await lp.write(encodeCanonical(response), { signal })
    const trailer = (response as Record<symbol, AsyncIterable<Uint8Array> | undefined>)[TRAILER]
    if (trailer != null) for await (const frame of trailer) await lp.write(frame, { signal: AbortSignal.timeout(init.timeoutMs) })
    await stream.close({ signal: AbortSignal.timeout(init.timeoutMs) })
  } catch (err) {
    stream.abort(err as Error)
  }
}
