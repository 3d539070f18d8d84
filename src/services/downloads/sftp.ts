/**
 * sftp:// (docs/downloads.md, "Protocol add-ons"): one file over SSH with
 * ssh2, read from the offset the partial ends at (SFTP reads name their
 * offset, so a resume fetches only the rest), several reads in flight
 * (sftp-read.ts).
 *
 *   sftp://[user[:password]@]host[:port]/absolute/path
 *   sftp://host/~/path/in/home
 *
 * The server's host key is checked against known_hosts (known-hosts.ts): an
 * unknown or changed key is refused unless the user accepted its fingerprint
 * (option hostKey). Authentication: the key file given (option keyFile, with
 * passphrase), else the ssh-agent (SSH_AUTH_SOCK) and ~/.ssh/id_ed25519,
 * id_ecdsa, id_rsa; a password (the URL's or the option) last.
 *
 * The host is resolved with the downloads' DNS servers and connected to over
 * IPv4 only when IPv6 is off (network.ts); a proxy that applies (ALL_PROXY)
 * is gone through when it is an HTTP one (a CONNECT tunnel, tunnel.ts), and
 * refused otherwise.
 */
import { readFile } from 'node:fs/promises'
import { homedir, userInfo as osUser } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { Client, type ConnectConfig, type SFTPWrapper } from 'ssh2'
import { KithError } from '../../errors.ts'
import type { DownloadAddon, DownloadContext, DownloadJob, DownloadResult } from './addon.ts'
import { checkHostKey, readKnownHosts } from './known-hosts.ts'
import { connectAddress, family, proxyFor } from './network.ts'
import { AddonOptions, decodedPath, needHost, userInfo } from './options.ts'
import { abortReason, lengthChanged, openPartial, Progress, writeWith } from './partial.ts'
import { readAhead } from './sftp-read.ts'
import { tunnel } from './tunnel.ts'

const OPTIONS = ['user', 'password', 'keyFile', 'passphrase', 'knownHosts', 'hostKey'] as const
/** tried in this order when no keyFile is given, as ssh does */
const DEFAULT_KEYS = ['id_ed25519', 'id_ecdsa', 'id_rsa']
/** ssh2's SFTP status for a missing file */
const NO_SUCH_FILE = 2

interface SftpTarget {
  host: string
  port: number
  path: string
  name: string
  user: string
  password: string | undefined
  keyFile: string | undefined
  passphrase: string | undefined
  knownHosts: string
  hostKey: string | undefined
}

function target (url: URL, options: Readonly<Record<string, unknown>>): SftpTarget {
  const opts = new AddonOptions('sftp', options, OPTIONS)
  needHost(url)
  let path = decodedPath(url)
  // sftp://host/~/x is x in the home folder: SFTP resolves a relative path there
  if (path.startsWith('/~/')) path = path.slice(3)
  const name = path.split('/').at(-1) ?? ''
  if (name === '') throw new KithError('URL_INVALID', `sftp:// URLs name a file (${url.href} ends in /); folders are not downloaded over SFTP`)
  const fromUrl = userInfo(url)
  const hostKey = opts.string('hostKey')
  if (hostKey !== undefined && !/^SHA256:[A-Za-z0-9+/]{43}$/.test(hostKey)) {
    throw new KithError('URL_INVALID', 'the sftp option hostKey is a host key fingerprint as ssh prints it: SHA256: and 43 base64 characters')
  }
  return {
    host: url.hostname.replace(/^\[|\]$/g, ''),
    port: url.port === '' ? 22 : Number(url.port),
    path,
    name,
    user: opts.string('user') ?? (fromUrl.user === '' ? osUser().username : fromUrl.user),
    password: opts.string('password') ?? (fromUrl.password === '' ? undefined : fromUrl.password),
    keyFile: opts.string('keyFile'),
    passphrase: opts.string('passphrase'),
    knownHosts: opts.string('knownHosts') ?? join(homedir(), '.ssh', 'known_hosts'),
    hostKey
  }
}

/** The key file given, or the first of the default ones that exists. */
async function privateKey (t: SftpTarget): Promise<Buffer | undefined> {
  if (t.keyFile !== undefined) {
    return await readFile(t.keyFile).catch((err: Error) => {
      throw new KithError('URL_INVALID', `the sftp keyFile ${t.keyFile} can't be read: ${err.message}`)
    })
  }
  for (const name of DEFAULT_KEYS) {
    const key = await readFile(join(homedir(), '.ssh', name)).catch(() => undefined)
    if (key !== undefined) return key
  }
  return undefined
}

