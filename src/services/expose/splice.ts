import type { Socket } from 'node:net'
import type { Stream } from '@libp2p/interface'
import { KithError } from '../../errors.ts'
import type { Flow } from '../../transfer/scheduler/index.ts'
import type { Inbox } from './inbox.ts'
import { HIGH_WATER, SEND_SLICE, STALL_TIMEOUT_MS } from './constants.ts'

/**
 * Carries one TCP connection over one libp2p stream, both ways at once,
 * until both sides have closed their writing ends:
 *
 * - socket -> stream: read from the socket only as fast as the scheduler
 *   (`up`) and the stream take it (wait while more than HIGH_WATER sits in
 *   the stream's write buffer; `send()` + 'drain' alone does not bound it);
 * - stream -> socket: the Inbox pauses the stream above HIGH_WATER; each
 *   chunk is cleared by the scheduler (`down`), written, and the next read
 *   waits for the socket's 'drain';
 * - half-close passes through: the socket's end (FIN) closes the stream's
 *   writing end, the stream's end ends the socket's writing side (the
 *   socket must be made with `allowHalfOpen`);
 * - a failure either way (a reset, `signal` aborted) resets both.
 *
 * Resolves when both directions finished cleanly; rejects with the first
 * failure, both sides then reset.
 */
export interface SpliceInit {
  socket: Socket
  stream: Stream
  inbox: Inbox
  /** bytes this side sends on the stream */
  up: Flow
  /** bytes it receives from the stream */
  down: Flow
  signal: AbortSignal
  onBytes?: (direction: 'up' | 'down', bytes: number) => void
}

export async function splice (init: SpliceInit): Promise<void> {
  const { socket, stream } = init
  const controller = new AbortController()
  const signal = AbortSignal.any([init.signal, controller.signal])
  const fail = (err: unknown): never => {
    controller.abort(err)
    throw err
  }
  const out = socketToStream(init, signal).catch(fail)
  const back = streamToSocket(init, signal).catch(fail)
  try {
    await Promise.all([out, back])
  } catch (err) {
    const error = signal.reason ?? err
    stream.abort(error instanceof Error ? error : new Error(String(error)))
    if (!socket.destroyed) socket.resetAndDestroy()
    throw error
  } finally {
    init.inbox.dispose()
  }
  socket.destroy()
}

async function socketToStream (init: SpliceInit, signal: AbortSignal): Promise<void> {
  const { socket, stream, up } = init
  for await (const chunk of socket.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>) {
    for (let at = 0; at < chunk.byteLength; at += SEND_SLICE) {
      const piece = chunk.byteLength <= SEND_SLICE ? chunk : chunk.subarray(at, at + SEND_SLICE)
      await up.take(piece.byteLength, signal)
      signal.throwIfAborted()
      init.onBytes?.('up', piece.byteLength)
      if (!stream.send(piece)) await writable(stream, signal)
      while (stream.writeBufferLength > HIGH_WATER) await writable(stream, signal)
    }
  }
  signal.throwIfAborted()
  // the local side sent FIN: so does the stream, and its other direction goes on
  await stream.close({ signal })
}

async function streamToSocket (init: SpliceInit, signal: AbortSignal): Promise<void> {
  const { socket, inbox, down } = init
  while (true) {
    const chunk = await inbox.next(signal)
    if (chunk === undefined) break
    await down.take(chunk.byteLength, signal)
    signal.throwIfAborted()
    init.onBytes?.('down', chunk.byteLength)
    if (!socket.write(chunk)) await drained(socket, signal)
  }
  // the other side closed its writing end: FIN to the local side, once all is written
  await new Promise<void>((resolve, reject) => {
    socket.end((err?: Error | null) => { if (err != null) reject(err); else resolve() })
  })
}

/** Resolves on the stream's next 'drain' (or 'idle'), rejects on 'close', abort or a stall. */
async function writable (stream: Stream, signal: AbortSignal): Promise<void> {
  signal.throwIfAborted()
  if (stream.writeStatus !== 'writable') throw new KithError('FRIEND_OFFLINE', `the service stream is ${stream.writeStatus}`)
  await new Promise<void>((resolve, reject) => {
    const done = (err?: unknown): void => {
      clearTimeout(timer)
      stream.removeEventListener('drain', onReady)
      stream.removeEventListener('idle', onReady)
      stream.removeEventListener('close', onClose)
      signal.removeEventListener('abort', onAbort)
      if (err === undefined) resolve()
      else reject(err)
    }
    const onReady = (): void => { done() }
    const onClose = (evt: Event & { error?: Error }): void => { done(evt.error ?? new KithError('FRIEND_OFFLINE', 'the service stream closed while sending')) }
    const onAbort = (): void => { done(signal.reason) }
    const timer = setTimeout(() => { done(new KithError('SERVICE_STALLED', `the other side took nothing for ${STALL_TIMEOUT_MS / 1000} s`)) }, STALL_TIMEOUT_MS)
    stream.addEventListener('drain', onReady)
    stream.addEventListener('idle', onReady)
    stream.addEventListener('close', onClose)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

/** Resolves on the socket's 'drain', rejects when it closes or `signal` aborts. */
async function drained (socket: Socket, signal: AbortSignal): Promise<void> {
  signal.throwIfAborted()
  await new Promise<void>((resolve, reject) => {
    const done = (err?: unknown): void => {
      socket.off('drain', onDrain)
      socket.off('close', onClose)
      signal.removeEventListener('abort', onAbort)
      if (err === undefined) resolve()
      else reject(err)
    }
    const onDrain = (): void => { done() }
    const onClose = (): void => { done(new KithError('SERVICE_DOWN', 'the local connection closed while data was still coming')) }
    const onAbort = (): void => { done(signal.reason) }
    socket.on('drain', onDrain)
    socket.on('close', onClose)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}
