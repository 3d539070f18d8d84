import { it, expect, beforeAll, afterAll } from 'vitest'
import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { createServer, request, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core'
import { createTestnet, waitFor, type Testnet, type TestNode } from '../helpers/testnet.ts'
import { describeNeeding } from '../helpers/needs.ts'
import { sha } from '../helpers/files.ts'

/**
 * The web dashboard (docs/dashboard.md) in a real browser, Debian's chromium
 * driven by playwright-core, against two real daemons: log in through the
 * one-time link `kith open` prints; make an invite and see its QR code; see
 * the friend come online once they accept it; change a limit; fetch a file
 * and watch it run, pause, resume and finish; download a URL; share and unshare a
 * folder; rename a friend, grant and take back a service, end the friendship;
 * a page opened after all that plots it, from the daemon's bandwidth history;
 * and the refusals: a page
 * without login, a used link, and requests from another page of the same
 * site (another port of 127.0.0.1: SameSite cookies don't tell ports apart).
 * A screenshot of each page is kept in test-artifacts/dashboard/.
 */
const ARTIFACTS = join(dirname(dirname(dirname(fileURLToPath(import.meta.url)))), 'test-artifacts', 'dashboard')

function findChromium (): string | null {
  for (const name of [process.env.KITH_CHROMIUM, 'chromium', 'chromium-browser', 'chromium-headless-shell', 'google-chrome']) {
    if (name == null || name === '') continue
    try {
      return execFileSync('sh', ['-c', `command -v "${name}"`], { encoding: 'utf8' }).trim()
    } catch {}
  }
  return null
}
const CHROMIUM = findChromium()

/** a raw request to the API, as a page of another origin or a program holding the cookie would make it */
async function raw (url: string, method: string, headers: Record<string, string>, body = ''): Promise<{ status: number, json: any }> {
  return await new Promise((resolve, reject) => {
    const req = request(url, { method, headers }, res => {
      let text = ''
      res.on('data', (c: Buffer) => { text += c.toString() })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: text.startsWith('{') ? JSON.parse(text) : text }))
    })
    req.on('error', reject)
    req.end(body)
  })
}

