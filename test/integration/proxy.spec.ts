import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { TestNode } from '../helpers/testnet.ts'
import { startNginx, needsNginx, type Nginx } from '../helpers/nginx.ts'
import { needsCommands, describeNeeding } from '../helpers/needs.ts'

/**
 * The local proxy in a real daemon: config.json's proxy section read at
 * start, proxy.json written, `kith status` naming it, aria2c as a client
 * against a real nginx origin, and the cache surviving a kill -9.
 */
const FILE = randomBytes(2 * 1024 * 1024 + 3)

async function run (cmd: string, args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
  return await new Promise(resolve => {
    execFile(cmd, args, { timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err == null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr })
    })
  })
}

describeNeeding('the local proxy in the daemon', [needsNginx(), needsCommands(['curl', 'aria2c'])], () => {
  let base: string
  let node: TestNode
  let nginx: Nginx

  beforeAll(async () => {
    base = await mkdtemp(join(tmpdir(), 'kith-proxy-daemon-'))
    await mkdir(join(base, 'site'))
    await writeFile(join(base, 'site', 'file.bin'), FILE)
    node = new TestNode('p', join(base, 'home'))
    await mkdir(node.home, { mode: 0o700 })
    // nginx is on 127.0.0.1: private origins must be allowed for it
    await writeFile(join(node.home, 'config.json'), JSON.stringify({ proxy: { allowPrivateOrigins: true, cacheBytes: 16 * 1024 * 1024 } }))
    ;[nginx] = await Promise.all([startNginx({ root: join(base, 'site') }), node.start()])
  })

  afterAll(async () => {
    await node?.kill9()
    await nginx?.stop()
    if (base != null) await rm(base, { recursive: true, force: true })
  })

  const proxyUrl = async (): Promise<string> => JSON.parse(await readFile(join(node.home, 'proxy.json'), 'utf8')).url

  it('writes proxy.json and shows the proxy in kith status', async () => {
    const url = await proxyUrl()
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
    const status = await node.cli('status')
    expect(status.stdout).toContain(`proxy    ${url}/proxy?url=ENCODED_URL (0 cached`)
    expect((await node.json('status')).proxy).toMatchObject({ url, cache: { entries: 0, bytes: 0 } })
  })

  it('gives aria2c the file byte for byte, and serves it from the cache after a kill -9 and a restart', async () => {
    const request = `${await proxyUrl()}/proxy?url=${encodeURIComponent(`${nginx.url}/file.bin`)}&service=min_rate_data`
    const got = await run('aria2c', ['-q', '-x1', '--allow-overwrite=true', '-d', base, '-o', 'a.bin', request])
    expect(got.code).toBe(0)
    expect((await readFile(join(base, 'a.bin'))).equals(FILE)).toBe(true)
    expect((await node.json('status')).proxy.cache).toEqual({ entries: 1, bytes: FILE.length })

    await node.kill9()
    await node.start()
    const again = await run('curl', ['-sS', '-D', join(base, 'headers'), '-o', join(base, 'b.bin'), `${await proxyUrl()}/proxy?url=${encodeURIComponent(`${nginx.url}/file.bin`)}`])
    expect(again.code).toBe(0)
    expect(await readFile(join(base, 'headers'), 'utf8')).toMatch(/x-kith-source: cache/i)
    expect((await readFile(join(base, 'b.bin'))).equals(FILE)).toBe(true)
  })
})
