import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmod, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describeNeeding, needsCommands, needsRoot } from './needs.ts'
import { TestNode } from './testnet.ts'

/**
 * Linux network namespaces for NAT tests: a "public" segment (a bridge-less
 * point-to-point set of veth pairs routed by a hub namespace) and private
 * LANs behind masquerading routers.
 *
 *   [A] 10.1.0.2 --- 10.1.0.1 [router a] 7.7.1.2 --- 7.7.1.1 \
 *                                                            [hub] 7.7.0.1 --- 7.7.0.10 [R]
 *   [B] 10.2.0.2 --- 10.2.0.1 [router b] 7.7.2.2 --- 7.7.2.1 /
 *
 * The "public" addresses are in 7.7.0.0/16: libp2p (and kith) treat the
 * documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) as
 * private, so a NAT test on those would see no public address at all. The
 * namespaces have no route to the real internet, so nothing leaves the box.
 *
 * Each router masquerades its LAN (iptables -t nat POSTROUTING MASQUERADE,
 * which keeps a connection's source port when it is free), forwards nothing
 * inbound that is not part of a connection its LAN opened, and drops
 * unsolicited packets to itself from the WAN instead of answering them with a
 * RST: a typical home NAT with a stateful firewall.
 *
 * Why drop rather than RST: TCP hole punching needs each side's SYN to leave
 * its own NAT before the other's arrives there; a router that answers the
 * early SYN with a RST kills that attempt (both sides then retry). On real
 * links the SYNs cross in flight (tens of ms apart, the punch starts both
 * sides within about half a relay round trip); here the namespaces are ~50 µs
 * apart and this kernel has no netem to add delay, so with RST-answering
 * routers the punch would succeed only by luck of timing.
 *
 * `randomPorts` names routers that map each connection to a random public
 * port (`MASQUERADE --random-fully`), as carrier-grade and many enterprise
 * NATs do: the port a host connects from says nothing about the port its
 * peer sees, so kith's TCP hole punch (which announces the local port) can't
 * work through them, and friends stay on the relay.
 *
 * Names carry a random suffix; `destroy()` removes every namespace (and with
 * them their veths) even if set-up failed halfway.
 */
export interface NatTopologyOptions {
  /** routers that pick a random public port per connection; @default [] (both keep source ports) */
  randomPorts?: Array<'a' | 'b'>
}

export interface NatTopology {
  /** namespace names by role */
  ns: { hub: string, r: string, routerA: string, routerB: string, a: string, b: string }
  ips: { r: string, a: string, b: string, routerA: string, routerB: string }
  destroy: () => Promise<void>
}

export async function sh (cmd: string, args: string[], timeoutMs = 10_000): Promise<string> {
  return await new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err != null) reject(new Error(`${cmd} ${args.join(' ')}: ${stderr.trim() || err.message}`))
      else resolve(stdout)
    })
  })
}

/** Why namespace tests can't run here, or null when they can. */
export async function netnsUnavailable (): Promise<string | null> {
  const missing = needsRoot('making network namespaces') ?? needsCommands(['ip', 'iptables'])
  if (missing != null) return missing
  const probe = `kithprobe${randomBytes(3).toString('hex')}`
  try {
    await sh('ip', ['netns', 'add', probe])
    await sh('ip', ['netns', 'exec', probe, 'iptables', '-t', 'nat', '-L', '-n'])
  } catch (err) {
    return `can't make a network namespace with NAT here: ${(err as Error).message}`
  } finally {
    await sh('ip', ['netns', 'del', probe]).catch(() => {})
  }
  return null
}

/** The command prefix that runs a program inside namespace `ns`. */
export function inNetns (ns: string): string[] {
  return ['ip', 'netns', 'exec', ns]
}

