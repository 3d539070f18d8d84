/**
 * A TCP connection to host:port through an HTTP proxy's CONNECT tunnel (what
 * curl and undici's proxy agents do for https), for add-ons that speak their
 * own protocol over a socket they are given (sftp: ssh2's `sock`). Node's
 * http client makes the CONNECT request; the proxy resolves the name. A
 * proxy that is not http:// or https:// (SOCKS) is PROXY_UNSUPPORTED.
 */
import { request as httpRequest, type IncomingMessage } from 'node:http'
import { request as httpsRequest } from 'node:https'
import type { Socket } from 'node:net'
import { KithError } from '../../errors.ts'

export async function tunnel (proxy: string, host: string, port: number, what: string, timeoutMs: number, signal: AbortSignal): Promise<Socket> {
  let url: URL
  try {
    url = new URL(proxy)
  } catch {
    throw new KithError('PROXY_UNSUPPORTED', `the proxy ${JSON.stringify(proxy)} is not a URL; set it as http://HOST:PORT`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new KithError('PROXY_UNSUPPORTED', `the proxy ${proxy} is ${url.protocol.slice(0, -1)}; kith's ${what} downloads go through http:// or https:// proxies only (CONNECT); add ${host} to NO_PROXY to connect directly`)
  }
  const target = `${host.includes(':') ? `[${host}]` : host}:${port}`
  const headers: Record<string, string> = { host: target }
  if (url.username !== '') headers['proxy-authorization'] = `Basic ${Buffer.from(`${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`).toString('base64')}`
  const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)({
    host: url.hostname.replace(/^\[|\]$/g, ''),
    port: url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port),
    method: 'CONNECT',
    path: target,
    headers,
    timeout: timeoutMs,
    signal
  })
  return await new Promise<Socket>((resolve, reject) => {
    const failed = (why: string, cause?: unknown): void => {
      reject(new KithError('REMOTE_FAILED', `the proxy ${url.host} did not open a tunnel to ${target}: ${why}`, { cause }))
    }
    req.once('connect', (res: IncomingMessage, socket: Socket, head: Buffer) => {
      if (res.statusCode === 200) {
        req.setTimeout(0)
        // what the far end sent first (an SSH server speaks first: its banner) may have come in the same read as
        // the proxy's answer: Node hands it over as `head`, no longer in the socket
        if (head.length > 0) socket.unshift(head)
        resolve(socket)
        return
      }
      socket.destroy()
      failed(`it answered ${res.statusCode ?? '?'}${res.statusCode === 407 ? ' (it wants a user name and password: http://USER:PASSWORD@HOST:PORT)' : ''}`)
    })
    req.once('timeout', () => { req.destroy(new Error(`no answer within ${timeoutMs} ms`)) })
    req.once('error', err => { failed(err.message, err) })
    req.end()
  })
}
