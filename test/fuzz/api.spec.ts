import fc from 'fast-check'
import { describe, expect, it, beforeAll, afterAll } from 'vitest'
import { connect } from 'node:net'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { ERROR_CODES, isErrorCode } from '../../src/errors.ts'
import { MAX_BODY_BYTES } from '../../src/services/api/server.ts'
import { createTestnet, type Testnet, type TestNode } from '../helpers/testnet.ts'
import { anyText, cborValue, grants, humanText, mutateField } from './arbitraries.ts'
import { fuzzAsync } from './budget.ts'

/**
 * The local API (src/services/api/server.ts, routes.ts) of a real daemon in
 * its own process, driven through raw sockets so that any path, header and
 * body can be sent: whatever arrives, the answer is a typed error with the
 * status its code names (or Node's own 400 for what is not HTTP at all),
 * never a 500, a hang or a crash, and a refused request changes nothing.
 */
interface Request {
  method: string
  path: string
  headers: Array<[string, string]>
  body: Buffer
}

interface Reply {
  status: number
  /** the parsed JSON body, or the raw text when it is not JSON */
  body: unknown
}

const ROUTES = [
  'GET /v1/status', 'POST /v1/gc', 'GET /v1/invites', 'POST /v1/invites', 'POST /v1/invites/inspect', 'POST /v1/invites/accept',
  'DELETE /v1/invites/{x}', 'GET /v1/friends', 'GET /v1/friends/{x}', 'PATCH /v1/friends/{x}', 'PUT /v1/friends/{x}/grants/{x}',
  'DELETE /v1/friends/{x}/grants/{x}', 'POST /v1/friends/{x}/revoke', 'POST /v1/friends/{x}/locate', 'GET /v1/friends/{x}/shares',
  'GET /v1/shares', 'POST /v1/shares', 'DELETE /v1/shares/{x}', 'GET /v1/transfers', 'POST /v1/transfers', 'GET /v1/transfers/{x}',
  'POST /v1/transfers/{x}/pause', 'POST /v1/transfers/{x}/resume', 'POST /v1/transfers/{x}/cancel', 'POST /v1/transfers/{x}/priority',
  'GET /v1/limits', 'PUT /v1/limits', 'GET /v1/downloads', 'POST /v1/downloads', 'GET /v1/downloads/{x}', 'POST /v1/downloads/{x}/pause',
  'POST /v1/downloads/{x}/resume', 'POST /v1/downloads/{x}/cancel', 'POST /v1/downloads/{x}/priority', 'POST /v1/downloads/{x}/limit'
]

/** Valid bodies of the routes that take one: what the fuzzer damages. Paths for shares are filled in per run. */
const BODIES: Record<string, fc.Arbitrary<Record<string, unknown>>> = {
  'POST /v1/invites': fc.record({ label: humanText(20), expiresIn: fc.integer({ min: 1, max: 10_000 }), uses: fc.integer({ min: 1, max: 5 }), grants }, { requiredKeys: [] }),
  'POST /v1/invites/inspect': anyText(200).map(text => ({ text })),
  'POST /v1/invites/accept': fc.record({ text: anyText(200), label: humanText(20), grants }, { requiredKeys: ['text'] }),
  'PATCH /v1/friends/{x}': humanText(20).map(label => ({ label })),
  'POST /v1/shares': fc.record({ path: fc.constant('SHARE_PATH'), with: fc.array(humanText(10), { maxLength: 2 }), name: humanText(20) }, { requiredKeys: ['path'] }),
  'POST /v1/transfers': fc.record({ friend: humanText(10), share: humanText(10), path: humanText(10), dest: fc.constant('/nonexistent/kith-fuzz/dest'), priority: fc.constantFrom('high', 'normal', 'low') }, { requiredKeys: ['friend', 'share', 'dest'] }),
  'POST /v1/transfers/{x}/priority': fc.constantFrom('high', 'normal', 'low').map(priority => ({ priority })),
  // URLs that fail at once (nothing listens on port 1; no add-on takes gopher) into a folder that can't be made
  'POST /v1/downloads': fc.record({ urls: fc.array(fc.constantFrom('http://127.0.0.1:1/x', 'gopher://x/y', 'not a url', 'kith://a/b', 'ftp://127.0.0.1:1/x'), { minLength: 1, maxLength: 3 }), dest: fc.constant('/nonexistent/kith-fuzz/'), priority: fc.constantFrom('urgent', 'normal', 'low'), limit: fc.constantFrom('1MB/s', 5, 'fast'), connections: fc.integer({ min: -1, max: 20 }), checksum: fc.constantFrom('sha256:' + '0'.repeat(64), 'md5:x') }, { requiredKeys: ['urls', 'dest'] }),
  'POST /v1/downloads/{x}/priority': fc.constantFrom('high', 'normal', 'low').map(priority => ({ priority })),
  'POST /v1/downloads/{x}/limit': fc.constantFrom('1MB/s', 0, null, 'fast', 1e300).map(limit => ({ limit })),
  'PUT /v1/limits': fc.record({ up: fc.constantFrom('1MB/s', null, 'unlimited', 5), down: fc.constantFrom('2MB/s', null) }, { requiredKeys: [] })
}

