/**
 * A stranger asking a relay for a reservation: `node test/helpers/reserve-probe.ts
 * /ip4/.../tcp/.../p2p/<relay>`. Prints one JSON line, { ok, error }, and
 * exits. Used by test/integration/nat.spec.ts inside a network namespace.
 */
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { multiaddr } from '@multiformats/multiaddr'

const relay = process.argv[2]
if (relay == null) throw new Error('usage: reserve-probe.ts RELAY-MULTIADDR')
const node = await createLibp2p({
  addresses: { listen: [] },
  transports: [tcp(), circuitRelayTransport({ reservationCompletionTimeout: 5_000 })],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify({ protocolPrefix: 'kith' }) }
})
let result: { ok: boolean, error?: string, addrs?: string[] }
try {
  await (node as unknown as { components: { transportManager: { listen: (a: unknown[]) => Promise<void> } } }).components.transportManager.listen([multiaddr(`${relay}/p2p-circuit`)])
  result = { ok: node.getMultiaddrs().some(a => a.toString().includes('/p2p-circuit')), addrs: node.getMultiaddrs().map(a => a.toString()) }
} catch (err) {
  result = { ok: false, error: `${(err as Error).name}: ${(err as Error).message}` }
}
console.log(JSON.stringify(result))
await node.stop()
process.exit(0)
