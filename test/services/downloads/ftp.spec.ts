import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { ftpAddon } from '../../../src/services/downloads/ftp.ts'
import { scratch, type Scratch } from '../../helpers/addon-context.ts'
import { startDnsServer } from '../../helpers/dns-server.ts'
import { sha } from '../../helpers/files.ts'
import { describeNeeding, needsCommands } from '../../helpers/needs.ts'
import { freePort, startServer, type ServerProcess } from '../../helpers/servers.ts'

/**
 * The ftp/ftps add-on against a real vsftpd on 127.0.0.1 (anonymous, passive
 * mode, explicit TLS with a self-signed certificate made here), driven
 * directly with a real bandwidth scheduler behind ctx.take.
 */
describeNeeding('ftp add-on against vsftpd', [needsCommands(['vsftpd', 'openssl'])], () => {
  const SIZE = 3 * 1024 * 1024 + 17
  let dir: string
  let server: ServerProcess
  let base: string
  let content: Buffer
  let s: Scratch

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kith-vsftpd-'))
    await mkdir(join(dir, 'root'))
    await mkdir(join(dir, 'empty'))
    content = randomBytes(SIZE)
    await writeFile(join(dir, 'root', 'big.bin'), content)
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
      '-days', '1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' })
    const port = await freePort()
    // run_as_launching_user: no root needed (and none of vsftpd's chroot or namespaces, which containers may refuse)
    await writeFile(join(dir, 'vsftpd.conf'), [
      'listen=YES', 'listen_address=127.0.0.1', `listen_port=${port}`, 'background=NO', 'run_as_launching_user=YES',
      'anonymous_enable=YES', 'no_anon_password=YES', `anon_root=${join(dir, 'root')}`, 'local_enable=NO', 'write_enable=NO',
      'pasv_enable=YES', 'pasv_address=127.0.0.1', 'seccomp_sandbox=NO', 'isolate=NO', 'isolate_network=NO',
      `secure_chroot_dir=${join(dir, 'empty')}`, 'ssl_enable=YES', 'allow_anon_ssl=YES', 'force_anon_logins_ssl=NO', 'force_anon_data_ssl=NO',
      `rsa_cert_file=${join(dir, 'cert.pem')}`, `rsa_private_key_file=${join(dir, 'key.pem')}`, ''
    ].join('\n'))
    server = await startServer('vsftpd', [join(dir, 'vsftpd.conf')], port)
    base = `127.0.0.1:${port}`
  })
  afterAll(async () => {
    await server?.stop()
    await rm(dir, { recursive: true, force: true })
  })
  beforeAll(async () => { s = await scratch() })
  afterAll(async () => { await s.cleanup() })

  it('downloads a whole file over ftps (explicit TLS, the test\'s own authority), then a resume after an abort fetches only the rest over ftp', async () => {
    const tls = await s.run(ftpAddon, `ftps://${base}/big.bin`, { ca: join(dir, 'cert.pem') })
    expect(tls.result).toEqual({ size: SIZE, name: 'big.bin', kind: 'file' })
    expect(tls.taken).toBe(SIZE)
    expect(await sha(s.partial)).toBe(await sha(join(dir, 'root', 'big.bin')))
    expect(tls.progress.at(-1)).toEqual({ done: SIZE, total: SIZE, name: 'big.bin' })

    await rm(s.partial)
    await rm(s.stateDir, { recursive: true })
    await expect(s.run(ftpAddon, `ftp://${base}/big.bin`, {}, 1024 * 1024)).rejects.toThrow('aborted by the test')
    const kept = (await stat(s.partial)).size
    expect(kept).toBeGreaterThan(0)
    expect(kept).toBeLessThan(SIZE)
    const resumed = await s.run(ftpAddon, `ftp://${base}/big.bin`)
    expect(resumed.taken).toBe(SIZE - kept)
    expect(resumed.progress[0]).toEqual({ done: kept, total: SIZE, name: 'big.bin' })
    expect((await readFile(s.partial)).equals(content)).toBe(true)
  })

  it('resolves with the DNS servers of the settings; refuses a proxy it can\'t go through unless NO_PROXY names the host', async () => {
    const dns = await startDnsServer({ 'ftp.kith.test': { a: ['127.0.0.1'] } })
    const none = { http: null, https: null, all: null, noProxy: null }
    const named = await scratch('named', { dns: [dns.address] })
    const proxied = await scratch('proxied', { proxy: { ...none, all: 'socks5://127.0.0.1:1080' } })
    const exempt = await scratch('exempt', { proxy: { ...none, all: 'socks5://127.0.0.1:1080', noProxy: 'localhost, 127.0.0.1' } })
    try {
      expect((await named.run(ftpAddon, `ftp://ftp.kith.test:${base.split(':')[1]!}/big.bin`)).result.size).toBe(SIZE)
      expect(dns.asked).toContain('ftp.kith.test 1')
      const refused = await proxied.run(ftpAddon, `ftp://${base}/big.bin`).catch((e: unknown) => e)
      expect(refused).toMatchObject({ code: 'PROXY_UNSUPPORTED' })
      expect((refused as Error).message).toMatch(/socks5:\/\/127\.0\.0\.1:1080.*NO_PROXY/)
      expect(proxied.lastTaken()).toBe(0)
      expect((await exempt.run(ftpAddon, `ftp://${base}/big.bin`)).result.size).toBe(SIZE)
    } finally {
      for (const run of [named, proxied, exempt]) await run.cleanup()
      await dns.stop()
    }
  })

  it('refuses a missing file, a refused login, an untrusted certificate and bad URLs with typed errors', async () => {
    await rm(s.partial, { force: true })
    await expect(s.run(ftpAddon, `ftp://${base}/nothing-here.bin`)).rejects.toMatchObject({ code: 'REMOTE_NOT_FOUND' })
    await expect(s.run(ftpAddon, `ftp://bob:wrong@${base}/big.bin`)).rejects.toMatchObject({ code: 'REMOTE_AUTH_FAILED' })
    // the self-signed certificate is no authority the system trusts
    await expect(s.run(ftpAddon, `ftps://${base}/big.bin`)).rejects.toMatchObject({ code: 'REMOTE_FAILED' })
    for (const [url, options] of [[`ftp://${base}/folder/`, {}], [`ftp://${base}/big.bin`, { ca: '/x.pem' }], [`ftp://${base}/big.bin`, { pasword: 'typo' }], [`ftp://${base}/%zz`, {}]] as const) {
      expect(() => ftpAddon.check!(new URL(url), options)).toThrow(expect.objectContaining({ code: 'URL_INVALID' }))
    }
  })
})
