import { createLibp2p, type Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { lpStream } from '@libp2p/utils'
import type { Connection, Stream } from '@libp2p/interface'
import { decode } from 'cborg'
import { encodeCanonical } from '../../src/peer/canonical.ts'
import { parseInvite, redeemProof } from '../../src/trust/invite.ts'
import { REDEEM_PROTOCOL } from '../../src/trust/redeem.ts'

/**
 * A hostile peer: a real libp2p node under the test's control, with no gate,
 * no kith services and no manners. It opens any protocol on any kith node
 * (directly or through a relay) and sends anything: raw bytes, oversize
 * frames, many streams, many connections. Tests use it to play the stranger
 * (or, after `redeem`, the friend) who speaks kith protocols wrongly.
 *
 * `sourceIp` dials from another loopback address (127.0.0.2...; Linux routes
 * all of 127/8 to lo), so that several hostile peers look like several hosts
 * to libp2p's per-IP limits.
 */
export interface HostilePeerOptions {
  sourceIp?: string
  /** listen on 127.0.0.1, so kith nodes can dial it; @default false */
  listen?: boolean
}

export type Target = string | Multiaddr | Connection

/** What came back when the peer sent something and listened. */
export interface Exchange {
  received: Uint8Array
  /** how the stream ended: the remote closed it, reset it, we stopped listening at the deadline, or at `maxBytes` */
  ended: 'closed' | 'reset' | 'timeout' | 'full'
  error?: string
}

export class HostilePeer {
  readonly node: Libp2p

  private constructor (node: Libp2p) {
    this.node = node
  }

  static async start (options: HostilePeerOptions = {}): Promise<HostilePeer> {
    const node = await createLibp2p({
      addresses: { listen: options.listen === true ? ['/ip4/127.0.0.1/tcp/0'] : [] },
      transports: [
        // net.connect options for every dial
        tcp(options.sourceIp != null ? { dialOpts: { localAddress: options.sourceIp } as Record<string, unknown> } : {}),
        circuitRelayTransport()
      ],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      // it keeps every connection it makes, however many
      connectionManager: { maxConnections: 10_000, maxParallelDials: 1_000 },
      services: { identify: identify({ protocolPrefix: 'kith' }) }
    })
    return new HostilePeer(node)
  }

  get peerId (): string {
    return this.node.peerId.toString()
  }

  /** A connection to `addr`; `fresh` opens a new one even if one is open. */
  async connect (addr: string | Multiaddr, options: { fresh?: boolean, timeoutMs?: number } = {}): Promise<Connection> {
    const ma = typeof addr === 'string' ? multiaddr(addr) : addr
    return await this.node.dial(ma, { force: options.fresh === true, signal: AbortSignal.timeout(options.timeoutMs ?? 5_000) })
  }

  /** The open connections to the peer at the end of `addr`. */
  openConnections (addr: string | Multiaddr): Connection[] {
    const ma = typeof addr === 'string' ? multiaddr(addr) : addr
    const peer = ma.getComponents().findLast(c => c.name === 'p2p')?.value
    return this.node.getConnections().filter(c => c.status === 'open' && c.remotePeer.toString() === peer)
  }

  /** A stream of `protocol` on `target`, also on limited (relayed) connections. */
  async open (target: Target, protocol: string, timeoutMs = 5_000): Promise<Stream> {
    const options = { runOnLimitedConnection: true, signal: AbortSignal.timeout(timeoutMs) }
    if (typeof target === 'string' || !('newStream' in target)) return await this.node.dialProtocol(typeof target === 'string' ? multiaddr(target) : target, protocol, options)
    return await target.newStream(protocol, options)
  }

  /** Opens `protocol`, sends `payload` as it is, and collects what comes back until the stream ends. */
  async exchange (target: Target, protocol: string, payload: Uint8Array, options: { maxBytes?: number, timeoutMs?: number } = {}): Promise<Exchange> {
    const maxBytes = options.maxBytes ?? 1024 * 1024
    const stream = await this.open(target, protocol)
    const chunks: Uint8Array[] = []
    const all = (): Uint8Array => new Uint8Array(Buffer.concat(chunks))
    let size = 0
    const signal = AbortSignal.timeout(options.timeoutMs ?? 5_000)
    const onAbort = (): void => { stream.abort(new Error('the test stopped listening')) }
    signal.addEventListener('abort', onAbort)
    try {
      stream.send(payload)
      for await (const chunk of stream) {
        const bytes = chunk.subarray()
        chunks.push(bytes)
        size += bytes.length
        if (size >= maxBytes) {
          stream.abort(new Error('enough'))
          return { received: all(), ended: 'full' }
        }
      }
      return { received: all(), ended: 'closed' }
    } catch (err) {
      return { received: all(), ended: signal.aborted ? 'timeout' : 'reset', error: (err as Error).message }
    } finally {
      signal.removeEventListener('abort', onAbort)
    }
  }

  /**
   * Redeems an invite the way kith's accepter does, by hand (one redeem
   * request with a proof bound to this peer); resolves to the issuer's
   * decoded answer. Afterwards the issuer counts this peer as a friend.
   */
  async redeem (target: Target, inviteText: string, name = 'hostile'): Promise<Record<string, unknown>> {
    const invite = parseInvite(inviteText)
    const stream = await this.open(target, REDEEM_PROTOCOL)
    const lp = lpStream(stream, { maxDataLength: 64 * 1024 })
    await lp.write(encodeCanonical({ v: 1, id: invite.id, proof: redeemProof(invite.secret, invite.issuer, this.peerId), name, addrs: [], grants: [] }))
    const answer = decode((await lp.read({ signal: AbortSignal.timeout(5_000) })).subarray()) as Record<string, unknown>
    await stream.close().catch(() => {})
    return answer
  }

  async stop (): Promise<void> {
    await this.node.stop()
  }
}
