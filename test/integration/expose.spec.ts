import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { spawn } from 'node:child_process'
import { createServer, connect, type Server, type Socket } from 'node:net'
import { createServer as createHttpServer, type ServerResponse } from 'node:http'
import { mkdir, open, readFile, writeFile } from 'node:fs/promises'
import { createHash, randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { once } from 'node:events'
import { createTestnet, befriend, waitFor, type Testnet, type TestNode } from '../helpers/testnet.ts'
import { startNginx, needsNginx, type Nginx } from '../helpers/nginx.ts'
import { freePort } from '../helpers/servers.ts'
import { needsCommands, describeNeeding } from '../helpers/needs.ts'
import { ApiClient } from '../../src/services/api/client.ts'

/**
 * Friend services between two real daemons: alice exposes a real nginx and a
 * TCP echo server; bob reaches them through `kith connect`, with curl and
 * raw sockets. A page is browsed; a service not granted to bob is refused, as
 * is one whose program is down (at once, with the reason in `kith
 * connections`); over a long-lived TCP connection, backpressure holds both
 * ways (a reader that stops makes the writer stop) and half-close passes through; a 128 MiB response streams
 * with the daemons' peak RSS bounded; 50 connections run at once; taking
 * the grant back, then revoking the friend, cuts an open download within
 * 5 s. (A port kept across restarts: test/services/expose/protocols.spec.ts,
 * the same code without a daemon's start.)
 */
const MiB = 1024 * 1024
const BIG = 128 * MiB

/** Through the API: the CLI is exercised once per command; a process per poll would load the box */
async function api<T = any> (node: TestNode, path: string, method = 'GET', body?: unknown): Promise<T> {
  return await (await ApiClient.forHome(node.home)).call<T>(method, path, body)
}

interface Curl { code: number, stdout: Buffer, stderr: string }

function curl (args: string[], timeoutMs = 60_000): Promise<Curl> & { child: ReturnType<typeof spawn> } {
  const child = spawn('curl', ['-sS', '--max-time', String(timeoutMs / 1000), ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  const out: Buffer[] = []
  let stderr = ''
  child.stdout!.on('data', (d: Buffer) => out.push(d))
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString() })
  const done = new Promise<Curl>(resolve => child.once('close', code => resolve({ code: code ?? -1, stdout: Buffer.concat(out), stderr })))
  return Object.assign(done, { child })
}

/** Resident memory of a process from /proc, in bytes: now (VmRSS), and the peak since the last reset (VmHWM). */
async function rss (pid: number): Promise<{ now: number, peak: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const kb = (field: string): number => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)![1]) * 1024
  return { now: kb('VmRSS'), peak: kb('VmHWM') }
}

/** Sets a process's VmHWM back to its RSS now (Linux: clear_refs 5), so the next peak is this transfer's. */
async function resetPeak (pid: number): Promise<void> {
  await writeFile(`/proc/${pid}/clear_refs`, '5')
}

async function sha (file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex')
}

const accepted: Socket[] = []
let wake: (() => void) | undefined

/** The next connection the test's TCP server accepted. */
async function nextSocket (): Promise<Socket> {
  while (accepted.length === 0) await new Promise<void>(resolve => { wake = resolve })
  return accepted.shift()!
}

const PATTERN = randomBytes(MiB)

/** Writes 1 MiB at a time until `max`, or until a write is not taken within a second: backpressure. */
async function fillUntilStalled (socket: Socket, max: number): Promise<{ written: number, stalled: boolean, sha: string }> {
  const hash = createHash('sha256')
  let written = 0
  while (written < max) {
    written += PATTERN.length
    hash.update(PATTERN)
    if (!socket.write(PATTERN)) {
      const drained = await Promise.race([once(socket, 'drain').then(() => true), new Promise<boolean>(resolve => setTimeout(() => resolve(false), 1000))])
      if (!drained) return { written, stalled: true, sha: hash.digest('hex') }
    }
  }
  return { written, stalled: false, sha: hash.digest('hex') }
}

/** Reads to the other side's FIN: how many bytes, and their hash. */
async function readToEnd (socket: Socket): Promise<{ bytes: number, sha: string }> {
  const hash = createHash('sha256')
  let bytes = 0
  socket.on('data', (d: Buffer) => { bytes += d.length; hash.update(d) })
  socket.resume()
  await once(socket, 'end')
  return { bytes, sha: hash.digest('hex') }
}

