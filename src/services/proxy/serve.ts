import type { IncomingMessage, ServerResponse, OutgoingHttpHeaders, IncomingHttpHeaders } from 'node:http'
import { open, type FileHandle } from 'node:fs/promises'
import { pipeline } from 'node:stream/promises'
import { request, type Dispatcher } from 'undici'
import { KithError } from '../../errors.ts'
import type { BandwidthScheduler } from '../../transfer/scheduler/index.ts'
import { discard, HttpError, networkError, one } from '../downloads/http/request.ts'
import { ifRangeOf, sameVersion, validatorsOf } from '../downloads/http/validators.ts'
import type { CacheEntry, ProxyCache } from './cache.ts'
import { serviceFor } from './content-kind.ts'
import type { ProxyQuery } from './query.ts'
import { drained } from './drained.ts'
import { fromStart, parseRange, resolveRange } from './range.ts'
import { REVALIDATE_TIMEOUT_MS } from './constants.ts'
import type { AheadSpan, AheadVersion, ReadAhead } from './read-ahead.ts'
import type { Swarm } from './swarm/index.ts'
import { answerFromSwarm } from './swarm/answer.ts'
import { MAX_REDIRECTS } from '../downloads/http/constants.ts'

/**
 * One /proxy request answered (docs/proxy.md): from the cache when the
 * origin confirms the kept version is current (a conditional HEAD), else
 * from the first origin of the class that answers, its bytes streamed to
 * the client as they arrive through a bandwidth flow of the engine's
 * scheduler (class public; urgent for streaming; qos as the flow's floor),
 * and kept in the cache when the whole file went by. Before the origin,
 * friends who hold the file are asked (swarm/answer.ts): their verified
 * chunks, the origin topping up by qos.
 */
export interface ServeContext {
  dispatcher: Dispatcher
  cache: ProxyCache
  bandwidth: BandwidthScheduler
  /** aborts on the service's stop */
  signal: AbortSignal
  /** the friend swarm; null: origin only */
  swarm: Swarm | null
  /** streaming answers' read-ahead beyond a bounded range */
  readAhead: ReadAhead
}

const USER_AGENT = 'kith-proxy (https://github.com/kith)'
/** what goes from the origin's answer to the client's */
const PASSED = ['content-length', 'content-type', 'etag', 'last-modified', 'accept-ranges', 'content-range'] as const