export async function createNatTopology (options: NatTopologyOptions = {}): Promise<NatTopology> {
  const random = new Set(options.randomPorts ?? [])
  const id = randomBytes(3).toString('hex')
  const ns = { hub: `kith-hub-${id}`, r: `kith-r-${id}`, routerA: `kith-ra-${id}`, routerB: `kith-rb-${id}`, a: `kith-a-${id}`, b: `kith-b-${id}` }
  const created: string[] = []
  const destroy = async (): Promise<void> => {
    for (const name of created.reverse()) await sh('ip', ['netns', 'del', name]).catch(() => {})
  }
  const x = async (name: string, ...args: string[]): Promise<string> => await sh('ip', ['netns', 'exec', name, ...args])
  // veth names are at most 15 characters
  let n = 0
  const link = async (left: string, leftIp: string, right: string, rightIp: string): Promise<void> => {
    const l = `kv${id}${n}l`
    const r = `kv${id}${n++}r`
    await sh('ip', ['link', 'add', l, 'netns', left, 'type', 'veth', 'peer', 'name', r, 'netns', right])
    await x(left, 'ip', 'addr', 'add', leftIp, 'dev', l)
    await x(right, 'ip', 'addr', 'add', rightIp, 'dev', r)
    await x(left, 'ip', 'link', 'set', l, 'up')
    await x(right, 'ip', 'link', 'set', r, 'up')
  }
  try {
    for (const name of Object.values(ns)) {
      await sh('ip', ['netns', 'add', name])
      created.push(name)
      await x(name, 'ip', 'link', 'set', 'lo', 'up')
    }
    // public side: the hub routes between R and the two routers' WAN sides
    await link(ns.hub, '7.7.0.1/24', ns.r, '7.7.0.10/24')
    await link(ns.hub, '7.7.1.1/24', ns.routerA, '7.7.1.2/24')
    await link(ns.hub, '7.7.2.1/24', ns.routerB, '7.7.2.2/24')
    await x(ns.hub, 'sysctl', '-qw', 'net.ipv4.ip_forward=1')
    await x(ns.r, 'ip', 'route', 'add', 'default', 'via', '7.7.0.1')
    // private LANs behind the routers
    await link(ns.routerA, '10.1.0.1/24', ns.a, '10.1.0.2/24')
    await link(ns.routerB, '10.2.0.1/24', ns.b, '10.2.0.2/24')
    await x(ns.a, 'ip', 'route', 'add', 'default', 'via', '10.1.0.1')
    await x(ns.b, 'ip', 'route', 'add', 'default', 'via', '10.2.0.1')
    for (const [side, router, wanGw, lan] of [['a', ns.routerA, '7.7.1.1', '10.1.0.0/24'], ['b', ns.routerB, '7.7.2.1', '10.2.0.0/24']] as const) {
      await x(router, 'ip', 'route', 'add', 'default', 'via', wanGw)
      await x(router, 'sysctl', '-qw', 'net.ipv4.ip_forward=1')
      await x(router, 'iptables', '-t', 'nat', '-A', 'POSTROUTING', '-s', lan, '!', '-d', lan, '-j', 'MASQUERADE', ...(random.has(side) ? ['--random-fully'] : []))
      // a home router: only replies come in
      await x(router, 'iptables', '-A', 'FORWARD', '-s', lan, '-j', 'ACCEPT')
      await x(router, 'iptables', '-A', 'FORWARD', '-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED', '-j', 'ACCEPT')
      await x(router, 'iptables', '-P', 'FORWARD', 'DROP')
      // stealth: unsolicited packets to the router itself from outside its LAN are dropped, not answered
      await x(router, 'iptables', '-A', 'INPUT', '!', '-s', lan, '-m', 'conntrack', '--ctstate', 'NEW,INVALID', '-j', 'DROP')
    }
  } catch (err) {
    await destroy()
    throw err
  }
  return {
    ns,
    ips: { r: '7.7.0.10', a: '10.1.0.2', b: '10.2.0.2', routerA: '7.7.1.2', routerB: '7.7.2.2' },
    destroy
  }
}

/**
 * A NAT test suite: runs `body` inside `describe(title)` where network
 * namespaces work; elsewhere it skips, saying what is missing, or fails under
 * CI (test/helpers/needs.ts).
 */
export async function describeNat (file: string, title: string, body: () => void): Promise<void> {
  const unavailable = await netnsUnavailable()
  describeNeeding(title, [unavailable == null ? null : `${file}: ${unavailable}`], body)
}

