import { it, expect, beforeAll, afterAll } from 'vitest'
import { writeFile, readFile, chmod } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { waitFor, befriend, NODE, type TestNode } from '../helpers/testnet.ts'
import { startNatFriends, describeNat, natStatus as status, friendLink as link, sh, type NatTopology } from '../helpers/netns.ts'

/**
 * Friends behind NAT, on real (namespaced) networks: R on the public
 * segment, A and B each behind its own masquerading router. A and B learn
 * they are behind NAT and R that it is public (friends' dial-backs), reserve
 * on R, make friends with each other through R's relay, hole-punch a direct
 * TCP connection (/kith/punch/1.0.0), and A fetches a file from B over it
 * with R gone. A stranger gets no reservation on R, and no relayed
 * connection through it.
 *
 * NATs that change ports, where the punch can't work and files go through
 * the relay: nat-relay.spec.ts.
 *
 * Needs root, iproute2 and iptables. Without them it is skipped, saying what
 * is missing; under CI it fails instead (test/helpers/needs.ts).
 */
await describeNat('test/integration/nat.spec.ts', 'friends behind NAT (network namespaces)', () => {
  let topo: NatTopology
  let r: TestNode, a: TestNode, b: TestNode
  let stop: (() => Promise<void>) | undefined
  const timings: Record<string, number> = {}

  beforeAll(async () => {
    ({ topo, r, a, b, stop } = await startNatFriends({}, 'kith:punch,libp2p:dcutr'))
  })

  afterAll(async () => {
    await stop?.()
    console.log(`NAT timings (ms): ${JSON.stringify(timings)}`)
  })

  it('the namespaces really are NATed: A reaches R, R does not reach A, A does not reach B', async () => {
    await sh('ip', ['netns', 'exec', topo.ns.a, 'ping', '-c1', '-W1', topo.ips.r]).catch(async () => {
      // no ping binary: a TCP connect does as well
      await sh('ip', ['netns', 'exec', topo.ns.a, NODE, '-e', `require('net').connect(4001, '${topo.ips.r}').on('connect', () => process.exit(0)).on('error', () => process.exit(1))`])
    })
    const tcp = (ns: string, host: string): Promise<string> => sh('ip', ['netns', 'exec', ns, NODE, '-e',
      `const s = require('net').connect(4001, '${host}'); s.setTimeout(1500); s.on('connect', () => process.exit(0)).on('error', () => process.exit(1)).on('timeout', () => process.exit(1))`])
    await Promise.all([
      expect(tcp(topo.ns.r, topo.ips.routerA)).rejects.toThrow(),
      expect(tcp(topo.ns.r, topo.ips.a)).rejects.toThrow(),
      expect(tcp(topo.ns.a, topo.ips.b)).rejects.toThrow(),
      expect(tcp(topo.ns.a, topo.ips.routerB)).rejects.toThrow()
    ])
  })

  it('A and B befriend R; R learns it is public, A and B that they are behind NAT, and both reserve on R', async () => {
    await befriend(r, a)
    await befriend(r, b)
    const t0 = Date.now()
    await waitFor(async () => (await status(r)).reachability.state === 'public', 'R public', 20_000, 200)
    await waitFor(async () => (await status(a)).reachability.state === 'nat' && (await status(b)).reachability.state === 'nat', 'A and B behind NAT', 20_000, 200)
    timings.reachability = Date.now() - t0
    expect((await status(r)).reachability.publicAddrs).toContain(`/ip4/${topo.ips.r}/tcp/4001`)
    await waitFor(async () => {
      const [sa, sb] = [await status(a), await status(b)]
      return sa.relays.using.some(u => u.label === 'relay') && sb.relays.using.some(u => u.label === 'relay')
    }, 'A and B reserved on R', 30_000, 200)
    timings.reserved = Date.now() - t0
    const sr = await status(r)
    expect(sr.relays.offering).toBe(true)
    expect(sr.relays.serving.map(s => s.label).sort()).toEqual(['alice', 'bob'])
    // relayed addresses are among B's own, so they go into its address record and its invites
    const sb = await status(b)
    expect(sb.addrs.some(x => x.startsWith(`/ip4/${topo.ips.r}/tcp/4001/p2p/${r.peerId}/p2p-circuit`))).toBe(true)
    // R itself, public, reserves nowhere
    expect(sr.relays.using).toEqual([])
  })

  it('a stranger gets no reservation on R', async () => {
    const probe = await sh('ip', ['netns', 'exec', topo.ns.hub, NODE, join(import.meta.dirname, '..', 'helpers', 'reserve-probe.ts'), `/ip4/${topo.ips.r}/tcp/4001/p2p/${r.peerId}`], 30_000)
    const result = JSON.parse(probe.trim().split('\n').at(-1)!) as { ok: boolean, error?: string }
    console.log(`stranger's reservation attempt on R: ${JSON.stringify(result)}`)
    expect(result.ok).toBe(false)
    expect(result.error).toMatch(/PERMISSION_DENIED|denied|refused/i)
    expect((await status(r)).relays.serving.map(s => s.label).sort()).toEqual(['alice', 'bob'])
  })

  it('A accepts B\'s invite through R\'s relay; the link is relayed, then hole-punched into a direct connection', async () => {
    const t0 = Date.now()
    await befriend(b, a).catch(err => {
      if (process.env.KITH_NAT_DEBUG != null) console.log(`A:\n${a.output.slice(-20000)}\nR:\n${r.output.slice(-8000)}\nB:\n${b.output.slice(-8000)}`)
      throw err
    })
    await waitFor(async () => (await link(a, 'bob'))?.online === true && (await link(b, 'alice'))?.online === true, 'A and B connected', 20_000, 100)
    timings.relayed = Date.now() - t0
    console.log(`A's first link to B: ${JSON.stringify(await link(a, 'bob'))}`)
    // B accepted the relayed connection, so B starts the punch; both NATs keep source ports
    let la: Awaited<ReturnType<typeof link>>
    let lb: Awaited<ReturnType<typeof link>>
    try {
      await waitFor(async () => {
        [la, lb] = [await link(a, 'bob'), await link(b, 'alice')]
        return la?.kind === 'hole-punched' && lb?.kind === 'hole-punched'
      }, 'a hole-punched link on both sides', 15_000, 100)
    } finally {
      const punchLog = [a.output, b.output].join('\n').split('\n').filter(l => l.includes('kith:punch')).slice(0, 20).join('\n')
      console.log(`punch log lines:\n${punchLog}`)
    }
    timings.direct = Date.now() - t0
    console.log(`A's link to B after the punch: ${JSON.stringify(la)}; B's to A: ${JSON.stringify(lb)}`)
    // straight between the routers' public addresses: no relay in the path
    expect(la?.relay).toBeNull()
    expect(la?.remoteAddr).toMatch(new RegExp(`^/ip4/${topo.ips.routerB.replaceAll('.', '\\.')}/tcp/\\d+/p2p/${b.peerId}$`))
    expect(lb?.remoteAddr).toMatch(new RegExp(`^/ip4/${topo.ips.routerA.replaceAll('.', '\\.')}/tcp/\\d+/p2p/${a.peerId}$`))
  })

  it('a stranger can\'t reach B through R\'s relay, let alone ask it to punch', async () => {
    const via = `/ip4/${topo.ips.r}/tcp/4001/p2p/${r.peerId}/p2p-circuit/p2p/${b.peerId}`
    const probe = await sh('ip', ['netns', 'exec', topo.ns.hub, NODE, join(import.meta.dirname, '..', 'helpers', 'punch-probe.ts'), via], 30_000)
    const result = JSON.parse(probe.trim().split('\n').at(-1)!) as { connected: boolean, answered: boolean, error?: string }
    console.log(`stranger's punch request to B: ${JSON.stringify(result)}`)
    // R relays from its friends only (and B's gate would refuse the punch stream to a stranger anyway)
    expect(result.connected).toBe(false)
    expect(result.error).toMatch(/PERMISSION_DENIED|denied/i)
    expect(result.answered).toBe(false)
  })

  it('A fetches a file from B over the punched connection, with R gone', async () => {
    // with the relay dead, only the direct connection can carry the fetch
    await r.kill9()
    await waitFor(async () => {
      const [la, lb] = [await link(a, 'relay'), await link(a, 'bob')]
      return la?.online === false && lb?.online === true && lb.kind === 'hole-punched'
    }, 'A sees R gone and B still there, directly', 15_000, 100)
    const src = join(b.home, 'photos.bin')
    const data = randomBytes(3 * 1024 * 1024 + 17)
    await writeFile(src, data)
    await chmod(src, 0o644)
    const shared = await b.json<{ share: { name: string } }>('share', src, '--with', 'alice')
    const dest = join(a.home, 'fetched.bin')
    const t0 = Date.now()
    const result = await a.cli('fetch', `bob:${shared.share.name}`, '-o', dest, '--json')
    expect(result.code, result.stderr).toBe(0)
    timings.fetch3MiB = Date.now() - t0
    expect((await readFile(dest)).equals(data)).toBe(true)
    const after = await link(a, 'bob')
    expect(after?.kind).toBe('hole-punched')
    console.log(`A fetched 3 MiB from B over a ${after?.kind ?? '?'} link (R dead) in ${timings.fetch3MiB} ms`)
  })
})
