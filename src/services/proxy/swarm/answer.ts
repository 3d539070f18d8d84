import type { IncomingHttpHeaders, OutgoingHttpHeaders, ServerResponse } from 'node:http'
import { randomInt } from 'node:crypto'
import { request, type Dispatcher } from 'undici'
import { KithError } from '../../../errors.ts'
import type { PeerId } from '@libp2p/interface'
import type { BandwidthScheduler, Flow } from '../../../transfer/scheduler/index.ts'
import { discard, one } from '../../downloads/http/request.ts'
import { ifRangeOf, validatorsOf, type Validators } from '../../downloads/http/validators.ts'
import type { ProxyCache } from '../cache.ts'
import type { AheadVersion, ReadAhead } from '../read-ahead.ts'
import { drained } from '../drained.ts'
import type { ProxyService } from '../query.ts'
import { resolveRange, type ByteRange } from '../range.ts'
import { chunkMatches, chunkSpan, type HashList } from './hash-list.ts'
import type { Swarm } from './index.ts'
import { pull } from './pull.ts'

/**
 * A /proxy GET answered with friends' bytes (docs/proxy.md, "The friend
 * swarm"), or `false` before anything is answered when the swarm can't:
 * no online friend holds the class, no hash list checks out, the origin
 * has another version or does not answer ranges. Then the caller goes to
 * the origin as before.
 *
 * Trust: the hash list a friend signed is used only when the origin's
 * validators (ETag, else Last-Modified) and length are the list's, and one
 * chunk fetched from the origin (chosen at random in the span asked for)
 * hashes as the list says. Every chunk from anyone is checked against it.
 */
export interface SwarmAnswerInit {
  swarm: Swarm
  urls: readonly URL[]
  range: ByteRange | null
  qos: number
  /** the service the request gets (streaming: urgent flows) */
  service: (url: URL, contentType: string | null) => ProxyService
  dispatcher: Dispatcher
  cache: ProxyCache
  bandwidth: BandwidthScheduler
  userAgent: string
  signal: AbortSignal
  /** where a streaming answer's next chunks are read ahead */
  readAhead: ReadAhead
  /** aborts on the service's stop (a read-ahead outlives its request, not the service) */
  stopping: AbortSignal
}

export async function answerFromSwarm (res: ServerResponse, init: SwarmAnswerInit): Promise<boolean> {
  const classUrls = init.urls.map(u => u.href)
  const held = [...(await init.swarm.holders(classUrls, init.signal)).values()].sort((a, b) => b.friends.length - a.friends.length)[0]
  if (held == null) return false
  const got = await init.swarm.hashList(held.holding.hash, held.friends, init.signal)
  if (got == null) return false
  const { list } = got
  let first = 0
  let last = list.length - 1
  if (init.range != null) {
    const span = resolveRange(init.range, list.length)
    if (span == null) return false
    ;[first, last] = span
  }
  const from = Math.floor(first / list.chunkSize)
  const to = Math.floor(last / list.chunkSize)

  const originFlow = init.bandwidth.flow({ direction: 'down', class: 'public', priority: 'normal', label: 'proxy', ...(init.qos > 0 ? { floor: init.qos } : {}) })
  try {
    const sampleIndex = randomInt(from, to + 1)
    const sample = await sampleOrigin(init, list, sampleIndex, originFlow)
    if (sample == null) return false
    const service = init.service(sample.url, sample.contentType)
    originFlow.setPriority(service === 'streaming' ? 'urgent' : 'normal')
    const whole = first === 0 && last === list.length - 1
    const headers: OutgoingHttpHeaders = { 'x-kith-source': 'friends', 'x-kith-service': service, 'accept-ranges': 'bytes', 'content-length': last - first + 1 }
    if (sample.contentType != null) headers['content-type'] = sample.contentType
    if (sample.validators.etag != null) headers.etag = sample.validators.etag
    if (sample.validators.lastModified != null) headers['last-modified'] = sample.validators.lastModified
    if (init.range != null) headers['content-range'] = `bytes ${first}-${last}/${list.length}`
    res.writeHead(init.range != null ? 206 : 200, headers)
    res.flushHeaders()
    init.swarm.counted('origin', sample.bytes.length)

    // every chunk is checked against the list before it is given: the list's hashes are the file's, not made again
    let writer = whole ? await init.cache.writer(init.urls, sample.validators, list.length, sample.contentType, list.chunks).catch(() => null) : null
    const chunks = pull({
      list,
      from,
      to,
      friends: held.friends,
      dialer: init.swarm.dialer,
      origin: async (index, signal) => await originChunk(init, sample.url, list, index, originFlow, signal),
      bandwidth: init.bandwidth,
      qos: init.qos,
      priority: service === 'streaming' ? 'urgent' : 'normal',
      have: new Map([[sampleIndex, sample.bytes]]),
      signal: init.signal,
      onChunk: (source, bytes) => { init.swarm.counted(source, bytes) }
    })
    try {
      let index = from
      for await (const bytes of chunks) {
        if (res.destroyed) break
        if (writer != null) {
          try {
            await writer.write(bytes)
            if (writer.complete) await writer.commit()
          } catch (err) {
            await writer.abort()
            writer = null
            console.error(`kith proxy: the cache could not keep a file: ${(err as Error).message}`)
          }
        }
        const [at] = chunkSpan(list, index++)
        const part = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).subarray(Math.max(0, first - at), Math.min(bytes.length, last - at + 1))
        if (!res.write(part)) await drained(res)
      }
      if (res.destroyed) throw new KithError('FETCH_ABORTED', 'the client closed the connection')
      res.end()
      // a player's next range usually starts here: its chunks read ahead from friends (docs/proxy.md, "Read-ahead")
      if (service === 'streaming' && init.range != null && last + 1 < list.length && !init.stopping.aborted) {
        const version: AheadVersion = { url: sample.url.href, ...sample.validators, length: list.length, contentType: sample.contentType }
        init.readAhead.start(version, last + 1, (first, end, signal) => swarmRange(init, list, held.friends, sample.url, first, end, AbortSignal.any([signal, init.stopping])))
      }
    } catch (err) {
      // the status is sent: a cut connection is the one way left to say the bytes are not whole
      await writer?.abort()
      res.destroy()
      if (!init.signal.aborted) console.error(`kith proxy: a swarm answer failed mid-way: ${(err as Error).message}`)
    }
    return true
  } finally {
    originFlow.close()
  }
}

