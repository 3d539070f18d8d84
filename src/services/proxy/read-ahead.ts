import { KithError } from '../../errors.ts'
import { READ_AHEAD_BYTES, READ_AHEAD_FIRST_BYTES, READ_AHEAD_MEMORY, READ_AHEAD_TTL_MS } from './constants.ts'
import { resolveRange, type ByteRange } from './range.ts'

/**
 * Read-ahead for streaming (docs/proxy.md, "Read-ahead"): a player's next
 * Range usually starts right after the one it just got, so once a
 * streaming answer of a bounded range ends before the file does, the next
 * READ_AHEAD_FIRST_BYTES are fetched from the origin behind it and held in
 * memory. A request that starts inside a span held (or still arriving) is
 * answered from it as its bytes come, and the origin is asked only for
 * what lies beyond; the read-ahead after it is twice as long, up to
 * READ_AHEAD_BYTES, as the client reads on. A request for the same URL
 * that starts outside its spans is a seek: they are dropped, their
 * fetches stopped, and the next read-ahead starts again from the first
 * size (a player that seeks does not cost 8 MiB of unused bytes each
 * time). All spans together hold at most READ_AHEAD_MEMORY
 * bytes (the oldest go first, their fetch stopped); a span is dropped
 * READ_AHEAD_TTL_MS after it began, so it is never an old version kept
 * long.
 *
 *   readAhead.start(version, from, (first, end, signal) => originBytes(...))
 *   const found = readAhead.find(urls, range)   // { span, first, last }: then span.from(first)
 *   readAhead.readOn(found.span, found.last + 1)   // the client read on: the next one, longer
 */
export interface AheadVersion {
  /** the URL the bytes come from */
  url: string
  etag: string | null
  lastModified: string | null
  /** the whole file's length */
  length: number
  contentType: string | null
}

/** bytes first..end-1 of the version, as the origin gives them */
export type AheadFetch = (first: number, end: number, signal: AbortSignal) => AsyncIterable<Buffer>

export class AheadSpan {
  readonly version: AheadVersion
  readonly start: number
  /** where the span aims to end (exclusive) */
  readonly end: number
  /** where its bytes come from (the origin, or friends): the read-ahead after it fetches the same way */
  readonly fetch: AheadFetch
  readonly began = performance.now()
  private readonly parts: Buffer[] = []
  /** bytes held: start..held-1 */
  private held: number
  private ended = false
  readonly stopping = new AbortController()
  private wake: () => void = () => {}
  private changed: Promise<void>

  constructor (version: AheadVersion, start: number, end: number, fetch: AheadFetch) {
    this.version = version
    this.start = start
    this.end = end
    this.fetch = fetch
    this.held = start
    this.changed = new Promise(resolve => { this.wake = resolve })
  }

  /** the offset its bytes reach now (exclusive) */
  get reached (): number {
    return this.held
  }

  /** Whether `offset` is or will be in it: held, or before its end while its fetch goes on. */
  covers (offset: number): boolean {
    return offset >= this.start && (offset < this.held || (!this.ended && offset < this.end))
  }

  /** Its bytes from `offset` on, as they arrive, until its fetch ends (whole, failed or stopped). */
  async * from (offset: number): AsyncGenerator<Buffer> {
    let at = this.start
    let next = 0
    for (;;) {
      while (next < this.parts.length) {
        const part = this.parts[next++]!
        const first = at
        at += part.length
        if (at > offset) yield part.subarray(Math.max(0, offset - first))
      }
      if (this.ended) return
      await this.changed
    }
  }

  async fill (): Promise<void> {
    try {
      for await (const part of this.fetch(this.start, this.end, this.stopping.signal)) {
        if (this.held + part.length > this.end) throw new KithError('HTTP_BAD_RESPONSE', 'the origin sent more than the read-ahead asked')
        this.parts.push(part)
        this.held += part.length
        this.notify()
      }
    } catch {
      // a read-ahead that fails leaves what came; a reader goes to the origin for the rest
    } finally {
      this.ended = true
      this.notify()
    }
  }

  private notify (): void {
    const wake = this.wake
    this.changed = new Promise(resolve => { this.wake = resolve })
    wake()
  }
}

export class ReadAhead {
  private readonly maxBytes: number
  private readonly spanBytes: number
  private readonly firstBytes: number
  /** spans, oldest first */
  private spans: AheadSpan[] = []

  constructor (maxBytes = READ_AHEAD_MEMORY, spanBytes = READ_AHEAD_BYTES, firstBytes = Math.min(READ_AHEAD_FIRST_BYTES, spanBytes)) {
    this.maxBytes = maxBytes
    this.spanBytes = spanBytes
    this.firstBytes = firstBytes
  }

  /** The length of the read-ahead after a request answered from `span`: the client reads on, so twice that span's, up to spanBytes. */
  grown (span: AheadSpan): number {
    return Math.min(this.spanBytes, 2 * (span.end - span.start))
  }

  /** bytes the spans may hold when their fetches end */
  get planned (): number {
    return this.spans.reduce((sum, s) => sum + s.end - s.start, 0)
  }

  /**
   * The span of one of `urls` that holds (or is fetching) the range's first
   * byte, and the range in its file; null if none. A range that starts
   * outside every span of its URLs is a seek: those spans are dropped.
   */
  find (urls: readonly URL[], range: ByteRange): { span: AheadSpan, first: number, last: number } | null {
    this.expire()
    const passed: AheadSpan[] = []
    for (const span of this.spans) {
      if (!urls.some(u => u.href === span.version.url)) continue
      const resolved = resolveRange(range, span.version.length)
      if (resolved != null && span.covers(resolved[0])) return { span, first: resolved[0], last: resolved[1] }
      if (resolved != null) passed.push(span)
    }
    for (const span of passed) this.drop(span)
    return null
  }

  /**
   * Reads ahead `bytes` from `from` (the first size unless the client read
   * on: grown(); never past the file's end), unless a span of that
   * version covers it already.
   */
  start (version: AheadVersion, from: number, fetch: AheadFetch, bytes = this.firstBytes): void {
    this.expire()
    const end = Math.min(version.length, from + Math.min(bytes, this.spanBytes))
    if (end <= from || this.spans.some(s => s.version.url === version.url && s.covers(from))) return
    const span = new AheadSpan(version, from, end, fetch)
    this.spans.push(span)
    while (this.planned > this.maxBytes && this.spans.length > 1) this.drop(this.spans[0]!)
    void span.fill()
  }

  /** After a request answered from `span` up to `from`: the client reads on, so the next read-ahead, the same way, grown(). */
  readOn (span: AheadSpan, from: number): void {
    this.start(span.version, from, span.fetch, this.grown(span))
  }

  stop (): void {
    for (const span of [...this.spans]) this.drop(span)
  }

  private expire (): void {
    const now = performance.now()
    for (const span of [...this.spans]) if (now - span.began > READ_AHEAD_TTL_MS) this.drop(span)
  }

  private drop (span: AheadSpan): void {
    this.spans = this.spans.filter(s => s !== span)
    // a request answering from it keeps what it holds, then asks the origin
    span.stopping.abort(new KithError('FETCH_ABORTED', 'the read-ahead was dropped'))
  }
}