export interface NatFriends {
  topo: NatTopology
  /** R, public; A and B, each behind its own router; all listen on port 4001 */
  r: TestNode
  a: TestNode
  b: TestNode
  /** kills the daemons, removes the namespaces and the homes */
  stop: () => Promise<void>
}

/**
 * The NAT suites' cast: builds the topology and starts R, A and B in it,
 * each with a home under one temp folder and `DEBUG` set to `debug` (or
 * KITH_NAT_DEBUG), and `env` added to each one's environment by its role.
 *
 * R waits 1 s for a dial-back (KITH_DIAL_BACK_TIMEOUT_MS, src/peer/timing-env.ts)
 * where a user's daemon waits 5 s: R dials back only A and B, behind routers
 * that drop the SYN, so each check of theirs ends when R gives up, and
 * everything after (behind NAT, the reservations, the relayed link) waits
 * for it. A and B keep the default, since their dial-backs to R get through
 * and must not time out on a loaded machine. All three redial friends and
 * retry reservations within 1 s at most (the test daemons' caps are 2 s):
 * after R restarts, A and B reconnect to it, it learns it is public again,
 * they reserve, and they redial each other through it, each step after the
 * last one's retry.
 */
export async function startNatFriends (options: NatTopologyOptions, debug: string, env: Partial<Record<'r' | 'a' | 'b', NodeJS.ProcessEnv>> = {}): Promise<NatFriends> {
  const topo = await createNatTopology(options)
  const base = await mkdtemp(join(tmpdir(), 'kith-nat-'))
  await chmod(base, 0o755)
  const listen = ['--listen', '/ip4/0.0.0.0/tcp/4001']
  const common = { DEBUG: process.env.KITH_NAT_DEBUG ?? debug, KITH_RECONNECT_MAX_MS: '1000', KITH_RESERVE_RETRY_MAX_MS: '1000' }
  const r = new TestNode('relay', join(base, 'r'), listen, { netns: topo.ns.r, env: { ...common, KITH_DIAL_BACK_TIMEOUT_MS: '1000', ...env.r } })
  const a = new TestNode('alice', join(base, 'a'), listen, { netns: topo.ns.a, env: { ...common, ...env.a } })
  const b = new TestNode('bob', join(base, 'b'), listen, { netns: topo.ns.b, env: { ...common, ...env.b } })
  const stop = async (): Promise<void> => {
    for (const n of [a, b, r]) await n.kill9().catch(() => {})
    await topo.destroy()
    await rm(base, { recursive: true, force: true })
  }
  try {
    await Promise.all([r.start(), a.start(), b.start()])
  } catch (err) {
    await stop()
    throw err
  }
  return { topo, r, a, b, stop }
}

/** The parts of `kith status --json` the NAT tests read. */
export interface NatStatus {
  reachability: { state: string, publicAddrs: string[] }
  relays: { using: Array<{ peerId: string, label: string, addrs: string[] }>, serving: Array<{ label: string }>, offering: boolean }
  addrs: string[]
  friendLinks: Array<{
    label: string
    peerId: string
    online: boolean
    kind: string | null
    relay: string | null
    remoteAddr: string | null
    limited?: boolean
    punch?: { attempts: number, failures: number, lastAt: number | null, lastError: { code: string, message: string } | null, nextAt: number | null, running: boolean } | null
  }>
}

/**
 * What `kith status --json` prints, read from the API as the CLI reads it (the
 * status, and the links of active friends), without a CLI process (a Node
 * start) for each of a poll's many looks.
 */
export async function natStatus (n: TestNode): Promise<NatStatus> {
  const status = await n.get<Omit<NatStatus, 'friendLinks'>>('/v1/status')
  const { friends } = await n.get<{ friends: Array<{ label: string, peerId: string, state: string, link: Omit<NatStatus['friendLinks'][number], 'label' | 'peerId'> }> }>('/v1/friends')
  return { ...status, friendLinks: friends.filter(f => f.state === 'active').map(f => ({ label: f.label, peerId: f.peerId, ...f.link })) }
}

export async function friendLink (n: TestNode, label: string): Promise<NatStatus['friendLinks'][number] | undefined> {
  return (await natStatus(n)).friendLinks.find(f => f.label === label)
}
