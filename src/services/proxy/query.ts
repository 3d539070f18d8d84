import { KithError } from '../../errors.ts'
import { MAX_URL_LENGTH } from '../downloads/constants.ts'
import { MAX_CLASS_URLS, MAX_QOS, MAX_QUERY_LENGTH } from './constants.ts'

/**
 * The /proxy query, as BitTorrent DNA took it (docs/proxy.md, "The URL"):
 * `url=ENC[&url=ENC2...]&service=min_rate_data|streaming&qos=N`, pairs in
 * any order, values percent-encoded as encodeURIComponent does ('+' is a
 * plus, not a space). Several url= name one equivalence class: the same
 * bytes at several origins, tried in the order given. service= and qos= are
 * the class's; given twice, the last one wins (DNA's rule for conflicting
 * values). Anything else is refused with a typed error: unknown keys, pairs
 * without '=', empty pairs, escapes that do not decode, URLs that are not
 * absolute http(s).
 */
export type ProxyService = 'min_rate_data' | 'streaming'

export interface ProxyQuery {
  /** the equivalence class, in the order given, without repeats */
  urls: URL[]
  /** null: not said (the content's type decides, docs/proxy.md) */
  service: ProxyService | null
  /** bytes/s the origin keeps going at least; 0: no floor */
  qos: number
}

export function parseProxyQuery (raw: string): ProxyQuery {
  if (raw.length > MAX_QUERY_LENGTH) throw new KithError('PROXY_BAD_QUERY', `the query is ${raw.length} characters; the proxy takes at most ${MAX_QUERY_LENGTH}`)
  const urls: URL[] = []
  let service: ProxyService | null = null
  let qos = 0
  for (const pair of raw === '' ? [] : raw.split('&')) {
    const eq = pair.indexOf('=')
    if (eq < 1) throw new KithError('PROXY_BAD_QUERY', `${JSON.stringify(pair.slice(0, 80))} is not a key=value pair; the proxy takes url=, service= and qos=`)
    const key = pair.slice(0, eq)
    const value = decode(pair.slice(eq + 1), key)
    if (key === 'url') {
      const url = parseOriginUrl(value)
      if (!urls.some(u => u.href === url.href)) urls.push(url)
      if (urls.length > MAX_CLASS_URLS) throw new KithError('PROXY_BAD_QUERY', `more than ${MAX_CLASS_URLS} url= values; one request names at most ${MAX_CLASS_URLS} origins of the same file`)
    } else if (key === 'service') {
      if (value !== 'min_rate_data' && value !== 'streaming') throw new KithError('PROXY_BAD_SERVICE', `service=${JSON.stringify(value.slice(0, 40))} is unknown; use service=min_rate_data (download) or service=streaming (a player's ranges)`)
      service = value
    } else if (key === 'qos') {
      if (!/^\d{1,13}$/.test(value) || Number(value) > MAX_QOS) throw new KithError('PROXY_BAD_QOS', `qos=${JSON.stringify(value.slice(0, 40))} is not a rate; give bytes per second as a whole number from 0 to ${MAX_QOS}`)
      qos = Number(value)
    } else {
      throw new KithError('PROXY_BAD_QUERY', `unknown parameter ${JSON.stringify(key.slice(0, 40))}; the proxy takes url=, service= and qos=`)
    }
  }
  if (urls.length === 0) throw new KithError('PROXY_NO_URL', 'no url= given; call /proxy?url=ENCODED_URL (encoded as encodeURIComponent does)')
  return { urls, service, qos }
}

function decode (value: string, key: string): string {
  try {
    return decodeURIComponent(value)
  } catch {
    throw new KithError('PROXY_BAD_QUERY', `the value of ${key.slice(0, 40)}= has a percent-escape that does not decode; encode it as encodeURIComponent does`)
  }
}

/** An origin URL: absolute http(s), a host, no user name or password; the fragment is dropped (it never reaches a server). */
export function parseOriginUrl (text: string): URL {
  if (text.length > MAX_URL_LENGTH) throw new KithError('URL_INVALID', `a url= of ${text.length} characters; at most ${MAX_URL_LENGTH}`)
  let url: URL
  try {
    url = new URL(text)
  } catch {
    throw new KithError('URL_INVALID', `${JSON.stringify(text.slice(0, 200))} is not an absolute URL; url= takes http:// or https:// URLs, encoded as encodeURIComponent does`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new KithError('URL_UNSUPPORTED', `${url.protocol} URLs are not proxied; the proxy fetches http:// and https:// only`)
  if (url.hostname === '') throw new KithError('URL_INVALID', `${url.href} names no host`)
  if (url.username !== '' || url.password !== '') throw new KithError('URL_INVALID', 'a user name or password in the URL is not proxied; use a URL that carries its own token')
  url.hash = ''
  return url
}
