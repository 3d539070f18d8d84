import type { IncomingHttpHeaders } from 'node:http'
import { BlockList, isIP } from 'node:net'
import { KithError } from '../../errors.ts'
import type { ConnectGuard } from '../downloads/http/dispatcher.ts'

/**
 * What keeps the tokenless proxy for local programs (docs/security.md,
 * "Local proxy"): a web page can't make the browser call it (Origin,
 * Sec-Fetch-Site), a DNS-rebinding name can't reach it (Host), and it can't
 * be made to fetch from this machine or its LAN (the address actually
 * connected to, unless config.json allows private origins).
 */

/** Refuses a browser's cross-site request and a Host header other than ours. */
export function checkCaller (headers: IncomingHttpHeaders, port: number): void {
  const own = [`127.0.0.1:${port}`, `localhost:${port}`]
  if (!own.includes(headers.host ?? '')) {
    throw new KithError('PROXY_BAD_HOST', `the Host header ${JSON.stringify((headers.host ?? '').slice(0, 100))} does not name this proxy; call http://127.0.0.1:${port}/proxy (see proxy.json in the kith home)`)
  }
  const origin = headers.origin
  if (origin != null && !own.some(h => origin === `http://${h}`)) {
    throw new KithError('PROXY_CROSS_SITE', `a request from the web page ${JSON.stringify(origin.slice(0, 100))} is refused; the proxy serves programs on this machine, not web pages`)
  }
  const site = headers['sec-fetch-site']
  if (site != null && site !== 'none' && site !== 'same-origin') {
    throw new KithError('PROXY_CROSS_SITE', `a ${site} browser request is refused; the proxy serves programs on this machine, not web pages`)
  }
}

const PRIVATE = new BlockList()
for (const [net, bits] of [['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12], ['192.168.0.0', 16], ['224.0.0.0', 4], ['240.0.0.0', 4]] as const) PRIVATE.addSubnet(net, bits, 'ipv4')
for (const [net, bits] of [['::', 128], ['::1', 128], ['fc00::', 7], ['fe80::', 10], ['ff00::', 8]] as const) PRIVATE.addSubnet(net, bits, 'ipv6')

/** Loopback, private (RFC 1918, ULA, CGNAT), link-local, unspecified or multicast; IPv4-mapped IPv6 as its IPv4. */
export function isPrivateAddress (address: string): boolean {
  const family = isIP(address)
  if (family === 0) return false
  return PRIVATE.check(address, family === 6 ? 'ipv6' : 'ipv4')
}

function privateOrigin (host: string, address: string): KithError {
  return new KithError('PROXY_ORIGIN_PRIVATE', `${host} is on ${address}, a loopback, private or link-local address; the proxy does not fetch from this machine or its network unless config.json sets "proxy": {"allowPrivateOrigins": true}`)
}

/**
 * Refuses, before connecting, a URL whose host is a private address literal
 * or localhost. Names are checked again on the address connected to
 * (originGuard): this is only the early, clear answer.
 */
export function checkOriginHost (url: URL, allowPrivate: boolean): void {
  if (allowPrivate) return
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1')
  const lower = host.toLowerCase()
  if (isPrivateAddress(host) || lower === 'localhost' || lower.endsWith('.localhost')) throw privateOrigin(url.host, host)
}

/** The dispatcher's connect guard: the address actually connected to, after any DNS answer. */
export function originGuard (allowPrivate: boolean): ConnectGuard | undefined {
  if (allowPrivate) return undefined
  return ({ address, hostname }) => isPrivateAddress(address) ? privateOrigin(hostname, address) : null
}
