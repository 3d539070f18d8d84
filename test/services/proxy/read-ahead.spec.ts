import { describe, it, expect } from 'vitest'
import { ReadAhead, type AheadVersion } from '../../../src/services/proxy/read-ahead.ts'

/**
 * The read-ahead's memory bound and its spans (read-ahead.ts); the proxy's
 * use of it against a real nginx is in proxy.spec.ts.
 */
const version = (url: string, length = 10_000): AheadVersion => ({ url, etag: '"v1"', lastModified: null, length, contentType: 'video/mp4' })

/** An origin that gives `end - first` bytes of value `first % 256` in two parts, the second when `release` is called, and says whether it was stopped. */
function origin () {
  const stopped: string[] = []
  let release: () => void = () => {}
  const held = new Promise<void>(resolve => { release = resolve })
  const fetch = (url: string) => async function * (first: number, end: number, signal: AbortSignal): AsyncGenerator<Buffer> {
    signal.addEventListener('abort', () => stopped.push(url))
    const half = Math.floor((end - first) / 2)
    yield Buffer.alloc(half, first % 256)
    await held
    signal.throwIfAborted()
    yield Buffer.alloc(end - first - half, first % 256)
  }
  return { fetch, stopped, release: () => { release() } }
}

async function all (parts: AsyncIterable<Buffer>): Promise<Buffer> {
  const got: Buffer[] = []
  for await (const part of parts) got.push(part)
  return Buffer.concat(got)
}

describe('read-ahead', () => {
  it('serves a range starting inside a span as its bytes arrive, and only from the span of that URL', async () => {
    const o = origin()
    const ahead = new ReadAhead(4096, 1000)
    ahead.start(version('http://a/x.mp4'), 2000, o.fetch('a'))
    expect(ahead.find([new URL('http://b/x.mp4')], { start: 2000, end: null, suffix: null })).toBeNull()
    const found = ahead.find([new URL('http://a/x.mp4')], { start: 2500, end: 2999, suffix: null })!
    expect(found).toMatchObject({ first: 2500, last: 2999 })
    expect(found.span.covers(3000)).toBe(false)
    const reading = all(found.span.from(2500))
    o.release()
    expect(await reading).toEqual(Buffer.alloc(500, 2000 % 256))
  })

  it('holds at most its memory bound: the oldest span goes, its fetch stopped, and is found no more', async () => {
    const o = origin()
    const ahead = new ReadAhead(2000, 1000)
    for (const url of ['a', 'b', 'c']) ahead.start(version(`http://${url}/x.mp4`), 0, o.fetch(url))
    expect(ahead.planned).toBe(2000)
    expect(o.stopped).toEqual(['a'])
    expect(ahead.find([new URL('http://a/x.mp4')], { start: 0, end: null, suffix: null })).toBeNull()
    expect(ahead.find([new URL('http://c/x.mp4')], { start: 10, end: null, suffix: null })).not.toBeNull()
    // never past the file's end; a span covering the start already is not fetched twice
    ahead.start(version('http://c/x.mp4'), 500, o.fetch('c2'))
    expect(ahead.planned).toBe(2000)
    o.release()
    ahead.stop()
    expect(o.stopped.sort()).toEqual(['a', 'b', 'c'])
  })

  it('drops the spans of a URL when a range of it starts outside them (a seek), its fetch stopped; starts small and doubles as the client reads on, fetched the same way', async () => {
    const o = origin()
    const ahead = new ReadAhead(1 << 20, 4000, 1000)
    const url = [new URL('http://a/x.mp4')]
    ahead.start(version('http://a/x.mp4'), 0, o.fetch('first'))
    expect(ahead.planned).toBe(1000)
    // read on: found, and the next one twice as long, then capped at spanBytes
    const found = ahead.find(url, { start: 500, end: 999, suffix: null })!
    expect(ahead.grown(found.span)).toBe(2000)
    ahead.start(version('http://a/x.mp4'), 1000, o.fetch('second'), ahead.grown(found.span))
    expect(ahead.planned).toBe(3000)
    const second = ahead.find(url, { start: 1000, end: 2999, suffix: null })!
    expect(second.span.end).toBe(3000)
    expect(ahead.grown(second.span)).toBe(4000)
    // reading on from a span fetches the same way (from friends when they gave it)
    ahead.readOn(second.span, 3000)
    expect(ahead.grown(ahead.find(url, { start: 3000, end: 3999, suffix: null })!.span)).toBe(4000)
    // another URL's range leaves them alone; a seek of this one drops them all, their fetches stopped
    expect(ahead.find([new URL('http://b/x.mp4')], { start: 9000, end: null, suffix: null })).toBeNull()
    expect(o.stopped).toEqual([])
    expect(ahead.find(url, { start: 9000, end: 9999, suffix: null })).toBeNull()
    expect(o.stopped.sort()).toEqual(['first', 'second', 'second'])
    expect(ahead.planned).toBe(0)
    expect(ahead.find(url, { start: 500, end: 999, suffix: null })).toBeNull()
    o.release()
  })
})
