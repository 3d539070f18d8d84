/**
 * ftp:// and ftps:// (docs/downloads.md, "Protocol add-ons"): one file over
 * basic-ftp, in passive mode, resumed with REST from what the partial holds.
 * ftps:// is explicit TLS (AUTH TLS on the usual port 21), with the server's
 * certificate checked against the system's authorities or the `ca` option's.
 *
 *   ftp://[user[:password]@]host[:port]/path/file
 *
 * The path is relative to the folder the login starts in, as curl reads it
 * (RFC 1738); `ftp://host/%2Fsrv/file` is the absolute /srv/file.
 *
 * No user: anonymous. Options: user, password (instead of the URL's), ca (a
 * PEM file of the authority to trust for ftps).
 *
 * The host is resolved with the downloads' DNS servers and connected to over
 * IPv4 only when IPv6 is off (network.ts); a proxy that applies (ALL_PROXY)
 * is refused: basic-ftp can't go through one.
 */
import { readFile } from 'node:fs/promises'
import { Client, FTPError } from 'basic-ftp'
import { KithError } from '../../errors.ts'
import type { DownloadAddon, DownloadContext, DownloadJob, DownloadResult } from './addon.ts'
import { AddonOptions, decodedPath, needHost, userInfo } from './options.ts'
import { connectAddress, family, proxyFor, proxyRefused } from './network.ts'
import { abortReason, lengthChanged, openPartial, Progress, writeWith } from './partial.ts'

const OPTIONS = ['user', 'password', 'ca'] as const

interface FtpTarget {
  host: string
  port: number
  path: string
  name: string
  user: string
  password: string
  secure: boolean
  ca: string | undefined
}

function target (url: URL, options: Readonly<Record<string, unknown>>): FtpTarget {
  const scheme = url.protocol.slice(0, -1)
  const opts = new AddonOptions(scheme, options, OPTIONS)
  needHost(url)
  // as in RFC 1738 (and curl): the path is relative to the login folder; %2F at its start makes it absolute
  const path = decodedPath(url).slice(1)
  const name = path.split('/').at(-1) ?? ''
  if (name === '') throw new KithError('URL_INVALID', `${url.protocol}// URLs name a file (${url.href} ends in /); folders are not downloaded over FTP`)
  const fromUrl = userInfo(url)
  const user = opts.string('user') ?? (fromUrl.user === '' ? 'anonymous' : fromUrl.user)
  const password = opts.string('password') ?? (fromUrl.user === '' && fromUrl.password === '' ? 'anonymous@' : fromUrl.password)
  const ca = opts.string('ca')
  if (ca !== undefined && scheme !== 'ftps') throw new KithError('URL_INVALID', 'the option ca is for ftps:// URLs (plain ftp:// has no TLS)')
  return { host: url.hostname.replace(/^\[|\]$/g, ''), port: url.port === '' ? 21 : Number(url.port), path, name, user, password, secure: scheme === 'ftps', ca }
}

/** The ftps authority file of option ca. */
async function readCa (path: string): Promise<Buffer> {
  return await readFile(path).catch((err: Error) => {
    throw new KithError('URL_INVALID', `the ftps option ca names ${path}, which can't be read: ${err.message}`)
  })
}

/** basic-ftp's failures, as KithErrors with codes; `what` names the file or server. */
function ftpError (err: unknown, what: string): unknown {
  if (err instanceof KithError) return err
  if (err instanceof FTPError) {
    if (err.code === 530) return new KithError('REMOTE_AUTH_FAILED', `the FTP server refused the login for ${what} (${err.message}); check the user name and password`, { cause: err })
    if (err.code === 550) return new KithError('REMOTE_NOT_FOUND', `the FTP server has no file ${what} (${err.message})`, { cause: err })
    return new KithError('REMOTE_FAILED', `the FTP server failed for ${what}: ${err.message}`, { cause: err })
  }
  const message = err instanceof Error ? err.message : String(err)
  return new KithError('REMOTE_FAILED', `FTP with ${what} failed: ${message}`, { cause: err })
}

async function download (job: DownloadJob, ctx: DownloadContext): Promise<DownloadResult> {
  const t = target(job.url, job.options)
  const proxy = proxyFor(job.url, ctx.settings)
  if (proxy != null) throw proxyRefused(job.url, proxy, 'ftp')
  const client = new Client(ctx.settings.readTimeoutMs)
  // control and data connections alike (basic-ftp connects each with it)
  if (family(ctx.settings) === 4) client.ftp.ipFamily = 4
  const closeOnAbort = (): void => { client.close() }
  ctx.signal.addEventListener('abort', closeOnAbort, { once: true })
  const what = `${t.host}:${t.port}/${t.path}`
  try {
    ctx.signal.throwIfAborted()
    await client.access({
      host: await connectAddress(t.host, ctx.settings),
      port: t.port,
      user: t.user,
      password: t.password,
      secure: t.secure,
      // the certificate is checked against the URL's name, also when the DNS servers gave the address
      secureOptions: { host: t.host, ...(t.ca === undefined ? {} : { ca: await readCa(t.ca) }) }
    })
    const size = await client.size(t.path)
    // MDTM with the size tells a changed file; a server without MDTM has only the size
    const modified = await client.lastMod(t.path).then(date => date.toISOString(), () => '')
    const { handle, at } = await openPartial(ctx.partial, ctx.stateDir, { size, validator: `${size} ${modified}` })
    const progress = new Progress(ctx, size, t.name)
    progress.add(at)
    if (at < size) await writeWith(handle, at, ctx, progress, async writer => await client.downloadTo(writer, t.path, at))
    else await handle.close()
    if (progress.done !== size) throw lengthChanged(what, size, progress.done)
    return { size, name: t.name, kind: 'file' }
  } catch (err) {
    throw abortReason(ctx.signal, ftpError(err, what))
  } finally {
    ctx.signal.removeEventListener('abort', closeOnAbort)
    client.close()
  }
}

export const ftpAddon: DownloadAddon = {
  schemes: ['ftp', 'ftps'],
  check: (url, options) => { target(url, options) },
  download
}
