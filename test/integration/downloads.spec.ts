import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createTestnet, befriend, waitFor, TestNode, type Testnet } from '../helpers/testnet.ts'
import { rangeServer, type RangeServer } from '../helpers/range-server.ts'
import { needsNginx, startNginx, type Nginx } from '../helpers/nginx.ts'
import { needsCommands, requireOrSkip } from '../helpers/needs.ts'
import { freePort } from '../helpers/servers.ts'
import { makeCertificates } from '../helpers/tls.ts'
import { tree } from '../helpers/files.ts'
import { loadedModules } from '../helpers/loaded-modules.ts'
import { ApiClient } from '../../src/services/api/client.ts'

/**
 * The download service end to end: real daemons, the CLI as a user runs
 * it, the real HTTP add-on against a real node:http server with Range, and
 * a friend's share through kith:// in the same queue.
 */
const SMALL = randomBytes(200 * 1024)
const BIG = randomBytes(512 * 1024)
/** fetched from an origin while a friend's folder of two halves of it (two chunks) is fetched, under one cap */
const SHARED = randomBytes(1024 * 1024)
/** what https origins need here: nginx (with its ssl module) and openssl */
const NEEDS_TLS = [needsNginx(), needsCommands(['openssl'])]
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')
/** the umask the daemons start with (this process's; the daemon makes its own private and keeps this one for the user's files) */
const USER_UMASK = process.umask()
/** lists every module the daemon loaded, as it exits (test/helpers/module-log.ts) */
const MODULE_LOG = join(dirname(fileURLToPath(import.meta.url)), '..', 'helpers', 'module-log.ts')

