import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { Stream, StreamMiddleware } from '@libp2p/interface'
import { createNode, relayReservations, MAX_RELAY_DURATION_MS, type KithLibp2p } from '../../src/peer/node.ts'
import { waitFor } from '../helpers/testnet.ts'

/**
 * The stream middleware of libp2p 3.3.11, as kith's node fixes it (see
 * `fixStreamMiddleware` in src/peer/node.ts): middleware given to `handle()`
 * runs, and `use()` middleware doesn't collect a copy of the handler for
 * every inbound stream.
 */
describe('stream middleware', () => {
  let x: KithLibp2p, y: KithLibp2p

  beforeAll(async () => {
    const make = async (): Promise<KithLibp2p> => await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
    ;[x, y] = [await make(), await make()]
  })

  afterAll(async () => {
    await x?.stop()
    await y?.stop()
  })

  const settle = async (stream: Stream): Promise<void> => {
    await stream.close({ signal: AbortSignal.timeout(2_000) }).catch(() => {})
  }

  it('runs the middleware given to handle(): a gate there keeps the handler from running', async () => {
    let handled = 0
    const deny: StreamMiddleware = (stream) => { stream.abort(new Error('denied')) }
    await x.handle('/test/gated/1.0.0', async (stream) => { handled++; await stream.close() }, { middleware: [deny] })
    const stream = await y.dialProtocol(x.getMultiaddrs()[0]!, '/test/gated/1.0.0')
    await settle(stream)
    expect(handled).toBe(0)
  })

  it('runs a handler once per inbound stream, and never for outbound streams, with use() middleware', async () => {
    const protocol = '/test/use/1.0.0'
    const handled = { x: 0, y: 0 }
    const seen = { inbound: 0, outbound: 0 }
    for (const [name, node] of [['x', x], ['y', y]] as const) {
      await node.handle(protocol, async (stream) => { handled[name]++; await stream.close() })
      node.use(protocol, [(stream, connection, next) => { seen[stream.direction]++; next(stream, connection) }])
    }
    for (let i = 0; i < 3; i++) await settle(await y.dialProtocol(x.getMultiaddrs()[0]!, protocol))
    await waitFor(() => handled.x === 3, 'three inbound streams handled', 2_000, 10)
    // x has taken inbound streams; its outbound stream must reach y's handler, not run x's own
    const out = await x.dialProtocol(y.peerId, protocol)
    await waitFor(() => handled.y === 1, 'y handled the stream from x', 2_000, 10)
    await settle(out)
    expect(handled).toEqual({ x: 3, y: 1 })
    expect(seen).toEqual({ inbound: 4, outbound: 4 })
  })
})

describe('relay budgets', () => {
  it('no limit: relayed connections are not limited', () => {
    expect(relayReservations({}).applyDefaultLimit).toBe(false)
  })

  it('a data limit alone leaves a duration the relay server can arm as a timer (it resets the connection otherwise)', () => {
    const r = relayReservations({ maxDataBytes: 1_000_000 })
    expect(r.applyDefaultLimit).toBe(true)
    expect(r.defaultDataLimit).toBe(1_000_000n)
    expect(r.defaultDurationLimit).toBe(MAX_RELAY_DURATION_MS)
    // what js-libp2p's server does with it, and how a timer longer than 2^31 - 1 ms fails
    const signal = AbortSignal.timeout(r.defaultDurationLimit!)
    expect(signal.aborted).toBe(false)
    expect(() => AbortSignal.timeout(365 * 24 * 3600 * 1000)).toThrow(RangeError)
  })

  it('a duration limit beyond a Node timer is capped; a data limit is not', () => {
    const r = relayReservations({ maxDurationMs: 60 * 24 * 3600 * 1000 })
    expect(r.defaultDurationLimit).toBe(MAX_RELAY_DURATION_MS)
    expect(r.defaultDataLimit).toBe(BigInt(Number.MAX_SAFE_INTEGER))
    expect(relayReservations({ maxDurationMs: 12 * 3600 * 1000 }).defaultDurationLimit).toBe(12 * 3600 * 1000)
  })
})
