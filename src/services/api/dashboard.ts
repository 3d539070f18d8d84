import { randomBytes, timingSafeEqual } from 'node:crypto'
import { existsSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { KithError } from '../../errors.ts'

/**
 * The web dashboard (docs/dashboard.md): the pages of web/dashboard/, served
 * on the local API's own origin. The browser never holds the API token.
 * `kith open` asks, with the token, for a one-time login link
 * (POST /v1/dashboard/login); opening it trades the link's code for a session
 * cookie (HttpOnly, SameSite=Strict) and leads to the pages. API requests
 * that carry the cookie must come from the dashboard's own origin (Origin and
 * Sec-Fetch-Site, where the browser sends them), and those that change
 * anything also carry the session's CSRF token in a header: a page of
 * another origin can't add one without a preflight the API never grants.
 * The Host rule applies to all of it (server.ts checks it first).
 */
export const LOGIN_LINK_TTL_MS = 2 * 60_000
export const SESSION_TTL_MS = 12 * 60 * 60_000
export const CSRF_HEADER = 'x-kith-csrf'
/** links waiting to be opened, and sessions open at once; past it the oldest goes */
const MAX_LINKS = 16
const MAX_SESSIONS = 32

/** what is served, by path: nothing else is (no path from a request reaches the file system) */
const FILES: Record<string, { file: () => string, type: string }> = {
  '/': { file: () => webFile('index.html'), type: 'text/html; charset=utf-8' },
  '/ui/app.js': { file: () => webFile('app.js'), type: 'text/javascript; charset=utf-8' },
  '/ui/style.css': { file: () => webFile('style.css'), type: 'text/css; charset=utf-8' },
  '/ui/vendor/lean-qr.mjs': { file: () => fileURLToPath(import.meta.resolve('lean-qr')), type: 'text/javascript; charset=utf-8' }
}

let web: string | null = null

/**
 * A file of the package's web/dashboard/, found from this module's folder:
 * src/services/api/ in a checkout, a folder of the bundle in an installed
 * package (bundle.ts). Looked up on the first page served.
 */
function webFile (name: string): string {
  if (web == null) {
    const here = fileURLToPath(import.meta.url)
    for (let dir = dirname(here); web == null; dir = dirname(dir)) {
      if (existsSync(join(dir, 'web', 'dashboard', 'index.html'))) web = join(dir, 'web', 'dashboard')
      else if (dirname(dir) === dir) throw new KithError('INTERNAL', `kith's web/dashboard/ is missing from its package (looked for from ${here}); reinstall kith`)
    }
  }
  return join(web, name)
}

const PAGE_HEADERS = {
  'cache-control': 'no-store',
  'content-security-policy': "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer'
}

export interface Session {
  id: string
  csrf: string
  /** performance.now() past which it is over */
  expires: number
}

export interface Dashboard {
  /** a new one-time login link, for `kith open` (asked with the API token) */
  loginLink: () => { url: string, expiresIn: number }
  /** the live session the request's cookie names, or null */
  session: (req: IncomingMessage) => Session | null
  /** refuses an API request made with the cookie that is not the dashboard's own */
  check: (req: IncomingMessage, session: Session) => void
  /** ends the session and clears the cookie */
  logout: (res: ServerResponse, session: Session) => void
  /** whether the path is the login link's or a page's (every other path is the API's) */
  serves: (pathname: string) => boolean
  /** answers a request for the login link or a page */
  page: (req: IncomingMessage, res: ServerResponse, url: URL) => Promise<void>
}

/** `origin` is the API's, as in api.json; `origins` every origin a browser may name it by */
export function createDashboard (origin: string, origins: string[]): Dashboard {
  const links = new Map<string, number>()
  const sessions = new Map<string, Session>()
  const cookie = `kith-${new URL(origin).port}`

  /** drops what is over, then the oldest while more than `max` */
  function prune<T> (map: Map<string, T>, expires: (v: T) => number, max: number): void {
    const now = performance.now()
    for (const [key, value] of map) if (expires(value) <= now) map.delete(key)
    for (const key of map.keys()) {
      if (map.size <= max) break
      map.delete(key)
    }
  }

  function cookieValue (req: IncomingMessage): string | null {
    for (const part of (req.headers.cookie ?? '').split(';')) {
      const eq = part.indexOf('=')
      if (eq > 0 && part.slice(0, eq).trim() === cookie) return part.slice(eq + 1).trim()
    }
    return null
  }

  function session (req: IncomingMessage): Session | null {
    const id = cookieValue(req)
    if (id == null) return null
    const found = sessions.get(id)
    if (found == null) return null
    if (found.expires <= performance.now()) {
      sessions.delete(id)
      return null
    }
    return found
  }

  function fromElsewhere (req: IncomingMessage, allowed: string[]): boolean {
    const site = req.headers['sec-fetch-site']
    if (site != null && !allowed.includes(site)) return true
    return req.headers.origin != null && !origins.includes(req.headers.origin)
  }

  function check (req: IncomingMessage, s: Session): void {
    if (fromElsewhere(req, ['same-origin'])) {
      throw new KithError('FORBIDDEN_ORIGIN', 'requests from other web pages are refused; use the dashboard itself (kith open)')
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      const sent = Buffer.from(String(req.headers[CSRF_HEADER] ?? ''))
      const expected = Buffer.from(s.csrf)
      if (sent.length !== expected.length || !timingSafeEqual(sent, expected)) {
        throw new KithError('FORBIDDEN_ORIGIN', `a dashboard request that changes something must carry the session's ${CSRF_HEADER} header; reload the dashboard`)
      }
    }
  }

  async function page (req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    if (req.method !== 'GET' && req.method !== 'HEAD') throw new KithError('NOT_FOUND', `the dashboard's pages are only read: ${req.method ?? ''} ${url.pathname}`)
    // GET only: a HEAD (a link preview, say) must not spend the code
    if (url.pathname === '/login' && req.method === 'GET') {
      login(res, url.searchParams.get('code') ?? '')
      return
    }
    const file = FILES[url.pathname]
    if (file == null) throw new KithError('NOT_FOUND', 'open the login link with GET, in a browser')
    const s = session(req)
    if (s == null || fromElsewhere(req, ['same-origin', 'none'])) {
      sendPage(res, 401, '<h1>Log in first</h1><p>Run <code>kith open</code> and open the link it prints: the dashboard needs it each time.</p>')
      return
    }
    let body = await readFile(file.file(), 'utf8')
    // the page reads its CSRF token from here; the session cookie itself stays out of reach of scripts
    if (url.pathname === '/') body = body.replace('{{csrf}}', s.csrf)
    res.writeHead(200, { ...PAGE_HEADERS, 'content-type': file.type, 'content-length': Buffer.byteLength(body) })
    res.end(req.method === 'HEAD' ? undefined : body)
  }

  function login (res: ServerResponse, code: string): void {
    const expires = links.get(code)
    links.delete(code)
    if (expires == null || expires <= performance.now()) {
      sendPage(res, 401, '<h1>This login link is used up or too old</h1><p>Each link works once, for two minutes: run <code>kith open</code> again.</p>')
      return
    }
    const s: Session = { id: token(), csrf: token(), expires: performance.now() + SESSION_TTL_MS }
    sessions.set(s.id, s)
    prune(sessions, v => v.expires, MAX_SESSIONS)
    res.writeHead(303, {
      ...PAGE_HEADERS,
      location: '/',
      'set-cookie': `${cookie}=${s.id}; HttpOnly; SameSite=Strict; Path=/; Max-Age=${SESSION_TTL_MS / 1000}`,
      'content-length': 0
    })
    res.end()
  }

  return {
    loginLink () {
      const code = token()
      links.set(code, performance.now() + LOGIN_LINK_TTL_MS)
      prune(links, v => v, MAX_LINKS)
      return { url: `${origin}/login?code=${code}`, expiresIn: LOGIN_LINK_TTL_MS / 1000 }
    },
    serves: pathname => pathname === '/login' || Object.hasOwn(FILES, pathname),
    session,
    check,
    logout (res, s) {
      sessions.delete(s.id)
      const text = JSON.stringify({ loggedOut: true })
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store', 'set-cookie': `${cookie}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0`, 'content-length': Buffer.byteLength(text) })
      res.end(text)
    },
    page
  }
}

function token (): string {
  return randomBytes(32).toString('base64url')
}

function sendPage (res: ServerResponse, status: number, body: string): void {
  const html = `<!doctype html><html lang="en"><meta charset="utf-8"><title>kith</title>${body}</html>`
  res.writeHead(status, { ...PAGE_HEADERS, 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(html), connection: 'close' })
  res.end(html)
}