export async function serve (req: IncomingMessage, res: ServerResponse, query: ProxyQuery, ctx: ServeContext): Promise<void> {
  // the client going away stops the fetch for it (what it got whole is in the cache already); the service's stop stops all
  const controller = new AbortController()
  const signal = AbortSignal.any([controller.signal, ctx.signal])
  res.on('close', () => { if (!res.writableFinished) controller.abort(new KithError('FETCH_ABORTED', 'the client closed the connection')) })
  const head = req.method === 'HEAD'
  const range = parseRange(one(req.headers.range))

  // the cache and the swarm are by-products: their failing (a disk full or unwritable, a database that fails, a bug)
  // is logged, and the origin answers, as without them
  const entry = ctx.cache.find(query.urls)
  if (entry != null) {
    // opened before anything is answered: a file gone from under the index is fetched again, not a broken answer
    const file = await open(ctx.cache.path(entry), 'r').catch(() => null)
    if (file != null && await current(entry, query.urls, ctx.dispatcher, signal).catch(async err => { await file.close(); throw err })) {
      await ctx.cache.touch(entry).catch(cacheFailed)
      await fromCache(res, file, entry, range, head, serviceFor(query.service, query.urls[0]!, entry.contentType))
      return
    }
    await file?.close()
    // the origin has another version now (or can't say), or the file is gone: never serve the old one
    await ctx.cache.remove(entry).catch(cacheFailed)
  }

  // a player's next range, read ahead behind its last one
  const ahead = range != null && !head ? ctx.readAhead.find(query.urls, range) : null
  if (ahead != null) { await fromReadAhead(res, ahead, query, ctx, signal); return }

  if (ctx.swarm != null && !head && await fromSwarm(res, query, range, ctx, signal)) return

  const { answer, url } = await openOrigin(query.urls, head ? 'HEAD' : 'GET', range != null ? one(req.headers.range)! : null, ctx.dispatcher, signal)
  const service = serviceFor(query.service, url, one(answer.headers['content-type']) ?? null)
  const headers: OutgoingHttpHeaders = { 'x-kith-source': 'origin', 'x-kith-service': service }
  for (const name of PASSED) {
    const value = one(answer.headers[name])
    if (value != null) headers[name] = value
  }
  res.writeHead(answer.statusCode, headers)
  if (head) { discard(answer.body); res.end(); return }
  // the status goes out now: a player sees its answer begin (time to first byte), and a failure from here on is a cut a client can tell
  res.flushHeaders()

  const total = answer.statusCode === 200 ? numberOf(answer.headers['content-length']) : totalOf(answer.headers['content-range'])
  const whole = fromStart(range) && (answer.statusCode === 200 || /^bytes 0-/.test(one(answer.headers['content-range']) ?? ''))
  // the cache is a by-product: a disk that fails it (full, unwritable) stops the keeping, never the client's answer
  let writer = whole ? await ctx.cache.writer(query.urls, validatorsOf(answer.headers), total, one(answer.headers['content-type']) ?? null).catch(cacheFailed) : null
  const keep = async (chunk: Buffer): Promise<void> => {
    try {
      await writer!.write(chunk)
      // kept before the last byte goes: what a client has whole is in the cache
      if (writer!.complete) await writer!.commit()
    } catch (err) {
      await writer!.abort()
      writer = cacheFailed(err)
    }
  }
  const flow = ctx.bandwidth.flow({ direction: 'down', class: 'public', priority: service === 'streaming' ? 'urgent' : 'normal', label: 'proxy', ...(query.qos > 0 ? { floor: query.qos } : {}) })
  try {
    for await (const chunk of answer.body as AsyncIterable<Buffer>) {
      if (res.destroyed) break
      await flow.take(chunk.length, signal)
      if (writer != null) await keep(chunk)
      if (!res.write(chunk)) await drained(res)
    }
    if (res.destroyed) throw new KithError('FETCH_ABORTED', 'the client closed the connection')
    await writer?.commit().catch(cacheFailed)
    res.end()
    if (service === 'streaming' && answer.statusCode === 206) readAheadAfter(ctx, url, answer.headers)
  } catch (err) {
    // the status is sent: a cut connection is the one way left to say the bytes are not whole (curl: "partial file")
    await writer?.abort()
    discard(answer.body)
    res.destroy()
    if (!signal.aborted) console.error(`kith proxy: ${url.href} failed mid-way: ${(err as Error).message}`)
  } finally {
    flow.close()
  }
}

/**
 * A range answered from a read-ahead span (read-ahead.ts): its bytes as
 * they arrive, then, past the span, the origin's under If-Range (another
 * version there cuts the answer: bytes of two versions are never mixed).
 * The span's bytes went through a flow when they were fetched; what the
 * origin adds takes the request's own.
 */
async function fromReadAhead (res: ServerResponse, ahead: { span: AheadSpan, first: number, last: number }, query: ProxyQuery, ctx: ServeContext, signal: AbortSignal): Promise<void> {
  const { span, first, last } = ahead
  const version = span.version
  const service = serviceFor(query.service, new URL(version.url), version.contentType)
  const headers: OutgoingHttpHeaders = { 'x-kith-source': 'read-ahead', 'x-kith-service': service, 'accept-ranges': 'bytes', 'content-range': `bytes ${first}-${last}/${version.length}`, 'content-length': last - first + 1 }
  if (version.contentType != null) headers['content-type'] = version.contentType
  if (version.etag != null) headers.etag = version.etag
  if (version.lastModified != null) headers['last-modified'] = version.lastModified
  res.writeHead(206, headers)
  res.flushHeaders()
  let at = first
  const send = async (parts: AsyncIterable<Buffer>): Promise<void> => {
    for await (const part of parts) {
      if (res.destroyed) throw new KithError('FETCH_ABORTED', 'the client closed the connection')
      const piece = part.subarray(0, Math.min(part.length, last + 1 - at))
      at += piece.length
      if (!res.write(piece)) await drained(res)
      if (at > last) return
    }
  }
  try {
    await send(span.from(first))
    if (at <= last) await send(originRange(ctx, version, at, last + 1, service === 'streaming' ? 'urgent' : 'normal', query.qos, signal))
    if (at <= last || res.destroyed) throw new KithError('FETCH_ABORTED', at <= last ? 'the origin ended before the range' : 'the client closed the connection')
    res.end()
    // the client read on into the span: the next read-ahead is longer, and comes from where this one did (origin or friends)
    if (service === 'streaming' && !ctx.signal.aborted) ctx.readAhead.readOn(span, last + 1)
  } catch (err) {
    res.destroy()
    if (!signal.aborted) console.error(`kith proxy: ${version.url} failed mid-way: ${(err as Error).message}`)
  }
}