describeNeeding('the web dashboard, in a real browser', [CHROMIUM == null ? 'chromium missing (apt-get install -y chromium; .ci/run installs it)' : null], () => {
  let net: Testnet
  let alice: TestNode
  let bob: TestNode
  let browser: Browser
  let context: BrowserContext
  let page: Page
  let elsewhere: Server
  let api: string
  /** what the page elsewhere also serves: a file to download */
  const webFile = randomBytes(1_000_000)

  async function shoot (name: string): Promise<void> {
    await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true })
  }

  async function open (hash: string): Promise<void> {
    await page.goto(`${api}/#${hash}`)
    await page.waitForSelector(`main[data-page="${hash}"]`)
  }

  beforeAll(async () => {
    const [started, launched] = await Promise.all([
      createTestnet(['alice', 'bob']),
      chromium.launch({ executablePath: CHROMIUM!, args: ['--no-sandbox'] }),
      mkdir(ARTIFACTS, { recursive: true })
    ])
    net = started
    browser = launched
    alice = net.nodes[0]!
    bob = net.nodes[1]!
    api = alice.info!.api
    context = await browser.newContext({ viewport: { width: 1200, height: 800 } })
    page = await context.newPage()
    // a page of the same site as the API (127.0.0.1) on another port
    elsewhere = createServer((req, res) => {
      if (req.url === '/file.bin') res.writeHead(200, { 'content-length': webFile.length, 'content-type': 'application/octet-stream' }).end(req.method === 'HEAD' ? undefined : webFile)
      else res.end('<!doctype html><title>elsewhere</title>')
    })
    await new Promise<void>(resolve => elsewhere.listen(0, '127.0.0.1', resolve))
  })

  afterAll(async () => {
    await browser?.close()
    elsewhere?.close()
    await net?.stop()
  })

  it('shows nothing without login; the link kith open prints logs in once', async () => {
    expect((await page.goto(`${api}/`))!.status()).toBe(401)
    expect(await page.textContent('body')).toContain('kith open')
    const link = await alice.json<{ url: string }>('open', '--no-browser')
    expect(link.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/login\?code=[\w-]{43}$/)
    await page.goto(link.url)
    await page.waitForSelector('main[data-page="status"] h2')
    expect(page.url()).toBe(`${api}/`)
    const cookie = (await context.cookies()).find(c => c.name.startsWith('kith-'))!
    expect(cookie).toMatchObject({ httpOnly: true, sameSite: 'Strict' })
    // the token is nowhere in the page
    expect(await page.content()).not.toContain((await readFile(join(alice.home, 'api.token'), 'utf8')).trim())
    await shoot('status')
    // used once: another browser gets nothing with it
    const other = await browser.newContext()
    expect((await (await other.newPage()).goto(link.url))!.status()).toBe(401)
    await other.close()
  })

  it('makes an invite shown as a QR code and text, and the friend comes online once they accept it', async () => {
    await open('invites')
    await page.fill('input[name="label"]', 'bob')
    await page.click('form[data-form="invite"] button')
    await page.waitForSelector('#invite-qr')
    // the QR code is drawn: a canvas of modules, not an empty box
    expect(Number(await page.getAttribute('#invite-qr', 'width'))).toBeGreaterThan(40)
    const text = await page.inputValue('#invite-text')
    await shoot('invites')
    const file = join(bob.home, 'from-dashboard.invite')
    await writeFile(file, text)
    // The page redraws itself on bob's friend events. The redraws of this page they start are held until the friends
    // page shows bob online, so they end after it began: a render that ends after a later one began draws nothing.
    // Without that (before b84b0cd) this page covered the friends page, bob unseen until the next event: this test
    // failed 2 of 8 runs at load 18 so, without the hold, and fails every run with it
    let release = (): void => {}
    const released = new Promise<void>(resolve => { release = resolve })
    let held = 0
    const invitesRead = (url: URL): boolean => url.pathname === '/v1/invites'
    await page.evaluate(() => { performance.clearResourceTimings(); performance.setResourceTimingBufferSize(10_000) })
    await page.route(invitesRead, async route => { held++; await released; await route.continue() })
    const redraw = page.waitForRequest(request => invitesRead(new URL(request.url())))
    await bob.json('invite', 'accept', file)
    await redraw
    await open('friends')
    // bob dials alice and her page hears of it
    await page.waitForSelector('tr[data-friend] td.online', { timeout: 40_000 })
    release()
    // the held answers read (their timing entries), and a task later their renders are over
    await page.waitForFunction(n => performance.getEntriesByType('resource').filter(e => new URL(e.name).pathname === '/v1/invites').length >= n, held)
    await page.evaluate(async () => { await new Promise(resolve => setTimeout(resolve)) })
    await page.unroute(invitesRead)
    expect(await page.getAttribute('main', 'data-page')).toBe('friends')
    expect(await page.textContent('tr[data-friend] td.online')).toBe('online')
    expect(await page.textContent('tr[data-friend]')).toContain('bob')
    await shoot('friends')
  })

  it('changes a limit', async () => {
    await open('limits')
    await page.fill('input[name="download"]', '1MB/s')
    await page.click('form[data-form="limits"] button')
    await page.waitForSelector('#message:has-text("Save caps: done")')
    expect((await alice.json('limits')).limits.download).toBe(1_000_000)
    await shoot('limits')
  })

  it('fetches a file with live progress, pauses and resumes it, and it finishes whole', async () => {
    const dir = join(bob.home, 'photos')
    await mkdir(dir)
    await writeFile(join(dir, 'big.bin'), randomBytes(4_000_000))
    await bob.json('share', dir)
    const dest = join(alice.home, 'got')
    await mkdir(dest)
    await open('transfers')
    await page.fill('input[name="share"]', 'photos')
    await page.fill('input[name="path"]', 'big.bin')
    await page.fill('input[name="destDir"]', dest)
    await page.click('form[data-form="fetch"] button')
    // the row moves on by the event stream alone; at 1 MB/s (the cap set above) it runs 4 s
    await waitFor(async () => Number(await page.locator('tbody tr[data-state="running"] progress').getAttribute('value', { timeout: 15_000 })) > 0, 'the fetch to show progress', 15_000)
    await page.click('tbody tr button[data-action="pause"]')
    await page.waitForSelector('tbody tr[data-state="paused"]')
    await shoot('transfers')
    await page.click('tbody tr button[data-action="resume"]')
    await page.waitForSelector('tbody tr[data-state="done"]', { timeout: 30_000 })
    expect(await page.getAttribute('tbody tr progress', 'value')).toBe('100')
    expect(await sha(join(dest, 'big.bin'))).toBe(await sha(join(dir, 'big.bin')))
    await open('shares')
    await shoot('shares')
  })

  it('downloads a URL, its row moving live until the file is whole', async () => {
    const into = join(alice.home, 'web')
    await open('downloads')
    await page.fill('textarea[name="urls"]', `http://127.0.0.1:${(elsewhere.address() as AddressInfo).port}/file.bin`)
    await page.fill('input[name="dest"]', `${into}/`)
    await page.click('form[data-form="download"] button')
    await page.waitForSelector('tbody tr[data-state="done"]', { timeout: 20_000 })
    expect(await page.getAttribute('tbody tr progress', 'value')).toBe('100')
    expect(await sha(join(into, 'file.bin'))).toBe(createHash('sha256').update(webFile).digest('hex'))
    await shoot('downloads')
  })

  it('plots the hour before the page was opened, from the daemon\'s bandwidth history', async () => {
    // a page opened now, after the fetch (4 MB, friend) and the download (1 MB, public) above: it has seen none of it itself
    const fresh = await context.newPage()
    try {
      await fresh.goto(`${api}/#status`)
      await fresh.waitForSelector('main[data-page="status"] #plot-down')
      expect(await fresh.locator('main h2').nth(1).textContent()).toBe('Bandwidth over the last hour')
      const down = fresh.locator('#plot-down')
      expect(Number(await down.getAttribute('data-moved'))).toBeGreaterThanOrEqual(5_000_000)
      expect(Number(await down.getAttribute('data-peak'))).toBeGreaterThan(0)
      expect(await down.locator('figcaption').textContent()).toMatch(/MB moved in the last hour/)
      // the friend and public lines are drawn above the axis somewhere
      for (const cls of ['friend', 'public']) {
        const ys = (await down.locator(`polyline.c-${cls}`).getAttribute('points'))!.split(' ').map(xy => Number(xy.split(',')[1]))
        expect(Math.min(...ys)).toBeLessThan(150)
      }
      await fresh.screenshot({ path: join(ARTIFACTS, 'status-bandwidth.png'), fullPage: true })
    } finally {
      await fresh.close()
    }
  })

  it('shows backup health, the ledger and the jobs, here with nothing backed up yet', async () => {
    await open('backups')
    expect(await page.textContent('main')).toContain('No host yet')
    expect(await page.locator('main h2').allTextContents()).toEqual(['Backup health', 'Ledger', 'Recent jobs'])
    await shoot('backups')
  })

  it('shares a folder and unshares it; renames a friend, grants a service and takes it back, and ends the friendship', async () => {
    const dir = join(alice.home, 'to-share')
    await mkdir(dir)
    await writeFile(join(dir, 'a.txt'), 'hello')
    const shared = async (): Promise<string[]> => (await alice.json('shares')).shares.map((s: any) => s.name)
    await open('shares')
    await page.fill('form[data-form="share"] input[name="path"]', dir)
    await page.fill('form[data-form="share"] input[name="name"]', 'from-page')
    await page.click('form[data-form="share"] button')
    await page.waitForSelector('#message:has-text("Share: done")')
    expect(await shared()).toContain('from-page')
    await page.click('button[aria-label="Stop sharing from-page"]')
    await page.waitForSelector('#message:has-text("Unshare: done")')
    expect(await shared()).not.toContain('from-page')

    const bobOf = async (): Promise<any> => (await alice.json('friends')).friends.find((f: any) => f.peerId === bob.peerId)
    await open('friends')
    await page.fill('input[aria-label="New name for bob"]', 'robert')
    await page.click('form[data-form="rename"] button')
    await page.waitForSelector('#message:has-text("Rename: done")')
    expect((await bobOf()).label).toBe('robert')
    await page.selectOption('select[aria-label="Service to grant robert"]', 'backup')
    await page.click('form[data-form="grant"] button')
    await page.waitForSelector('#message:has-text("Grant backup: done")')
    expect((await bobOf()).grantsToThem).toContain('backup')
    await page.click('button[aria-label="Stop granting backup to robert"]')
    await page.waitForSelector('#message:has-text("Stop granting backup: done")')
    expect((await bobOf()).grantsToThem).not.toContain('backup')
    page.once('dialog', dialog => { void dialog.accept() })
    await page.click('button[data-action="revoke"]')
    await page.waitForSelector('#message:has-text("End friendship with robert: done")')
    expect((await bobOf()).state).toBe('revoked')
  })

  it('refuses requests from other pages of the same site, and changes made without the CSRF header', async () => {
    const before = (await alice.json('invite', 'list')).invites.length
    const other = await context.newPage()
    await other.goto(`http://127.0.0.1:${(elsewhere.address() as AddressInfo).port}/`)
    // the browser sends the session cookie (same site), the API refuses on Origin
    const answers = await other.evaluate(async (target: string) => {
      const read = await fetch(`${target}/v1/status`, { credentials: 'include' }).then(r => `read ${r.status}`, () => 'read blocked')
      const write = await fetch(`${target}/v1/invites`, { method: 'POST', credentials: 'include', mode: 'no-cors', headers: { 'content-type': 'text/plain' }, body: '{}' }).then(r => r.type)
      return { read, write }
    }, api)
    expect(answers).toEqual({ read: 'read blocked', write: 'opaque' })
    await other.close()
    expect((await alice.json('invite', 'list')).invites.length).toBe(before)

    // what the server says, with the browser's cookie in hand
    const cookie = (await context.cookies()).find(c => c.name.startsWith('kith-'))!
    const headers = { cookie: `${cookie.name}=${cookie.value}`, 'content-type': 'application/json' }
    expect(await raw(`${api}/v1/invites`, 'POST', { ...headers, origin: 'http://127.0.0.1:1' }, '{}')).toMatchObject({ status: 403, json: { error: { code: 'FORBIDDEN_ORIGIN' } } })
    expect(await raw(`${api}/v1/invites`, 'POST', { ...headers, origin: api }, '{}')).toMatchObject({ status: 403, json: { error: { code: 'FORBIDDEN_ORIGIN' } } })
    expect(await raw(`${api}/v1/status`, 'GET', { ...headers, 'sec-fetch-site': 'same-site' })).toMatchObject({ status: 403, json: { error: { code: 'FORBIDDEN_ORIGIN' } } })
    expect(await raw(`${api}/v1/dashboard/login`, 'POST', { ...headers, origin: api, 'x-kith-csrf': await page.getAttribute('meta[name="kith-csrf"]', 'content') ?? '' })).toMatchObject({ status: 401 })
    expect((await alice.json('invite', 'list')).invites.length).toBe(before)
    // the same cookie and header from the dashboard's own origin do work
    expect((await raw(`${api}/v1/status`, 'GET', { ...headers, origin: api })).status).toBe(200)
  })
})
