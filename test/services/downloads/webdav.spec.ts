import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { webdavAddon } from '../../../src/services/downloads/webdav.ts'
import { scratch, type Scratch } from '../../helpers/addon-context.ts'
import { startConnectProxy } from '../../helpers/connect-proxy.ts'
import { startDnsServer } from '../../helpers/dns-server.ts'
import { tree } from '../../helpers/files.ts'
import { describeNeeding } from '../../helpers/needs.ts'
import { needsNginx, startNginx, type Nginx } from '../../helpers/nginx.ts'

/**
 * The webdav add-on against a real nginx with WebDAV (PROPFIND from Debian's
 * libnginx-mod-http-dav-ext) on 127.0.0.1: a file, a collection as a folder,
 * Basic auth; driven directly with a real bandwidth scheduler behind ctx.take.
 */
const DAV_EXT = '/usr/lib/nginx/modules/ngx_http_dav_ext_module.so'
const needsDavExt = (): string | null => existsSync(DAV_EXT) ? null : 'nginx\'s WebDAV PROPFIND module missing (apt-get install -y libnginx-mod-http-dav-ext; .ci/run installs it)'

describeNeeding('webdav add-on against nginx', [needsNginx(), needsDavExt()], () => {
  let root: string
  let nginx: Nginx
  let dav: string
  let s: Scratch

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'kith-dav-'))
    await mkdir(join(root, 'dav', 'folder', 'sub', 'deep'), { recursive: true })
    await mkdir(join(root, 'private'))
    await writeFile(join(root, 'dav', 'big.bin'), randomBytes(2 * 1024 * 1024 + 3))
    await writeFile(join(root, 'dav', 'folder', 'a.bin'), randomBytes(700_000))
    await writeFile(join(root, 'dav', 'folder', 'sub', 'b b.bin'), randomBytes(600_001))
    await writeFile(join(root, 'dav', 'folder', 'sub', 'deep', 'c.bin'), randomBytes(500_002))
    await writeFile(join(root, 'private', 'secret.bin'), randomBytes(1000))
    await writeFile(join(root, 'htpasswd'), 'alice:{PLAIN}right\n')
    nginx = await startNginx({
      root,
      main: `load_module ${DAV_EXT};`,
      server: `
        location /dav/ { dav_ext_methods PROPFIND OPTIONS; }
        location /private/ { dav_ext_methods PROPFIND OPTIONS; auth_basic "kith"; auth_basic_user_file ${join(root, 'htpasswd')}; }`
    })
    dav = `webdav://127.0.0.1:${nginx.port}`
    s = await scratch()
  })
  afterAll(async () => {
    await s?.cleanup()
    await nginx?.stop()
    await rm(root, { recursive: true, force: true })
  })

  /** bytes of PROPFIND answers (207) nginx sent since its access log had `from` lines: listings pass the scheduler too */
  const listed = async (from: number): Promise<number> =>
    (await nginx.accessLog()).slice(from).filter(line => line.startsWith('207 ')).reduce((sum, line) => sum + Number(line.split(' ')[2]), 0)

  it('downloads a file; a resume after an abort fetches only the rest', async () => {
    const size = 2 * 1024 * 1024 + 3
    await expect(s.run(webdavAddon, `${dav}/dav/big.bin`, {}, 512 * 1024)).rejects.toThrow('aborted by the test')
    const kept = (await stat(s.partial)).size
    expect(kept).toBeGreaterThan(0)
    expect(kept).toBeLessThan(size)
    const log = (await nginx.accessLog()).length
    const resumed = await s.run(webdavAddon, `${dav}/dav/big.bin`)
    expect(resumed.result).toEqual({ size, name: 'big.bin', kind: 'file' })
    const listing = await listed(log)
    expect(listing).toBeGreaterThan(0)
    expect(resumed.taken).toBe(size - kept + listing)
    expect((await readFile(s.partial)).equals(await readFile(join(root, 'dav', 'big.bin')))).toBe(true)
  })

  it('starts over when the file changed at the origin since the abort (its ETag), instead of joining two versions', async () => {
    await rm(s.partial)
    await rm(s.stateDir, { recursive: true })
    const size = 2 * 1024 * 1024 + 3
    await writeFile(join(root, 'dav', 'changing.bin'), randomBytes(size))
    await expect(s.run(webdavAddon, `${dav}/dav/changing.bin`, {}, 512 * 1024)).rejects.toThrow('aborted by the test')
    expect((await stat(s.partial)).size).toBeGreaterThan(0)
    const now = randomBytes(size)
    await writeFile(join(root, 'dav', 'changing.bin'), now)
    await utimes(join(root, 'dav', 'changing.bin'), new Date(), new Date(Date.now() + 5000))
    const log = (await nginx.accessLog()).length
    const again = await s.run(webdavAddon, `${dav}/dav/changing.bin`)
    expect(again.taken).toBe(size + await listed(log))
    expect((await readFile(s.partial)).equals(now)).toBe(true)
  })

  it('downloads a collection as a folder (PROPFIND a level at a time); a resume fetches only what is missing', async () => {
    await rm(s.partial)
    await rm(s.stateDir, { recursive: true })
    const total = 700_000 + 600_001 + 500_002
    await expect(s.run(webdavAddon, `${dav}/dav/folder/`, {}, 900_000)).rejects.toThrow('aborted by the test')
    let kept = 0
    for (const entry of await readdir(s.partial, { recursive: true, withFileTypes: true })) {
      if (entry.isFile()) kept += (await stat(join(entry.parentPath, entry.name))).size
    }
    expect(kept).toBeGreaterThan(0)
    expect(kept).toBeLessThan(total)
    const log = (await nginx.accessLog()).length
    const resumed = await s.run(webdavAddon, `${dav}/dav/folder`)
    expect(resumed.result).toEqual({ size: total, name: 'folder', kind: 'tree' })
    // a stat and three levels of listing
    expect((await nginx.accessLog()).slice(log).filter(line => line.startsWith('207 '))).toHaveLength(4)
    expect(resumed.taken).toBe(total - kept + await listed(log))
    expect(await tree(s.partial)).toEqual(await tree(join(root, 'dav', 'folder')))
  })

  it('goes through the proxy and the DNS servers of the download settings, as http:// does', async () => {
    const proxy = await startConnectProxy()
    const dns = await startDnsServer({ 'dav.kith.test': { a: ['127.0.0.1'] } })
    const none = { http: null, https: null, all: null, noProxy: null }
    const runs: Scratch[] = []
    const using = async (settings: Parameters<typeof scratch>[1]): Promise<Scratch> => { runs.push(await scratch('dav', settings)); return runs.at(-1)! }
    try {
      const file = `${dav}/dav/folder/a.bin`
      expect((await (await using({ proxy: { ...none, http: proxy.url } })).run(webdavAddon, file)).result.size).toBe(700_000)
      // the stat, then the file: each request through the proxy
      expect(proxy.tunnels.length).toBeGreaterThan(0)
      expect(new Set(proxy.tunnels)).toEqual(new Set([`127.0.0.1:${nginx.port}`]))
      proxy.tunnels.length = 0
      expect((await (await using({ proxy: { ...none, all: proxy.url, noProxy: '127.0.0.1' } })).run(webdavAddon, file)).result.size).toBe(700_000)
      expect(proxy.tunnels).toEqual([])
      await expect((await using({ proxy: { ...none, all: 'socks5://127.0.0.1:1080' } })).run(webdavAddon, file)).rejects.toMatchObject({ code: 'PROXY_UNSUPPORTED' })
      const named = await (await using({ dns: [dns.address] })).run(webdavAddon, `webdav://dav.kith.test:${nginx.port}/dav/folder/a.bin`)
      expect(named.result.size).toBe(700_000)
      expect(dns.asked).toContain('dav.kith.test 1')
    } finally {
      for (const run of runs) await run.cleanup()
      await dns.stop()
      await proxy.stop()
    }
  })

  it('logs in with Basic auth; refuses a wrong password, a missing path and bad options with typed errors', async () => {
    await rm(s.partial, { recursive: true })
    await rm(s.stateDir, { recursive: true })
    await expect(s.run(webdavAddon, `${dav}/private/secret.bin`, { user: 'alice', password: 'wrong' })).rejects.toMatchObject({ code: 'REMOTE_AUTH_FAILED' })
    await expect(s.run(webdavAddon, `${dav}/private/secret.bin`)).rejects.toMatchObject({ code: 'REMOTE_AUTH_FAILED' })
    expect((await s.run(webdavAddon, `webdav://alice:right@127.0.0.1:${nginx.port}/private/secret.bin`)).result.size).toBe(1000)
    await expect(s.run(webdavAddon, `${dav}/dav/nothing.bin`)).rejects.toMatchObject({ code: 'REMOTE_NOT_FOUND' })
    expect(() => webdavAddon.check!(new URL(`${dav}/dav/big.bin`), { user: 7 })).toThrow(expect.objectContaining({ code: 'URL_INVALID' }))
    expect(() => webdavAddon.check!(new URL('webdav:///dav/big.bin'), {})).toThrow(expect.objectContaining({ code: 'URL_INVALID' }))
  })
})
