import { BlockList, isIPv4 } from 'node:net'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'

/**
 * Which addresses kith dials (docs/security.md, "Dialling addresses from
 * outside"). Addresses come from outside: invites, friends' address records,
 * identify, the DHT. Without a rule, an invite or a record could make my node
 * knock on services of my own machine, probe my LAN or look names up in DNS.
 *
 * An address is dialled only if it is, exactly:
 *
 *   /ip4|ip6/<ip>/tcp/<port>[/p2p/<peer>]
 *   /ip4|ip6/<ip>/tcp/<port>/p2p/<relay>/p2p-circuit[/p2p/<peer>]   (the relay's address follows the same rule)
 *
 * - never a name (`dns`, `dns4`, `dns6`, `dnsaddr`): nothing from outside is
 *   resolved, so no DNS lookup is made on anyone's say-so (libp2p's dnsaddr
 *   resolver is switched off too, see node.ts);
 * - never the unspecified, multicast, broadcast, reserved or link-local
 *   addresses, and never port 0: none of them names one peer;
 * - loopback (127.0.0.0/8, ::1) only when my own node listens on loopback
 *   explicitly (`--listen /ip4/127.0.0.1/...`: nodes side by side on one
 *   machine, as the tests run them). A node listening on 0.0.0.0, the
 *   default, dials no loopback address from an invite or record;
 * - private ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) are
 *   dialled: friends often share a LAN, and the Noise handshake proves the
 *   peer id, so a wrong address reaches nobody else;
 * - an IPv4-mapped IPv6 address is judged as the IPv4 address it maps.
 *
 * The connection gate applies this to every dial libp2p makes
 * (`denyDialMultiaddr`); the redeem path also caps how many of an invite's
 * addresses it dials (MAX_INVITE_DIALS).
 */

/** An invite's addresses dialled at most, after filtering and removing duplicates. */
export const MAX_INVITE_DIALS = 4

export interface DialPolicy {
  /** dial loopback addresses (my node listens on loopback itself) */
  loopback: boolean
}

const never = new BlockList()
never.addSubnet('0.0.0.0', 8, 'ipv4') // "this network", the unspecified address
never.addSubnet('169.254.0.0', 16, 'ipv4') // link-local
never.addSubnet('224.0.0.0', 4, 'ipv4') // multicast
never.addSubnet('240.0.0.0', 4, 'ipv4') // reserved, and the broadcast address
never.addAddress('::', 'ipv6') // unspecified
never.addSubnet('fe80::', 10, 'ipv6') // link-local
never.addSubnet('ff00::', 8, 'ipv6') // multicast

const loopback = new BlockList()
loopback.addSubnet('127.0.0.0', 8, 'ipv4')
loopback.addAddress('::1', 'ipv6')

/** The policy for a node listening on `listen`: loopback only if one of them is a loopback address. */
export function dialPolicyFor (listen: string[]): DialPolicy {
  return {
    loopback: listen.some(a => {
      try {
        const ip = multiaddr(a).getComponents()[0]
        return (ip?.name === 'ip4' || ip?.name === 'ip6') && ip.value != null && classify(ip.value) === 'loopback'
      } catch {
        return false
      }
    })
  }
}

type IpClass = 'never' | 'loopback' | 'other'

// BlockList matches an IPv4-mapped IPv6 address (::ffff:7f00:1) against the IPv4 rules
function classify (ip: string): IpClass {
  const family = isIPv4(ip) ? 'ipv4' : 'ipv6'
  if (never.check(ip, family)) return 'never'
  if (loopback.check(ip, family)) return 'loopback'
  return 'other'
}

/** Why `ma` must not be dialled under `policy`, or null if it may. */
export function refusal (ma: Multiaddr, policy: DialPolicy): string | null {
  const parts = ma.getComponents()
  let at = 0
  const direct = (): string | null => {
    const ip = parts[at]
    const tcp = parts[at + 1]
    if (ip == null || (ip.name !== 'ip4' && ip.name !== 'ip6') || ip.value == null) {
      return `only ip4 and ip6 addresses are dialled, not ${ip?.name ?? 'nothing'}`
    }
    if (tcp?.name !== 'tcp' || tcp.value == null) return 'only TCP addresses are dialled'
    const port = Number(tcp.value)
    if (!Number.isInteger(port) || port < 1 || port > 65535) return `port ${tcp.value} names no listener`
    const kind = classify(ip.value)
    if (kind === 'never') return `${ip.value} is not one peer's address (unspecified, multicast, broadcast, reserved or link-local)`
    if (kind === 'loopback' && !policy.loopback) return `${ip.value} is loopback, and this node does not listen on loopback`
    at += 2
    return null
  }
  const peer = (): boolean => {
    if (parts[at]?.name !== 'p2p') return false
    at++
    return true
  }
  const why = direct()
  if (why != null) return why
  if (peer() && parts[at]?.name === 'p2p-circuit') {
    at++
    peer()
  }
  if (at !== parts.length) return `${parts[at]!.name} is not dialled (only /ip4|ip6/.../tcp/..., through a relay at most)`
  return null
}

export function isDialable (ma: Multiaddr, policy: DialPolicy): boolean {
  return refusal(ma, policy) == null
}

/**
 * The addresses of `addrs` that may be dialled, in their order, without
 * duplicates, at most `max`; `refused` says why each other one was dropped.
 */
export function dialable (addrs: readonly string[], policy: DialPolicy, max = Infinity): { addrs: Multiaddr[], refused: Array<{ addr: string, why: string }> } {
  const out: Multiaddr[] = []
  const refused: Array<{ addr: string, why: string }> = []
  const seen = new Set<string>()
  for (const addr of addrs) {
    let ma: Multiaddr
    try {
      ma = multiaddr(addr)
    } catch {
      refused.push({ addr, why: 'not a multiaddr' })
      continue
    }
    const why = refusal(ma, policy)
    if (why != null) {
      refused.push({ addr, why })
      continue
    }
    const key = ma.toString()
    if (seen.has(key)) continue
    seen.add(key)
    if (out.length >= max) {
      refused.push({ addr, why: `beyond the ${max} addresses dialled` })
      continue
    }
    out.push(ma)
  }
  return { addrs: out, refused }
}
