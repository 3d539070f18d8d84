import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest'
import { request } from 'node:http'
import { connect, type Socket } from 'node:net'
import { EventEmitter } from 'node:events'
import { chmod, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createTestnet, waitFor, type Testnet, type TestNode } from '../helpers/testnet.ts'
import { ApiClient } from '../../src/services/api/client.ts'
import { startApiServer, type ApiLimits, type ApiServer } from '../../src/services/api/server.ts'
import { KithError } from '../../src/errors.ts'

/** The local API of a real daemon: auth, Host/Origin checks, limits, validation and events. */
interface Reply {
  status: number
  body: any
}

async function raw (url: string, init: { method?: string, headers?: Record<string, string>, body?: string | Buffer, path: string }): Promise<Reply> {
  return await new Promise((resolve, reject) => {
    const req = request(new URL(init.path, url), { method: init.method ?? 'GET', headers: init.headers }, res => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString()
        resolve({ status: res.statusCode ?? 0, body: text === '' ? null : JSON.parse(text) })
      })
    })
    req.on('error', reject)
    req.end(init.body)
  })
}

describe('local API', () => {
  let net: Testnet
  let node: TestNode
  let url: string
  let token: string
  let auth: Record<string, string>

  beforeAll(async () => {
    net = await createTestnet(['api'])
    node = net.nodes[0]!
    url = node.info!.api
    token = (await readFile(join(node.home, 'api.token'), 'utf8')).trim()
    auth = { authorization: `Bearer ${token}` }
  })

  afterAll(async () => {
    await net?.stop()
  })

  it('keeps its token and key files private', async () => {
    for (const file of ['api.token', 'identity.key', 'api.json']) {
      expect((await stat(join(node.home, file))).mode & 0o777).toBe(0o600)
    }
  })

  it('answers with the token', async () => {
    const reply = await raw(url, { path: '/v1/status', headers: auth })
    expect(reply.status).toBe(200)
    expect(reply.body.peerId).toBe(node.peerId)
  })

  it('refuses requests without the right token', async () => {
    expect((await raw(url, { path: '/v1/status' })).body.error.code).toBe('UNAUTHORIZED')
    const wrong = await raw(url, { path: '/v1/status', headers: { authorization: `Bearer ${token.slice(0, -1)}x` } })
    expect(wrong.status).toBe(401)
    expect(wrong.body.error.code).toBe('UNAUTHORIZED')
  })

  it('answers the last hour of bandwidth with the token, and refuses it without', async () => {
    expect(await raw(url, { path: '/v1/bandwidth/history' })).toMatchObject({ status: 401, body: { error: { code: 'UNAUTHORIZED' } } })
    const { status, body: history } = await raw(url, { path: '/v1/bandwidth/history', headers: auth })
    expect(status).toBe(200)
    expect(history).toMatchObject({ intervalMs: 10_000, classes: ['friend', 'foaf', 'public', 'backup', 'service'] })
    // the intervals closed since the start, the last one running to now
    const n = history.at.length
    expect(n).toBeGreaterThan(0)
    expect(history.at.at(-1)).toBe(history.now)
    expect(history.ms).toHaveLength(n)
    for (const dir of ['up', 'down']) {
      expect(Object.keys(history[dir]).sort()).toEqual(['backup', 'foaf', 'friend', 'public', 'service', 'total'])
      for (const rates of Object.values(history[dir]) as number[][]) expect(rates.length === n && rates.every(r => Number.isInteger(r) && r >= 0)).toBe(true)
    }
  })

  it('refuses a foreign Host header and any Origin header', async () => {
    const rebinding = await raw(url, { path: '/v1/status', headers: { ...auth, host: 'evil.example:80' } })
    expect(rebinding.status).toBe(403)
    expect(rebinding.body.error.code).toBe('FORBIDDEN_ORIGIN')
    const page = await raw(url, { path: '/v1/status', headers: { ...auth, origin: 'https://evil.example' } })
    expect(page.status).toBe(403)
    expect(page.body.error.code).toBe('FORBIDDEN_ORIGIN')
  })

  it('rejects oversize, malformed and unexpected bodies without changing state', async () => {
    const json = { ...auth, 'content-type': 'application/json' }
    const before = (await raw(url, { path: '/v1/invites', headers: auth })).body.invites.length
    const big = await raw(url, { method: 'POST', path: '/v1/invites', headers: json, body: JSON.stringify({ label: 'x'.repeat(70_000) }) })
    expect(big.status).toBe(413)
    expect(big.body.error.code).toBe('PAYLOAD_TOO_LARGE')
    const broken = await raw(url, { method: 'POST', path: '/v1/invites', headers: json, body: '{"label":' })
    expect(broken.body.error.code).toBe('BAD_REQUEST')
    const extra = await raw(url, { method: 'POST', path: '/v1/invites', headers: json, body: JSON.stringify({ label: 'x', admin: true }) })
    expect(extra.body.error.code).toBe('BAD_REQUEST')
    const badGrant = await raw(url, { method: 'POST', path: '/v1/invites', headers: json, body: JSON.stringify({ grants: ['root'] }) })
    expect(badGrant.body.error.code).toBe('BAD_REQUEST')
    const badUses = await raw(url, { method: 'POST', path: '/v1/invites', headers: json, body: JSON.stringify({ uses: 0 }) })
    expect(badUses.body.error.code).toBe('BAD_REQUEST')
    const notJson = await raw(url, { method: 'POST', path: '/v1/invites', headers: { ...auth, 'content-type': 'text/plain' }, body: 'hello' })
    expect(notJson.body.error.code).toBe('BAD_REQUEST')
    expect((await raw(url, { path: '/v1/invites', headers: auth })).body.invites.length).toBe(before)
  })

  it('rejects a damaged invite with a typed error', async () => {
    const json = { ...auth, 'content-type': 'application/json' }
    const made = await raw(url, { method: 'POST', path: '/v1/invites', headers: json, body: '{}' })
    const text: string = made.body.text
    const damaged = text.replace(/^([A-Za-z0-9+/])/m, c => c === 'A' ? 'B' : 'A')
    const reply = await raw(url, { method: 'POST', path: '/v1/invites/inspect', headers: json, body: JSON.stringify({ text: damaged }) })
    expect(reply.status).toBe(400)
    expect(['INVITE_MALFORMED', 'INVITE_BAD_SIGNATURE']).toContain(reply.body.error.code)
    const own = await raw(url, { method: 'POST', path: '/v1/invites/accept', headers: json, body: JSON.stringify({ text }) })
    expect(own.body.error.code).toBe('INVITE_OWN')
  })

  it('answers a percent-escape that does not decode with 400 URL_MALFORMED, in the path or the query', async () => {
    for (const path of ['/v1/friends/%E0%A4%A', '/v1/friends/%zz/shares', '/v1/friends/%ff', '/v1/transfers?state=%ff', '/v1/shares?x=%']) {
      const reply = await raw(url, { path, headers: auth })
      expect({ path, status: reply.status, code: reply.body.error.code }).toEqual({ path, status: 400, code: 'URL_MALFORMED' })
    }
    // escapes that decode reach the route decoded, once
    expect((await raw(url, { path: '/v1/friends/a%2Fb%25', headers: auth })).body.error).toEqual({ code: 'FRIEND_UNKNOWN', message: expect.stringContaining('a/b%') })
    expect((await raw(url, { path: '/v1/status', headers: auth })).status).toBe(200)
  })

  it('will not send a token other users can read', async () => {
    const tokenFile = join(node.home, 'api.token')
    await chmod(tokenFile, 0o644)
    try {
      const err = await ApiClient.forHome(node.home).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(KithError)
      expect((err as KithError).code).toBe('TOKEN_NOT_PRIVATE')
      expect((err as KithError).message).toContain(`chmod 600 ${tokenFile}`)
    } finally {
      await chmod(tokenFile, 0o600)
    }
    expect((await (await ApiClient.forHome(node.home)).get<{ peerId: string }>('/v1/status')).peerId).toBe(node.peerId)
  })

  it('answers unknown endpoints and friends with NOT_FOUND-style codes', async () => {
    expect((await raw(url, { path: '/v1/nothing', headers: auth })).body.error.code).toBe('NOT_FOUND')
    expect((await raw(url, { path: '/v1/friends/nobody', headers: auth })).body.error.code).toBe('FRIEND_UNKNOWN')
    expect((await raw(url, { method: 'DELETE', path: '/v1/invites/0000000000000000', headers: auth })).body.error.code).toBe('INVITE_UNKNOWN')
  })

  it('streams events', async () => {
    const client = await ApiClient.forHome(node.home)
    const controller = new AbortController()
    const seen: string[] = []
    const events = await client.events(controller.signal)
    const reading = (async () => {
      try {
        for await (const evt of events) seen.push(evt.type)
      } catch {}
    })()
    // a second node redeeming an invite makes friend:added and friend:online
    const { text } = await client.call<{ text: string }>('POST', '/v1/invites', { label: 'evt' })
    const extra = await createTestnet(['friend'])
    try {
      const file = join(extra.nodes[0]!.home, 'in.invite')
      await writeFile(file, text)
      await extra.nodes[0]!.json('invite', 'accept', file)
      await waitFor(() => seen.includes('friend:added') && seen.includes('friend:online'), 'friend events')
    } finally {
      controller.abort()
      await reading
      await extra.stop()
    }
  })
})

