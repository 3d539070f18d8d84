import { randomBytes } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import { byteStream } from '@libp2p/utils'
import { serviceCapabilities, type AbortOptions, type Connection, type PeerId, type Stream, type StreamHandler, type StreamHandlerOptions } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'
import { KithError } from '../errors.ts'

/**
 * Ping, bounded. kad-dht pings its routing table's contacts over the libp2p
 * ping protocol (under kith's prefix), so a node needs one; @libp2p/ping's
 * handler echoes whatever arrives for 10 s, on two streams at once, outside
 * the bandwidth scheduler. Here a stream carries one 32-byte ping: the
 * handler takes the first PING_LENGTH bytes, throws away whatever else
 * comes, echoes them and closes, one inbound stream per connection at a
 * time, within PING_TIMEOUT_MS. Who may ping is the gate's business (the
 * daemon lets friends only).
 *
 *   pinger -> pinged   32 random bytes
 *   pinged -> pinger   the same 32 bytes, then close
 */
export const PING_PROTOCOL = '/kith/ping/1.0.0'
export const PING_LENGTH = 32
export const PING_TIMEOUT_MS = 5_000
export const MAX_INBOUND_PING_STREAMS = 1
export const MAX_OUTBOUND_PING_STREAMS = 1

export interface Ping {
  /** Round trip to `peer` in ms. */
  ping: (peer: PeerId | Multiaddr | Multiaddr[], options?: AbortOptions) => Promise<number>
}

export interface PingComponents {
  registrar: { handle: (protocol: string, handler: StreamHandler, options?: StreamHandlerOptions) => Promise<void>, unhandle: (protocol: string) => Promise<void> }
  connectionManager: { openStream: (peer: PeerId | Multiaddr | Multiaddr[], protocol: string, options?: AbortOptions & { runOnLimitedConnection?: boolean }) => Promise<Stream> }
}

class BoundedPing implements Ping {
  private readonly components: PingComponents

  constructor (components: PingComponents) {
    this.components = components
  }

  readonly [Symbol.toStringTag] = 'kith/ping'
  // kad-dht declares a dependency on this capability
  readonly [serviceCapabilities] = ['@libp2p/ping']

  async start (): Promise<void> {
    await this.components.registrar.handle(PING_PROTOCOL, this.onPing, {
      maxInboundStreams: MAX_INBOUND_PING_STREAMS,
      maxOutboundStreams: MAX_OUTBOUND_PING_STREAMS,
      runOnLimitedConnection: true // 64 bytes: fine over a relay with a budget
    })
  }

  async stop (): Promise<void> {
    await this.components.registrar.unhandle(PING_PROTOCOL)
  }

  private readonly onPing = async (stream: Stream, _connection: Connection): Promise<void> => {
    const signal = AbortSignal.timeout(PING_TIMEOUT_MS)
    try {
      const ping = await firstBytes(stream, PING_LENGTH, signal)
      // anything after the ping is dropped unread
      await stream.closeRead({ signal })
      if (!stream.send(ping)) await stream.onDrain({ signal })
      await stream.close({ signal })
    } catch (err) {
      stream.abort(err as Error)
    }
  }

  async ping (peer: PeerId | Multiaddr | Multiaddr[], options: AbortOptions = {}): Promise<number> {
    const signal = options.signal != null ? AbortSignal.any([options.signal, AbortSignal.timeout(PING_TIMEOUT_MS)]) : AbortSignal.timeout(PING_TIMEOUT_MS)
    const stream = await this.components.connectionManager.openStream(peer, PING_PROTOCOL, { signal, runOnLimitedConnection: true })
    try {
      const bytes = byteStream(stream, { maxBufferSize: PING_LENGTH })
      const sent = randomBytes(PING_LENGTH)
      const start = performance.now()
      await bytes.write(sent, { signal })
      const echo = await bytes.read({ bytes: PING_LENGTH, signal })
      const rtt = performance.now() - start
      if (!sent.equals(echo.subarray())) throw new KithError('PROTOCOL_VIOLATION', 'the ping came back changed')
      await stream.close({ signal })
      return rtt
    } catch (err) {
      stream.abort(err as Error)
      throw err
    }
  }
}

/** The first `length` bytes a stream sends, without buffering what follows. */
async function firstBytes (stream: Stream, length: number, signal: AbortSignal): Promise<Uint8Array> {
  const out = new Uint8Array(length)
  let have = 0
  return await new Promise<Uint8Array>((resolve, reject) => {
    const done = (err?: Error): void => {
      stream.removeEventListener('message', onMessage)
      stream.removeEventListener('close', onClose)
      signal.removeEventListener('abort', onAbort)
      if (err != null) reject(err)
      else resolve(out)
    }
    const onMessage = (evt: { data: Uint8Array | { subarray: () => Uint8Array } }): void => {
      const bytes = evt.data.subarray().subarray(0, length - have)
      out.set(bytes, have)
      have += bytes.length
      if (have === length) done()
    }
    const onClose = (): void => { done(new KithError('PROTOCOL_VIOLATION', `the ping ended before its ${length} bytes`)) }
    const onAbort = (): void => { done(new KithError('PROTOCOL_VIOLATION', 'no ping in time')) }
    stream.addEventListener('message', onMessage)
    stream.addEventListener('close', onClose)
    signal.addEventListener('abort', onAbort)
  })
}

export function ping (): (components: PingComponents) => Ping {
  return (components) => new BoundedPing(components)
}