/**
 * Bytes first..end-1 of the list's file pulled from friends (the origin
 * topping up by qos, through a flow of its own), for a read-ahead.
 */
async function * swarmRange (init: SwarmAnswerInit, list: HashList, friends: PeerId[], url: URL, first: number, end: number, signal: AbortSignal): AsyncGenerator<Buffer> {
  const originFlow = init.bandwidth.flow({ direction: 'down', class: 'public', priority: 'urgent', label: 'proxy', ...(init.qos > 0 ? { floor: init.qos } : {}) })
  try {
    let index = Math.floor(first / list.chunkSize)
    for await (const bytes of pull({
      list,
      from: index,
      to: Math.floor((end - 1) / list.chunkSize),
      friends,
      dialer: init.swarm.dialer,
      origin: async (i, s) => await originChunk(init, url, list, i, originFlow, s),
      bandwidth: init.bandwidth,
      qos: init.qos,
      priority: 'urgent',
      signal,
      onChunk: (source, n) => { init.swarm.counted(source, n) }
    })) {
      const [at] = chunkSpan(list, index++)
      yield Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).subarray(Math.max(0, first - at), Math.min(bytes.length, end - at))
    }
  } finally {
    originFlow.close()
  }
}

interface Sample {
  url: URL
  bytes: Uint8Array
  validators: Validators
  contentType: string | null
}

/**
 * One chunk of the origin's current version, for the cross-check: null
 * when the origin has another version (validators or length), gives no
 * validator to tell versions by, does not answer the range, or its bytes
 * are not the list's.
 */
async function sampleOrigin (init: SwarmAnswerInit, list: HashList, index: number, flow: Flow): Promise<Sample | null> {
  for (const url of init.urls) {
    try {
      const answer = await rangeOf(init, url, list, index, null, init.signal)
      const validators = validatorsOf(answer.headers)
      if (!versionMatches(list, validators, answer.headers, index)) { discard(answer.body); return null }
      const bytes = await body(answer, list, index, flow, init.signal)
      if (!chunkMatches(list, index, bytes)) return null
      return { url, bytes, validators, contentType: one(answer.headers['content-type']) ?? null }
    } catch {
      if (init.signal.aborted) throw init.signal.reason
    }
  }
  return null
}

/** Chunk `index` from the origin, under If-Range: another version answers 200, refused here. */
async function originChunk (init: SwarmAnswerInit, url: URL, list: HashList, index: number, flow: Flow, signal: AbortSignal): Promise<Uint8Array> {
  const answer = await rangeOf(init, url, list, index, ifRangeOf(list), signal)
  if (!versionMatches(list, validatorsOf(answer.headers), answer.headers, index)) {
    discard(answer.body)
    throw new KithError('HTTP_BAD_RESPONSE', `${url.href} has another version now than the one this download began with`)
  }
  return await body(answer, list, index, flow, signal)
}

async function rangeOf (init: SwarmAnswerInit, url: URL, list: HashList, index: number, ifRange: string | null, signal: AbortSignal): Promise<Dispatcher.ResponseData> {
  const [first, end] = chunkSpan(list, index)
  const headers: Record<string, string> = { 'user-agent': init.userAgent, 'accept-encoding': 'identity', range: `bytes=${first}-${end - 1}` }
  if (ifRange != null) headers['if-range'] = ifRange
  return await request(url, { method: 'GET', headers, dispatcher: init.dispatcher, signal })
}

/** The answer is a 206 of exactly chunk `index` of a file of the list's length, under the list's validators. */
function versionMatches (list: HashList, seen: Validators, headers: IncomingHttpHeaders, index: number): boolean {
  const [first, end] = chunkSpan(list, index)
  if (one(headers['content-range']) !== `bytes ${first}-${end - 1}/${list.length}`) return false
  if (list.etag != null && seen.etag != null) return list.etag === seen.etag
  if (list.lastModified != null && seen.lastModified != null) return list.lastModified === seen.lastModified
  // no validator in common: versions can't be told apart, the swarm is not used
  return false
}

async function body (answer: Dispatcher.ResponseData, list: HashList, index: number, flow: Flow, signal: AbortSignal): Promise<Uint8Array> {
  if (answer.statusCode !== 206) { discard(answer.body); throw new KithError('HTTP_BAD_RESPONSE', `the origin answered ${answer.statusCode} to a range`) }
  const [first, end] = chunkSpan(list, index)
  const parts: Buffer[] = []
  let got = 0
  for await (const part of answer.body as AsyncIterable<Buffer>) {
    got += part.length
    if (got > end - first) { discard(answer.body); throw new KithError('HTTP_BAD_RESPONSE', 'the origin sent more than the range asked') }
    await flow.take(part.length, signal)
    parts.push(part)
  }
  return Buffer.concat(parts)
}
