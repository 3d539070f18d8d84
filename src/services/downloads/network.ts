/**
 * The download settings (settings.ts) for add-ons that open their own TCP
 * connections (ftp, sftp): the DNS servers and the IPv4-only switch as the
 * HTTP add-on honours them (http/dispatcher.ts resolves with the same
 * lookup), and the proxy that applies to a URL (ALL_PROXY): sftp goes
 * through an HTTP one (tunnel.ts); one an add-on can't go through is refused
 * in words, never silently bypassed.
 */
import { KithError } from '../../errors.ts'
import type { DownloadSettings } from './addon.ts'
import { serverLookup } from './http/dispatcher.ts'
import { exempt } from './no-proxy.ts'

/** the address family to connect with: 4 when IPv6 is switched off, else either (0) */
export function family (settings: DownloadSettings): 0 | 4 {
  return settings.ipv6 ? 0 : 4
}

/**
 * What to connect to for `host`: with DNS servers configured, the address
 * they give (IPv4 only when IPv6 is off); else `host` itself, which the
 * system resolves when the connection is made with `family(settings)`.
 */
export async function connectAddress (host: string, settings: DownloadSettings): Promise<string> {
  if (settings.dns.length === 0) return host
  const lookup = serverLookup(settings.dns)
  return await new Promise((resolve, reject) => {
    lookup(host, { family: family(settings) }, (err, address) => {
      if (err != null) reject(new KithError('REMOTE_FAILED', `${host}: the DNS servers ${settings.dns.join(', ')} have no address for it; check the URL, or downloads.dns in config.json`, { cause: err }))
      else resolve(address as string)
    })
  })
}

/**
 * The proxy for a URL that is not http(s): ALL_PROXY (downloads.proxy.all)
 * applies to every other scheme, unless NO_PROXY names the host (no-proxy.ts);
 * null for none.
 */
export function proxyFor (url: URL, settings: DownloadSettings): string | null {
  const proxy = settings.proxy.all
  return proxy == null || proxy === '' || exempt(url, settings.proxy.noProxy) ? null : proxy
}

/** PROXY_UNSUPPORTED for `proxy`, which the add-on `what` ("ftp") can't go through. */
export function proxyRefused (url: URL, proxy: string, what: string): KithError {
  return new KithError('PROXY_UNSUPPORTED', `ALL_PROXY (or downloads.proxy.all) is ${proxy}, and kith's ${what} downloads can't go through it; ` +
    `to connect to ${url.hostname} directly, add it to NO_PROXY (or downloads.proxy.noProxy in config.json)`)
}
