/**
 * NO_PROXY, read one way for every add-on (the HTTP dispatcher, webdav, ftp
 * and sftp), the way curl reads it: entries split by commas or spaces; `*`
 * for every host; a name for itself and the names under it (`example.org`,
 * `.example.org` and `*.example.org` alike); an IP address for itself only,
 * a CIDR block (`10.0.0.0/8`, `fd00::/8`) for the addresses in it; an
 * optional `:port`, compared with the URL's port or its scheme's default;
 * IPv6 addresses in brackets when a port follows.
 *
 * undici's EnvHttpProxyAgent reads it differently (a bare name only for
 * itself, no CIDR blocks, a bare IPv6 address taken for a host and a port), so
 * kith does not let undici match: http/dispatcher.ts routes each request with
 * this.
 */
import { BlockList, isIP } from 'node:net'

/** the port each scheme uses when the URL names none */
const DEFAULT_PORTS: Readonly<Record<string, string>> = { 'http:': '80', 'https:': '443', 'ftp:': '21', 'ftps:': '990', 'sftp:': '22', 'webdav:': '80', 'webdavs:': '443' }

/** Whether NO_PROXY (`noProxy`, null for unset) names the URL's host, so it is reached directly. */
export function exempt (url: URL, noProxy: string | null): boolean {
  if (noProxy == null) return false
  const host = url.hostname.replace(/^\[|\]$/g, '').toLowerCase()
  const port = url.port !== '' ? url.port : (DEFAULT_PORTS[url.protocol] ?? '')
  const family = isIP(host)
  return noProxy.split(/[\s,]+/).filter(Boolean).some(raw => {
    if (raw === '*') return true
    let entry = raw.toLowerCase()
    let entryPort: string | undefined
    const bracketed = /^\[(.+)\](?::(\d+))?$/.exec(entry)
    if (bracketed != null) [entry, entryPort] = [bracketed[1]!, bracketed[2]]
    else if (/^[^:]+:\d+$/.test(entry)) [entry, entryPort] = entry.split(':') as [string, string]
    if (entryPort !== undefined && entryPort !== port) return false
    if (family !== 0) return inBlock(host, family, entry)
    entry = entry.replace(/^\*?\./, '')
    return host === entry || host.endsWith(`.${entry}`)
  })
}

/** an IP host against an entry: the same address (however written), or one in the entry's CIDR block */
function inBlock (host: string, family: number, entry: string): boolean {
  const [base, bits] = entry.split('/') as [string, string | undefined]
  if (isIP(base) !== family) return false
  const type = family === 6 ? 'ipv6' : 'ipv4'
  const list = new BlockList()
  if (bits === undefined) list.addAddress(base, type)
  else if (/^\d+$/.test(bits) && Number(bits) <= (family === 6 ? 128 : 32)) list.addSubnet(base, Number(bits), type)
  else return false
  return list.check(host, type)
}
