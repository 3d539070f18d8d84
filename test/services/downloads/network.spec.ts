import { describe, it, expect } from 'vitest'
import { proxyFor, proxyRefused } from '../../../src/services/downloads/network.ts'
import { exempt } from '../../../src/services/downloads/no-proxy.ts'
import { SETTINGS } from '../../helpers/addon-context.ts'

describe('NO_PROXY and the proxies of add-ons that open their own connections (no-proxy.ts, network.ts)', () => {
  it('reads NO_PROXY as curl does: names and the names under them, *, ports, IPv6 in brackets', () => {
    const url = (u: string): URL => new URL(u)
    expect(exempt(url('sftp://files.example.org/x'), 'example.org')).toBe(true)
    expect(exempt(url('sftp://files.example.org/x'), '.example.org')).toBe(true)
    expect(exempt(url('sftp://files.example.org/x'), '*.example.org')).toBe(true)
    expect(exempt(url('sftp://badexample.org/x'), 'example.org')).toBe(false)
    expect(exempt(url('ftp://Host.Lan:2121/x'), 'a.b, host.lan:2121')).toBe(true)
    expect(exempt(url('ftp://host.lan:21/x'), 'host.lan:2121')).toBe(false)
    expect(exempt(url('ftp://[::1]:2121/x'), '[::1]:2121')).toBe(true)
    expect(exempt(url('ftp://10.0.0.1/x'), '*')).toBe(true)
    expect(exempt(url('ftp://10.0.0.1/x'), null)).toBe(false)
    // a port is compared with the scheme's default when the URL names none
    expect(exempt(url('https://example.org/x'), 'example.org:443')).toBe(true)
    expect(exempt(url('http://example.org/x'), 'example.org:443')).toBe(false)
    expect(exempt(url('sftp://h.lan/x'), 'h.lan:22')).toBe(true)
    expect(exempt(url('http://10.0.0.1/x'), 'a.lan , *, b.lan')).toBe(true)
    // an IP address is matched as an address or a CIDR block, never as a name suffix
    expect(exempt(url('http://10.1.2.3/x'), '10.0.0.0/8')).toBe(true)
    expect(exempt(url('http://11.1.2.3/x'), '10.0.0.0/8')).toBe(false)
    expect(exempt(url('http://10.1.2.3/x'), '2.3')).toBe(false)
    expect(exempt(url('http://[::1]:8080/x'), '::1')).toBe(true)
    expect(exempt(url('http://[::1]:8080/x'), '0:0::1, [::1]:9')).toBe(true)
    expect(exempt(url('http://[fd00::5]/x'), 'fd00::/8')).toBe(true)
    expect(exempt(url('http://10.1.2.3/x'), '10.0.0.0/33, fd00::/8, nonsense/x')).toBe(false)
  })

  it('finds the proxy that applies to a URL that is not http(s): ALL_PROXY, unless NO_PROXY names its host', () => {
    const none = { http: null, https: null, all: null, noProxy: null }
    const url = new URL('sftp://h/x')
    expect(proxyFor(url, { ...SETTINGS, proxy: { ...none, http: 'http://p:3128', https: 'http://p:3128' } })).toBeNull()
    expect(proxyFor(url, { ...SETTINGS, proxy: { ...none, all: 'socks5://p:1080', noProxy: 'h' } })).toBeNull()
    expect(proxyFor(url, { ...SETTINGS, proxy: { ...none, all: 'socks5://p:1080' } })).toBe('socks5://p:1080')
    expect(proxyRefused(url, 'socks5://p:1080', 'ftp')).toMatchObject({ code: 'PROXY_UNSUPPORTED', message: expect.stringMatching(/add it to NO_PROXY/) })
  })
})
