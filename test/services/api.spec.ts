import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { request } from 'node:http'
import { readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createTestnet, waitFor, type Testnet, type TestNode } from '../helpers/testnet.ts'
import { ApiClient } from '../../src/services/api/client.ts'

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
