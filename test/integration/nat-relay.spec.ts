import { it, expect, beforeAll, afterAll } from 'vitest'
import { writeFile, readFile, chmod } from 'node:fs/promises'
import { createHash, randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { waitFor, befriend, transferOf, transferDone, NODE, type TestNode } from '../helpers/testnet.ts'
import { startNatFriends, describeNat, natStatus as status, friendLink as link } from '../helpers/netns.ts'

/**
 * Friends behind NATs that hole punching can't get through: R on the public
 * segment, A and B each behind a router that maps every connection to a
 * random public port (MASQUERADE --random-fully: carrier-grade and many
 * enterprise NATs). kith's punch announces the port each side connects from,
 * so it is tried and fails, and A and B stay on R's relay. Then:
 *
 * - with R's default budget (no limit a relayed connection), A fetches a
 *   multi-MiB file from B through the relay, the link relayed throughout,
 *   and reaches a web page B exposes (`kith expose`, `kith connect`);
 * - with R restarted with a small budget (`--relay-max-data`), libp2p marks
 *   the relayed connection limited, kith's files and chunks protocols don't
 *   run on it (they would stall when the relay cut it), and the fetch fails
 *   at once with FRIEND_RELAY_LIMITED, which says what to do; small
 *   exchanges (redeeming an invite, a small page of B's service) still run
 *   over it, while a response larger than the budget is cut and reported
 *   FRIEND_RELAY_LIMITED in `kith connections`; a fetch queued before
 *   (here: paused, then resumed) waits, and goes on by itself once R relays
 *   without a budget again.
 *
 * Set-up (shares, caps, the exposed service, pausing and resuming) goes to
 * the daemons' APIs as the CLI would send it (TestNode.call, curl in the
 * namespace: a CLI process is a Node start); the CLI runs where its own
 * output is tested (`kith status`, `kith fetch`'s errors).
 *
 * Needs root, iproute2 and iptables: see nat.spec.ts.
 */
const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex')

await describeNat('test/integration/nat-relay.spec.ts', 'friends behind port-randomising NATs: files through the relay (network namespaces)', () => {
  let r: TestNode, a: TestNode, b: TestNode
  let stop: (() => Promise<void>) | undefined
  const timings: Record<string, number> = {}

  beforeAll(async () => {
    // every punch here fails (that is what the first test checks): each side tries for 1 s, not a user's 5 s
    // (KITH_PUNCH_WINDOW_MS), on links ~0.1 ms long
    const window = { KITH_PUNCH_WINDOW_MS: '1000' }
    ;({ r, a, b, stop } = await startNatFriends({ randomPorts: ['a', 'b'] }, 'kith:punch', { a: window, b: window }))
  })

  afterAll(async () => {
    await stop?.()
    console.log(`NAT relay timings (ms): ${JSON.stringify(timings)}`)
  })

  const punchLog = (): string => [a.output, b.output].join('\n').split('\n').filter(l => l.includes('kith:punch')).slice(0, 20).join('\n')

  it('A and B reserve on R, befriend each other through its relay, and the punch is tried and fails', async () => {
    const t0 = Date.now()
    await befriend(r, a)
    await befriend(r, b)
    await waitFor(async () => {
      const [sa, sb] = [await status(a), await status(b)]
      return sa.reachability.state === 'nat' && sb.reachability.state === 'nat' &&
        sa.relays.using.some(u => u.label === 'relay') && sb.relays.using.some(u => u.label === 'relay')
    }, 'A and B behind NAT and reserved on R', 30_000, 200)
    timings.reserved = Date.now() - t0
    await befriend(b, a)
    await waitFor(async () => (await link(a, 'bob'))?.online === true && (await link(b, 'alice'))?.online === true, 'A and B connected through R', 20_000, 100)
    timings.relayed = Date.now() - t0
    try {
      await waitFor(async () => ((await link(b, 'alice'))?.punch?.failures ?? 0) > 0 && ((await link(a, 'bob'))?.punch?.failures ?? 0) > 0, 'a failed punch on both sides', 20_000, 200)
    } finally {
      console.log(`punch log lines:\n${punchLog()}`)
    }
    timings.punchFailed = Date.now() - t0
    const [la, lb] = [await link(a, 'bob'), await link(b, 'alice')]
    console.log(`A's link to B: ${JSON.stringify(la)}\nB's link to A: ${JSON.stringify(lb)}`)
    expect(la?.kind).toBe('relayed')
    expect(la?.relay).toBe(r.peerId)
    expect(la?.limited).toBe(false)
    expect(lb?.kind).toBe('relayed')
    // whichever side accepted the relayed connection punches again later (backing off); the other answers
    for (const l of [la, lb]) expect(l?.punch?.lastError?.code).toBe('PUNCH_FAILED')
    expect([la, lb].some(l => l?.punch?.running === true || (l?.punch?.nextAt ?? 0) > (l?.punch?.lastAt ?? Infinity))).toBe(true)
    const text = (await a.cli('status')).stdout
    console.log(`kith status on A:\n${text}`)
    // the relayed link, the failed punch and that files still move, in words
    expect(text).toMatch(/ bob +relayed through relay since .*\n +hole punch failed \d+ times? in a row, last \d+s ago: .*\[PUNCH_FAILED\]; (?:bob starts the next try|trying again in \d+s|punching again now)\n +files move through relay \(no relay budget\)/)
  })

  it('with R\'s default budget, A fetches a multi-MiB file from B through the relay', async () => {
    const src = join(b.home, 'video.bin')
    const data = randomBytes(6 * 1024 * 1024 + 5)
    await writeFile(src, data)
    await chmod(src, 0o644)
    const shared = await b.call<{ share: { name: string } }>('POST', '/v1/shares', { path: src, with: ['alice'] })
    const dest = join(a.home, 'fetched.bin')
    const kinds = new Set<string>()
    let fetching = true
    // a look every tenth of a second (each a request to A's API) for as long as the fetch runs
    const watch = (async () => {
      while (fetching) {
        const l = await link(a, 'bob')
        kinds.add(`${l?.kind ?? 'offline'} via ${l?.relay ?? '-'}`)
        await new Promise(resolve => setTimeout(resolve, 100))
      }
    })()
    const t0 = Date.now()
    const result = await a.cli('fetch', `bob:${shared.share.name}`, '-o', dest, '--json').finally(() => { fetching = false })
    await watch
    timings.fetch6MiB = Date.now() - t0
    expect(result.code, result.stderr).toBe(0)
    expect(sha256(await readFile(dest))).toBe(sha256(data))
    // relayed throughout: no direct connection appeared, and the fetch was not cut off
    expect([...kinds]).toEqual([`relayed via ${r.peerId}`])
    console.log(`A fetched 6 MiB from B through R's relay in ${timings.fetch6MiB} ms`)
  })

  /** a web server in B's namespace, exposed to A as bob:web; A's local port for it */
  let web: ChildProcess | undefined
  let webPort = 0

  afterAll(() => { web?.kill() })

  /** curl in A's namespace: the body, or the failure */
  const curlInA = async (path: string): Promise<{ code: number, body: string, stderr: string }> => await new Promise(resolve => {
    execFile('ip', ['netns', 'exec', a.netns!, 'curl', '-sS', '--max-time', '30', `http://127.0.0.1:${webPort}${path}`], { maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err == null ? 0 : typeof err.code === 'number' ? err.code : 1, body: stdout, stderr })
    })
  })

  it('A reaches a web page B exposes, through the relay', async () => {
    const port = 18_080
    web = spawn('ip', ['netns', 'exec', b.netns!, NODE, '-e',
      `require('node:http').createServer((q, s) => s.end(q.url === '/big' ? Buffer.alloc(3e6, 120) : 'hello from behind a NAT')).listen(${port}, '127.0.0.1', () => console.log('up'))`],
    { stdio: ['ignore', 'pipe', 'inherit'] })
    await once(web.stdout!, 'data')
    await b.call('PUT', '/v1/services/web', { port, to: ['alice'] })
    webPort = (await a.call<{ connection: { port: number } }>('POST', '/v1/connections', { friend: 'bob', service: 'web' })).connection.port
    const page = await curlInA('/')
    expect(page.stderr).toBe('')
    expect(page.body).toBe('hello from behind a NAT')
    const big = await curlInA('/big')
    expect(big.body.length).toBe(3e6)
    expect(await link(a, 'bob')).toMatchObject({ kind: 'relayed', relay: r.peerId, limited: false })
  })

  /** A's fetch from B, paused while R relays without a budget; the last test resumes it once R has one */
  let paused: { id: string, src: string, dest: string } | undefined

  it('a fetch through the relay is paused while R has no budget', async () => {
    // 8 MiB at 1 MB/s: its first chunks come within about 2 s, and the rest would take 6 s more, long enough for the pause to come first
    const src = join(b.home, 'later.bin')
    await writeFile(src, randomBytes(8 * 1024 * 1024))
    await chmod(src, 0o644)
    await b.call('POST', '/v1/shares', { path: src, with: ['alice'] })
    await b.call('PUT', '/v1/limits', { upload: '1MB/s' })
    try {
      const dest = join(a.home, 'later.bin')
      const t0 = Date.now()
      const { transfer } = await a.call<{ transfer: { id: string } }>('POST', '/v1/transfers', { friend: 'bob', share: 'later.bin', priority: 'normal', dest })
      await waitFor(async () => (await transferOf(a, transfer.id))?.doneBytes > 0, 'the fetch under way', 30_000, 200)
      timings.underWay = Date.now() - t0
      expect((await a.call<{ transfer: { state: string } }>('POST', `/v1/transfers/${transfer.id}/pause`)).transfer.state).toBe('paused')
      paused = { id: transfer.id, src, dest }
    } finally {
      await b.call('PUT', '/v1/limits', { upload: null })
    }
  })

  it('with R restarted with a small budget, a fetch fails at once with FRIEND_RELAY_LIMITED instead of stalling', async () => {
    await r.stop()
    await r.start(['--relay-max-data', '1MB'])
    const t0 = Date.now()
    await waitFor(async () => {
      const la = await link(a, 'bob')
      return la?.online === true && la.kind === 'relayed' && la.limited === true
    }, 'A reconnected to B through R, limited', 45_000, 200)
    timings.limitedRelayed = Date.now() - t0
    const text = (await a.cli('status')).stdout
    console.log(`kith status on A:\n${text}`)
    expect(text).toMatch(/ bob +relayed through relay since .*\n(?: +hole punch failed .*\n)? +relay limits relayed connections \(a relay budget\): files can't move until a direct connection opens/)
    const dest = join(a.home, 'fetched-limited.bin')
    const shares = await b.get<{ shares: Array<{ name: string }> }>('/v1/shares')
    const t1 = Date.now()
    const result = await a.cli('fetch', `bob:${shares.shares[0]!.name}`, '-o', dest, '--json')
    timings.limitedFetch = Date.now() - t1
    console.log(`fetch over the limited relay: code ${result.code}, ${timings.limitedFetch} ms\n${result.stderr}`)
    expect(result.code).not.toBe(0)
    const { error } = JSON.parse(result.stderr.trim().split('\n').at(-1)!) as { error: { code: string, message: string } }
    expect(error.code).toBe('FRIEND_RELAY_LIMITED')
    expect(error.message).toMatch(/^bob is online, but only through relay's relay, whose budget limits each relayed connection/)
    expect(error.message).toMatch(/without --relay-max-data and --relay-max-duration/)
    // at once (libp2p's one dial attempt for an unlimited connection), not after stalling until the
    // files protocol's 30 s timeout or a relay reset; nothing was queued, nothing written
    expect(timings.limitedFetch).toBeLessThan(20_000)
    expect((await a.get<{ transfers: unknown[] }>('/v1/transfers')).transfers).toHaveLength(2)
    await expect(readFile(dest)).rejects.toThrow(/ENOENT/)
    // the link is still there, still relayed: the failure is the relay's budget, not the friend
    expect(await link(a, 'bob')).toMatchObject({ online: true, kind: 'relayed', relay: r.peerId, limited: true })
  })

  it('small exchanges still run over the limited relay: an invite from B is redeemed through it', async () => {
    // redeem (like locate) is a few hundred bytes, well inside any budget: it opts in to limited
    // connections. Redeeming again as an existing friend is idempotent and needs the exchange itself.
    expect(await link(a, 'bob')).toMatchObject({ online: true, kind: 'relayed', limited: true })
    const { text } = await b.call<{ text: string }>('POST', '/v1/invites', { label: 'alice' })
    const accepted = await a.call<{ friend: { label: string } }>('POST', '/v1/invites/accept', { text })
    expect(accepted.friend.label).toBe('bob')
    expect((await a.get<{ friends: Array<{ label: string, state: string }> }>('/v1/friends')).friends.find(f => f.label === 'bob')?.state).toBe('active')
  })

  it('a small page of B\'s service still comes over the limited relay; a response beyond the budget is cut, and says why', async () => {
    // a budget spent by earlier exchanges ends that relayed connection; A and B relay again on a new one
    const page = await waitFor(async () => {
      const r = await curlInA('/')
      return r.code === 0 ? r : undefined
    }, 'the small page over the limited relay', 45_000, 500)
    expect(page.body).toBe('hello from behind a NAT')
    const webError = async (): Promise<{ code: string, message: string, at: number } | null | undefined> =>
      (await a.get<{ connections: Array<{ service: string, error: { code: string, message: string, at: number } | null }> }>('/v1/connections'))
        .connections.find(c => c.service === 'web')?.error
    // each try of /big fails; the one whose tunnel opened is cut by the budget and says so. A try can also find
    // no link at all for a moment (FRIEND_OFFLINE: the page may have spent the relayed connection's budget, and
    // the next one is still being dialled), so that one is tried again
    const error = await waitFor(async () => {
      const started = Date.now()
      const big = await curlInA('/big')
      expect(big.code).not.toBe(0)
      const failure = await waitFor(async () => { const e = await webError(); return e != null && e.at >= started ? e : undefined }, 'the failure of /big recorded', 10_000, 100)
      return failure.code === 'FRIEND_RELAY_LIMITED' ? failure : undefined
    }, 'the cut reported', 60_000, 500)
    expect(error.message).toMatch(/reached only through a relay whose budget limits each relayed connection/)
  })

  it('a fetch resumed over the limited relay waits, and goes on by itself once R relays without a budget', async () => {
    expect(paused).toBeDefined()
    const { id, src, dest } = paused!
    await a.call('POST', `/v1/transfers/${id}/resume`)
    const waiting = await waitFor(async () => {
      const t = await transferOf(a, id)
      return t?.state === 'paused' && t.error?.code === 'FRIEND_RELAY_LIMITED' ? t : undefined
    }, 'the fetch to wait for a link without a budget', 45_000, 200)
    expect(waiting.error.message).toMatch(/goes on by itself once a connection to bob without such a limit opens/)
    // R relays without a budget again: A and B are relayed again, unlimited, and nobody resumes the fetch
    const t0 = Date.now()
    await r.stop()
    await r.start()
    await transferDone(a, id, 'the fetch to go on by itself', 90_000)
    timings.limitLifted = Date.now() - t0
    expect(sha256(await readFile(dest))).toBe(sha256(await readFile(src)))
  })
})