/** After a streaming 206 of a bounded range that ends before the file does, with a validator: the next bytes, read ahead. */
function readAheadAfter (ctx: ServeContext, url: URL, headers: IncomingHttpHeaders): void {
  const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(one(headers['content-range']) ?? '')
  const validators = validatorsOf(headers)
  if (m == null || ifRangeOf(validators) == null) return
  startReadAhead(ctx, { url: url.href, ...validators, length: Number(m[3]), contentType: one(headers['content-type']) ?? null }, Number(m[2]) + 1, 0)
}

function startReadAhead (ctx: ServeContext, version: AheadVersion, from: number, qos: number): void {
  if (ctx.signal.aborted) return
  ctx.readAhead.start(version, from, (first, end, signal) => originRange(ctx, version, first, end, 'urgent', qos, AbortSignal.any([signal, ctx.signal])))
}

/**
 * Bytes first..end-1 of `version` from its origin, under If-Range and
 * through a flow of their own (class public; a read-ahead's urgent, as a
 * player waits for them); another version, or any other answer than exactly that range,
 * fails with HTTP_BAD_RESPONSE before a byte.
 */
async function * originRange (ctx: ServeContext, version: AheadVersion, first: number, end: number, priority: 'urgent' | 'normal', qos: number, signal: AbortSignal): AsyncGenerator<Buffer> {
  const url = new URL(version.url)
  const answer = await request(url, { method: 'GET', headers: { 'user-agent': USER_AGENT, 'accept-encoding': 'identity', range: `bytes=${first}-${end - 1}`, 'if-range': ifRangeOf(version)! }, dispatcher: ctx.dispatcher, signal })
  if (answer.statusCode !== 206 || one(answer.headers['content-range']) !== `bytes ${first}-${end - 1}/${version.length}`) {
    discard(answer.body)
    throw new KithError('HTTP_BAD_RESPONSE', `${url.href} answered ${answer.statusCode} ${one(answer.headers['content-range']) ?? ''} to a range of the version read before: it has another version now`)
  }
  const flow = ctx.bandwidth.flow({ direction: 'down', class: 'public', priority, label: 'proxy', ...(qos > 0 ? { floor: qos } : {}) })
  try {
    for await (const part of answer.body as AsyncIterable<Buffer>) {
      await flow.take(part.length, signal)
      yield part
    }
  } finally {
    flow.close()
    discard(answer.body)
  }
}

/**
 * Whether friends answered (swarm/answer.ts). A swarm that fails before
 * the status went out leaves the answer to the origin; after, the answer
 * is cut, as any failure mid-way.
 */
async function fromSwarm (res: ServerResponse, query: ProxyQuery, range: ReturnType<typeof parseRange>, ctx: ServeContext, signal: AbortSignal): Promise<boolean> {
  try {
    return await answerFromSwarm(res, {
      swarm: ctx.swarm!,
      urls: query.urls,
      range,
      qos: query.qos,
      service: (url, contentType) => serviceFor(query.service, url, contentType),
      dispatcher: ctx.dispatcher,
      cache: ctx.cache,
      bandwidth: ctx.bandwidth,
      userAgent: USER_AGENT,
      signal,
      readAhead: ctx.readAhead,
      stopping: ctx.signal
    })
  } catch (err) {
    if (signal.aborted || res.headersSent) throw err
    console.error(`kith proxy: the friend swarm failed (${(err as Error).message}); the origin answers`)
    return false
  }
}

/**
 * The first origin of the class that answers with bytes; statuses other
 * than 200 and 206, and network failures, move on to the next. When all
 * fail, the last origin's status (as HTTP_STATUS with that status) or
 * network error is thrown.
 */
async function openOrigin (urls: readonly URL[], method: 'GET' | 'HEAD', range: string | null, dispatcher: Dispatcher, signal: AbortSignal): Promise<{ answer: Dispatcher.ResponseData, url: URL }> {
  let last: unknown = null
  for (const url of urls) {
    const headers: Record<string, string> = { 'user-agent': USER_AGENT, 'accept-encoding': 'identity' }
    if (range != null) headers.range = range
    try {
      const answer = await request(url, { method, headers, dispatcher, signal })
      if (answer.statusCode === 200 || answer.statusCode === 206) return { answer, url }
      discard(answer.body)
      // a redirect still standing once the interceptor stopped following: past the limit
      last = answer.statusCode >= 300 && answer.statusCode < 400
        ? new HttpError('HTTP_TOO_MANY_REDIRECTS', `${url.href} redirected more than ${MAX_REDIRECTS} times`)
        : new OriginStatus(answer.statusCode, url, answer.headers)
    } catch (err) {
      if (signal.aborted) throw signal.reason
      // undici's redirect interceptor refuses a Location that is not http(s), and a loop
      last = (err as { code?: string }).code === 'UND_ERR_INVALID_ARG'
        ? new HttpError('HTTP_BAD_RESPONSE', `${url.href} redirects where the proxy does not follow (${(err as Error).message}); it follows http and https redirects only`)
        : networkError(err, url, signal)
    }
  }
  throw last
}

