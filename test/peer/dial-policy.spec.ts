import { describe, it, expect, afterAll, beforeAll } from 'vitest'
import { multiaddr } from '@multiformats/multiaddr'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { dialable, dialPolicyFor, isDialable, refusal, MAX_INVITE_DIALS } from '../../src/peer/dial-policy.ts'
import { createNode, type KithLibp2p } from '../../src/peer/node.ts'

/** Which addresses from outside kith dials (src/peer/dial-policy.ts, docs/security.md). */
const PEER = '12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf'
const RELAY = '12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo'

describe('the dial policy', () => {
  const lan = { loopback: false }
  const local = { loopback: true }

  it.each([
    '/ip4/203.0.113.7/tcp/4001',
    `/ip4/203.0.113.7/tcp/4001/p2p/${PEER}`,
    '/ip4/10.0.0.5/tcp/4001',
    '/ip4/192.168.1.20/tcp/4001',
    '/ip4/172.16.3.4/tcp/4001',
    '/ip4/100.64.0.9/tcp/4001',
    '/ip6/2001:db8::1/tcp/4001',
    '/ip6/fd12:3456::1/tcp/4001',
    `/ip4/203.0.113.7/tcp/4001/p2p/${RELAY}/p2p-circuit`,
    `/ip4/203.0.113.7/tcp/4001/p2p/${RELAY}/p2p-circuit/p2p/${PEER}`
  ])('dials %s (public, private LAN, through a relay)', (addr) => {
    expect(refusal(multiaddr(addr), lan)).toBeNull()
  })

  it.each([
    ['/dns4/example.com/tcp/4001', /dns4/],
    ['/dns6/example.com/tcp/4001', /dns6/],
    ['/dns/example.com/tcp/4001', /dns/],
    [`/dnsaddr/example.com/p2p/${PEER}`, /dnsaddr/],
    ['/ip4/0.0.0.0/tcp/4001', /unspecified/],
    ['/ip6/::/tcp/4001', /unspecified/],
    ['/ip4/224.0.0.251/tcp/4001', /multicast/],
    ['/ip6/ff02::1/tcp/4001', /multicast/],
    ['/ip4/255.255.255.255/tcp/4001', /broadcast/],
    ['/ip4/240.1.2.3/tcp/4001', /reserved/],
    ['/ip4/169.254.1.1/tcp/4001', /link-local/],
    ['/ip6/fe80::1/tcp/4001', /link-local/],
    ['/ip4/127.0.0.1/tcp/4001', /loopback/],
    ['/ip4/127.8.9.10/tcp/4001', /loopback/],
    ['/ip6/::1/tcp/4001', /loopback/],
    ['/ip6/::ffff:127.0.0.1/tcp/4001', /loopback/],
    ['/ip4/10.0.0.5/tcp/0', /port 0/],
    ['/ip4/10.0.0.5/udp/4001/quic-v1', /TCP/],
    ['/ip4/10.0.0.5/tcp/4001/ws', /ws/],
    ['/unix/%2Ftmp%2Fkith.sock', /unix/],
    [`/ip4/127.0.0.1/tcp/4001/p2p/${RELAY}/p2p-circuit/p2p/${PEER}`, /loopback/],
    [`/dns4/relay.example/tcp/4001/p2p/${RELAY}/p2p-circuit/p2p/${PEER}`, /dns4/],
    [`/ip4/203.0.113.7/tcp/4001/p2p/${RELAY}/p2p-circuit/p2p/${RELAY}/p2p-circuit`, /p2p-circuit/]
  ])('refuses %s', (addr, why) => {
    expect(refusal(multiaddr(addr), lan)).toMatch(why)
  })

  it('dials loopback only for a node that listens on loopback itself', () => {
    expect(dialPolicyFor(['/ip4/0.0.0.0/tcp/0'])).toEqual(lan)
    expect(dialPolicyFor(['/ip4/192.168.1.2/tcp/4001'])).toEqual(lan)
    expect(dialPolicyFor(['/ip4/127.0.0.1/tcp/0'])).toEqual(local)
    expect(dialPolicyFor(['/ip4/0.0.0.0/tcp/0', '/ip6/::1/tcp/0'])).toEqual(local)
    expect(isDialable(multiaddr('/ip4/127.0.0.1/tcp/4001'), local)).toBe(true)
    // the rest of the rules hold on loopback too
    expect(isDialable(multiaddr('/dns4/localhost/tcp/4001'), local)).toBe(false)
  })

  it('keeps the allowed addresses in order, once each, up to a cap, and says why it dropped the others', () => {
    const addrs = [
      '/dns4/example.com/tcp/1',
      '/ip4/10.0.0.1/tcp/1',
      'not a multiaddr',
      '/ip4/10.0.0.1/tcp/1',
      '/ip4/127.0.0.1/tcp/1',
      '/ip4/10.0.0.2/tcp/1',
      '/ip4/10.0.0.3/tcp/1',
      '/ip4/10.0.0.4/tcp/1',
      '/ip4/10.0.0.5/tcp/1'
    ]
    const { addrs: kept, refused } = dialable(addrs, lan, MAX_INVITE_DIALS)
    expect(kept.map(a => a.toString())).toEqual(['/ip4/10.0.0.1/tcp/1', '/ip4/10.0.0.2/tcp/1', '/ip4/10.0.0.3/tcp/1', '/ip4/10.0.0.4/tcp/1'])
    expect(refused.map(r => r.addr)).toEqual(['/dns4/example.com/tcp/1', 'not a multiaddr', '/ip4/127.0.0.1/tcp/1', '/ip4/10.0.0.5/tcp/1'])
    expect(refused[3]!.why).toMatch(/beyond the 4/)
  })
})

describe('the node follows the dial policy for every dial', () => {
  let target: KithLibp2p
  let dialer: KithLibp2p
  let port: string

  beforeAll(async () => {
    target = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
    port = target.getMultiaddrs()[0]!.getComponents().find(c => c.name === 'tcp')!.value!
    // listens on loopback, so it may dial loopback
    dialer = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
  })

  afterAll(async () => {
    await target?.stop()
    await dialer?.stop()
  })

  it('looks no name up: /dns4/localhost is refused where /ip4/127.0.0.1 connects', async () => {
    await expect(dialer.dial(multiaddr(`/dns4/localhost/tcp/${port}/p2p/${target.peerId.toString()}`), { signal: AbortSignal.timeout(5_000) })).rejects.toThrow(/denied/i)
    const connection = await dialer.dial(multiaddr(`/ip4/127.0.0.1/tcp/${port}/p2p/${target.peerId.toString()}`), { signal: AbortSignal.timeout(5_000) })
    expect(connection.remotePeer.equals(target.peerId)).toBe(true)
    await connection.close()
  })

  it('a node that does not listen on loopback dials no loopback address', async () => {
    const lanOnly = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {}, dialPolicy: { loopback: false } })
    try {
      await expect(lanOnly.dial(multiaddr(`/ip4/127.0.0.1/tcp/${port}/p2p/${target.peerId.toString()}`), { signal: AbortSignal.timeout(5_000) })).rejects.toThrow(/denied/i)
    } finally {
      await lanOnly.stop()
    }
  })
})
