import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { webdavAddon } from '../../../src/services/downloads/webdav.ts'
import { scratch, type Scratch } from '../../helpers/addon-context.ts'
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

  it('downloads a file; a resume after an abort fetches only the rest', async () => {
    const size = 2 * 1024 * 1024 + 3
    await expect(s.run(webdavAddon, `${dav}/dav/big.bin`, {}, 512 * 1024)).rejects.toThrow('aborted by the test')
    const kept = (await stat(s.partial)).size
    expect(kept).toBeGreaterThan(0)
    expect(kept).toBeLessThan(size)
    const resumed = await s.run(webdavAddon, `${dav}/dav/big.bin`)
    expect(resumed.result).toEqual({ size, name: 'big.bin', kind: 'file' })
    expect(resumed.taken).toBe(size - kept)
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
    const again = await s.run(webdavAddon, `${dav}/dav/changing.bin`)
    expect(again.taken).toBe(size)
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
    const resumed = await s.run(webdavAddon, `${dav}/dav/folder`)
    expect(resumed.result).toEqual({ size: total, name: 'folder', kind: 'tree' })
    expect(resumed.taken).toBe(total - kept)
    expect(await tree(s.partial)).toEqual(await tree(join(root, 'dav', 'folder')))
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