/** A path segment: names, ids, escapes good and bad, traversal, unicode. */
const segment = fc.oneof(
  fc.stringMatching(/^[a-z0-9]{1,12}$/),
  fc.constantFrom('%', '%zz', '%ff', '%C0%AF', '%2F', '%2e%2e', '..', '.', '', '%00', '%E2%80%AE', 'x%20y', '%'),
  anyText(12).map(s => encodeURIComponent(s.isWellFormed() ? s : 'x')),
  fc.stringMatching(/^[\x21-\x7e]{1,10}$/)
)

const route = fc.constantFrom(...ROUTES)

/** Paths: the API's own with random segments, anything under /v1, and junk in the request target. */
const path = fc.oneof(
  { weight: 4, arbitrary: fc.tuple(route, fc.array(segment, { minLength: 4, maxLength: 4 })).map(([r, segs]) => { let i = 0; return r.split(' ')[1]!.replace(/\{x\}/g, () => segs[i++]!) }) },
  { weight: 1, arbitrary: fc.array(segment, { maxLength: 5 }).map(segs => '/v1/' + segs.join('/')) },
  { weight: 1, arbitrary: fc.tuple(route, fc.stringMatching(/^[\x21-\x7e]{0,20}$/)).map(([r, q]) => `${r.split(' ')[1]!.replace(/\{x\}/g, 'a')}?${q}`) },
  { weight: 1, arbitrary: fc.constantFrom('*', '/', '//v1/status', '/v1/status/', 'http://localhost/v1/status', '/v1/../v1/status', '/v1/status#x', '/%2e%2e/etc/passwd') }
)

const method = fc.oneof({ weight: 6, arbitrary: fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE') }, { weight: 1, arbitrary: fc.constantFrom('HEAD', 'OPTIONS', 'TRACE', 'CONNECT', 'get', 'FOO') })

/** Bodies: JSON of any shape, a route's valid body damaged, not JSON, huge. */
function body (forRoute: string | undefined): fc.Arbitrary<{ body: Buffer, json: boolean }> {
  const valid = forRoute !== undefined ? BODIES[forRoute] : undefined
  const json = (v: unknown): { body: Buffer, json: boolean } => ({ body: Buffer.from(JSON.stringify(v) ?? 'null'), json: true })
  return fc.oneof(
    { weight: 2, arbitrary: fc.constant({ body: Buffer.alloc(0), json: false }) },
    { weight: 3, arbitrary: fc.jsonValue({ maxDepth: 3 }).map(json) },
    { weight: valid !== undefined ? 6 : 0, arbitrary: valid !== undefined ? fc.oneof(valid, valid.chain(mutateField)).map(json) : fc.constant(json({})) },
    { weight: 1, arbitrary: cborValue.map(v => ({ body: Buffer.from(String(v)), json: true })) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 100 }).map(b => ({ body: Buffer.from(b), json: true })) },
    { weight: 1, arbitrary: fc.integer({ min: 1, max: 4 * MAX_BODY_BYTES }).map(n => ({ body: Buffer.alloc(MAX_BODY_BYTES + n, 0x20), json: true })) }
  )
}

