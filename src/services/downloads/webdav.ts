/**
 * webdav:// (docs/downloads.md, "Protocol add-ons"): a file, or a whole
 * collection as a folder, over the `webdav` client.
 *
 *   webdav://[user[:password]@]host[:port]/path      (HTTP; dav:// too)
 *   webdavs://[user[:password]@]host[:port]/path     (HTTPS; davs:// too)
 *
 * A file resumes with a Range request (If-Range on its ETag: a file changed
 * at the origin starts over). A collection is listed with PROPFIND, one
 * level (Depth: 1) at a time, since servers often refuse Depth: infinity,
 * and downloads as a folder (tree.ts). Options: user, password (instead of
 * the URL's); HTTP Basic or Digest, as the server asks.
 *
 * WebDAV is HTTP: its requests go through the HTTP add-on's dispatcher
 * (http/dispatcher.ts), so the downloads' proxies, DNS servers, IPv4-only
 * switch and timeouts apply as they do to http:// (route.ts). What listings
 * (PROPFIND) bring passes the bandwidth scheduler too, not only the files.
 */
import { Readable } from 'node:stream'
import { createClient, type FileStat, type WebDAVClient } from 'webdav'
import { KithError } from '../../errors.ts'
import type { DownloadAddon, DownloadContext, DownloadJob, DownloadResult } from './addon.ts'
import { makeDispatcher } from './http/dispatcher.ts'
import { WebdavRoute } from './webdav-route.ts'
import { AddonOptions, decodedPath, needHost, userInfo } from './options.ts'
import { abortReason, fetchInto, Progress, type RemoteFile } from './partial.ts'
import { checkTreeSize, downloadTree } from './tree.ts'

const OPTIONS = ['user', 'password'] as const
/** HTTPS for these schemes, HTTP for webdav:// and dav:// */
const SECURE = new Set(['webdavs', 'davs'])

interface DavTarget {
  base: string
  path: string
  user: string | undefined
  password: string | undefined
}

function target (url: URL, options: Readonly<Record<string, unknown>>): DavTarget {
  const scheme = url.protocol.slice(0, -1).toLowerCase()
  const opts = new AddonOptions(scheme, options, OPTIONS)
  needHost(url)
  const fromUrl = userInfo(url)
  return {
    base: `${SECURE.has(scheme) ? 'https' : 'http'}://${url.host}`,
    path: decodedPath(url),
    user: opts.string('user') ?? (fromUrl.user === '' ? undefined : fromUrl.user),
    password: opts.string('password') ?? (fromUrl.password === '' ? undefined : fromUrl.password)
  }
}

/** The client's failures (errors with the HTTP status) as KithErrors. */
function davError (err: unknown, what: string): unknown {
  if (err instanceof KithError) return err
  const status = (err as { status?: number }).status
  if (status === 401 || status === 403) return new KithError('REMOTE_AUTH_FAILED', `the WebDAV server refused access to ${what} (HTTP ${status}); check the user name and password`, { cause: err })
  if (status === 404) return new KithError('REMOTE_NOT_FOUND', `the WebDAV server has nothing at ${what}`, { cause: err })
  // undici's fetch fails with "fetch failed"; the why (refused, no such host, an untrusted certificate) is its cause
  const message = err instanceof Error ? ((err.cause as Error | undefined)?.message ?? err.message) : String(err)
  return new KithError('REMOTE_FAILED', `WebDAV with ${what} failed: ${message}`, { cause: err })
}

function validator (stat: FileStat): string {
  return stat.etag ?? `${stat.size} ${stat.lastmod}`
}

/** Every file under the collection `root`, listed one level at a time. */
async function list (client: WebDAVClient, root: string, signal: AbortSignal): Promise<RemoteFile[]> {
  const files: RemoteFile[] = []
  const prefix = root.endsWith('/') ? root : root + '/'
  const pending = [prefix]
  for (let folder = pending.pop(); folder !== undefined; folder = pending.pop()) {
    signal.throwIfAborted()
    const entries = await client.getDirectoryContents(folder, { signal })
    for (const entry of entries) {
      if (!entry.filename.startsWith(prefix)) continue
      if (entry.type === 'directory') {
        pending.push(entry.filename + '/')
      } else {
        files.push({ segments: entry.filename.slice(prefix.length).split('/'), size: entry.size, validator: validator(entry) })
        checkTreeSize(files.length, root)
      }
    }
  }
  return files
}

async function download (job: DownloadJob, ctx: DownloadContext): Promise<DownloadResult> {
  const t = target(job.url, job.options)
  const what = `${t.base}${t.path}`
  let route: WebdavRoute
  try {
    route = new WebdavRoute(makeDispatcher(ctx.settings), ctx.take)
  } catch (err) {
    throw davError(err, what)
  }
  const client = createClient(t.base, { username: t.user, password: t.password, httpAgent: route, httpsAgent: route })
  try {
    const stat = await client.stat(t.path, { signal: ctx.signal }) as FileStat
    const fetchFrom = async (file: RemoteFile, at: number): Promise<{ body: Readable, from: number }> => {
      const path = stat.type === 'directory' ? `${t.path.replace(/\/$/, '')}/${file.segments.join('/')}` : t.path
      const headers: Record<string, string> = at > 0 ? { Range: `bytes=${at}-` } : {}
      if (at > 0 && file.validator?.startsWith('"') === true) headers['If-Range'] = file.validator
      const response = await client.customRequest(path, { method: 'GET', headers, signal: ctx.signal })
      // 200 to a Range: the server sends the whole file (it changed, or takes no ranges)
      return { body: Readable.from((response as unknown as { body: AsyncIterable<Uint8Array> }).body), from: response.status === 206 ? at : 0 }
    }
    if (stat.type === 'directory') {
      const name = t.path.split('/').filter(Boolean).at(-1) ?? t.base.replace(/^https?:\/\//, '')
      return await downloadTree(await list(client, t.path, ctx.signal), name, ctx, fetchFrom)
    }
    const progress = new Progress(ctx, stat.size, stat.basename)
    await fetchInto(ctx.partial, ctx.stateDir, { segments: [stat.basename], size: stat.size, validator: validator(stat) }, ctx, progress, fetchFrom)
    return { size: stat.size, name: stat.basename, kind: 'file' }
  } catch (err) {
    throw abortReason(ctx.signal, davError(err, what))
  } finally {
    await route.close()
  }
}

export const webdavAddon: DownloadAddon = {
  schemes: ['webdav', 'webdavs', 'dav', 'davs'],
  check: (url, options) => { target(url, options) },
  download
}