/** The origin's own refusal (404, 416, 500...), answered to the client with that status. */
export class OriginStatus extends HttpError {
  readonly httpStatus: number
  readonly headers: OutgoingHttpHeaders

  constructor (status: number, url: URL, headers: IncomingHttpHeaders) {
    super('HTTP_STATUS', `${url.href} answered ${status}; a client may fetch the origin itself`)
    this.httpStatus = status
    const contentRange = one(headers['content-range'])
    this.headers = contentRange != null ? { 'content-range': contentRange } : {}
  }

  override get status (): number {
    return this.httpStatus
  }
}

/**
 * Whether the kept entry is the version the origin has now: a HEAD with
 * If-None-Match (ETag) or If-Modified-Since; 304, or 200 with the same
 * validators and length, says yes. Any failure says no.
 */
async function current (entry: CacheEntry, urls: readonly URL[], dispatcher: Dispatcher, signal: AbortSignal): Promise<boolean> {
  const url = urls.find(u => entry.urls.includes(u.href)) ?? urls[0]!
  const headers: Record<string, string> = { 'user-agent': USER_AGENT, 'accept-encoding': 'identity' }
  if (entry.etag != null) headers['if-none-match'] = entry.etag
  else if (entry.lastModified != null) headers['if-modified-since'] = entry.lastModified
  try {
    const answer = await request(url, { method: 'HEAD', headers, dispatcher, signal: AbortSignal.any([signal, AbortSignal.timeout(REVALIDATE_TIMEOUT_MS)]) })
    discard(answer.body)
    if (answer.statusCode === 304) return entry.etag == null || one(answer.headers.etag) == null || one(answer.headers.etag) === entry.etag
    if (answer.statusCode !== 200) return false
    const seen = validatorsOf(answer.headers)
    const length = numberOf(answer.headers['content-length'])
    return (seen.etag != null || seen.lastModified != null) && sameVersion(entry, seen) && (length == null || length === entry.length)
  } catch {
    if (signal.aborted) throw signal.reason
    return false
  }
}

async function fromCache (res: ServerResponse, file: FileHandle, entry: CacheEntry, range: ReturnType<typeof parseRange>, head: boolean, service: string): Promise<void> {
  const headers: OutgoingHttpHeaders = { 'x-kith-source': 'cache', 'x-kith-service': service, 'accept-ranges': 'bytes' }
  if (entry.contentType != null) headers['content-type'] = entry.contentType
  if (entry.etag != null) headers.etag = entry.etag
  if (entry.lastModified != null) headers['last-modified'] = entry.lastModified
  let first = 0
  let last = entry.length - 1
  let status = 200
  if (range != null) {
    const span = resolveRange(range, entry.length)
    if (span == null) {
      await file.close()
      res.writeHead(416, { ...headers, 'content-range': `bytes */${entry.length}`, 'content-length': 0 })
      res.end()
      return
    }
    [first, last] = span
    status = 206
    headers['content-range'] = `bytes ${first}-${last}/${entry.length}`
  }
  headers['content-length'] = Math.max(0, last - first + 1)
  res.writeHead(status, headers)
  if (head || entry.length === 0) { await file.close(); res.end(); return }
  // local disk to a local program: no network byte moves, so no flow (the stream closes the file)
  await pipeline(file.createReadStream({ start: first, end: last }), res).catch(() => res.destroy())
}

function cacheFailed (err: unknown): null {
  console.error(`kith proxy: the cache could not keep a file: ${(err as Error).message}`)
  return null
}

function numberOf (value: string | string[] | undefined): number | null {
  const text = one(value)
  return text != null && /^\d+$/.test(text) ? Number(text) : null
}

function totalOf (value: string | string[] | undefined): number | null {
  const m = /\/(\d+)$/.exec(one(value) ?? '')
  return m == null ? null : Number(m[1])
}
