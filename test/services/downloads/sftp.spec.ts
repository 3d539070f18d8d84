import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { fingerprint } from '../../../src/services/downloads/known-hosts.ts'
import { sftpAddon } from '../../../src/services/downloads/sftp.ts'
import { scratch, type Scratch } from '../../helpers/addon-context.ts'
import { startConnectProxy } from '../../helpers/connect-proxy.ts'
import { startDnsServer } from '../../helpers/dns-server.ts'
import { describeNeeding, needsCommands } from '../../helpers/needs.ts'
import { freePort, startServer, type ServerProcess } from '../../helpers/servers.ts'

/**
 * The sftp add-on against a real OpenSSH sshd on 127.0.0.1 (a high port, run
 * as the current user, a host key and a user key made here), driven
 * directly with a real bandwidth scheduler behind ctx.take.
 */
describeNeeding('sftp add-on against sshd', [needsCommands(['sshd', 'ssh-keygen'])], () => {
  const SIZE = 1024 * 1024 + 5
  let dir: string
  let server: ServerProcess
  let content: Buffer
  let url: string
  let options: Record<string, unknown>
  let hostPrint: string
  let s: Scratch

  const keygen = (file: string): void => { execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', file], { stdio: 'ignore' }) }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kith-sshd-'))
    content = randomBytes(SIZE)
    await writeFile(join(dir, 'big.bin'), content)
    keygen(join(dir, 'host'))
    keygen(join(dir, 'user'))
    keygen(join(dir, 'other'))
    await writeFile(join(dir, 'authorized_keys'), await readFile(join(dir, 'user.pub')))
    const port = await freePort()
    const hostPub = (await readFile(join(dir, 'host.pub'), 'utf8')).trim()
    hostPrint = fingerprint(Buffer.from(hostPub.split(' ')[1] ?? '', 'base64'))
    await writeFile(join(dir, 'known_hosts'), `# the test's server\n[127.0.0.1]:${port} ${hostPub}\n`)
    await writeFile(join(dir, 'sshd_config'), [
      `Port ${port}`, 'ListenAddress 127.0.0.1', `HostKey ${join(dir, 'host')}`, `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
      'StrictModes no', 'UsePAM no', 'PasswordAuthentication no', 'KbdInteractiveAuthentication no', 'PermitRootLogin prohibit-password',
      `PidFile ${join(dir, 'sshd.pid')}`, 'Subsystem sftp internal-sftp', 'LogLevel ERROR', ''
    ].join('\n'))
    // sshd started as root wants its privilege separation folder (Debian makes it at boot, a container may lack it)
    if (process.getuid?.() === 0) await mkdir('/run/sshd', { recursive: true, mode: 0o755 })
    server = await startServer(execFileSync('sh', ['-c', 'command -v sshd']).toString().trim(), ['-D', '-e', '-f', join(dir, 'sshd_config')], port)
    url = `sftp://127.0.0.1:${port}${join(dir, 'big.bin')}`
    options = { keyFile: join(dir, 'user'), knownHosts: join(dir, 'known_hosts') }
    s = await scratch()
  })
  afterAll(async () => {
    await s?.cleanup()
    await server?.stop()
    await rm(dir, { recursive: true, force: true })
  })

  it('downloads a file with key auth; an unknown host key is taken once its fingerprint is accepted; a resume after an abort reads only the rest', async () => {
    await writeFile(join(dir, 'empty_known_hosts'), '')
    const unknown = { ...options, knownHosts: join(dir, 'empty_known_hosts') }
    const refused = await s.run(sftpAddon, url, unknown).catch((e: unknown) => e)
    expect(refused).toMatchObject({ code: 'HOST_KEY_UNKNOWN' })
    expect((refused as Error).message).toContain(hostPrint)
    await expect(s.run(sftpAddon, url, { ...unknown, hostKey: hostPrint }, 256 * 1024)).rejects.toThrow('aborted by the test')
    const kept = (await stat(s.partial)).size
    expect(kept).toBeGreaterThan(0)
    expect(kept).toBeLessThan(SIZE)
    const resumed = await s.run(sftpAddon, url, options)
    expect(resumed.result).toEqual({ size: SIZE, name: 'big.bin', kind: 'file' })
    expect(resumed.taken).toBe(SIZE - kept)
    expect(resumed.progress.at(-1)).toEqual({ done: SIZE, total: SIZE, name: 'big.bin' })
    expect((await readFile(s.partial)).equals(content)).toBe(true)
  })

  it('resolves with the DNS servers of the settings (the host key checked for the URL\'s name); goes through an HTTP proxy, refuses a SOCKS one', async () => {
    const dns = await startDnsServer({ 'ssh.kith.test': { a: ['127.0.0.1'] } })
    const proxy = await startConnectProxy()
    const none = { http: null, https: null, noProxy: null }
    const named = await scratch('named', { dns: [dns.address], ipv6: false })
    const proxied = await scratch('proxied', { proxy: { ...none, all: proxy.url } })
    const socks = await scratch('socks', { proxy: { ...none, all: 'socks5://127.0.0.1:1080' } })
    try {
      const byName = url.replace('127.0.0.1', 'ssh.kith.test')
      // known_hosts holds the key for 127.0.0.1, not for this name: it is checked for the name the URL gives
      await expect(named.run(sftpAddon, byName, options)).rejects.toMatchObject({ code: 'HOST_KEY_UNKNOWN' })
      expect((await named.run(sftpAddon, byName, { ...options, hostKey: hostPrint })).result.size).toBe(SIZE)
      expect(dns.asked).toContain('ssh.kith.test 1')
      expect(dns.asked).not.toContain('ssh.kith.test 28')
      const through = await proxied.run(sftpAddon, url, options)
      expect(through.result.size).toBe(SIZE)
      expect((await readFile(proxied.partial)).equals(content)).toBe(true)
      expect(proxy.tunnels).toEqual([new URL(url).host])
      const refused = await socks.run(sftpAddon, url, options).catch((e: unknown) => e)
      expect(refused).toMatchObject({ code: 'PROXY_UNSUPPORTED' })
      expect((refused as Error).message).toMatch(/NO_PROXY/)
    } finally {
      for (const run of [named, proxied, socks]) await run.cleanup()
      await proxy.stop()
      await dns.stop()
    }
  })

  it('refuses a changed host key, a key the server does not take, a missing file and bad options with typed errors', async () => {
    await rm(s.partial, { force: true })
    const otherPub = (await readFile(join(dir, 'other.pub'), 'utf8')).trim()
    await writeFile(join(dir, 'changed_known_hosts'), `${new URL(url).host.replace(/^(.*):(\d+)$/, '[$1]:$2')} ${otherPub}\n`)
    await expect(s.run(sftpAddon, url, { ...options, knownHosts: join(dir, 'changed_known_hosts') })).rejects.toMatchObject({ code: 'HOST_KEY_CHANGED' })
    await expect(s.run(sftpAddon, url, { ...options, keyFile: join(dir, 'other') })).rejects.toMatchObject({ code: 'REMOTE_AUTH_FAILED' })
    await expect(s.run(sftpAddon, url.replace('big.bin', 'nothing.bin'), options)).rejects.toMatchObject({ code: 'REMOTE_NOT_FOUND' })
    for (const [bad, opts] of [[url, { hostKey: 'MD5:ab' }], [url, { keyfile: 'x' }], [url.replace('big.bin', ''), {}]] as const) {
      expect(() => sftpAddon.check!(new URL(bad), opts)).toThrow(expect.objectContaining({ code: 'URL_INVALID' }))
    }
  })
})
