import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, open, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { threeFriends, waitFor, type Testnet, type TestNode } from '../helpers/testnet.ts'
import { startNginx, needsNginx, type Nginx } from '../helpers/nginx.ts'
import { needsCommands, describeNeeding } from '../helpers/needs.ts'
import { ApiClient } from '../../src/services/api/client.ts'

/**
 * The friend swarm behind the local proxy, with real daemons (alice, bob
 * and carol, friends of each other) and a real nginx origin whose access
 * log counts the bytes it sent: bob and carol fetch a file through their
 * proxies, then alice's proxy takes it from them, checking every chunk.
 */
const MiB = 1024 * 1024
const SMALL = 12 * MiB + 1234
const LARGE = 28 * MiB
const FLOOR = 12 * MiB

async function curl (args: string[]): Promise<{ code: number, stderr: string }> {
  return await new Promise(resolve => {
    execFile('curl', ['-sS', ...args], { timeout: 60_000 }, (err, _stdout, stderr) => {
      resolve({ code: err == null ? 0 : typeof err.code === 'number' ? err.code : 1, stderr })
    })
  })
}

describeNeeding('the friend swarm behind the local proxy', [needsNginx(), needsCommands(['curl'])], () => {
  let base: string
  let net: Testnet
  let alice: TestNode, bob: TestNode, carol: TestNode
  let nginx: Nginx
  const files = new Map<string, Buffer>()

  beforeAll(async () => {
    base = await mkdtemp(join(tmpdir(), 'kith-swarm-'))
    await mkdir(join(base, 'site'))
    for (const [name, size] of [['offload.bin', SMALL], ['wrong.bin', SMALL], ['changed.bin', SMALL], ['floor.bin', FLOOR], ['vanish.bin', LARGE]] as const) {
      files.set(name, randomBytes(size))
      await writeFile(join(base, 'site', name), files.get(name)!)
    }
    // fetched by kith get, not through a proxy
    const got = randomBytes(3 * MiB + 5)
    await writeFile(join(base, 'site', 'got.bin'), got)
    // nginx is on 127.0.0.1: private origins must be allowed for it
    const config = JSON.stringify({ proxy: { allowPrivateOrigins: true, cacheBytes: 256 * MiB } })
    ;[nginx, { net, alice, bob, carol }] = await Promise.all([
      startNginx({ root: join(base, 'site') }),
      threeFriends({ before: async node => { await writeFile(join(node.home, 'config.json'), config) } })
    ])
    // alice asks friends who are online and grant her files
    const aliceApi = await ApiClient.forHome(alice.home)
    await waitFor(async () => {
      const { friends } = await aliceApi.get<{ friends: any[] }>('/v1/friends')
      return friends.length === 2 && friends.every(f => f.link.online === true && f.grantsFromThem.includes('files'))
    }, 'alice sees bob and carol online, granting her files')
    // bob and carol fetched every file through their proxies: they hold them
    await Promise.all([bob, carol].map(async node => {
      for (const name of files.keys()) {
        const got = await curl(['-o', join(base, `${node.name}-${name}`), await proxied(node, name)])
        expect(got.code, got.stderr).toBe(0)
      }
      expect((await proxyStatus(node)).swarm.held).toBe(files.size)
    }))
  })

  afterAll(async () => {
    await net?.stop()
    await nginx?.stop()
    if (base != null) await rm(base, { recursive: true, force: true })
  })

  /** `kith status --json`'s proxy part, from the API (no CLI process to start) */
  async function proxyStatus (node: TestNode): Promise<any> {
    return (await (await ApiClient.forHome(node.home)).get<{ proxy: any }>('/v1/status')).proxy
  }

  async function proxied (node: TestNode, name: string, query = ''): Promise<string> {
    const { url } = JSON.parse(await readFile(join(node.home, 'proxy.json'), 'utf8'))
    return `${url}/proxy?url=${encodeURIComponent(`${nginx.url}/${name}`)}${query}`
  }

  /** nginx's log lines for `name` from line `from` on (`status "range" bytes time msec uri`) */
  async function originLines (name: string, from: number): Promise<string[]> {
    return (await nginx.accessLog()).slice(from).filter(line => line.endsWith(` /${name}`))
  }

  /** bytes nginx sent for `name` from the log line `from` on */
  async function originBytes (name: string, from: number): Promise<number> {
    return (await originLines(name, from)).reduce((sum, line) => sum + Number(line.split(' ')[2]), 0)
  }

  async function fetchAs (node: TestNode, name: string, query: string, extra: string[] = []): Promise<{ body: Buffer, headers: string, origin: number, originLog: string[] }> {
    const mark = (await nginx.accessLog()).length
    const out = join(base, `got-${node.name}-${name}`)
    const got = await curl(['-D', `${out}.headers`, '-o', out, ...extra, await proxied(node, name, query)])
    expect(got.code, got.stderr).toBe(0)
    return { body: await readFile(out), headers: await readFile(`${out}.headers`, 'utf8'), origin: await originBytes(name, mark), originLog: await originLines(name, mark) }
  }

  it('offloads at qos=1: the origin sends one sampled chunk, friends the rest, every byte right', async () => {
    const got = await fetchAs(alice, 'offload.bin', '&qos=1')
    expect(got.body.equals(files.get('offload.bin')!)).toBe(true)
    expect(got.headers).toMatch(/x-kith-source: friends/i)
    // the cross-check's one chunk of 13 (what nginx sent, and alice's log, said when it is more)
    expect(got.origin, `nginx: ${got.originLog.join('; ')}\nalice: ${alice.output.slice(-4000)}`).toBeLessThanOrEqual(MiB)
    const { swarm } = (await proxyStatus(alice))
    expect(swarm.fromFriends).toBeGreaterThanOrEqual(SMALL - MiB)
    // kept and offered in turn, as kith status says
    expect(swarm.held).toBe(1)
    expect((await alice.cli('status')).stdout).toMatch(/\(1 cached, [^;]+; 1 offered to friends, [\d.]+ MiB taken from friends; docs\/proxy\.md\)/)
  })

  it('answers a Range request from friends with 206 and the bytes asked', async () => {
    const file = files.get('offload.bin')!
    // bob asks: alice and carol hold it now
    const got = await fetchAs(bob, 'offload.bin', '&qos=1', ['-r', `${3 * MiB - 5}-${5 * MiB + 7}`])
    expect(got.headers).toMatch(/^HTTP\/1\.1 206/)
    expect(got.body.equals(file.subarray(3 * MiB - 5, 5 * MiB + 8))).toBe(true)
  })

  it('offers what kith get fetched over http: alice takes it from bob', async () => {
    const content = await readFile(join(base, 'site', 'got.bin'))
    const got = await bob.cli('get', `${nginx.url}/got.bin`, '-o', join(base, 'bob-got.bin'))
    expect(got.code, got.stderr).toBe(0)
    await waitFor(async () => (await proxyStatus(bob)).swarm.held === files.size + 1, 'bob offers the file kith get placed')
    const pulled = await fetchAs(alice, 'got.bin', '&qos=1')
    expect(pulled.body.equals(content)).toBe(true)
    expect(pulled.headers).toMatch(/x-kith-source: friends/i)
    expect(pulled.origin).toBeLessThanOrEqual(MiB)
  })

  it('drops a friend whose file went bad on disk (same size and mtime) and still gives the right bytes', async () => {
    const name = 'wrong.bin'
    const { swarm } = (await proxyStatus(carol))
    expect(swarm.held).toBeGreaterThan(0)
    // carol's cache file of wrong.bin: the one of its size in proxy-cache, damaged in every chunk, its mtime put back
    const path = await cacheFileOf(carol, files.get(name)!)
    const before = await stat(path)
    const file = await open(path, 'r+')
    for (let at = 0; at < before.size; at += MiB) await file.write(Buffer.from([0xff ^ files.get(name)![at]!]), 0, 1, at)
    await file.close()
    // seconds as numbers: a Date would round the mtime down a millisecond
    await utimes(path, before.atimeMs / 1000, before.mtimeMs / 1000)

    const got = await fetchAs(alice, name, '&qos=1')
    expect(got.body.equals(files.get(name)!)).toBe(true)
    // carol still offered it (the stat check passed), sent a chunk not matching her own list, and was dropped
    expect(alice.output).toContain(`friend ${carol.peerId} dropped from a swarm pull`)
    expect(alice.output).toMatch(/sent chunk \d+ not matching its hash list/)
  })

  it('never mixes a changed origin file with friends\' old chunks', async () => {
    const name = 'changed.bin'
    const fresh = randomBytes(SMALL)
    await writeFile(join(base, 'site', name), fresh)
    // nginx's ETag is mtime and size: a rewrite within the same second could keep it
    const later = new Date(Date.now() + 10_000)
    await utimes(join(base, 'site', name), later, later)
    const got = await fetchAs(alice, name, '&qos=1')
    expect(got.body.equals(fresh)).toBe(true)
    expect(got.headers).toMatch(/x-kith-source: origin/i)
  })

  it('holds the qos floor with the origin when friends are capped below it', async () => {
    const name = 'floor.bin'
    // alice may take 2 MB/s from each friend: 4 MB/s in all, under the 6 MB/s asked
    const api = await ApiClient.forHome(alice.home)
    await api.call('PUT', '/v1/limits', { peers: { bob: { download: 2e6 }, carol: { download: 2e6 } } })
    try {
      const before = (await proxyStatus(alice)).swarm
      const got = await fetchAs(alice, name, '&qos=6000000')
      expect(got.body.equals(files.get(name)!)).toBe(true)
      expect(got.headers).toMatch(/x-kith-source: friends/i)
      const after = (await proxyStatus(alice)).swarm
      // friends gave what their caps let through (the origin waits a 2 s window before it tops up),
      // and the origin topped up: more than the one chunk of the cross-check
      expect(after.fromFriends - before.fromFriends).toBeGreaterThan(0)
      expect(got.origin).toBeGreaterThan(MiB)
      expect(after.fromFriends - before.fromFriends + after.fromOrigin - before.fromOrigin).toBe(FLOOR)
    } finally {
      await api.call('PUT', '/v1/limits', { peers: null })
    }
  })

  it('reads a streaming range\'s next chunks ahead from friends: the next range comes from memory, the origin untouched', async () => {
    const file = files.get('vanish.bin')!
    // ranges: alice keeps nothing of them (the vanish test below needs her without the file)
    const first = await fetchAs(alice, 'vanish.bin', '&qos=1&service=streaming', ['-r', `0-${MiB - 1}`])
    expect(first.headers).toMatch(/x-kith-source: friends/i)
    // the first read-ahead is READ_AHEAD_FIRST_BYTES (2 MiB): the next range within it
    const next = await fetchAs(alice, 'vanish.bin', '&qos=1&service=streaming', ['-r', `${MiB}-${3 * MiB - 1}`])
    expect(next.headers).toMatch(/^HTTP\/1\.1 206/)
    expect(next.headers).toMatch(/x-kith-source: read-ahead/i)
    expect(next.body.equals(file.subarray(MiB, 3 * MiB))).toBe(true)
    expect(next.origin).toBe(0)
  })

  it('completes from the origin when the friends vanish mid-download', async () => {
    const name = 'vanish.bin'
    const out = join(base, 'vanish-got')
    const mark = (await nginx.accessLog()).length
    // a slow client: the pull stays WINDOW_CHUNKS ahead of it, so most of the file is still to come when friends go
    const client = spawn('curl', ['-sS', '--limit-rate', '8M', '-D', `${out}.headers`, '-o', out, await proxied(alice, name, '&qos=1')], { stdio: ['ignore', 'ignore', 'pipe'] })
    const exited = new Promise<number | null>(resolve => client.once('exit', code => resolve(code)))
    await waitFor(async () => (await stat(out).catch(() => null))?.size ?? 0 > 2 * MiB, 'the client has 2 MiB', 20_000, 20)
    await Promise.all([bob.kill9(), carol.kill9()])
    expect(await exited).toBe(0)
    expect((await readFile(out)).equals(files.get(name)!)).toBe(true)
    expect(await readFile(`${out}.headers`, 'utf8')).toMatch(/x-kith-source: friends/i)
    // the origin gave what the friends could not
    expect(await originBytes(name, mark)).toBeGreaterThan(4 * MiB)
  })

  /** The file in a node's proxy cache holding `content` (found by its size; the test's files differ in size or content). */
  async function cacheFileOf (node: TestNode, content: Buffer): Promise<string> {
    const { readdir } = await import('node:fs/promises')
    const dir = join(node.home, 'proxy-cache')
    for (const entry of await readdir(dir)) {
      const bytes = await readFile(join(dir, entry))
      if (bytes.equals(content)) return join(dir, entry)
    }
    throw new Error(`${node.name} does not keep that file`)
  }
})