describeNeeding('friend services between real daemons', [needsNginx(), needsCommands(['curl'])], () => {
  let net: Testnet
  let alice: TestNode, bob: TestNode
  let nginx: Nginx
  let echo: Server
  let barrier: ReturnType<typeof createHttpServer>
  let root: string
  let blog: number

  beforeAll(async () => {
    net = await createTestnet(['alice', 'bob'])
    ;[alice, bob] = net.nodes as [TestNode, TestNode]
    root = join(alice.home, 'www')
    await mkdir(join(root, 'slow'), { recursive: true })
    await writeFile(join(root, 'index.html'), '<h1>alice\'s blog</h1>\n')
    // the big file, written in pieces, not held in this process
    const file = await open(join(root, 'big.bin'), 'w')
    for (let i = 0; i < BIG / (8 * MiB); i++) await file.write(randomBytes(8 * MiB))
    await file.close()
    await writeFile(join(root, 'slow', 'long.bin'), randomBytes(4 * MiB))
    nginx = await startNginx({ root, server: 'location /slow/ { limit_rate 256k; }' })
    // a long-lived TCP server whose every connection the test drives (paused until it reads)
    echo = createServer({ allowHalfOpen: true, pauseOnConnect: true }, socket => {
      socket.on('error', () => {})
      accepted.push(socket)
      wake?.()
    })
    echo.listen(0, '127.0.0.1')
    await once(echo, 'listening')
    // answers no request until 50 are waiting at once: concurrency proven by construction, not by timing
    const held: ServerResponse[] = []
    barrier = createHttpServer((_req, res) => {
      held.push(res)
      if (held.length === 50) for (const r of held.splice(0)) r.end('all 50 at once')
    })
    barrier.listen(0, '127.0.0.1')
    await once(barrier, 'listening')
    await befriend(alice, bob)
    await alice.json('expose', 'blog', '--port', String(nginx.port), '--to', 'bob', '--description', 'my blog')
    await api(alice, '/v1/services/echo', 'PUT', { port: (echo.address() as { port: number }).port, to: ['bob'] })
    blog = await freePort()
  })

  afterAll(async () => {
    await net?.stop()
    await nginx?.stop()
    echo?.close()
    barrier?.closeAllConnections()
    barrier?.close()
  })

  it('lets a granted friend browse a page through kith connect, and lists what is offered', async () => {
    const offered = await bob.json('services', 'alice')
    expect(offered.services).toEqual([{ name: 'blog', description: 'my blog' }, { name: 'echo', description: '' }])
    const { connection } = await bob.json('connect', 'alice:blog', '--port', String(blog))
    expect(connection).toMatchObject({ friend: 'alice', service: 'blog', host: '127.0.0.1', port: blog, listening: true })
    const page = await curl([`http://127.0.0.1:${blog}/`])
    expect(page.stderr).toBe('')
    expect(page.stdout.toString()).toBe('<h1>alice\'s blog</h1>\n')
    // the grant shows with the others, and the traffic in its own class
    const { friends } = await api(alice, '/v1/friends')
    expect(friends[0].services).toEqual(['blog', 'echo'])
    const again = await curl([`http://127.0.0.1:${blog}/index.html`])
    expect(again.stdout.toString()).toContain('alice')
    expect((await api(bob, '/v1/connections')).connections[0].bytesDown).toBeGreaterThan(0)
  })

  it('refuses a service not granted, and a service whose program is down, at once and saying why', async () => {
    const closed = await freePort()
    await api(alice, '/v1/services/private', 'PUT', { port: nginx.port })
    await api(alice, '/v1/services/down', 'PUT', { port: closed, to: ['bob'] })
    expect((await api(bob, '/v1/friends/alice/services')).services.map((s: { name: string }) => s.name)).toEqual(['blog', 'down', 'echo'])
    const { connection: priv } = await api(bob, '/v1/connections', 'POST', { friend: 'alice', service: 'private' })
    const refused = await curl([`http://127.0.0.1:${priv.port}/`])
    expect(refused.code).not.toBe(0)
    expect(refused.stdout.length).toBe(0)
    const err = await waitFor(async () => (await api(bob, '/v1/connections')).connections.find((c: any) => c.service === 'private')?.error, 'the refusal recorded')
    expect(err.code).toBe('SERVICE_UNKNOWN')
    const { connection: down } = await api(bob, '/v1/connections', 'POST', { friend: 'alice', service: 'down' })
    const failed = await curl([`http://127.0.0.1:${down.port}/`])
    expect(failed.code).not.toBe(0)
    const downErr = await waitFor(async () => (await api(bob, '/v1/connections')).connections.find((c: any) => c.service === 'down')?.error, 'the refusal recorded')
    expect(downErr.code).toBe('SERVICE_DOWN')
    expect(downErr.message).toMatch(/not running/)
    const text = await bob.cli('connections')
    expect(text.stdout).toMatch(/alice:down .*SERVICE_DOWN/)
  })

  it('holds backpressure both ways and passes half-close through (a long-lived TCP connection)', async () => {
    const { connection } = await api(bob, '/v1/connections', 'POST', { friend: 'alice', service: 'echo' })
    const client: Socket = connect({ port: connection.port, host: '127.0.0.1', allowHalfOpen: true })
    client.on('error', () => {})
    const server = await nextSocket()
    // bob to alice's program, which reads nothing: the writer stalls short of 48 MiB, at what the kernel
    // buffers of the loopback connections (some 15 MiB here) and kith's bounded ones hold
    const up = await fillUntilStalled(client, 48 * MiB)
    if (process.env.KITH_DEBUG != null) console.log(`bob's writes stalled after ${up.written / MiB} MiB`)
    expect(up.stalled).toBe(true)
    // the program reads: every byte arrives, then bob's FIN, and the other way stays open
    const atServer = readToEnd(server)
    client.end()
    expect(await atServer).toEqual({ bytes: up.written, sha: up.sha })
    // alice's program to bob, who reads nothing: the program's writes stall likewise
    client.pause()
    const down = await fillUntilStalled(server, 48 * MiB)
    if (process.env.KITH_DEBUG != null) console.log(`the program's writes stalled after ${down.written / MiB} MiB`)
    expect(down.stalled).toBe(true)
    const atClient = readToEnd(client)
    server.end()
    expect(await atClient).toEqual({ bytes: down.written, sha: down.sha })
  })

  it('streams a 128 MiB response with bounded memory, and carries 50 connections at once', async () => {
    const dest = join(bob.home, 'big.bin')
    await resetPeak(alice.pid!)
    await resetPeak(bob.pid!)
    const before = { alice: await rss(alice.pid!), bob: await rss(bob.pid!) }
    const got = await curl(['-o', dest, `http://127.0.0.1:${blog}/big.bin`], 120_000)
    expect(got.stderr).toBe('')
    expect(await sha(dest)).toBe(await sha(join(root, 'big.bin')))
    const after = { alice: await rss(alice.pid!), bob: await rss(bob.pid!) }
    if (process.env.KITH_DEBUG != null) console.log('RSS before, peak during (MiB)', before.alice.now / MiB, after.alice.peak / MiB, before.bob.now / MiB, after.bob.peak / MiB)
    // the peak rose by less than half the 128 MiB that moved: buffers, not the response. It moves with
    // glibc's heap and V8's collections: bob's rose 0.6-36 MiB in 10 runs of a 64 MiB response and 19-36
    // in 3 of this one, and 39 MiB once in a CI run (so 32 MiB of 64 was too tight)
    expect(after.alice.peak - before.alice.now).toBeLessThan(64 * MiB)
    expect(after.bob.peak - before.bob.now).toBeLessThan(64 * MiB)

    // 50 at once, through a server that answers none until all 50 wait on it
    await api(alice, '/v1/services/many', 'PUT', { port: (barrier.address() as { port: number }).port, to: ['bob'] })
    const { connection } = await api(bob, '/v1/connections', 'POST', { friend: 'alice', service: 'many' })
    const url = `http://127.0.0.1:${connection.port}/`
    const result = await curl(['-Z', '--parallel-immediate', '--parallel-max', '50', ...Array.from({ length: 50 }, (_, i) => ['-o', join(bob.home, `many-${i}.txt`), url]).flat()], 60_000)
    expect(result.code, result.stderr).toBe(0)
    for (let i = 0; i < 50; i++) expect(await readFile(join(bob.home, `many-${i}.txt`), 'utf8')).toBe('all 50 at once')
  })

  it('cuts an open download within 5 s when the grant is taken back, and when the friend is revoked', async () => {
    const url = `http://127.0.0.1:${blog}/slow/long.bin`
    const cutBy = async (action: () => Promise<unknown>, what: string): Promise<Curl> => {
      const download = curl([url], 60_000)
      await waitFor(async () => (await api(alice, '/v1/services')).services.find((s: any) => s.name === 'blog').open >= 1 &&
        (await api(bob, '/v1/connections')).connections.find((c: any) => c.service === 'blog').open >= 1, 'the download under way')
      // through the bandwidth scheduler, in the class of its own that kith status shows, both ends
      await waitFor(async () => {
        const [up, down] = [(await api(alice, '/v1/status')).bandwidth.up.classes.service, (await api(bob, '/v1/status')).bandwidth.down.classes.service]
        return up.flows >= 1 && up.rate > 0 && down.flows >= 1 && down.rate > 0
      }, 'the download counted in the service class, at alice (up) and bob (down)')
      let ended = false
      void download.then(() => { ended = true })
      await action()
      await waitFor(() => ended, `the download cut after ${what}`, 5_000, 50)
      return await download
    }
    const ungranted = await cutBy(async () => await alice.json('friend', 'ungrant', 'bob', 'service:blog'), 'the grant was taken back')
    expect(ungranted.code).not.toBe(0)
    expect(ungranted.stdout.length).toBeLessThan(4 * MiB)
    const refused = await curl([url])
    expect(refused.code).not.toBe(0)
    expect((await api(bob, '/v1/friends/alice/services')).services.map((s: { name: string }) => s.name)).not.toContain('blog')

    await api(alice, '/v1/friends/bob/grants/service:blog', 'PUT')
    const revoked = await cutBy(async () => await alice.json('friend', 'revoke', 'bob'), 'the friend was revoked')
    expect(revoked.code).not.toBe(0)
  })
})
