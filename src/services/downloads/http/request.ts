import type { IncomingHttpHeaders } from 'node:http'
import type { Dispatcher } from 'undici'
import { KithError, type ErrorCode } from '../../../errors.ts'
import { MAX_REDIRECTS } from './constants.ts'
import { Response } from './response.ts'
import { parseRetryAfter } from './retry.ts'
import { ifRangeOf, sameVersion, validatorsOf, type Validators } from './validators.ts'

/**
 * One GET of (part of) a file with undici, following redirects by hand (a
 * limit, and a loop is an error rather than ten wasted round trips), and the
 * response read into what the engine needs: where its bytes start, how many
 * there are, the file's size and version. Statuses and network failures
 * become HttpErrors with stable codes, marked retryable or not.
 */

const USER_AGENT = 'kith (https://github.com/kith)'

export class HttpError extends KithError {
  /** the server's Retry-After, in ms */
  readonly retryAfterMs: number | null

  constructor (code: ErrorCode, message: string, options: ErrorOptions & { retryAfterMs?: number | null } = {}) {
    super(code, message, options)
    this.retryAfterMs = options.retryAfterMs ?? null
  }
}

/** The codes another attempt may cure. */
const RETRYABLE = new Set<ErrorCode>(['HTTP_BUSY', 'HTTP_SERVER_ERROR', 'HTTP_CONNECT_FAILED', 'HTTP_TIMEOUT', 'HTTP_CONNECTION_LOST'])

export function isRetryable (err: unknown): err is HttpError {
  return err instanceof KithError && RETRYABLE.has(err.code)
}

/** The file is not the version the bytes on disk came from (or it shrank): start over. */
export class OriginChanged extends Error {
  override name = 'OriginChanged'
}

export interface Opened {
  status: 200 | 206
  body: Response
  /** offset in the file of the body's first byte */
  start: number
  /** the body's length, when the server said */
  length: number | null
  /** the file's size, when known */
  total: number | null
  validators: Validators
  /** the server advertised byte ranges (or answered 206) */
  ranges: boolean
  /** where the redirects led */
  url: URL
  /** Content-Disposition's file name, else the last segment of the URL's path */
  name: string | undefined
}

export interface Want {
  /** first byte wanted */
  start: number
  /** one past the last byte wanted; null: to the end */
  end: number | null
  /** the version the bytes already held belong to (sent as If-Range) */
  known: Validators | null
  /** the file's size, when known: a response saying otherwise means it changed */
  total: number | null
}

export async function open (url: URL, want: Want, dispatcher: Dispatcher, signal: AbortSignal): Promise<Opened> {
  const seen = new Set<string>()
  let at = url
  for (let hop = 0; ; hop++) {
    seen.add(at.href)
    const headers: Record<string, string> = { 'user-agent': USER_AGENT, 'accept-encoding': 'identity' }
    // always a Range request: the answer tells whether the server takes ranges, and a probe costs no extra round trip
    headers.range = `bytes=${want.start}-${want.end != null ? want.end - 1 : ''}`
    const ifRange = want.known != null ? ifRangeOf(want.known) : null
    if (ifRange != null) headers['if-range'] = ifRange
    const res = new Response(signal)
    try {
      dispatcher.dispatch({ origin: at.origin, path: `${at.pathname}${at.search}`, method: 'GET', headers }, res)
      await res.head
    } catch (err) {
      throw networkError(err, at, signal)
    }
    const { statusCode: status } = res
    if (status >= 300 && status < 400 && status !== 304) {
      res.discard()
      const location = one(res.headers.location)
      if (location == null) throw new HttpError('HTTP_BAD_RESPONSE', `${at.href} answered ${status} without a Location to go to`)
      const next = parseLocation(location, at)
      if (seen.has(next.href)) throw new HttpError('HTTP_REDIRECT_LOOP', `${url.href} redirects in a loop (back to ${next.href}); the server is misconfigured`)
      if (hop + 1 > MAX_REDIRECTS) throw new HttpError('HTTP_TOO_MANY_REDIRECTS', `${url.href} redirected more than ${MAX_REDIRECTS} times; the last went to ${next.href}`)
      at = next
      continue
    }
    if (status === 200 || status === 206) return read(res, status, at, want)
    // an empty file has no byte 0 to give: some servers say 416 with "bytes */0" where others say 200
    if (status === 416 && want.start === 0 && /\/0$/.test(one(res.headers['content-range']) ?? '')) return read(res, 200, at, want)
    res.discard()
    throw statusError(status, res.headers, at, want)
  }
}

function read (res: Response, status: 200 | 206, url: URL, want: Want): Opened {
  const validators = validatorsOf(res.headers)
  const length = contentLength(res.headers)
  const name = dispositionName(one(res.headers['content-disposition'])) ?? lastSegment(url)
  const acceptRanges = one(res.headers['accept-ranges'])?.toLowerCase() === 'bytes'
  if (want.known != null && !sameVersion(want.known, validators)) {
    res.discard()
    throw new OriginChanged(`${url.href} changed at the origin (ETag or Last-Modified differ)`)
  }
  if (status === 200) {
    if (want.total != null && length != null && length !== want.total) {
      res.discard()
      throw new OriginChanged(`${url.href} is now ${length} bytes, not ${want.total}`)
    }
    return { status, body: res, start: 0, length, total: length, validators, ranges: acceptRanges, url, name }
  }
  const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(one(res.headers['content-range']) ?? '')
  const first = Number(range?.[1])
  const last = Number(range?.[2])
  const total = range?.[3] === '*' ? null : Number(range?.[3])
  const wantedLast = want.end != null ? want.end - 1 : (total ?? Infinity) - 1
  if (range == null || first !== want.start || last < first || last > wantedLast || (length != null && length !== last - first + 1)) {
    res.discard()
    throw new HttpError('HTTP_BAD_RESPONSE', `${url.href} answered the range ${want.start}- with "${one(res.headers['content-range']) ?? 'no Content-Range'}"; the server's byte ranges can't be trusted`)
  }
  if (want.total != null && total != null && total !== want.total) {
    res.discard()
    throw new OriginChanged(`${url.href} is now ${total} bytes, not ${want.total}`)
  }
  return { status, body: res, start: first, length: last - first + 1, total, validators, ranges: true, url, name }
}

