/**
 * How the webdav add-on's requests travel. The `webdav` client fetches with
 * node-fetch over Node's http agents; kith sends its requests through undici
 * with the download's dispatcher instead (http/dispatcher.ts: the proxies,
 * DNS servers, IPv4-only switch and timeouts http:// downloads honour), by the
 * hook the client documents for a custom fetch (`getPatcher().patch('fetch')`).
 * The hook is the client module's, shared by every client: each client gets a
 * WebdavRoute as its http and https agent, and the hook finds it in the
 * request's `agent` option.
 *
 * What a request other than GET brings (PROPFIND listings: a large tree's are
 * megabytes) passes the download's bandwidth flow (`take`) as it is read; a
 * GET's body is the file, which the add-on passes through `take` as it writes.
 */
import { fetch, Response, type Dispatcher } from 'undici'
import { getPatcher } from 'webdav'

type Take = (bytes: number, signal?: AbortSignal) => Promise<void>

export class WebdavRoute {
  readonly dispatcher: Dispatcher
  readonly take: Take

  constructor (dispatcher: Dispatcher, take: Take) {
    this.dispatcher = dispatcher
    this.take = take
  }

  async close (): Promise<void> {
    await this.dispatcher.close()
  }
}

/** what the client hands its fetch (node-fetch's options; `agent` picks the agent for a URL) */
interface ClientInit {
  method?: string
  headers?: Record<string, string>
  body?: string | Uint8Array
  signal?: AbortSignal
  agent?: (url: URL) => unknown
}

getPatcher().patch('fetch', async (...args: unknown[]) => {
  const [url, init] = args as [string, ClientInit]
  const route = init.agent?.(new URL(url))
  // every client the add-on makes has a route: a request without one would bypass the settings
  if (!(route instanceof WebdavRoute)) throw new Error('a WebDAV request without a route (webdav-route.ts)')
  const response = await fetch(url, {
    method: init.method ?? 'GET',
    ...(init.headers != null ? { headers: init.headers } : {}),
    ...(init.body != null ? { body: init.body } : {}),
    ...(init.signal != null ? { signal: init.signal } : {}),
    dispatcher: route.dispatcher
  })
  if (init.method === 'GET' || response.body == null) return response
  const metered = response.body.pipeThrough(new TransformStream<Uint8Array, Uint8Array>({
    transform: async (chunk, out) => {
      await route.take(chunk.byteLength, init.signal)
      out.enqueue(chunk)
    }
  }))
  return new Response(metered, { status: response.status, statusText: response.statusText, headers: response.headers })
})
