import { describe, it, expect } from 'vitest'
import { parseUrl, addonFor, addonScheme, checkUrl } from '../../../src/services/downloads/registry.ts'
import { parseKithUrl } from '../../../src/services/downloads/kith-url.ts'
import { parseChecksum } from '../../../src/services/downloads/checksum.ts'
import { queueSettings } from '../../../src/services/downloads/settings.ts'
import { numbered, safeName, urlName } from '../../../src/services/downloads/place.ts'
import { addonOption } from '../../../src/services/cli/downloads.ts'
import { codeOf } from '../../helpers/errors.ts'

/** What the download queue takes from outside before anything is queued: URLs, checksums, settings, names from origins. */
describe('download input', () => {
  it('parses URLs and refuses bad ones with URL_INVALID, before parsing what is too long', () => {
    expect(parseUrl('https://example.org/a.iso').hostname).toBe('example.org')
    expect(codeOf(() => parseUrl(''))).toBe('URL_INVALID')
    expect(codeOf(() => parseUrl(42))).toBe('URL_INVALID')
    expect(codeOf(() => parseUrl('example.org/a.iso'))).toBe('URL_INVALID')
    expect(codeOf(() => parseUrl('https://example.org/' + 'a'.repeat(9000)))).toBe('URL_INVALID')
    expect(codeOf(() => parseUrl('http://me:pw@example.org/x'))).toBe('URL_INVALID')
    expect(parseUrl('sftp://me@example.org/x').username).toBe('me')
  })

  it('picks the add-on by scheme, playlists by their path; unknown schemes are URL_UNSUPPORTED', async () => {
    expect(addonScheme(new URL('https://e.org/live/index.m3u8'))).toBe('hls')
    expect(addonScheme(new URL('hls+https://e.org/x'))).toBe('hls')
    expect(addonScheme(new URL('HTTPS://e.org/x.iso'))).toBe('https')
    expect((await addonFor(new URL('http://e.org/x'))).schemes).toContain('http')
    await expect(addonFor(new URL('gopher://e.org/x'))).rejects.toMatchObject({ code: 'URL_UNSUPPORTED' })
    await expect(addonFor(new URL('constructor://e.org/x'))).rejects.toMatchObject({ code: 'URL_UNSUPPORTED' })
  })

  it('reads kith://FRIEND/SHARE[/path], escapes decoded, and refuses the rest', () => {
    expect(parseKithUrl('kith://alice/photos')).toEqual({ friend: 'alice', share: 'photos', path: '' })
    expect(parseKithUrl('kith://Alice/My%20Photos/2024/a.jpg/')).toEqual({ friend: 'Alice', share: 'My Photos', path: '2024/a.jpg' })
    for (const bad of ['kith://alice', 'kith:///photos', 'kith://alice/photos/../x', 'kith://alice/%zz', 'kith:alice/photos', 'kith://alice/photos?x=1']) {
      expect({ bad, code: codeOf(() => parseKithUrl(bad)) }).toEqual({ bad, code: 'URL_INVALID' })
    }
  })

  it('takes sha256:HEX checksums only', () => {
    expect(parseChecksum('sha256:' + 'AB'.repeat(32))).toBe('ab'.repeat(32))
    for (const bad of ['md5:abc', 'sha256:' + 'a'.repeat(63), 'sha256:' + 'g'.repeat(64), 'a'.repeat(64)]) expect(codeOf(() => parseChecksum(bad))).toBe('BAD_REQUEST')
  })

  it('reads the downloads section of config.json over defaults and the environment, naming a bad field', () => {
    const s = queueSettings({ maxActive: 2, proxy: { https: null } }, '/h/config.json', { HTTPS_PROXY: 'http://p:3128', NO_PROXY: 'lan' })
    expect(s.maxActive).toBe(2)
    expect(s.minFreeBytes).toBe(512 * 1024 * 1024)
    expect(s.network.proxy).toEqual({ http: null, https: null, all: null, noProxy: 'lan' })
    expect(queueSettings(undefined, 'c', { http_proxy: 'http://q:1' }).network.proxy.http).toBe('http://q:1')
    for (const bad of [{ maxActive: 0 }, { dns: ['not an ip'] }, { minFreeBytes: -1 }, { typo: 1 }, 'x']) {
      expect(() => queueSettings(bad, '/h/config.json', {})).toThrow(/\/h\/config\.json: downloads/)
      expect(codeOf(() => queueSettings(bad, '/h/config.json', {}))).toBe('CONFIG_INVALID')
    }
  })

  it('makes names from origins safe, and numbers them as browsers do', () => {
    expect(safeName('../../etc/passwd')).toBe('.._.._etc_passwd')
    expect(safeName('..')).toBeNull()
    expect(safeName('.kith-0123.kith-partial')).toBeNull()
    expect(safeName('a\u0000b\nc')).toBe('a_b_c')
    expect(urlName(new URL('https://e.org/dir/My%20File.iso'))).toBe('My File.iso')
    expect(urlName(new URL('https://e.org/'))).toBeNull()
    expect(numbered('a.iso', 0)).toBe('a.iso')
    expect(numbered('a.tar.gz', 2)).toBe('a.tar (2).gz')
    expect(numbered('.bashrc', 1)).toBe('.bashrc (1)')
    expect(numbered('README', 3)).toBe('README (3)')
  })

  it('reads kith get\'s -O KEY=VALUE add-on options: booleans, whole numbers, quoted strings, text', () => {
    let options = addonOption('hostKey=SHA256:abc=def')
    options = addonOption('maxBandwidth=800000', options)
    options = addonOption('passive=false', options)
    options = addonOption('passphrase="1234"', options)
    options = addonOption('profile=work', options)
    options = addonOption('profile=home', options)
    expect(options).toEqual({ hostKey: 'SHA256:abc=def', maxBandwidth: 800000, passive: false, passphrase: '1234', profile: 'home' })
    for (const bad of ['novalue', '=x', '1key=x', 'a-b=x', 'k="a"b"']) {
      expect(codeOf(() => addonOption(bad)), bad).toBe('USAGE')
    }
  })

  it('refuses an option the http add-on does not take, rather than ignoring it', async () => {
    const err = await checkUrl(new URL('http://example.org/f'), { hostKey: 'SHA256:x' }).catch(e => e)
    expect(codeOf(() => { throw err })).toBe('URL_INVALID')
    expect(String(err.message)).toContain('has no option "hostKey"')
    await expect(checkUrl(new URL('http://example.org/f'), {})).resolves.toBeDefined()
  })
})
