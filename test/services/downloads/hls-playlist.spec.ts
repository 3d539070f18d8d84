import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { KithError } from '../../../src/errors.ts'
import { parsePlaylist, pickVariant } from '../../../src/services/downloads/hls-playlist.ts'

/** The HLS playlist reader on what a server may send: good playlists, and every truncation and bit flip of them. */
describe('HLS playlists', () => {
  const base = new URL('https://example.org/v/index.m3u8')
  const media = '#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\na.ts\n#EXTINF:4.0,\n#EXT-X-BYTERANGE:100@0\n/b.ts\n#EXTINF:4.0,\nhttps://cdn.example.org/c.ts\n#EXT-X-ENDLIST\n'
  const master = '#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000\nlow.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=5000000\nhigh/index.m3u8\n'

  it('reads pieces in order against the playlist URL, with byte ranges; variants with their bandwidth', () => {
    expect(parsePlaylist(media, base)).toEqual({
      kind: 'media',
      fmp4: false,
      pieces: [
        { url: new URL('https://example.org/v/a.ts'), range: undefined },
        { url: new URL('https://example.org/b.ts'), range: { offset: 0, length: 100 } },
        { url: new URL('https://cdn.example.org/c.ts'), range: undefined }
      ]
    })
    const parsed = parsePlaylist(master, base)
    expect(parsed.kind).toBe('master')
    if (parsed.kind !== 'master') return
    expect(pickVariant(parsed.variants, undefined).url.href).toBe('https://example.org/v/high/index.m3u8')
    expect(pickVariant(parsed.variants, 1_000_000).url.href).toBe('https://example.org/v/low.m3u8')
    expect(pickVariant(parsed.variants, 10).url.href).toBe('https://example.org/v/low.m3u8')
  })

  it('refuses live, encrypted, non-http pieces and what is not a playlist, with typed errors', () => {
    const cases: Array<[string, string]> = [
      [media.replace('#EXT-X-ENDLIST\n', ''), 'PLAYLIST_UNSUPPORTED'],
      [media.replace('#EXTINF:4.0,\na.ts', '#EXT-X-KEY:METHOD=AES-128,URI="k"\n#EXTINF:4.0,\na.ts'), 'PLAYLIST_UNSUPPORTED'],
      [media.replace('a.ts', 'file:///etc/passwd'), 'PLAYLIST_MALFORMED'],
      ['<html>not found</html>', 'PLAYLIST_MALFORMED'],
      ['#EXTM3U\n#EXT-X-ENDLIST\n', 'PLAYLIST_MALFORMED']
    ]
    for (const [text, code] of cases) expect(() => parsePlaylist(text, base)).toThrow(expect.objectContaining({ code }))
  })

  it('answers every truncation and bit flip with a playlist or a KithError, nothing else', () => {
    fc.assert(fc.property(fc.constantFrom(media, master), fc.nat(), fc.nat(7), fc.boolean(), (text, at, bit, cut) => {
      const bytes = Buffer.from(text)
      const i = at % bytes.length
      const changed = cut ? bytes.subarray(0, i) : Buffer.from(bytes.map((b, j) => j === i ? b ^ (1 << bit) : b))
      try {
        const parsed = parsePlaylist(changed.toString('utf8'), base)
        if (parsed.kind === 'media') for (const p of parsed.pieces) expect(['http:', 'https:']).toContain(p.url.protocol)
      } catch (err) {
        expect(err).toBeInstanceOf(KithError)
      }
    }), { numRuns: 1000 })
  })
})
