/**
 * hls (docs/downloads.md, "Protocol add-ons"): an HLS video on demand
 * downloaded as one file: the segments of its media playlist (or of the
 * master playlist's chosen variant) fetched in parallel, joined in order.
 *
 *   https://host/path/video.m3u8     (any http(s) URL ending in .m3u8)
 *   hls+https://host/path/playlist   (hls+http:// too: an HLS playlist whatever its name)
 *   hls://host/path/playlist         (the same as hls+https://)
 *
 * The joined file is the segments' bytes end to end: MPEG-TS segments join
 * into a playable .ts; fMP4 segments after their initialisation section
 * into a playable .mp4. Option maxBandwidth (bits/s) picks the best variant
 * at or below it; by default the best there is. Live and encrypted
 * playlists are refused (hls-playlist.ts).
 *
 * Resume: segments are appended to the partial in order; one that arrives
 * ahead of its turn waits in the state folder. The state file says how many
 * are in the partial and how long it is, so a resume cuts off a half-written
 * tail and fetches only the segments not yet kept. A playlist that changed
 * since (its sha256) starts the download over.
 */
import { createHash } from 'node:crypto'
import { mkdir, open, readdir, readFile, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { fetch, type Dispatcher, type Response } from 'undici'
import { KithError } from '../../errors.ts'
import { openNoFollow } from '../../transfer/destination.ts'
import type { DownloadAddon, DownloadContext, DownloadJob, DownloadResult } from './addon.ts'
import { makeDispatcher } from './http/dispatcher.ts'
import { MAX_PLAYLIST_BYTES, parsePlaylist, pickVariant, type Piece } from './hls-playlist.ts'
import { AddonOptions } from './options.ts'
import { abortReason } from './partial.ts'
import { readBody } from './read-body.ts'

const OPTIONS = ['maxBandwidth'] as const
/** bytes copied at a time from a waiting segment into the partial */
const COPY_BLOCK = 1024 * 1024

interface HlsState {
  /** sha256 of the media playlist the pieces come from */
  playlist: string
  /** pieces in the partial, in order */
  joined: number
  /** the partial's length with them */
  length: number
}

/** The http(s) URL of the playlist. */
function playlistUrl (url: URL, options: Readonly<Record<string, unknown>>): { url: URL, maxBandwidth: number | undefined } {
  const opts = new AddonOptions('hls', options, OPTIONS)
  const maxBandwidth = opts.integer('maxBandwidth', 1, Number.MAX_SAFE_INTEGER)
  // hls+https://x is https://x; hls://x is https://x as well
  const href = url.protocol.toLowerCase() === 'hls:' ? 'https:' + url.href.slice(4) : url.href.replace(/^hls\+/i, '')
  const plain = new URL(href)
  if (plain.protocol !== 'http:' && plain.protocol !== 'https:') throw new KithError('URL_INVALID', `an HLS playlist is fetched over http(s): give https://.../video.m3u8 or hls+https://... (not ${url.protocol}//)`)
  if (plain.hostname === '') throw new KithError('URL_INVALID', 'an HLS URL names a host, like https://example.org/video.m3u8')
  return { url: plain, maxBandwidth }
}

/** undici's fetch fails with 'fetch failed'; the cause says why (ECONNREFUSED...). */
function whyFailed (err: unknown): string {
  const e = err as Error & { cause?: Error & { code?: string } }
  return e.cause?.code ?? e.cause?.message ?? e.message
}

function httpError (status: number, url: URL): KithError {
  if (status === 404 || status === 410) return new KithError('REMOTE_NOT_FOUND', `the server has nothing at ${url.href} (HTTP ${status})`)
  if (status === 401 || status === 403) return new KithError('REMOTE_AUTH_FAILED', `the server refused ${url.href} (HTTP ${status})`)
  return new KithError('REMOTE_FAILED', `the server answered ${url.href} with HTTP ${status}`)
}

async function get (url: URL, signal: AbortSignal, dispatcher: Dispatcher, headers: Record<string, string> = {}): Promise<Response> {
  let response: Response
  try {
    response = await fetch(url, { signal, headers, redirect: 'follow', dispatcher })
  } catch (err) {
    if (signal.aborted) throw signal.reason
    throw new KithError('REMOTE_FAILED', `fetching ${url.href} failed: ${whyFailed(err)}`, { cause: err })
  }
  if (!response.ok) {
    await response.body?.cancel()
    throw httpError(response.status, url)
  }
  return response
}

/** A playlist's text, through the scheduler, refused past MAX_PLAYLIST_BYTES before it is all read. */
async function fetchPlaylist (url: URL, ctx: DownloadContext, dispatcher: Dispatcher): Promise<string> {
  const response = await get(url, ctx.signal, dispatcher)
  const text = await readBody(response.body, MAX_PLAYLIST_BYTES, ctx, () =>
    new KithError('PLAYLIST_MALFORMED', `the HLS playlist ${url.href} is over ${MAX_PLAYLIST_BYTES} bytes; kith takes playlists up to that size`))
  return text.toString('utf8')
}

/** Fetches one piece into `path` (through a .part file renamed once whole and synced); returns its length. */
async function fetchPiece (piece: Piece, path: string, ctx: DownloadContext, dispatcher: Dispatcher, signal: AbortSignal, onBytes: (n: number) => void): Promise<number> {
  const headers: Record<string, string> = piece.range === undefined ? {} : { Range: `bytes=${piece.range.offset}-${piece.range.offset + piece.range.length - 1}` }
  const response = await get(piece.url, signal, dispatcher, headers)
  if (piece.range !== undefined && response.status !== 206) {
    await response.body?.cancel()
    throw new KithError('REMOTE_FAILED', `the server sent the whole of ${piece.url.href} where the playlist asks for a byte range of it (HTTP ${response.status}); kith can't cut it`)
  }
  const part = path + '.part'
  const handle = await open(part, 'w')
  let length = 0
  try {
    for await (const chunk of response.body ?? []) {
      await ctx.take(chunk.length, signal)
      await handle.write(chunk)
      length += chunk.length
      onBytes(chunk.length)
    }
    await handle.sync()
  } finally {
    await handle.close()
  }
  if (piece.range !== undefined && length !== piece.range.length) throw new KithError('REMOTE_CHANGED', `${piece.url.href} sent ${length} bytes for a range of ${piece.range.length}`)
  await rename(part, path)
  return length
}

/** Copies the file at `path` into `partial` from `at`, a block at a time (a segment may be large). */
async function appendFile (partial: FileHandle, path: string, at: number, buffer: Buffer): Promise<void> {
  const piece = await open(path, 'r')
  try {
    for (let offset = 0; ;) {
      const { bytesRead } = await piece.read(buffer, 0, buffer.length, offset)
      if (bytesRead === 0) return
      let written = 0
      while (written < bytesRead) written += (await partial.write(buffer, written, bytesRead - written, at + offset + written)).bytesWritten
      offset += bytesRead
    }
  } finally {
    await piece.close()
  }
}

async function readState (stateDir: string): Promise<HlsState | undefined> {
  return await readFile(join(stateDir, 'hls.json'), 'utf8').then(text => JSON.parse(text) as HlsState, () => undefined)
}

async function saveState (stateDir: string, state: HlsState): Promise<void> {
  const path = join(stateDir, 'hls.json')
  await writeFile(path + '.new', JSON.stringify(state))
  await rename(path + '.new', path)
}

async function download (job: DownloadJob, ctx: DownloadContext): Promise<DownloadResult> {
  const { url, maxBandwidth } = playlistUrl(job.url, job.options)
  const pieceDir = join(ctx.stateDir, 'pieces')
  // the HTTP engine's: proxies, IPv6, DNS servers and timeouts from the settings
  const dispatcher = makeDispatcher(ctx.settings)
  try {
    let mediaUrl = url
    let text = await fetchPlaylist(url, ctx, dispatcher)
    let playlist = parsePlaylist(text, url)
    if (playlist.kind === 'master') {
      mediaUrl = pickVariant(playlist.variants, maxBandwidth).url
      text = await fetchPlaylist(mediaUrl, ctx, dispatcher)
      playlist = parsePlaylist(text, mediaUrl)
      if (playlist.kind === 'master') throw new KithError('PLAYLIST_MALFORMED', `the HLS variant ${mediaUrl.href} is a master playlist again`)
    }
    const { pieces, fmp4 } = playlist
    const name = (url.pathname.split('/').at(-1) ?? '').replace(/\.m3u8$/i, '') + (fmp4 ? '.mp4' : '.ts')

    // what a previous run kept, if it came from the same playlist
    const hash = createHash('sha256').update(text).digest('hex')
    let state = await readState(ctx.stateDir)
    if (state?.playlist !== hash) {
      await rm(pieceDir, { recursive: true, force: true })
      state = { playlist: hash, joined: 0, length: 0 }
    }
    await mkdir(pieceDir, { recursive: true })
    await saveState(ctx.stateDir, state)
    const partial = await openNoFollow(ctx.partial, 'existing').catch(async (err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err
      return await openNoFollow(ctx.partial, 'create')
    })
    let joined = state.joined
    let length = state.length
    try {
      // a tail written after the state was last saved is cut off; a partial shorter than the state says starts over
      if ((await partial.stat()).size < length) { joined = 0; length = 0 }
      await partial.truncate(length)
      const buffer = Buffer.allocUnsafe(COPY_BLOCK)
      const waiting = new Map<number, number>()
      for (const file of await readdir(pieceDir)) {
        const index = Number(file)
        if (Number.isInteger(index) && index >= joined) waiting.set(index, (await stat(join(pieceDir, file))).size)
      }
      let done = length + [...waiting.values()].reduce((a, b) => a + b, 0)
      const report = (n: number): void => { done += n; ctx.progress({ done, total: null, name }) }
      report(0)

      // appends every piece that is whole and next in order, saving the state after each
      const appendReady = async (): Promise<void> => {
        for (let size = waiting.get(joined); size !== undefined; size = waiting.get(joined)) {
          const path = join(pieceDir, String(joined))
          await appendFile(partial, path, length, buffer)
          await partial.sync()
          length += size
          waiting.delete(joined)
          joined++
          await saveState(ctx.stateDir, { playlist: hash, joined, length })
          await rm(path)
        }
      }
      await appendReady()
      const todo = pieces.map((_, i) => i).filter(i => i >= joined && !waiting.has(i))
      const failed = new AbortController()
      const signal = AbortSignal.any([ctx.signal, failed.signal])
      let joining = Promise.resolve()
      const worker = async (): Promise<void> => {
        for (let i = todo.shift(); i !== undefined; i = todo.shift()) {
          const path = join(pieceDir, String(i))
          const size = await fetchPiece(pieces[i]!, path, ctx, dispatcher, signal, report)
          waiting.set(i, size)
          // one join at a time, in order
          joining = joining.then(appendReady)
          await joining
        }
      }
      const workers = Array.from({ length: Math.max(1, Math.min(job.connections, todo.length)) }, async () => await worker().catch((err: unknown) => {
        failed.abort(err)
        throw err
      }))
      const results = await Promise.allSettled(workers)
      const firstFailure = results.find(r => r.status === 'rejected')
      if (firstFailure !== undefined) throw (firstFailure as PromiseRejectedResult).reason
      await joining
      if (joined !== pieces.length) throw new KithError('INTERNAL', `joined ${joined} of ${pieces.length} HLS pieces`)
    } finally {
      await partial.close()
    }
    ctx.progress({ done: length, total: length, name })
    return { size: length, name, kind: 'file' }
  } catch (err) {
    throw abortReason(ctx.signal, err)
  } finally {
    await dispatcher.destroy().catch(() => {})
  }
}

export const hlsAddon: DownloadAddon = {
  schemes: ['hls', 'hls+http', 'hls+https'],
  check: (url, options) => { playlistUrl(url, options) },
  download
}