function statusError (status: number, headers: IncomingHttpHeaders, url: URL, want: Want): Error {
  if (status === 416) return new OriginChanged(`${url.href} has no byte ${want.start} any more (416): it shrank`)
  if (status === 429 || status === 503) {
    const retryAfterMs = parseRetryAfter(one(headers['retry-after']))
    return new HttpError('HTTP_BUSY', `${url.href} answered ${status} (${status === 429 ? 'too many requests' : 'unavailable'}); try again later`, { retryAfterMs })
  }
  if (status === 408 || status >= 500) return new HttpError('HTTP_SERVER_ERROR', `${url.href} answered ${status}`)
  return new HttpError('HTTP_STATUS', `${url.href} answered ${status}${status === 404 ? ' (not found): check the URL' : status === 401 || status === 403 ? ' (not allowed): the URL may need credentials or have expired' : ''}`)
}

/** A network failure as an HttpError; the caller's abort as its reason. */
export function networkError (err: unknown, url: URL, signal: AbortSignal): unknown {
  if (signal.aborted) return signal.reason
  if (err instanceof KithError) return err
  const code = (err as { code?: string }).code ?? ''
  const why = (err as Error).message ?? String(err)
  const ours = (c: ErrorCode, m: string): HttpError => new HttpError(c, m, { cause: err })
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') return ours('HTTP_TIMEOUT', `${url.host} sent nothing for too long (${why}); it is retried`)
  if (code === 'UND_ERR_CONNECT_TIMEOUT' || ['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL'].includes(code)) {
    return ours('HTTP_CONNECT_FAILED', `could not connect to ${url.host}: ${why}${code === 'ENOTFOUND' ? ' (no such host: check the URL, or the DNS settings)' : ''}`)
  }
  if (TLS_UNTRUSTED.has(code)) {
    return ours('HTTP_TLS_UNTRUSTED', `${url.host}'s certificate is not trusted (${why}); if you trust the authority that signed it, start the daemon with NODE_EXTRA_CA_CERTS=/path/to/ca.pem (docs/downloads.md)`)
  }
  return ours('HTTP_CONNECTION_LOST', `the connection to ${url.host} broke: ${why}`)
}

/** OpenSSL's and Node's codes for a certificate that did not verify: retrying can't change the answer. */
const TLS_UNTRUSTED = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'CERT_UNTRUSTED', 'CERT_REJECTED',
  'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'CERT_REVOKED', 'CERT_SIGNATURE_FAILURE', 'INVALID_CA',
  'ERR_TLS_CERT_ALTNAME_INVALID'
])

/** Drops a body not (or no longer) wanted; undici's destroy emits an abort error nobody needs to hear. */
export function discard (body: Dispatcher.ResponseData['body']): void {
  body.on('error', () => {})
  body.destroy()
}

function parseLocation (location: string, base: URL): URL {
  let next: URL
  try {
    next = new URL(location, base)
  } catch {
    throw new HttpError('HTTP_BAD_RESPONSE', `${base.href} redirects to ${JSON.stringify(location)}, which is not a URL`)
  }
  if (next.protocol !== 'http:' && next.protocol !== 'https:') {
    throw new HttpError('HTTP_BAD_RESPONSE', `${base.href} redirects to ${next.protocol} URL; HTTP downloads follow http and https redirects only`)
  }
  next.hash = ''
  return next
}

function contentLength (headers: IncomingHttpHeaders): number | null {
  const text = one(headers['content-length'])
  return text != null && /^\d+$/.test(text) ? Number(text) : null
}

function dispositionName (value: string | undefined): string | undefined {
  if (value == null) return undefined
  const star = /filename\*\s*=\s*UTF-8''([^;]+)/i.exec(value)
  if (star != null) {
    try { return clean(decodeURIComponent(star[1]!.trim())) } catch {}
  }
  const plain = /filename\s*=\s*(?:"([^"]*)"|([^;]+))/i.exec(value)
  return clean((plain?.[1] ?? plain?.[2])?.trim())
}

function lastSegment (url: URL): string | undefined {
  const segment = url.pathname.split('/').at(-1) ?? ''
  try { return clean(decodeURIComponent(segment)) } catch { return clean(segment) }
}

/** A name as the origin gives it, reduced to its last path component; the queue checks it further. */
function clean (name: string | undefined): string | undefined {
  const base = name?.split(/[/\\]/).at(-1)?.replace(/\0/g, '')
  return base == null || base === '' || base === '.' || base === '..' ? undefined : base
}

/** The first value of a header node:http or undici may give as a list. */
export function one (value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value
}
