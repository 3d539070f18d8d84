import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { Stream, StreamMiddleware } from '@libp2p/interface'
import { readFileSync } from 'node:fs'
import { cancelPendingAddressWrite, createNode, relayReservations, MAX_RELAY_DURATION_MS, LIBP2P_CHECKED_VERSION, type KithLibp2p } from '../../src/peer/node.ts'
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
    await waitFor(() => handled.x === 3, 'three inbound streams handled', 10_000, 10)
    // x has taken inbound streams; its outbound stream must reach y's handler, not run x's own
    const out = await x.dialProtocol(y.peerId, protocol)
    await waitFor(() => handled.y === 1, 'y handled the stream from x', 10_000, 10)
    await settle(out)
    expect(handled).toEqual({ x: 3, y: 1 })
    expect(seen).toEqual({ inbound: 4, outbound: 4 })
  })
})

/**
 * A guard for libp2p upgrades: kith replaces the registrar's `getMiddleware`
 * and reaches into the transport and address managers. If libp2p moves
 * them, or stops calling the hook, these fail here instead of the friend gate
 * quietly letting strangers through.
 */
describe('the libp2p internals kith relies on', () => {
  const installed = (name: string): string => (JSON.parse(readFileSync(new URL(`../../node_modules/${name}/package.json`, import.meta.url), 'utf8')) as { version: string }).version
  // libp2p is bundled into the package (bundle.ts), so it is among the devDependencies
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as Record<'dependencies' | 'devDependencies', Record<string, string>>
  const declared = { ...pkg.dependencies, ...pkg.devDependencies }

  it('libp2p is the release the workaround was checked against, pinned exactly', () => {
    expect(installed('libp2p'), 'recheck fixStreamMiddleware (src/peer/node.ts) against this libp2p, then update LIBP2P_CHECKED_VERSION').toBe(LIBP2P_CHECKED_VERSION)
    expect(Object.keys(declared)).toContain('libp2p')
    for (const [name, range] of Object.entries(declared)) {
      if (name === 'libp2p' || name.startsWith('@libp2p/') || name.startsWith('@chainsafe/libp2p-')) {
        expect(range, `${name} must be pinned to one version`).toMatch(/^\d+\.\d+\.\d+$/)
        expect(installed(name), `${name}: installed differs from package.json; run npm install`).toBe(range)
      }
    }
  })

  it('libp2p calls the patched getMiddleware for inbound and outbound streams', async () => {
    const make = async (): Promise<KithLibp2p> => await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
    const [x, y] = [await make(), await make()]
    try {
      interface Registrar { getMiddleware: (protocol: string) => StreamMiddleware[] }
      const registrarOf = (node: KithLibp2p): Registrar => (node as unknown as { components: { registrar: Registrar } }).components.registrar
      const calls: string[] = []
      for (const [name, node] of [['x', x], ['y', y]] as const) {
        const registrar = registrarOf(node)
        // the node's own getMiddleware is kith's replacement, not the prototype's
        expect(Object.hasOwn(registrar, 'getMiddleware')).toBe(true)
        const patched = registrar.getMiddleware
        registrar.getMiddleware = (protocol) => { calls.push(`${name} ${protocol}`); return patched.call(registrar, protocol) }
      }
      const protocol = '/test/hook/1.0.0'
      await x.handle(protocol, async (stream) => { await stream.close() })
      const stream = await y.dialProtocol(x.getMultiaddrs()[0]!, protocol)
      await stream.close({ signal: AbortSignal.timeout(2_000) }).catch(() => {})
      await waitFor(() => calls.includes(`x ${protocol}`), 'libp2p to ask x for the inbound stream\'s middleware', 10_000, 10)
      expect(calls).toContain(`y ${protocol}`)
    } finally {
      await x.stop()
      await y.stop()
    }
  })

  it('a stopped node leaves its address manager\'s delayed peer-store write pending, and cancelPendingAddressWrite cancels it', async () => {
    const node = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
    await node.stop()
    // counted twice in one synchronous step: no other timer of this process starts or ends between them
    const timers = (): number => process.getActiveResourcesInfo().filter(kind => kind === 'Timeout').length
    const before = timers()
    cancelPendingAddressWrite(node)
    expect(timers(), 'the delayed write is gone (libp2p fixed it: drop the workaround) or no longer cancelled this way (recheck it)').toBe(before - 1)
  })

  it('the transport and address managers reachability.ts uses are there', async () => {
    const node = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
    try {
      const components = (node as unknown as { components: Record<string, Record<string, unknown>> }).components
      expect(typeof components.transportManager?.listen).toBe('function')
      expect(typeof components.addressManager?.confirmObservedAddr).toBe('function')
      expect(typeof components.addressManager?.getAddressesWithMetadata).toBe('function')
    } finally {
      await node.stop()
    }
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
