/**
 * Reading HLS playlists (RFC 8216) for the hls add-on, with m3u8-parser:
 * a master playlist gives its variants (the add-on picks one), a media
 * playlist the pieces to fetch in order: the initialisation section
 * (EXT-X-MAP) where there is one, then every segment, with its byte range
 * (EXT-X-BYTERANGE) if it has one.
 *
 * Refused (PLAYLIST_UNSUPPORTED): live playlists (no EXT-X-ENDLIST: they
 * grow while being read, so there is no one file to download), encrypted
 * segments (EXT-X-KEY other than NONE), an initialisation section that
 * changes midway. Unreadable text, too many pieces and URIs that are not
 * http(s) are PLAYLIST_MALFORMED.
 */
import { Parser } from 'm3u8-parser'
import { KithError } from '../../errors.ts'

/** bytes of one playlist, checked while reading it */
export const MAX_PLAYLIST_BYTES = 4 * 1024 * 1024
/** pieces (segments and the initialisation section) of one media playlist */
export const MAX_PIECES = 100_000

export interface Variant {
  url: URL
  /** bits/s, from EXT-X-STREAM-INF's BANDWIDTH */
  bandwidth: number
}

export interface Piece {
  url: URL
  /** bytes `offset` to `offset + length - 1` of the resource, or all of it */
  range?: { offset: number, length: number }
}

export type Playlist = { kind: 'master', variants: Variant[] } | { kind: 'media', pieces: Piece[], fmp4: boolean }

interface ParsedSegment {
  uri: string
  byterange?: { length: number, offset: number }
  key?: { method: string }
  map?: { uri: string, byterange?: { length: number, offset: number } }
}

interface Manifest {
  playlists?: Array<{ uri: string, attributes?: { BANDWIDTH?: number } }>
  segments?: ParsedSegment[]
  endList?: boolean
}

function malformed (where: URL, why: string): KithError {
  return new KithError('PLAYLIST_MALFORMED', `the HLS playlist ${where.href} ${why}`)
}

function resolve (uri: unknown, base: URL): URL {
  if (typeof uri !== 'string' || uri === '') throw malformed(base, 'has an entry without a URI')
  let url: URL
  try {
    url = new URL(uri, base)
  } catch {
    throw malformed(base, `names ${JSON.stringify(uri.slice(0, 200))}, which is not a URL`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw malformed(base, `names ${url.protocol}// URLs; kith fetches HLS pieces over http(s) only`)
  return url
}

function range (byterange: { length: number, offset: number } | undefined, base: URL): Piece['range'] {
  if (byterange === undefined) return undefined
  const { offset, length } = byterange
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length <= 0) throw malformed(base, 'has a byte range (EXT-X-BYTERANGE) that is not one')
  return { offset, length }
}

/** Parses the playlist `text` fetched from `base`. */
export function parsePlaylist (text: string, base: URL): Playlist {
  if (!text.trimStart().startsWith('#EXTM3U')) throw malformed(base, 'does not start with #EXTM3U; is it an HLS playlist?')
  let manifest: Manifest
  try {
    const parser = new Parser()
    parser.push(text)
    parser.end()
    manifest = parser.manifest as Manifest
  } catch (err) {
    throw new KithError('PLAYLIST_MALFORMED', `the HLS playlist ${base.href} can't be read: ${(err as Error).message}`, { cause: err })
  }
  const variants = manifest.playlists ?? []
  if (variants.length > 0) {
    return { kind: 'master', variants: variants.map(v => ({ url: resolve(v.uri, base), bandwidth: v.attributes?.BANDWIDTH ?? 0 })) }
  }
  if (manifest.endList !== true) {
    throw new KithError('PLAYLIST_UNSUPPORTED', `the HLS playlist ${base.href} is live (it has no #EXT-X-ENDLIST): kith downloads finished (VOD) playlists only`)
  }
  const segments = manifest.segments ?? []
  if (segments.length === 0) throw malformed(base, 'has no segments')
  if (segments.length >= MAX_PIECES) throw malformed(base, `has ${segments.length} segments; kith takes up to ${MAX_PIECES - 1}`)
  const pieces: Piece[] = []
  const map = segments[0]?.map
  if (map !== undefined) pieces.push({ url: resolve(map.uri, base), range: range(map.byterange, base) })
  for (const segment of segments) {
    if (segment.key !== undefined && segment.key.method !== 'NONE') {
      throw new KithError('PLAYLIST_UNSUPPORTED', `the HLS playlist ${base.href} is encrypted (EXT-X-KEY ${segment.key.method}); kith does not download encrypted streams`)
    }
    if (segment.map?.uri !== map?.uri) throw new KithError('PLAYLIST_UNSUPPORTED', `the HLS playlist ${base.href} changes its initialisation section (EXT-X-MAP) midway; kith can't join that into one file`)
    pieces.push({ url: resolve(segment.uri, base), range: range(segment.byterange, base) })
  }
  return { kind: 'media', pieces, fmp4: map !== undefined }
}

/** The variant with the highest bandwidth, or the highest at or below `maxBandwidth`; the lowest if none is. */
export function pickVariant (variants: Variant[], maxBandwidth: number | undefined): Variant {
  const sorted = [...variants].sort((a, b) => b.bandwidth - a.bandwidth)
  return sorted.find(v => maxBandwidth === undefined || v.bandwidth <= maxBandwidth) ?? sorted.at(-1)!
}
