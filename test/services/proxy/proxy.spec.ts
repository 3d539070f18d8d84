import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readFile, rm, writeFile, utimes } from 'node:fs/promises'
import { request as httpRequest } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Level } from 'level'
import { BandwidthScheduler } from '../../../src/transfer/scheduler/index.ts'
import { ProxyService } from '../../../src/services/proxy/index.ts'
import { queueSettings } from '../../../src/services/downloads/settings.ts'
import { startNginx, needsNginx, type Nginx } from '../../helpers/nginx.ts'
import { needsCommands, describeNeeding } from '../../helpers/needs.ts'
import { startFaultServer, type FaultServer } from '../../helpers/fault-server.ts'
import { startDnsServer, type DnsServer } from '../../helpers/dns-server.ts'
import { waitFor } from '../../helpers/testnet.ts'
import { READ_AHEAD_BYTES, READ_AHEAD_FIRST_BYTES } from '../../../src/services/proxy/constants.ts'

/**
 * The local proxy in-process on real parts: a LevelDB in a temp folder, the
 * real bandwidth scheduler, a real nginx origin, curl and wget as the
 * clients, node:http for the headers a browser would send, the tests' own
 * fault server for an origin that dies mid-way, the tests' DNS server for a
 * name that resolves to loopback.
 */
const BIG = randomBytes(3 * 1024 * 1024 + 17)
const SMALL = randomBytes(64 * 1024)

interface Answer { status: number, headers: Record<string, string | string[] | undefined>, body: Buffer }

/** One request with the headers we choose (Host, Origin...), as a browser or a hostile page would send them. */
async function get (port: number, path: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Answer> {
  return await new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, method, headers }, res => {
      const parts: Buffer[] = []
      res.on('data', (d: Buffer) => parts.push(d))
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(parts) }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

async function run (cmd: string, args: string[]): Promise<{ code: number, stdout: Buffer, stderr: string }> {
  return await new Promise(resolve => {
    execFile(cmd, args, { encoding: 'buffer', maxBuffer: 64 * 1024 * 1024, timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err == null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr: stderr.toString() })
    })
  })
}

const enc = encodeURIComponent