/** ssh2's and SFTP's failures as KithErrors; `what` names the server and file. */
function sftpError (err: unknown, what: string): unknown {
  if (err instanceof KithError) return err
  const e = err as Error & { level?: string, code?: number | string }
  if (e.level === 'client-authentication') return new KithError('REMOTE_AUTH_FAILED', `the SSH server refused every way kith tried to log in for ${what}; give a keyFile (and passphrase) or a password that it takes`, { cause: err })
  if (e.code === NO_SUCH_FILE) return new KithError('REMOTE_NOT_FOUND', `the SFTP server has no file ${what}`, { cause: err })
  return new KithError('REMOTE_FAILED', `SFTP with ${what} failed: ${e.message}`, { cause: err })
}

async function connect (client: Client, t: SftpTarget, url: URL, ctx: DownloadContext): Promise<SFTPWrapper> {
  const knownHosts = await readKnownHosts(t.knownHosts)
  const key = await privateKey(t)
  const proxy = proxyFor(url, ctx.settings)
  // through the proxy, which resolves the name; else to the address the settings' DNS gives (the tunnel last: nothing after it may throw and leave it open)
  const route: ConnectConfig = proxy != null
    ? { sock: await tunnel(proxy, t.host, t.port, 'sftp', ctx.settings.connectTimeoutMs, ctx.signal) }
    : { host: await connectAddress(t.host, ctx.settings), port: t.port, forceIPv4: family(ctx.settings) === 4 }
  let refused: unknown
  const config: ConnectConfig = {
    ...route,
    username: t.user,
    password: t.password,
    privateKey: key,
    passphrase: t.passphrase,
    agent: process.env.SSH_AUTH_SOCK,
    readyTimeout: ctx.settings.connectTimeoutMs,
    hostVerifier: (key: Buffer) => {
      try {
        checkHostKey(knownHosts, t.host, t.port, key, t.hostKey, t.knownHosts)
        return true
      } catch (err) {
        refused = err
        return false
      }
    }
  }
  await new Promise<void>((resolve, reject) => {
    client.once('ready', resolve)
    client.once('error', err => { reject(refused ?? err) })
    client.connect(config)
  })
  return await new Promise<SFTPWrapper>((resolve, reject) => {
    client.sftp((err, sftp) => { if (err != null) reject(err); else resolve(sftp) })
  })
}

async function download (job: DownloadJob, ctx: DownloadContext): Promise<DownloadResult> {
  const t = target(job.url, job.options)
  const what = `${t.host}:${t.port} ${t.path}`
  const client = new Client()
  // a late error (the connection dropped while closing) must not go unhandled
  client.on('error', () => {})
  const endOnAbort = (): void => { client.end() }
  ctx.signal.addEventListener('abort', endOnAbort, { once: true })
  try {
    ctx.signal.throwIfAborted()
    const sftp = await connect(client, t, job.url, ctx)
    const stats = await new Promise<{ size: number, mtime: number }>((resolve, reject) => {
      sftp.stat(t.path, (err, s) => { if (err != null) reject(err); else resolve(s) })
    })
    const remote = await new Promise<Buffer>((resolve, reject) => {
      sftp.open(t.path, 'r', (err, h) => { if (err != null) reject(err); else resolve(h) })
    })
    const { handle, at } = await openPartial(ctx.partial, ctx.stateDir, { size: stats.size, validator: `${stats.size} ${stats.mtime}` })
    const progress = new Progress(ctx, stats.size, t.name)
    progress.add(at)
    if (at < stats.size) await writeWith(handle, at, ctx, progress, async writer => { await pipeline(Readable.from(readAhead(sftp, remote, at, stats.size)), writer) })
    else await handle.close()
    // the remote file is closed with the connection (finally); its own close is not waited for
    sftp.close(remote, () => {})
    if (progress.done !== stats.size) throw lengthChanged(what, stats.size, progress.done)
    return { size: stats.size, name: t.name, kind: 'file' }
  } catch (err) {
    throw abortReason(ctx.signal, sftpError(err, what))
  } finally {
    ctx.signal.removeEventListener('abort', endOnAbort)
    client.end()
  }
}

export const sftpAddon: DownloadAddon = {
  schemes: ['sftp'],
  check: (url, options) => { target(url, options) },
  download
}