/** Extra headers: ordinary, repeated, conflicting, or malformed. */
const header: fc.Arbitrary<[string, string]> = fc.oneof(
  fc.tuple(fc.stringMatching(/^[a-z][a-z0-9-]{0,12}$/), fc.stringMatching(/^[\x20-\x7e]{0,30}$/)),
  fc.tuple(fc.constantFrom('content-type', 'content-length', 'transfer-encoding', 'host', 'authorization', 'origin', 'expect', 'connection'),
    fc.oneof(fc.constantFrom('application/json', 'text/plain', 'chunked', '0', '-1', '99999999999', 'null', '100-continue', 'keep-alive', ''), fc.stringMatching(/^[\x20-\x7e]{0,30}$/)))
)

function serialise (req: Request, host: string, token: string | undefined): Buffer {
  const lines = [`${req.method} ${req.path} HTTP/1.1`, `Host: ${host}`, 'Connection: close']
  if (token !== undefined) lines.push(`Authorization: Bearer ${token}`)
  for (const [k, v] of req.headers) lines.push(`${k}: ${v}`)
  if (!req.headers.some(([k]) => k === 'content-length' || k === 'transfer-encoding')) lines.push(`Content-Length: ${req.body.length}`)
  return Buffer.concat([Buffer.from(lines.join('\r\n') + '\r\n\r\n', 'latin1'), req.body])
}

/** A request the server has not answered in this long, though its own framing may leave it incomplete, is ended by the client. */
const UNFRAMED_WAIT_MS = 1000

/**
 * Sends raw bytes and reads the answer: the final status (past any 100
 * Continue) and the body, once it is whole by its Content-Length (an event
 * stream: once its headers are in), or the server closed. Status 0: the
 * server closed without an answer, as Node does for a request whose own
 * framing never completes. The client never half-closes first: Node's HTTP
 * server drops an answer still being made when the client does.
 */
async function exchange (port: number, bytes: Buffer, unframed = false): Promise<Reply> {
  return await new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    let received = Buffer.alloc(0)
    let timer: NodeJS.Timeout | undefined
    const parse = (final: boolean): Reply | undefined => {
      let text = received.toString('latin1')
      let match = /^HTTP\/1\.[01] (\d{3})/.exec(text)
      while (match?.[1]?.startsWith('1') === true && text.includes('\r\n\r\n')) {
        text = text.slice(text.indexOf('\r\n\r\n') + 4)
        match = /^HTTP\/1\.[01] (\d{3})/.exec(text)
      }
      const end = text.indexOf('\r\n\r\n')
      if (match == null || end === -1) return final ? { status: text === '' ? 0 : -1, body: text.slice(0, 200) } : undefined
      const head = text.slice(0, end).toLowerCase()
      const raw = Buffer.from(text.slice(end + 4), 'latin1')
      const length = /\r\ncontent-length: *(\d+)/.exec(head)
      const whole = head.includes('text/event-stream') || (length != null && raw.length >= Number(length[1]))
      if (!whole && !final) return undefined
      let body: unknown = raw.toString('utf8')
      try { body = JSON.parse(body as string) } catch {}
      return { status: Number(match[1]), body }
    }
    const done = (reply: Reply): void => {
      clearTimeout(timer)
      socket.destroy()
      if (reply.status === -1) reject(new Error(`not an HTTP answer: ${JSON.stringify(reply.body)}`))
      else resolve(reply)
    }
    socket.on('data', d => {
      received = Buffer.concat([received, d])
      const reply = parse(false)
      if (reply !== undefined) done(reply)
    })
    socket.on('error', err => {
      // the server may close while we still send a large body it refused: keep what it answered
      const code = (err as NodeJS.ErrnoException).code
      if (code !== 'EPIPE' && code !== 'ECONNRESET') reject(err)
    })
    socket.on('close', () => { done(parse(true)!) })
    socket.write(bytes)
    if (unframed) timer = setTimeout(() => { socket.end() }, UNFRAMED_WAIT_MS)
  })
}