describeNeeding('the local proxy', [needsNginx(), needsCommands(['curl', 'wget'])], () => {
  let root: string
  let site: string
  let db: Level<string, unknown>
  let nginx: Nginx
  let fault: FaultServer
  let dns: DnsServer
  let proxy: ProxyService
  let strict: ProxyService
  let base: string

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'kith-proxy-'))
    site = join(root, 'site')
    await mkdir(site)
    await writeFile(join(site, 'big.bin'), BIG)
    await writeFile(join(site, 'small.bin'), SMALL)
    await writeFile(join(site, 'film.mp4'), SMALL)
    await writeFile(join(site, 'changing.bin'), SMALL)
    // /slow/ at 1 MB/s: a read-ahead still under way when the player seeks
    await mkdir(join(site, 'slow'))
    nginx = await startNginx({ root: site, server: 'location /slow/ { limit_rate 1m; }' })
    fault = await startFaultServer(req => req.url === '/dies.bin' ? { kind: 'drop', after: 100_000 } : req.url === '/to-file' ? { kind: 'redirect', to: 'file:///etc/passwd' } : req.url === '/to-small' ? { kind: 'redirect', to: `${nginx.url}/small.bin` } : undefined)
    fault.files.set('/dies.bin', BIG)
    dns = await startDnsServer({ 'rebind.test': { a: ['127.0.0.1'] } })
    db = new Level<string, unknown>(join(root, 'db'), { valueEncoding: 'json' })
    await db.open()
    const bandwidth = new BandwidthScheduler()
    // loopback origins allowed, as a LAN's own server would need
    proxy = await ProxyService.start({ db, home: join(root, 'home'), bandwidth, config: { path: 'config.json', limits: {}, proxy: { allowPrivateOrigins: true } } })
    // the default: private origins refused; names resolved by the tests' DNS server
    strict = await ProxyService.start({ db, home: join(root, 'home2'), bandwidth, config: null, network: { ...queueSettings({}, 'config.json').network, dns: [dns.address] } })
    base = `${proxy.url}/proxy`
  })

  afterAll(async () => {
    await proxy?.stop()
    await strict?.stop()
    await db?.close()
    await nginx?.stop()
    await fault?.stop()
    await dns?.stop()
    await rm(root, { recursive: true, force: true })
  })

  it('writes its address to proxy.json in the home', async () => {
    const info = JSON.parse(await readFile(join(root, 'home', 'proxy.json'), 'utf8'))
    expect(info).toMatchObject({ url: proxy.url, port: proxy.info.port, pid: process.pid })
  })

  it('serves a whole file to curl byte for byte, passing the origin\'s headers, then serves it from the cache after a conditional HEAD', async () => {
    const url = `${base}?service=min_rate_data&url=${enc(`${nginx.url}/big.bin`)}&qos=50000`
    const first = await run('curl', ['-sS', '-D', '-', '-o', join(root, 'curl1'), url])
    expect(first.code).toBe(0)
    const headers = first.stdout.toString()
    expect(headers).toMatch(/^HTTP\/1.1 200/)
    expect(headers).toMatch(new RegExp(`content-length: ${BIG.length}\\r`, 'i'))
    expect(headers).toMatch(/etag: "/i)
    expect(headers).toMatch(/accept-ranges: bytes/i)
    expect(headers).toMatch(/x-kith-source: origin/i)
    expect((await readFile(join(root, 'curl1'))).equals(BIG)).toBe(true)
    expect(proxy.info.cache.entries).toBe(1)

    const before = (await nginx.accessLog()).length
    const second = await run('curl', ['-sS', '-D', '-', '-o', join(root, 'curl2'), url])
    expect(second.code).toBe(0)
    expect(second.stdout.toString()).toMatch(/x-kith-source: cache/i)
    expect((await readFile(join(root, 'curl2'))).equals(BIG)).toBe(true)
    // the origin saw one request more, a HEAD answered 304 with no body
    const log = (await nginx.accessLog()).slice(before)
    expect(log).toHaveLength(1)
    expect(log[0]).toMatch(/^304 "-" 0 /)
  })

  it('answers HEAD with the origin\'s headers and no body, from the origin and from the cache', async () => {
    const origin = await run('curl', ['-sS', '-I', `${base}?url=${enc(`${nginx.url}/film.mp4`)}`])
    expect(origin.stdout.toString()).toMatch(new RegExp(`^HTTP/1.1 200[^]*content-length: ${SMALL.length}\\r`, 'i'))
    const cached = await run('curl', ['-sS', '-I', `${base}?url=${enc(`${nginx.url}/big.bin`)}`])
    expect(cached.stdout.toString()).toMatch(/x-kith-source: cache/i)
    expect(cached.stdout.toString()).toMatch(new RegExp(`content-length: ${BIG.length}\\r`, 'i'))
  })

  it('serves wget the same bytes (url= values in any order with the other pairs)', async () => {
    const out = join(root, 'wget1')
    const r = await run('wget', ['-q', '-O', out, `${base}?url=${enc(`${nginx.url}/small.bin`)}&service=min_rate_data`])
    expect(r.code).toBe(0)
    expect((await readFile(out)).equals(SMALL)).toBe(true)
  })

  it('answers a player\'s Range requests with 206 and the right bytes, from the origin and then from the cache', async () => {
    const url = `${base}?url=${enc(`${nginx.url}/film.mp4`)}`
    // no service=: the .mp4 extension says it streams
    const a = await get(proxy.info.port, new URL(url).pathname + new URL(url).search, { host: `127.0.0.1:${proxy.info.port}`, range: 'bytes=1000-1999' })
    expect(a.status).toBe(206)
    expect(a.headers['content-range']).toBe(`bytes 1000-1999/${SMALL.length}`)
    expect(a.headers['x-kith-service']).toBe('streaming')
    expect(a.body.equals(SMALL.subarray(1000, 2000))).toBe(true)
    // a player's first request, bytes=0-: the whole file goes by and is kept
    const b = await run('curl', ['-sS', '-r', '0-', '-o', join(root, 'film'), '-w', '%{http_code}', url])
    expect(b.stdout.toString()).toBe('206')
    expect((await readFile(join(root, 'film'))).equals(SMALL)).toBe(true)
    const c = await run('curl', ['-sS', '-r', '60000-', '-D', '-', url])
    expect(c.stdout.toString()).toMatch(/^HTTP\/1.1 206/)
    expect(c.stdout.toString()).toMatch(/x-kith-source: cache/i)
    expect(c.stdout.subarray(c.stdout.indexOf('\r\n\r\n') + 4).equals(SMALL.subarray(60000))).toBe(true)
    const past = await run('curl', ['-sS', '-r', `${SMALL.length}-`, '-o', '/dev/null', '-w', '%{http_code}', url])
    expect(past.stdout.toString()).toBe('416')
  })

  it('reads ahead beyond a streaming Range, longer as the player reads on: the next range comes from memory, the origin is asked under If-Range only past it, and a changed file cuts the answer', async () => {
    const LONG = randomBytes(READ_AHEAD_BYTES + 256 * 1024)
    await writeFile(join(site, 'long.mp4'), LONG)
    const url = `${base}?url=${enc(`${nginx.url}/long.mp4`)}`
    const range = async (first: number, last: number): Promise<{ code: number, headers: string, body: Buffer }> => {
      const r = await run('curl', ['-sS', '-r', `${first}-${last}`, '-D', '-', url])
      const at = r.stdout.indexOf('\r\n\r\n') + 4
      return { code: r.code, headers: r.stdout.subarray(0, at).toString(), body: r.stdout.subarray(at) }
    }
    const fetched = async (first: number, bytes: number): Promise<void> => {
      const line = `206 "bytes=${first}-${first + bytes - 1}" ${bytes} `
      await waitFor(async () => (await nginx.accessLog()).some(l => l.startsWith(line)), `the read-ahead of ${bytes} bytes from ${first} is fetched`, 10_000, 20)
    }
    const first = await range(0, 999)
    expect(first.headers).toMatch(/x-kith-source: origin/i)
    expect(first.body.equals(LONG.subarray(0, 1000))).toBe(true)
    // the read-ahead: the next READ_AHEAD_FIRST_BYTES, fetched after the answer and whole in nginx's log
    await fetched(1000, READ_AHEAD_FIRST_BYTES)
    // the player reads on, the range from memory: the next read-ahead is twice as long
    const mark = (await nginx.accessLog()).length
    const second = await range(1000, 1000 + READ_AHEAD_FIRST_BYTES - 1)
    expect(second.headers).toMatch(/x-kith-source: read-ahead/i)
    expect(second.body.equals(LONG.subarray(1000, 1000 + READ_AHEAD_FIRST_BYTES))).toBe(true)
    const start = 1000 + READ_AHEAD_FIRST_BYTES
    await fetched(start, 2 * READ_AHEAD_FIRST_BYTES)
    expect((await nginx.accessLog()).length).toBe(mark + 1)
    // the next range, which runs past the span: the span's bytes from memory, then the origin's from where it ends, only
    const end = start + 2 * READ_AHEAD_FIRST_BYTES
    const next = await range(start, LONG.length - 1)
    expect(next.headers).toMatch(/^HTTP\/1.1 206/)
    expect(next.headers).toMatch(new RegExp(`content-range: bytes ${start}-${LONG.length - 1}/${LONG.length}`, 'i'))
    expect(next.headers).toMatch(/x-kith-source: read-ahead/i)
    expect(next.body.equals(LONG.subarray(start))).toBe(true)
    expect((await nginx.accessLog()).slice(mark + 1).map(line => line.split(' ').slice(0, 3).join(' '))).toEqual([`206 "bytes=${end}-${LONG.length - 1}" ${LONG.length - end}`])
    // the file changes at the origin: what lies past the span is refused under If-Range, and the answer is cut
    await writeFile(join(site, 'long.mp4'), randomBytes(LONG.length))
    await utimes(join(site, 'long.mp4'), new Date(), new Date(Date.now() + 5000))
    const changed = await range(end - 100_000, LONG.length - 1)
    expect(changed.code).toBe(18)
    expect(changed.body.length).toBeLessThanOrEqual(100_000)
    expect(changed.body.equals(LONG.subarray(end - 100_000, end - 100_000 + changed.body.length))).toBe(true)
  })

  it('stops a read-ahead when the player seeks elsewhere: nginx sent only part of it', async () => {
    const FILM = randomBytes(4 * READ_AHEAD_FIRST_BYTES)
    await writeFile(join(site, 'slow', 'seek.mp4'), FILM)
    const url = `${base}?url=${enc(`${nginx.url}/slow/seek.mp4`)}`
    const first = await run('curl', ['-sS', '-r', '0-999', '-o', '/dev/null', url])
    expect(first.code, first.stderr).toBe(0)
    // the read-ahead from 1000 is under way at 1 MB/s (2 s for all of it): the player seeks past it
    const ahead = `"bytes=1000-${1000 + READ_AHEAD_FIRST_BYTES - 1}"`
    const seek = await run('curl', ['-sS', '-r', `${3 * READ_AHEAD_FIRST_BYTES}-${3 * READ_AHEAD_FIRST_BYTES + 999}`, url])
    expect(seek.code, seek.stderr).toBe(0)
    expect(seek.stdout.equals(FILM.subarray(3 * READ_AHEAD_FIRST_BYTES, 3 * READ_AHEAD_FIRST_BYTES + 1000))).toBe(true)
    // its fetch was stopped: nginx logs the request as the connection closes, with what it had sent
    const isAhead = (line: string): boolean => line.includes(ahead) && line.endsWith(' /slow/seek.mp4')
    await waitFor(async () => (await nginx.accessLog()).some(isAhead), 'nginx logs the read-ahead', 10_000, 20)
    const line = (await nginx.accessLog()).find(isAhead)!
    expect(Number(line.split(' ')[2])).toBeLessThan(READ_AHEAD_FIRST_BYTES)
  })

  it('never serves the cached bytes once the origin file changed (new ETag)', async () => {
    const url = `${base}?url=${enc(`${nginx.url}/changing.bin`)}`
    expect((await run('curl', ['-sS', url])).stdout.equals(SMALL)).toBe(true)
    const next = randomBytes(SMALL.length)
    await writeFile(join(site, 'changing.bin'), next)
    // a new mtime: nginx's ETag is mtime-length
    await utimes(join(site, 'changing.bin'), new Date(), new Date(Date.now() + 5000))
    const r = await run('curl', ['-sS', '-D', '-', url])
    expect(r.stdout.toString()).toMatch(/x-kith-source: origin/i)
    expect(r.stdout.subarray(r.stdout.indexOf('\r\n\r\n') + 4).equals(next)).toBe(true)
    const again = await run('curl', ['-sS', '-D', '-', url])
    expect(again.stdout.toString()).toMatch(/x-kith-source: cache/i)
    expect(again.stdout.subarray(again.stdout.indexOf('\r\n\r\n') + 4).equals(next)).toBe(true)
  })

  it('cuts the connection when the origin dies mid-way (curl: partial file), and keeps nothing of it', async () => {
    const url = `${base}?url=${enc(`${fault.url}/dies.bin`)}`
    const entries = proxy.info.cache.entries
    const r = await run('curl', ['-sS', '-o', '/dev/null', url])
    expect(r.code).toBe(18)
    expect(proxy.info.cache.entries).toBe(entries)
  })

  it('passes the origin\'s refusal on with its status, and tries the next origin of the class first', async () => {
    const missing = await get(proxy.info.port, `/proxy?url=${enc(`${nginx.url}/nope.bin`)}`, { host: `localhost:${proxy.info.port}` })
    expect(missing.status).toBe(404)
    expect(JSON.parse(missing.body.toString()).error.code).toBe('HTTP_STATUS')
    const r = await run('curl', ['-sS', '-D', '-', `${base}?url=${enc(`${nginx.url}/nope.bin`)}&url=${enc(`${nginx.url}/small.bin`)}`])
    expect(r.stdout.toString()).toMatch(/^HTTP\/1.1 200/)
    expect(r.stdout.subarray(r.stdout.indexOf('\r\n\r\n') + 4).equals(SMALL)).toBe(true)
  })

  it('follows redirects to http(s) and refuses one to another scheme', async () => {
    const ok = await run('curl', ['-sS', `${base}?url=${enc(`${fault.url}/to-small`)}`])
    expect(ok.stdout.equals(SMALL)).toBe(true)
    const file = await get(proxy.info.port, `/proxy?url=${enc(`${fault.url}/to-file`)}`, { host: `127.0.0.1:${proxy.info.port}` })
    expect(file.status).toBe(502)
    expect(JSON.parse(file.body.toString()).error.code).toBe('HTTP_BAD_RESPONSE')
  })

  it('refuses bad queries with a status and a stable code, before any origin is asked', async () => {
    const cases: Array<[string, number, string]> = [
      ['/proxy', 400, 'PROXY_NO_URL'],
      ['/proxy?service=streaming', 400, 'PROXY_NO_URL'],
      [`/proxy?url=${enc(nginx.url)}&service=fast`, 400, 'PROXY_BAD_SERVICE'],
      [`/proxy?url=${enc(nginx.url)}&qos=-1`, 400, 'PROXY_BAD_QOS'],
      [`/proxy?url=${enc(nginx.url)}&qos=1.5`, 400, 'PROXY_BAD_QOS'],
      [`/proxy?url=${enc(nginx.url)}&speed=1`, 400, 'PROXY_BAD_QUERY'],
      [`/proxy?url=${enc(nginx.url)}&&qos=1`, 400, 'PROXY_BAD_QUERY'],
      ['/proxy?url=%zz', 400, 'PROXY_BAD_QUERY'],
      ['/proxy?url=not%20a%20url', 400, 'URL_INVALID'],
      [`/proxy?url=${enc('http://me:secret@example.org/a')}`, 400, 'URL_INVALID'],
      [`/proxy?url=${enc('ftp://example.org/a')}`, 400, 'URL_UNSUPPORTED'],
      [`/proxy?url=${enc('file:///etc/passwd')}`, 400, 'URL_UNSUPPORTED'],
      [`/proxy?${Array.from({ length: 17 }, (_, i) => `url=${enc(`${nginx.url}/${i}`)}`).join('&')}`, 400, 'PROXY_BAD_QUERY'],
      ['/other', 404, 'NOT_FOUND']
    ]
    const before = (await nginx.accessLog()).length
    for (const [path, status, code] of cases) {
      const r = await get(proxy.info.port, path, { host: `127.0.0.1:${proxy.info.port}` })
      expect({ path, status: r.status, code: JSON.parse(r.body.toString()).error.code }).toEqual({ path, status, code })
      expect(r.headers['x-kith-error']).toBe(code)
    }
    const post = await get(proxy.info.port, `/proxy?url=${enc(nginx.url)}`, { host: `127.0.0.1:${proxy.info.port}` }, 'POST')
    expect(post.status).toBe(405)
    // none of the origins these queries name was asked (the log's last field is the URI); a request
    // of an earlier test's that nginx logs only now (a cache fill finishing) is not this test's
    const named = new Set(['/', ...Array.from({ length: 17 }, (_, i) => `/${i}`)])
    expect((await nginx.accessLog()).slice(before).filter(line => named.has(line.split(' ').at(-1)!))).toEqual([])
  })

  it('refuses cross-site browser requests and DNS-rebinding Host headers', async () => {
    const path = `/proxy?url=${enc(`${nginx.url}/small.bin`)}`
    const port = proxy.info.port
    const cases: Array<[Record<string, string>, number, string]> = [
      [{ host: `127.0.0.1:${port}`, origin: 'https://evil.example' }, 403, 'PROXY_CROSS_SITE'],
      [{ host: `127.0.0.1:${port}`, origin: 'null' }, 403, 'PROXY_CROSS_SITE'],
      [{ host: `127.0.0.1:${port}`, 'sec-fetch-site': 'cross-site' }, 403, 'PROXY_CROSS_SITE'],
      [{ host: `127.0.0.1:${port}`, 'sec-fetch-site': 'same-site' }, 403, 'PROXY_CROSS_SITE'],
      [{ host: `evil.example:${port}` }, 421, 'PROXY_BAD_HOST'],
      [{ host: '127.0.0.1' }, 421, 'PROXY_BAD_HOST']
    ]
    for (const [headers, status, code] of cases) {
      const r = await get(port, path, headers)
      expect({ headers, status: r.status, code: JSON.parse(r.body.toString()).error.code }).toEqual({ headers, status, code })
    }
    // its own page, and a user typing the URL (Sec-Fetch-Site: none), are served
    expect((await get(port, path, { host: `localhost:${port}`, origin: `http://localhost:${port}`, 'sec-fetch-site': 'same-origin' })).status).toBe(200)
    expect((await get(port, path, { host: `127.0.0.1:${port}`, 'sec-fetch-site': 'none' })).status).toBe(200)
  })

  it('still answers whole when the cache can\'t keep the file (its folder replaced by a file: ENOTDIR, even for root)', async () => {
    const dir = join(root, 'home', 'proxy-cache')
    const entries = proxy.info.cache.entries
    await rm(dir, { recursive: true, force: true })
    await writeFile(dir, '')
    try {
      // not in the cache yet (another query string is another URL)
      const r = await run('curl', ['-sS', '-D', '-', `${base}?url=${enc(`${nginx.url}/small.bin?fresh`)}&qos=1`])
      expect(r.code).toBe(0)
      expect(r.stdout.subarray(r.stdout.indexOf('\r\n\r\n') + 4).equals(SMALL)).toBe(true)
      expect(proxy.info.cache.entries).toBe(entries)
      // in the index, its file gone with the folder: fetched again from the origin, the entry dropped
      const gone = await run('curl', ['-sS', '-D', '-', `${base}?url=${enc(`${nginx.url}/big.bin`)}`])
      expect(gone.stdout.toString()).toMatch(/x-kith-source: origin/i)
      expect(gone.stdout.subarray(gone.stdout.indexOf('\r\n\r\n') + 4).equals(BIG)).toBe(true)
      expect(proxy.info.cache.entries).toBe(entries - 1)
    } finally {
      await rm(dir, { force: true })
      await mkdir(dir)
    }
  })

  it('still answers from the origin when its database fails under it (the cache\'s index: touch, remove and keep all fail)', async () => {
    const home = join(root, 'home-failing')
    const own = new Level<string, unknown>(join(root, 'db-failing'), { valueEncoding: 'json' })
    await own.open()
    const failing = await ProxyService.start({ db: own, home, bandwidth: new BandwidthScheduler(), config: { path: 'config.json', limits: {}, proxy: { allowPrivateOrigins: true } } })
    try {
      await writeFile(join(site, 'failing.bin'), SMALL)
      const url = (name: string): string => `${failing.url}/proxy?url=${enc(`${nginx.url}/${name}`)}`
      const body = (r: { stdout: Buffer }): Buffer => r.stdout.subarray(r.stdout.indexOf('\r\n\r\n') + 4)
      expect((await run('curl', ['-sS', '--fail', url('failing.bin')])).code).toBe(0)
      expect(failing.info.cache.entries).toBe(1)
      await own.close()
      // kept and current: served though its use can't be recorded
      const kept = await run('curl', ['-sS', '--fail', '-D', '-', url('failing.bin')])
      expect(kept.code).toBe(0)
      expect(kept.stdout.toString()).toMatch(/x-kith-source: cache/i)
      expect(body(kept).equals(SMALL)).toBe(true)
      // changed at the origin (a new mtime, so a new ETag): the stale entry can't leave the index, the origin answers;
      // a new file can't be kept, the origin answers whole
      const later = new Date(Date.now() + 5000)
      await utimes(join(site, 'failing.bin'), later, later)
      for (const [name, bytes] of [['failing.bin', SMALL], ['big.bin?failing', BIG]] as const) {
        const r = await run('curl', ['-sS', '--fail', '-D', '-', url(name)])
        expect(r.code).toBe(0)
        expect(r.stdout.toString()).toMatch(/x-kith-source: origin/i)
        expect(body(r).equals(bytes)).toBe(true)
      }
    } finally {
      await failing.stop()
      await own.close()
    }
  })

  it('stays within its bound, dropping the least recently used entry first', async () => {
    const small = await ProxyService.start({ db, home: join(root, 'home3'), bandwidth: new BandwidthScheduler(), config: { path: 'config.json', limits: {}, proxy: { allowPrivateOrigins: true, cacheBytes: Math.floor(2.5 * SMALL.length) } } })
    try {
      const url = (n: number): string => `${small.url}/proxy?url=${enc(`${nginx.url}/small.bin?${n}`)}`
      const source = async (n: number): Promise<string> => /x-kith-source: (\w+)/i.exec((await run('curl', ['-sS', '-D', '-', '-o', '/dev/null', url(n)])).stdout.toString())![1]!
      expect([await source(1), await source(2), await source(3)]).toEqual(['origin', 'origin', 'origin'])
      expect(small.info.cache).toEqual({ entries: 2, bytes: 2 * SMALL.length })
      // 1 went; 2 is used now, so 3 is the oldest when 4 comes
      expect([await source(2), await source(4)]).toEqual(['cache', 'origin'])
      expect([await source(2), await source(3)]).toEqual(['cache', 'origin'])
    } finally {
      await small.stop()
    }
  })

  it('refuses origins on loopback by default: a literal, localhost, and a name whose DNS answer is loopback (checked on the address connected to)', async () => {
    const port = strict.info.port
    for (const origin of [`${nginx.url}/small.bin`, `http://localhost:${nginx.port}/small.bin`, `http://[::1]:${nginx.port}/small.bin`, `http://rebind.test:${nginx.port}/small.bin`]) {
      const r = await get(port, `/proxy?url=${enc(origin)}`, { host: `127.0.0.1:${port}` })
      expect({ origin, status: r.status, code: JSON.parse(r.body.toString()).error.code }).toEqual({ origin, status: 403, code: 'PROXY_ORIGIN_PRIVATE' })
    }
    // the name was looked up: it was the connect-time check that refused it
    expect(dns.asked.some(q => q.startsWith('rebind.test'))).toBe(true)
  })
})