describe('downloads', () => {
  let net: Testnet
  let dl: TestNode, friend: TestNode
  let server: RangeServer
  let slow: RangeServer
  let base: string | undefined
  /** https origins: one with a certificate of the authority dl trusts (NODE_EXTRA_CA_CERTS), one self-signed */
  let tls: { nginx: Nginx, trusted: string, stranger: string } | undefined

  beforeAll(async () => {
    // dl lists the modules it loads (the last test reads the list)
    base = await mkdtemp(join(tmpdir(), 'kith-downloads-'))
    const certs = NEEDS_TLS.every(m => m == null) ? await makeCertificates(base) : undefined
    dl = new TestNode('dl', join(base, 'dl'), [], {
      env: { NODE_OPTIONS: `--import ${MODULE_LOG}`, KITH_MODULE_LOG: join(base, 'dl-modules.log'), ...(certs != null ? { NODE_EXTRA_CA_CERTS: certs.ca } : {}) }
    })
    if (certs != null) {
      const root = join(base, 'www')
      await mkdir(root)
      await writeFile(join(root, 'small.bin'), SMALL)
      const [trusted, stranger] = [await freePort(), await freePort()]
      const ssl = (port: number, cert: string, key: string): string => `server { listen 127.0.0.1:${port} ssl; ssl_certificate ${cert}; ssl_certificate_key ${key}; root ${root}; }`
      const nginx = await startNginx({ root, http: ssl(trusted, certs.cert, certs.key) + ssl(stranger, certs.strangerCert, certs.strangerKey) })
      tls = { nginx, trusted: `https://127.0.0.1:${trusted}`, stranger: `https://127.0.0.1:${stranger}` }
    }
    ;[net, server, slow] = await Promise.all([
      createTestnet(['friend']),
      rangeServer({ '/small.bin': SMALL, '/big.bin': BIG, '/shared.bin': SHARED }),
      // 512 KiB at 256 KiB/s a connection: about two seconds on one, time to kill the daemon midway
      rangeServer({ '/big.bin': BIG }, { bytesPerSecond: 256 * 1024 }),
      dl.start()
    ])
    friend = net.nodes[0]!
  })

  afterAll(async () => {
    await dl?.kill9()
    await net?.stop()
    if (base !== undefined) await rm(base, { recursive: true, force: true })
    await server?.close()
    await slow?.close()
    await tls?.nginx.stop()
  })

  // polled through the API: a CLI process per look would cost more than the downloads
  const downloadOf = async (id: string): Promise<any> => (await (await ApiClient.forHome(dl.home)).get<{ download?: unknown }>(`/v1/downloads/${id}`)).download

  it('kith get puts files in place, verified; a checksum mismatch keeps nothing and says so', async () => {
    const dir = join(dl.home, 'got')
    await mkdir(dir)
    const ok = await dl.cli('get', server.url('/small.bin'), '-o', join(dir, 'small.bin'), '--checksum', `sha256:${sha(SMALL)}`)
    expect(ok.stderr).toBe('')
    expect(ok.code).toBe(0)
    expect(ok.stdout).toMatch(/downloaded 200 KiB to .*small\.bin/)
    expect((await readFile(join(dir, 'small.bin'))).equals(SMALL)).toBe(true)
    // the user's file, with their umask's mode, not the daemon's private one
    expect((await stat(join(dir, 'small.bin'))).mode & 0o777).toBe(0o644 & ~USER_UMASK)

    const bad = await dl.cli('get', server.url('/small.bin'), '-o', join(dir, 'other.bin'), '--checksum', `sha256:${'a'.repeat(64)}`)
    expect(bad.code).toBe(1)
    expect(bad.stderr).toContain('CHECKSUM_MISMATCH')
    expect(bad.stderr).toMatch(/nothing was kept/)
    expect(await readdir(dir)).toEqual(['small.bin'])

    // several URLs into a folder, each under its origin's name, one bar over both
    const many = await dl.cli('get', server.url('/small.bin'), server.url('/big.bin'), '-o', join(dl.home, 'many') + '/')
    expect(many.code).toBe(0)
    expect((await readdir(join(dl.home, 'many'))).sort()).toEqual(['big.bin', 'small.bin'])
    expect((await readFile(join(dl.home, 'many', 'big.bin'))).equals(BIG)).toBe(true)
  })

  it('bad URLs and unsupported schemes are typed errors, and nothing is queued', async () => {
    const api = await ApiClient.forHome(dl.home)
    const before = (await api.get<{ downloads: unknown[] }>('/v1/downloads')).downloads.length
    const refused = async (urls: string[], extra: Record<string, unknown> = {}): Promise<string> =>
      await api.call('POST', '/v1/downloads', { urls, dest: join(dl.home, 'never'), ...extra }).then(() => 'queued', (err: { code: string }) => err.code)
    expect(await refused(['not a url'])).toBe('URL_INVALID')
    expect(await refused(['gopher://example.org/x'])).toBe('URL_UNSUPPORTED')
    expect(await refused(['kith://only-a-friend'])).toBe('URL_INVALID')
    // one bad URL among good ones: none is queued
    expect(await refused([server.url('/small.bin'), 'gopher://example.org/x'])).toBe('URL_UNSUPPORTED')
    expect(await refused(['https://user:secret@example.org/x'])).toBe('URL_INVALID')
    expect(await refused([`https://example.org/${'x'.repeat(9000)}`])).toBe('URL_INVALID')
    expect(await refused([server.url('/small.bin')], { checksum: 'md5:abc' })).toBe('BAD_REQUEST')
    expect(await refused([server.url('/small.bin')], { connections: 0 })).toBe('BAD_REQUEST')
    expect(await refused([server.url('/small.bin')], { dest: 'relative/path' })).toBe('BAD_REQUEST')
    // a friend's share is verified against its signed manifest: no checksum, limit or connections
    expect(await refused(['kith://friend/shared.bin'], { checksum: `sha256:${'0'.repeat(64)}` })).toBe('BAD_REQUEST')
    expect((await api.get<{ downloads: unknown[] }>('/v1/downloads')).downloads.length).toBe(before)
    // and from the CLI, as a person meets them
    const cli = await dl.cli('get', 'gopher://example.org/x')
    expect(cli.code).not.toBe(0)
    expect(cli.stderr).toMatch(/URL_UNSUPPORTED/)
    expect((await dl.cli('get', server.url('/small.bin'), '--limit', 'fast')).stderr).toContain('USAGE')
  })

  it('pause, priority, resume, limit and cancel from the CLI on a running download; cancel keeps nothing', async () => {
    // its own --limit keeps it running (16 s for all of it) while the commands act on it
    const { downloads: [c] } = await dl.json('get', server.url('/big.bin'), '-o', join(dl.home, 'cancelled.bin'), '--detach', '--limit', '32KiB/s', '--priority', 'background')
    expect(c).toMatchObject({ state: 'queued', priority: 'background', limit: 32 * 1024, dest: join(dl.home, 'cancelled.bin') })
    expect((await dl.json('priority', c.id, 'urgent')).download.priority).toBe('urgent')
    expect((await dl.json('pause', c.id)).download.state).toBe('paused')
    expect(['queued', 'running']).toContain((await dl.json('resume', c.id)).download.state)
    expect((await dl.json('limit', c.id, '16KiB/s')).download.limit).toBe(16 * 1024)
    await waitFor(async () => (await downloadOf(c.id))?.doneBytes > 0, 'some bytes')
    const listing = await dl.json('downloads')
    expect(listing.downloads.find((x: any) => x.id === c.id)).toMatchObject({ state: 'running', priority: 'urgent' })
    expect(listing).toHaveProperty('eta')
    expect((await dl.json('cancel', c.id)).download.state).toBe('cancelled')
    expect((await readdir(dl.home)).filter(f => f.startsWith('cancelled') || f.endsWith('.kith-partial'))).toEqual([])
    expect((await dl.cli('cancel', c.id)).stderr).toContain('DOWNLOAD_STATE')
  })

  it('kill -9 mid-download: the restarted daemon goes on from what it had', async () => {
    const dest = join(dl.home, 'killed.bin')
    const served = (): number => slow.hits.get('/big.bin') ?? 0
    const { downloads: [d] } = await dl.json('get', slow.url('/big.bin'), '-o', dest, '--detach', '--connections', '1')
    await waitFor(async () => (await downloadOf(d.id))?.doneBytes >= 128 * 1024, 'a quarter of it')
    const before = served()
    await dl.kill9()
    await dl.start()
    await waitFor(async () => (await downloadOf(d.id))?.state === 'done', 'the download to finish after the restart')
    expect((await readFile(dest)).equals(BIG)).toBe(true)
    // the restart asked again, from what it had
    expect(served()).toBeGreaterThan(before)
  })

  it('kith://FRIEND/SHARE is a friend fetch in the same queue: listed, and paused or cancelled by the same commands', async () => {
    await befriend(friend, dl)
    const source = join(friend.home, 'shared.bin')
    await writeFile(source, SMALL)
    await friend.json('share', source, '--with', 'dl')
    const dest = join(dl.home, 'from-friend.bin')
    const run = await dl.cli('get', 'kith://friend/shared.bin', '-o', dest)
    expect(run.stderr).toBe('')
    expect(run.code).toBe(0)
    expect((await readFile(dest)).equals(SMALL)).toBe(true)
    const listing = await (await ApiClient.forHome(dl.home)).get<{ fetches: any[] }>('/v1/downloads')
    const fetch = listing.fetches.find((t: any) => t.dest === dest)
    expect(fetch).toMatchObject({ state: 'done', ownerLabel: 'friend' })
    // `kith pause` finds a friend fetch's id as well as a download's
    expect((await dl.cli('pause', fetch.id)).stderr).toContain('TRANSFER_STATE')
  })

  it('https origins: one whose authority the daemon trusts (NODE_EXTRA_CA_CERTS) downloads; an untrusted certificate fails with a typed error', async (ctx) => {
    requireOrSkip(ctx, ...NEEDS_TLS)
    const dest = join(dl.home, 'over-tls.bin')
    const ok = await dl.cli('get', `${tls!.trusted}/small.bin`, '-o', dest)
    expect(ok.stderr).toBe('')
    expect(ok.code).toBe(0)
    expect((await readFile(dest)).equals(SMALL)).toBe(true)
    const refused = await dl.cli('get', `${tls!.stranger}/small.bin`, '-o', join(dl.home, 'untrusted.bin'), '--json')
    expect(refused.code).toBe(1)
    // not retried (retrying can't make a certificate trusted), and the message says how to trust an authority
    const { error } = JSON.parse(refused.stderr)
    expect(error.code).toBe('HTTP_TLS_UNTRUSTED')
    expect(error.message).toMatch(/self-signed certificate.*NODE_EXTRA_CA_CERTS/)
    expect(existsSync(join(dl.home, 'untrusted.bin'))).toBe(false)
  })

  it('a friend fetch and a download share the one scheduler: together they stay under the download cap', async () => {
    // the friend is dl's since the kith:// test; 1 MiB from each at once, under a 1 MB/s cap on all of dl's downloading
    const CAP = 1_000_000
    await mkdir(join(friend.home, 'capped'))
    await writeFile(join(friend.home, 'capped', 'a.bin'), SHARED.subarray(0, SHARED.length / 2))
    await writeFile(join(friend.home, 'capped', 'b.bin'), SHARED.subarray(SHARED.length / 2))
    // through the API, as the CLI's share and limits commands do (a CLI process each would cost a second here)
    await (await ApiClient.forHome(friend.home)).call('POST', '/v1/shares', { path: join(friend.home, 'capped'), with: ['dl'] })
    const api = await ApiClient.forHome(dl.home)
    await api.call('PUT', '/v1/limits', { download: CAP })
    try {
      // queued in one request: both start at once
      const started = performance.now()
      const queued = await api.call<{ downloads: any[], transfers: any[] }>('POST', '/v1/downloads', { urls: ['kith://friend/capped', server.url('/shared.bin')], dest: join(dl.home, 'capped') + '/' })
      const [fetched, downloaded] = [queued.transfers[0], queued.downloads[0]]
      // watched through the API, as any program watches the queue
      let together = false
      await waitFor(async () => {
        const { downloads, fetches } = await api.get<{ downloads: any[], fetches: any[] }>('/v1/downloads')
        const [f, d] = [fetches.find(x => x.id === fetched.id), downloads.find(x => x.id === downloaded.id)]
        if (f?.state === 'running' && d?.state === 'running' && f.doneBytes + d.doneBytes > 0) together = true
        return f?.state === 'done' && d?.state === 'done'
      }, 'both to finish')
      const seconds = (performance.now() - started) / 1000
      expect(together).toBe(true)
      // 2 MiB in all: at most the cap, with a generous allowance (bursts, polling); had either bypassed the cap, the other alone would have kept to it
      expect(2 * SHARED.length).toBeLessThanOrEqual(CAP * 1.5 * seconds + 256 * 1024)
      expect(await tree(join(dl.home, 'capped', 'capped'))).toEqual(await tree(join(friend.home, 'capped')))
      expect((await readFile(join(dl.home, 'capped', 'shared.bin'))).equals(SHARED)).toBe(true)
    } finally {
      await api.call('PUT', '/v1/limits', { download: null })
    }
  })

  it('loads the add-on of a scheme only once a URL of it is queued', async () => {
    // stopped cleanly, the daemon (started again after the kill above) writes the modules it loaded
    await dl.stop()
    // the sources' modules, or the bundle's chunks it ran (test/helpers/bundle-setup.ts), by the modules in them
    const modules = await loadedModules(join(base!, 'dl-modules.log'))
    expect(modules.some(m => m.endsWith('/src/services/downloads/http/index.ts'))).toBe(true)
    const others = /\/node_modules\/(?:basic-ftp|ssh2|aws4fetch|webdav|m3u8-parser)\/|\/src\/services\/downloads\/(?:ftp|sftp|s3|webdav|hls)\.ts$/
    expect(modules.filter(m => others.test(m))).toEqual([])
  })
})