/** Whether a request sets its own framing or asks to switch protocols: the server may then close without an answer. */
function mayGoUnanswered (req: Request): boolean {
  return req.method === 'CONNECT' || req.headers.some(([k]) => ['content-length', 'transfer-encoding', 'connection', 'upgrade', 'expect'].includes(k.toLowerCase()))
}

describe('local API, fuzzed on a real daemon', () => {
  let net: Testnet
  let node: TestNode
  let port: number
  let host: string
  let token: string
  let sharePath: string

  beforeAll(async () => {
    net = await createTestnet(['fuzz'])
    node = net.nodes[0]!
    const url = new URL(node.info!.api)
    port = Number(url.port)
    host = url.host
    token = (await readFile(join(node.home, 'api.token'), 'utf8')).trim()
    // a share request may only ever name a missing path in the daemon's home, never a real folder
    sharePath = join(node.home, 'fuzz-missing')
  })

  afterAll(async () => {
    await net?.stop()
  })

  /** What a refused request must leave as it was. */
  async function state (): Promise<string> {
    const parts: unknown[] = []
    for (const p of ['/v1/friends', '/v1/invites', '/v1/shares', '/v1/limits']) {
      const reply = await exchange(port, serialise({ method: 'GET', path: p, headers: [], body: Buffer.alloc(0) }, host, token))
      if (reply.status !== 200) throw new Error(`GET ${p} answered ${reply.status} ${JSON.stringify(reply.body)}`)
      parts.push(reply.body)
    }
    // an invite made earlier in the run may expire in the meantime: its status is the clock's doing
    return JSON.stringify(parts, (key, value: unknown) => key === 'status' ? undefined : value)
  }

  /** Any answer: a typed error whose status is its code's, a Node-level 400 for what is not HTTP, or a success. */
  function checkReply (reply: Reply, req: Request): void {
    const label = `${req.method} ${req.path} -> ${reply.status} ${JSON.stringify(reply.body).slice(0, 300)}`
    expect(reply.status, label).not.toBe(500)
    if (reply.status === 0) {
      expect(mayGoUnanswered(req), `${label}: the server closed without an answer`).toBe(true)
      return
    }
    // a HEAD answer has no body to look into
    if (reply.status < 400 || req.method === 'HEAD') return
    // a dashboard page (docs/dashboard.md) asked without a session: the login-first page, never the page itself
    if (reply.status === 401 && typeof reply.body === 'string' && !req.path.startsWith('/v1/')) {
      expect(reply.body, label).toMatch(/Log in first/)
      return
    }
    const error = (reply.body as { error?: { code?: unknown, message?: unknown } } | null)?.error
    if (error === undefined) {
      // Node's HTTP parser refused the bytes before kith saw them (bad request line, header, length)
      expect([400, 408, 413, 414, 417, 431, 501, 505], label).toContain(reply.status)
      return
    }
    expect(isErrorCode(error.code), label).toBe(true)
    expect(error.code, label).not.toBe('INTERNAL')
    expect(reply.status, label).toBe(ERROR_CODES[error.code as keyof typeof ERROR_CODES])
    expect(typeof error.message, label).toBe('string')
  }

  /** A request for the fuzzer, with a share path kept inside the daemon's home. */
  const request = fc.tuple(method, path).chain(([m, p]) => {
    const matched = ROUTES.find(r => {
      const [rm, rp] = r.split(' ')
      return rm === m && new RegExp('^' + rp!.replace(/\{x\}/g, '[^/]+') + '$').test(p.split('?')[0]!)
    })
    return fc.tuple(body(matched), fc.array(header, { maxLength: 3 })).map(([b, headers]): Request => ({
      method: m,
      path: p,
      headers: b.json && !headers.some(([k]) => k === 'content-type') ? [['content-type', 'application/json'], ...headers] : headers,
      body: b.body
    }))
  })

  function guarded (req: Request): Request {
    // POST /v1/shares with a real folder would share it: only the missing path is allowed
    const text = req.body.toString('utf8').replaceAll('SHARE_PATH', sharePath.replaceAll('\\', '\\\\'))
    try {
      const parsed = JSON.parse(text) as { path?: unknown }
      if (req.path.split('?')[0]!.startsWith('/v1/shares') && typeof parsed?.path === 'string' && parsed.path !== sharePath) parsed.path = sharePath
      return { ...req, body: Buffer.from(JSON.stringify(parsed)) }
    } catch {
      return { ...req, body: Buffer.from(text) }
    }
  }

  it('refuses any request without the token, from another Host, or with an Origin, with 401 or 403', async () => {
    const who = fc.constantFrom('no token', 'wrong token', 'foreign host', 'origin')
    await fuzzAsync(fc.asyncProperty(request, who, async (raw, how) => {
      const req = guarded(raw)
      const headers = how === 'origin' ? [...req.headers, ['Origin', 'http://evil.example'] as [string, string]] : req.headers
      const bytes = serialise({ ...req, headers }, how === 'foreign host' ? 'evil.example:80' : host, how === 'no token' ? undefined : how === 'wrong token' ? token.slice(1) + 'x' : token)
      const reply = await exchange(port, bytes, mayGoUnanswered({ ...req, headers }))
      checkReply(reply, req)
      if (reply.status > 0 && reply.status < 400) throw new Error(`${how}: ${req.method} ${req.path} was answered ${reply.status}`)
      const code = (reply.body as { error?: { code?: string } })?.error?.code
      // outside /v1/ are the dashboard's pages (after the Host check): a method or path they don't have is NOT_FOUND to anyone
      if (code !== undefined) expect(['UNAUTHORIZED', 'FORBIDDEN_ORIGIN', ...(req.path.startsWith('/v1/') ? [] : ['NOT_FOUND'])]).toContain(code)
    }), 0.2)
  })

  it('answers any request with the token with a typed error or a success, never a 500, and a refused one changes nothing', async () => {
    await fuzzAsync(fc.asyncProperty(request, async raw => {
      const req = guarded(raw)
      const before = await state()
      const reply = await exchange(port, serialise(req, host, token), mayGoUnanswered(req))
      checkReply(reply, req)
      if (reply.status >= 400) expect(await state(), `${req.method} ${req.path} was refused but changed state`).toBe(before)
      expect(node.exited).toBeNull()
    }), 0.2)
  })

  it('refuses a body over MAX_BODY_BYTES with 413 PAYLOAD_TOO_LARGE from its declared length, before reading it', async () => {
    const bodyRoutes = Object.keys(BODIES).filter(r => !r.includes('{x}'))
    await fuzzAsync(fc.asyncProperty(fc.constantFrom(...bodyRoutes), fc.integer({ min: 1, max: 2 ** 40 }), async (r, over) => {
      const [m, p] = r.split(' ')
      // the length is declared, only a little is sent: the answer must not wait for the rest
      const head = serialise({ method: m!, path: p!, headers: [['content-type', 'application/json'], ['content-length', String(MAX_BODY_BYTES + over)]], body: Buffer.from('{') }, host, token)
      const reply = await exchange(port, head)
      expect(reply.status).toBe(413)
      expect((reply.body as { error: { code: string } }).error.code).toBe('PAYLOAD_TOO_LARGE')
    }), 0.1)
  })
})
