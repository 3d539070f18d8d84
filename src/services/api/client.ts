import { readFile, stat } from 'node:fs/promises'
import type { IncomingMessage } from 'node:http'
import { KithError, isErrorCode } from '../../errors.ts'
import { homePaths } from '../../peer/home.ts'

/**
 * A client of the local API, found through the home folder's api.json and
 * api.token. The CLI is built on it; other programs can use it too.
 */
export const REQUEST_TIMEOUT_MS = 60_000

// node:http as the CommonJS module it is: an ESM import of it reads every
// export, and the lazy WebSocket ones load undici, a tenth of what a CLI
// command costs (npm run bench -- --section cli)
const { request: httpRequest } = process.getBuiltinModule('node:http')

export class ApiClient {
  readonly url: URL
  private readonly token: string
  private readonly home: string

  constructor (url: string, token: string, home = '') {
    this.url = new URL(url)
    this.token = token
    this.home = home
  }

  static async forHome (home: string): Promise<ApiClient> {
    const paths = homePaths(home)
    let info: { url?: unknown }
    let token: string
    try {
      info = JSON.parse(await readFile(paths.apiInfo, 'utf8'))
      token = (await readFile(paths.apiToken, 'utf8')).trim()
    } catch {
      throw notRunning(home)
    }
    if (typeof info.url !== 'string') throw notRunning(home)
    await checkPrivate(paths.apiToken)
    return new ApiClient(info.url, token, home)
  }

  async get<T> (path: string): Promise<T> {
    return await this.call<T>('GET', path)
  }

  /** `timeoutMs: 0` waits as long as the daemon works (sharing a large folder). */
  async call<T> (method: string, path: string, body?: unknown, options: { timeoutMs?: number } = {}): Promise<T> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body))
    const { status, text } = await new Promise<{ status: number, text: string }>((resolve, reject) => {
      const req = httpRequest(new URL(path, this.url), {
        method,
        headers: {
          authorization: `Bearer ${this.token}`,
          ...(payload != null ? { 'content-type': 'application/json', 'content-length': payload.length } : {})
        },
        timeout: options.timeoutMs ?? REQUEST_TIMEOUT_MS
      }, res => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }))
        res.on('error', reject)
      })
      req.on('timeout', () => req.destroy(new Error('the daemon did not answer in time')))
      req.on('error', reject)
      req.end(payload)
    }).catch(err => {
      if (['ECONNREFUSED', 'ECONNRESET', 'ENOENT'].includes((err as NodeJS.ErrnoException).code ?? '')) throw notRunning(this.home)
      throw new KithError('INTERNAL', `the API request failed: ${(err as Error).message}`, { cause: err })
    })
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch {
      throw new KithError('INTERNAL', `the daemon answered ${status} with something that is not JSON`)
    }
    if (status >= 400) {
      const error = (json as { error?: { code?: unknown, message?: unknown } }).error
      const code = isErrorCode(error?.code) ? error.code : 'INTERNAL'
      throw new KithError(code, typeof error?.message === 'string' ? error.message : `the daemon answered ${status}`)
    }
    return json as T
  }

  /**
   * Subscribes to server-sent events. Resolves once the daemon accepted the
   * subscription, so nothing that happens afterwards is missed; the stream
   * ends when the signal aborts or the daemon stops.
   */
  async events (signal?: AbortSignal): Promise<AsyncGenerator<{ type: string, [key: string]: unknown }>> {
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = httpRequest(new URL('/v1/events', this.url), { headers: { authorization: `Bearer ${this.token}` }, signal }, resolve)
      req.on('error', err => reject(['ECONNREFUSED', 'ECONNRESET'].includes((err as NodeJS.ErrnoException).code ?? '') ? notRunning(this.home) : err))
      req.end()
    })
    if (res.statusCode !== 200) {
      const chunks: Buffer[] = []
      for await (const chunk of res) chunks.push(chunk as Buffer)
      let error: { code?: unknown, message?: unknown } | undefined
      try {
        error = JSON.parse(Buffer.concat(chunks).toString('utf8')).error
      } catch {}
      throw new KithError(isErrorCode(error?.code) ? error.code : 'INTERNAL',
        typeof error?.message === 'string' ? error.message : `the event stream was refused (${res.statusCode ?? 0})`)
    }
    return parseEvents(res)
  }
}

async function * parseEvents (res: IncomingMessage): AsyncGenerator<{ type: string, [key: string]: unknown }> {
  let buffer = ''
  try {
    for await (const chunk of res) {
      buffer += (chunk as Buffer).toString('utf8')
      let end: number
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const frame = buffer.slice(0, end)
        buffer = buffer.slice(end + 2)
        const data = frame.split('\n').filter(l => l.startsWith('data: ')).map(l => l.slice(6)).join('\n')
        if (data !== '') yield JSON.parse(data)
      }
    }
  } catch (err) {
    if ((err as Error).name === 'AbortError') return
    throw new KithError('INTERNAL', `the event stream broke off (${(err as Error).message}): the daemon stopped, or closed it because this client did not read it in time`, { cause: err })
  }
}

/**
 * The token lets whoever holds it drive the node: one that other users can
 * read is not sent. (The daemon makes it 0600, with a new token, on start.)
 */
async function checkPrivate (tokenFile: string): Promise<void> {
  const mode = (await stat(tokenFile)).mode & 0o777
  if ((mode & 0o077) !== 0) {
    throw new KithError('TOKEN_NOT_PRIVATE',
      `the API token ${tokenFile} can be read by other users (mode ${mode.toString(8).padStart(4, '0')}); run \`chmod 600 ${tokenFile}\`, or restart the daemon, which makes it private with a new token`)
  }
}

function notRunning (home: string): KithError {
  return new KithError('DAEMON_NOT_RUNNING', `no kith daemon is running for ${home}; start one with \`kith start${home !== '' ? ` --home ${home}` : ''}\``)
}
