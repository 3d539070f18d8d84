/**
 * The http/https download add-on: a multi-connection engine on undici
 * (docs/downloads.md, "HTTP engine"). Loaded by the registry on first use.
 */
import { KithError } from '../../../errors.ts'
import type { DownloadAddon } from '../addon.ts'
import { AddonOptions } from '../options.ts'
import { download } from './engine.ts'

export const httpAddon: DownloadAddon = {
  schemes: ['http', 'https'],
  check (url, options) {
    // it has none: a typo'd or misplaced option is said, not ignored (network settings are in config.json)
    new AddonOptions(url.protocol.slice(0, -1), options, []) // eslint-disable-line no-new
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new KithError('URL_UNSUPPORTED', `${url.protocol} URLs are not HTTP; the HTTP add-on takes http:// and https://`)
    if (url.hostname === '') throw new KithError('URL_INVALID', `${url.href} names no host`)
    if (url.username !== '' || url.password !== '') throw new KithError('URL_INVALID', 'a user name or password in an http(s) URL is not supported (it would be stored in the queue in clear); use a URL that carries its own token')
  },
  download
}