/**
 * What any local program can make the API hold, token or not: the server in
 * this process on a real port, with small limits, fed events by an emitter.
 */
describe('local API limits', () => {
  const token = 'k'.repeat(43)
  const events = new EventEmitter<{ event: [{ type: string, [key: string]: unknown }] }>()
  let server: ApiServer | undefined
  const sockets: Socket[] = []
  const aborts: AbortController[] = []

  async function start (limits: Partial<ApiLimits>): Promise<{ client: ApiClient, port: number }> {
    server = await startApiServer({
      host: '127.0.0.1',
      port: 0,
      token,
      routes: [{ method: 'GET', path: /^\/v1\/status$/, handler: async () => ({ ok: true }) }],
      events,
      limits
    })
    return { client: new ApiClient(server.url, token), port: Number(new URL(server.url).port) }
  }

  /** A raw socket to the API, with what it received and whether the server closed it. */
  async function socket (port: number): Promise<{ socket: Socket, received: string, ended: boolean }> {
    const raw = { socket: connect(port, '127.0.0.1'), received: '', ended: false }
    sockets.push(raw.socket)
    raw.socket.on('data', (d: Buffer) => { raw.received += d.toString() })
    raw.socket.on('close', () => { raw.ended = true })
    raw.socket.on('error', () => {})
    await new Promise(resolve => raw.socket.once('connect', resolve))
    return raw
  }

  function requestText (port: number, path: string): string {
    return `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${token}\r\n\r\n`
  }

  async function follow (client: ApiClient): Promise<{ seen: string[], done: Promise<void> }> {
    const abort = new AbortController()
    aborts.push(abort)
    const stream = await client.events(abort.signal)
    const seen: string[] = []
    const done = (async () => { for await (const evt of stream) seen.push(evt.type) })().catch(() => {})
    return { seen, done }
  }

  afterEach(async () => {
    for (const abort of aborts.splice(0)) abort.abort()
    for (const s of sockets.splice(0)) s.destroy()
    await server?.close()
    server = undefined
  })

  it('caps event streams at once, refusing one more with EVENT_STREAMS_FULL until one closes', async () => {
    const { client } = await start({ maxEventStreams: 2 })
    await follow(client)
    await follow(client)
    const refused = await client.events().catch((e: unknown) => e)
    expect((refused as KithError).code).toBe('EVENT_STREAMS_FULL')
    aborts[0]!.abort()
    const again = await waitFor(async () => await follow(client), 'a free event stream slot', 5_000, 20)
    events.emit('event', { type: 'after' })
    await waitFor(() => again.seen.includes('after'), 'the event on the new stream', 5_000, 20)
  })

  it('closes the event stream of a client that stopped reading, and keeps serving the one that reads', async () => {
    const { client, port } = await start({ maxEventBacklog: 128 * 1024 })
    const reader = await follow(client)
    const stalled = await socket(port)
    expect(server!.eventStreams()).toBe(1)
    stalled.socket.write(requestText(port, '/v1/events'))
    await waitFor(() => stalled.received.includes('kith events'), 'the stalled stream to open', 5_000, 20)
    stalled.socket.pause()
    // the kernel's socket buffers fill first, then the server's backlog of this stream;
    // bursts of 32 KiB, each taken by the reader before the next
    const padding = 'x'.repeat(8 * 1024)
    let sent = 0
    await waitFor(async () => {
      for (let i = 0; i < 4; i++, sent++) events.emit('event', { type: 'bulk', padding })
      await waitFor(() => reader.seen.length === sent, `the reading stream to get all ${sent} events`, 10_000, 1)
      return server!.eventStreams() === 1
    }, 'the stalled stream to be closed', 30_000, 0)
    // reading again, the stalled client finds its stream ended short of what was sent
    stalled.socket.resume()
    await waitFor(() => stalled.ended, 'the stalled socket to see its end', 5_000, 20)
    expect(stalled.received.length).toBeLessThan(sent * padding.length)
    events.emit('event', { type: 'after' })
    await waitFor(() => reader.seen.at(-1) === 'after', 'the reader to go on', 5_000, 20)
  })

  it('closes a socket that sends no request, or its headers too slowly, and leaves an open event stream be', async () => {
    const { client, port } = await start({ headersTimeoutMs: 300, requestTimeoutMs: 600 })
    const stream = await follow(client)
    const silent = await socket(port)
    const slow = await socket(port)
    slow.socket.write('GET /v1/status HTTP/1.1\r\n')
    const drip = setInterval(() => { if (!slow.ended) slow.socket.write('X-Slow: 1\r\n') }, 50)
    try {
      await waitFor(() => silent.ended && slow.ended, 'both sockets to be closed', 10_000, 20)
    } finally {
      clearInterval(drip)
    }
    expect(slow.received).toMatch(/^HTTP\/1.1 408/)
    // the stream, open for longer than those timeouts, still delivers
    events.emit('event', { type: 'still-here' })
    await waitFor(() => stream.seen.includes('still-here'), 'the event on the open stream', 5_000, 20)
  })

  it('caps sockets at once: one more is closed as it connects', async () => {
    const { port } = await start({ maxConnections: 3, keepAliveTimeoutMs: 30_000 })
    const held: Array<Awaited<ReturnType<typeof socket>>> = []
    for (let i = 0; i < 3; i++) {
      const s = await socket(port)
      s.socket.write(requestText(port, '/v1/status'))
      await waitFor(() => s.received.includes('{"ok":true}'), 'an answer', 5_000, 20)
      held.push(s)
    }
    const extra = await socket(port)
    await waitFor(() => extra.ended, 'the extra socket to be closed', 5_000, 20)
    expect(extra.received).toBe('')
    // the ones held still work
    held[0]!.received = ''
    held[0]!.socket.write(requestText(port, '/v1/status'))
    await waitFor(() => held[0]!.received.includes('{"ok":true}'), 'an answer on a held socket', 5_000, 20)
  })
})
