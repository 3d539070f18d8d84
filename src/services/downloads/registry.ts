/**
 * Which add-on takes which URL, and loading it on first use.
 *
 * The table names a module and its export per scheme; nothing is imported
 * until a URL of that scheme is checked (each import is written out, so that
 * the package's bundle keeps it as a chunk of its own: bundle.ts), so an add-on's library (ssh2,
 * basic-ftp...) costs the daemon nothing until then. Loaded add-ons are kept.
 * A scheme with no entry, or whose module is not in this build, is
 * URL_UNSUPPORTED; a URL that does not parse is URL_INVALID. Both are thrown
 * before anything is queued.
 *
 * kith:// is not here: friend shares go through the file service (see
 * kith-url.ts and docs/downloads.md).
 */
import { KithError } from '../../errors.ts'
import type { DownloadAddon } from './addon.ts'
import { MAX_URL_LENGTH } from './constants.ts'

interface Entry {
  /** relative to this file */
  module: string
  export: string
  import: () => Promise<Record<string, unknown>>
}

const HTTP: Entry = { module: './http/index.ts', export: 'httpAddon', import: async () => await import('./http/index.ts') }
const FTP: Entry = { module: './ftp.ts', export: 'ftpAddon', import: async () => await import('./ftp.ts') }
const WEBDAV: Entry = { module: './webdav.ts', export: 'webdavAddon', import: async () => await import('./webdav.ts') }

/** scheme (lower case, no colon) -> where its add-on is */
const ADDONS: Readonly<Record<string, Entry>> = {
  http: HTTP,
  https: HTTP,
  ftp: FTP,
  ftps: FTP,
  sftp: { module: './sftp.ts', export: 'sftpAddon', import: async () => await import('./sftp.ts') },
  s3: { module: './s3.ts', export: 's3Addon', import: async () => await import('./s3.ts') },
  webdav: WEBDAV,
  webdavs: WEBDAV,
  dav: WEBDAV,
  davs: WEBDAV,
  hls: { module: './hls.ts', export: 'hlsAddon', import: async () => await import('./hls.ts') }
}

/** http(s) URLs of HLS playlists go to the hls add-on (`hls+https://` also says so explicitly) */
const HLS_PATH = /\.m3u8$/i

const loaded = new Map<string, Promise<DownloadAddon>>()

/** Every scheme the table knows (whether or not its module is in this build). */
export function knownSchemes (): string[] {
  return [...Object.keys(ADDONS), 'kith'].sort()
}

/**
 * Parses `text` as a download URL; URL_INVALID (with the reason) otherwise.
 * The length is checked before parsing.
 */
export function parseUrl (text: unknown): URL {
  if (typeof text !== 'string' || text.length === 0) throw new KithError('URL_INVALID', 'a download needs a URL, like https://example.org/file.iso')
  if (text.length > MAX_URL_LENGTH) throw new KithError('URL_INVALID', `the URL is ${text.length} characters long; kith takes URLs up to ${MAX_URL_LENGTH}`)
  let url: URL
  try {
    url = new URL(text)
  } catch {
    throw new KithError('URL_INVALID', `${JSON.stringify(text.slice(0, 200))} is not a URL; give one with its scheme, like https://example.org/file.iso`)
  }
  if (url.username !== '' && url.protocol !== 'sftp:' && url.protocol !== 'ftp:' && url.protocol !== 'ftps:' && !url.protocol.startsWith('webdav') && !url.protocol.startsWith('dav')) {
    // credentials in an http(s) URL end up in logs and the queue's listing; the add-on's options carry them instead
    throw new KithError('URL_INVALID', `${url.protocol}// URLs don't carry a user name or password here; pass credentials in the add-on's options (docs/downloads.md)`)
  }
  return url
}

/** The scheme that picks the add-on: the URL's, but `hls` for an http(s) playlist and for `hls+http(s)://`. */
export function addonScheme (url: URL): string {
  const scheme = url.protocol.slice(0, -1).toLowerCase()
  if (scheme.startsWith('hls+')) return 'hls'
  if ((scheme === 'http' || scheme === 'https') && HLS_PATH.test(url.pathname)) return 'hls'
  return scheme
}

/**
 * The add-on for `url`, loaded on first use; URL_UNSUPPORTED when no add-on
 * takes its scheme (or its module is not in this build).
 */
export async function addonFor (url: URL): Promise<DownloadAddon> {
  const scheme = addonScheme(url)
  const entry = Object.hasOwn(ADDONS, scheme) ? ADDONS[scheme] : undefined
  if (entry === undefined) {
    throw new KithError('URL_UNSUPPORTED', `kith can't download ${url.protocol}// URLs; it takes ${knownSchemes().map(s => s + '://').join(', ')}`)
  }
  const key = `${entry.module}#${entry.export}`
  let loading = loaded.get(key)
  if (loading === undefined) {
    loading = load(entry, scheme)
    loaded.set(key, loading)
    // a failed load is tried again next time (a module installed meanwhile)
    loading.catch(() => loaded.delete(key))
  }
  return await loading
}

/** Loads the add-on and runs its own check: what `POST /v1/downloads` does before queueing. */
export async function checkUrl (url: URL, options: Readonly<Record<string, unknown>> = {}): Promise<DownloadAddon> {
  const addon = await addonFor(url)
  addon.check?.(url, options)
  return addon
}

async function load (entry: Entry, scheme: string): Promise<DownloadAddon> {
  let mod: Record<string, unknown>
  try {
    mod = await entry.import()
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ERR_MODULE_NOT_FOUND') throw err
    // the add-on's library (ssh2 is loaded from node_modules: bundle.ts) was left out of this install
    throw new KithError('URL_UNSUPPORTED', `the ${scheme}:// add-on is not in this build of kith (${(err as Error).message}); reinstall kith with its dependencies`, { cause: err })
  }
  const addon = mod[entry.export] as DownloadAddon | undefined
  if (addon == null || typeof addon.download !== 'function' || !Array.isArray(addon.schemes)) {
    throw new KithError('INTERNAL', `${entry.module} does not export a download add-on named ${entry.export}`)
  }
  return addon
}
