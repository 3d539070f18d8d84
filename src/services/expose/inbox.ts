import type { Stream } from '@libp2p/interface'
import { KithError } from '../../errors.ts'

/**
 * What a tunnel stream receives, with bounded memory: chunks queue here as
 * they arrive; above `highWater` the stream is paused, so yamux stops
 * granting window and the sender waits. Read the opening header with
 * `header()`, then the raw bytes with `next()`. Finishes on 'end' (never on
 * 'remoteCloseWrite', which can fire while data is still buffered), and
 * cleanly only if the other side closed its writing end: a connection that
 * closes under the stream (a relay's budget spent, the network gone) ends it
 * too, with no error from libp2p, and must not pass for the service's FIN,
 * or a response cut short would look whole to the local side. (Made as the
 * stream opens, before any FIN can come.)
 */
export class Inbox {
  private readonly stream: Stream
  private readonly highWater: number
  private readonly chunks: Uint8Array[] = []
  private length = 0
  private ended = false
  /** the other side closed its writing end (a FIN), as opposed to the connection closing under the stream */
  private finished = false
  private error: Error | undefined
  private wake: (() => void) | undefined
  private resuming = false

  constructor (stream: Stream, highWater: number) {
    this.stream = stream
    this.highWater = highWater
    stream.addEventListener('message', this.onMessage)
    stream.addEventListener('remoteCloseWrite', this.onFin)
    stream.addEventListener('end', this.onEnd)
    stream.addEventListener('close', this.onClose)
  }

  /** bytes queued here */
  get buffered (): number {
    return this.length
  }

  private readonly onMessage = (evt: { data: Uint8Array | Iterable<Uint8Array> }): void => {
    if (evt.data instanceof Uint8Array) this.push(evt.data)
    else for (const buf of evt.data) this.push(buf)
    // never from inside resume(): yamux grants window again after the dispatch
    if (!this.resuming) this.pauseIfFull()
    this.notify()
  }

  private push (buf: Uint8Array): void {
    if (buf.byteLength === 0) return
    this.chunks.push(buf)
    this.length += buf.byteLength
  }

  private readonly onFin = (): void => {
    this.finished = true
  }

  private readonly onEnd = (): void => {
    if (!this.finished) this.error ??= cutOff()
    this.ended = true
    this.notify()
  }

  private readonly onClose = (evt: Event & { error?: Error }): void => {
    if (evt.error != null) this.error ??= evt.error
    else if (this.stream.readBufferLength === 0) this.onEnd()
    this.notify()
  }

  private notify (): void {
    const wake = this.wake
    this.wake = undefined
    wake?.()
  }

  private resume (): void {
    if (this.stream.readStatus !== 'paused' || this.length > this.highWater / 2) return
    this.resuming = true
    try {
      this.stream.resume()
    } finally {
      this.resuming = false
    }
    this.pauseIfFull()
  }

  private pauseIfFull (): void {
    if (this.length > this.highWater && this.stream.readStatus === 'readable') this.stream.pause()
  }

  private async wait (signal: AbortSignal): Promise<void> {
    signal.throwIfAborted()
    await new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        this.wake = undefined
        reject(signal.reason)
      }
      this.wake = () => {
        signal.removeEventListener('abort', onAbort)
        resolve()
      }
      signal.addEventListener('abort', onAbort, { once: true })
    })
  }

  /** Takes `n` bytes off the front (the caller checked they are there). */
  private take (n: number): Uint8Array {
    const out = new Uint8Array(n)
    let at = 0
    while (at < n) {
      const head = this.chunks[0]!
      const want = n - at
      if (head.byteLength <= want) {
        out.set(head, at)
        at += head.byteLength
        this.chunks.shift()
      } else {
        out.set(head.subarray(0, want), at)
        this.chunks[0] = head.subarray(want)
        at += want
      }
    }
    this.length -= n
    return out
  }

  /**
   * The opening header: a 2-byte big-endian length, then that many bytes
   * (at most `max`, checked before they are read). PROTOCOL_VIOLATION when
   * it is too long or the stream ends first.
   */
  async header (max: number, signal: AbortSignal): Promise<Uint8Array> {
    let size: number | undefined
    while (true) {
      if (size === undefined && this.length >= 2) {
        const two = this.take(2)
        size = (two[0]! << 8) | two[1]!
        if (size === 0 || size > max) throw new KithError('PROTOCOL_VIOLATION', `a service stream header of ${size} bytes (at most ${max})`)
      }
      if (size !== undefined && this.length >= size) {
        const header = this.take(size)
        this.resume()
        return header
      }
      if (this.error !== undefined) throw this.error
      if (this.ended) throw new KithError('PROTOCOL_VIOLATION', 'the service stream ended inside its header')
      this.resume()
      await this.wait(signal)
    }
  }

  /** The next bytes received, or undefined once the other side closed its writing end and all was read. */
  async next (signal: AbortSignal): Promise<Uint8Array | undefined> {
    while (true) {
      if (this.chunks.length > 0) {
        const head = this.chunks.shift()!
        this.length -= head.byteLength
        this.resume()
        return head
      }
      if (this.error !== undefined) throw this.error
      if (this.ended) return undefined
      this.resume()
      if (this.chunks.length > 0 || this.ended || this.error !== undefined) continue
      await this.wait(signal)
    }
  }

  dispose (): void {
    this.stream.removeEventListener('message', this.onMessage)
    this.stream.removeEventListener('remoteCloseWrite', this.onFin)
    this.stream.removeEventListener('end', this.onEnd)
    this.stream.removeEventListener('close', this.onClose)
    this.notify()
  }
}

function cutOff (): KithError {
  return new KithError('FRIEND_OFFLINE', 'the connection to the friend closed under this stream (the network, or a relay whose budget ran out)')
}

/** Frames a header: 2-byte big-endian length, then the bytes. */
export function frameHeader (body: Uint8Array): Uint8Array {
  const out = new Uint8Array(2 + body.byteLength)
  out[0] = body.byteLength >> 8
  out[1] = body.byteLength & 0xff
  out.set(body, 2)
  return out
}
