/**
 * A stranger asking a NATed friend to hole-punch: `node test/helpers/punch-probe.ts
 * /ip4/<relay>/tcp/<port>/p2p/<relay>/p2p-circuit/p2p/<target>`. Connects to
 * the target through the relay (a kith relay refuses strangers), opens
 * /kith/punch/1.0.0 on that relayed connection and sends a well-formed offer. Prints one JSON line,
 * { connected, answered, error }, and exits. Used by
 * test/integration/nat.spec.ts inside a network namespace.
 */
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { multiaddr } from '@multiformats/multiaddr'
import { lpStream } from '@libp2p/utils'
import { PUNCH_PROTOCOL, PUNCH_VERSION, encodePunchMessage, MAX_PUNCH_MESSAGE } from '../../src/peer/hole-punch.ts'

const target = process.argv[2]
if (target == null) throw new Error('usage: punch-probe.ts RELAYED-MULTIADDR')
const node = await createLibp2p({
  addresses: { listen: [] },
  transports: [tcp(), circuitRelayTransport()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify({ protocolPrefix: 'kith' }) }
})
const result: { connected: boolean, answered: boolean, error?: string } = { connected: false, answered: false }
try {
  const connection = await node.dial(multiaddr(target), { signal: AbortSignal.timeout(10_000) })
  result.connected = true
  const stream = await connection.newStream(PUNCH_PROTOCOL, { runOnLimitedConnection: true, signal: AbortSignal.timeout(5_000) })
  const lp = lpStream(stream, { maxDataLength: MAX_PUNCH_MESSAGE })
  await lp.write(encodePunchMessage({ v: PUNCH_VERSION, t: 'offer', ip: '7.7.0.99', port: 40000 }), { signal: AbortSignal.timeout(5_000) })
  await lp.read({ signal: AbortSignal.timeout(5_000) })
  result.answered = true
} catch (err) {
  result.error = `${(err as Error).name}: ${(err as Error).message}`
}
console.log(JSON.stringify(result))
await node.stop()
process.exit(0)
