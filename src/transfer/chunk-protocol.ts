import type { AbortOptions, Connection, PeerId, Stream, StreamHandler } from '@libp2p/interface'
import { Uint8ArrayList } from 'uint8arraylist'
import { KithError } from '../errors.ts'
import { dialProtocol } from '../peer/dial.ts'
import { fillNoiseMessages } from '../peer/noise-fit.ts'
import { cleanText } from '../peer/text.ts'
import { ID_LENGTH, MAX_SEALED_CHUNK_SIZE, SEAL_OVERHEAD } from './constants.ts'
import type { ChunkStore } from './chunk-store.ts'
import { checkSealedSize, isId, sealedSize, SEAL_FORMAT } from './seal.ts'
import type { BufferPool } from './buffer-pool.ts'

/**
 * The chunk protocol: moves sealed chunks between friends. It holds no policy
 * (who to ask, what to do with a bad answer): that is the fetcher's job. One
 * request per stream; the requester writes it and closes its writable end,
 * the holder answers and closes its own.
 *
 *   frame    = varint(length) body                 length checked before the body is read
 *   body     = version u8 (1) || kind u8 || payload
 *
 *   HAVE     0x01  n × id(32)                       1 ≤ n ≤ MAX_HAVE_IDS
 *   GET      0x02  n × id(32)                       1 ≤ n ≤ MAX_GET_IDS
 *   HAVE_OK  0x81  bitfield, ceil(n/8) bytes        bit i (MSB first) set iff id i is held; spare bits 0
 *   CHUNK    0x82  id(32) || sealed bytes           SEAL_OVERHEAD ≤ sealed ≤ MAX_SEALED_CHUNK_SIZE
 *   MISSING  0x83  id(32)
 *   ERROR    0xff  status u8 || message (UTF-8)     message ≤ MAX_ERROR_MESSAGE bytes
 *
 *   HAVE:  requester -> HAVE              holder -> HAVE_OK | ERROR
 *   GET:   requester -> GET               holder -> (CHUNK | MISSING) per id, in request order,
 *                                                   possibly cut short by one ERROR
 *
 * Frames are binary rather than CBOR because this is the bulk path: a chunk
 * goes out as a 36-byte header followed by the store's buffer, uncopied, and
 * the fixed layouts leave no room for two encodings of one message. Ids travel
 * as 32 bytes; the JS API uses lowercase hex as everywhere else. CHUNK bytes
 * are not verified here: the receiver's `ChunkStore.put` checks sha256.
 *
 * Every frame carries the version. A holder that gets a version it doesn't
 * know answers ERROR(UNSUPPORTED_VERSION) in version-1 framing; the ERROR
 * layout is frozen so that any two versions can explain a refusal.
 */
export const CHUNK_PROTOCOL = '/kith/chunks/1.0.0'
export const CHUNK_PROTOCOL_VERSION = 1

/** Ids in one HAVE: 128 KiB of request, one bitfield of 512 bytes back. */
export const MAX_HAVE_IDS = 4096
/**
 * Ids in one GET. The answer streams with backpressure, so this bounds the
 * time one stream is held (64 × 4 MiB at worst), not memory.
 */
export const MAX_GET_IDS = 64
/** UTF-8 bytes of an ERROR message; longer ones are cut. */
export const MAX_ERROR_MESSAGE = 1024
/** The largest request frame body (a full HAVE). */
export const MAX_REQUEST_FRAME = 2 + MAX_HAVE_IDS * ID_LENGTH
/** The largest response frame body (a CHUNK of the largest sealed chunk). */
export const MAX_RESPONSE_FRAME = 2 + ID_LENGTH + MAX_SEALED_CHUNK_SIZE

/** How long a holder waits for the request after the stream opens. */
export const REQUEST_TIMEOUT_MS = 10_000
/** How long one send may wait for the requester to take bytes before the holder gives up. */
export const SEND_STALL_TIMEOUT_MS = 30_000
/** How long a holder waits for the requester to close its end after answering. */
export const LINGER_MS = 5_000
/**
 * Bytes a sender lets queue in a stream before it waits: `send()` + 'drain'
 * alone does not bound a yamux stream (DESIGN.md), this does.
 */
export const SEND_HIGH_WATER = 4 * 1024 * 1024
/** Sends are cleared by `beforeSend` this many bytes at a time, so a throttle stays smooth. */
export const SEND_SLICE = 256 * 1024
/** The bytes of one send: with yamux's header, one whole Noise message (src/peer/noise-fit.ts). */
export const MUXER_MESSAGE = fillNoiseMessages(1, 0)
/**
 * Frames of a GET's answer smaller than this go out together, up to this many
 * bytes in one send: each send is a muxer frame, an encrypted message and a
 * socket write here, and a window update, a decryption and a read on the
 * other side, which for chunks of small files cost more than their bytes.
 */
export const COALESCE_BYTES = 64 * 1024
/** Chunks a GET reads from the store ahead of the one being sent, so disk latency hides behind the network. */
export const READ_AHEAD = 2
/** GET requests one holder serves at once, over all peers; more get ERROR(BUSY). */
export const MAX_CONCURRENT_GETS = 16
/**
 * GET requests one holder serves one peer at once; more get ERROR(BUSY). So
 * one friend, however many streams and connections it opens, holds at most
 * this many of the MAX_CONCURRENT_GETS slots (and their send buffers), and
 * the others' fetches go on. An honest daemon asks at most this many: 2 per
 * fetch (fetcher.ts), 3 fetches at once (transfers.ts).
 */
export const MAX_GETS_PER_PEER = 6
/** HAVE lookups run this many at a time against the store. */
const HAVE_CONCURRENCY = 32

const KIND_HAVE = 0x01
const KIND_GET = 0x02
const KIND_HAVE_OK = 0x81
const KIND_CHUNK = 0x82
const KIND_MISSING = 0x83
const KIND_ERROR = 0xff

/** Why a holder refused, as it travels in an ERROR frame; mapped to local errors in `remoteError`. */
export const STATUS = {
  MALFORMED: 1,
  TOO_LARGE: 2,
  UNSUPPORTED_VERSION: 3,
  BUSY: 4,
  INTERNAL: 5
} as const
export type Status = typeof STATUS[keyof typeof STATUS]

export type ChunkRequest =
  | { type: 'have', ids: string[] }
  | { type: 'get', ids: string[] }

export type ChunkResponse =
  | { type: 'have-ok', bits: Uint8Array }
  | { type: 'chunk', id: string, sealed: Uint8Array }
  | { type: 'missing', id: string }
  | { type: 'error', status: number, message: string }

/** What `getChunks` yields for each id asked, in order. */
export type ChunkItem =
  | { id: string, sealed: Uint8Array }
  | { id: string, missing: true }

/** The part of libp2p the requester side needs. */
export interface ChunkDialer {
  dialProtocol: (peer: PeerId, protocol: string, options?: AbortOptions) => Promise<Stream>
}

/** A bandwidth hook: resolves when `bytes` may be sent to `peer`. */
export type BeforeSend = (bytes: number, peer: PeerId, signal: AbortSignal) => Promise<void>

// ---------------------------------------------------------------------------
// codec

function malformed (message: string): KithError {
  return new KithError('CHUNK_FRAME_MALFORMED', message)
}

function tooLarge (message: string): KithError {
  return new KithError('CHUNK_FRAME_TOO_LARGE', message)
}

function unsupported (version: number): KithError {
  return new KithError('UNSUPPORTED_VERSION', `chunk protocol version ${version} is not known to this kith (it speaks ${CHUNK_PROTOCOL_VERSION}); upgrade kith`)
}

export function encodeVarint (value: number): Uint8Array {
  const out: number[] = []
  while (value >= 0x80) {
    out.push((value & 0x7f) | 0x80)
    value = Math.floor(value / 128)
  }
  out.push(value)
  return Uint8Array.from(out)
}

/**
 * Reads a frame length from the first bytes. Returns undefined if more bytes
 * are needed, else the length and how many bytes it took. Refuses lengths
 * over `max` as soon as that is certain (before the body is read, and before
 * the varint is even complete), non-minimal varints, and bodies too short to
 * hold a version and kind.
 */
export function readLength (byteAt: (i: number) => number, available: number, max: number): { length: number, size: number } | undefined {
  let value = 0
  let scale = 1
  for (let i = 0; i < available; i++) {
    const byte = byteAt(i)
    value += (byte & 0x7f) * scale
    if (value > max) throw tooLarge(`a frame of more than ${max} bytes was announced; the limit is ${max}`)
    if ((byte & 0x80) === 0) {
      if (byte === 0 && i > 0) throw malformed('a frame length is not minimally encoded')
      if (value < 2) throw malformed(`a frame of ${value} bytes can't hold a version and a kind`)
      return { length: value, size: i + 1 }
    }
    scale *= 128
    // a minimal varint's next (last) byte is at least 1, so the length will be at least `scale`
    if (scale > max) throw tooLarge(`a frame length longer than any allowed (${max} bytes) was announced`)
  }
  return undefined
}

/** Frames a body: the varint length, then the parts. */
export function frame (parts: Uint8Array[]): Uint8Array[] {
  const length = parts.reduce((sum, p) => sum + p.byteLength, 0)
  return [encodeVarint(length), ...parts]
}

/** Splits one whole frame (length prefix included) off `bytes`; for tests and tools. */
export function decodeFrame (bytes: Uint8Array, max: number): { body: Uint8Array, rest: Uint8Array } {
  const header = readLength(i => bytes[i]!, Math.min(bytes.length, 8), max)
  if (header === undefined || bytes.length < header.size + header.length) {
    throw malformed(`the frame is truncated (${bytes.length} bytes)`)
  }
  return {
    body: bytes.subarray(header.size, header.size + header.length),
    rest: bytes.subarray(header.size + header.length)
  }
}

function idsToBytes (ids: string[]): Uint8Array {
  const out = Buffer.allocUnsafe(ids.length * ID_LENGTH)
  ids.forEach((id, i) => {
    if (!isId(id)) throw new KithError('CHUNK_BAD_ID', `${JSON.stringify(String(id).slice(0, 80))} is not a chunk id (64 lowercase hex characters)`)
    out.write(id, i * ID_LENGTH, 'hex')
  })
  return out
}

function hex (bytes: Uint8Array, at: number): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset + at, ID_LENGTH).toString('hex')
}

/** A request body (no length prefix). */
export function encodeRequest (request: ChunkRequest): Uint8Array {
  const max = request.type === 'have' ? MAX_HAVE_IDS : MAX_GET_IDS
  if (request.ids.length < 1 || request.ids.length > max) {
    throw new KithError('BAD_REQUEST', `a ${request.type.toUpperCase()} asks for 1 to ${max} ids, not ${request.ids.length}`)
  }
  const ids = idsToBytes(request.ids)
  const body = Buffer.allocUnsafe(2 + ids.length)
  body[0] = CHUNK_PROTOCOL_VERSION
  body[1] = request.type === 'have' ? KIND_HAVE : KIND_GET
  body.set(ids, 2)
  return body
}

export function decodeRequest (body: Uint8Array): ChunkRequest {
  if (body.length < 2) throw malformed('a request is at least 2 bytes')
  if (body[0] !== CHUNK_PROTOCOL_VERSION) throw unsupported(body[0]!)
  const kind = body[1]
  if (kind !== KIND_HAVE && kind !== KIND_GET) throw malformed(`0x${kind!.toString(16)} is not a request kind`)
  const payload = body.length - 2
  if (payload % ID_LENGTH !== 0) throw malformed(`a request carries whole ${ID_LENGTH}-byte ids, not ${payload} bytes`)
  const count = payload / ID_LENGTH
  const max = kind === KIND_HAVE ? MAX_HAVE_IDS : MAX_GET_IDS
  const name = kind === KIND_HAVE ? 'HAVE' : 'GET'
  if (count === 0) throw malformed(`a ${name} asks for no ids`)
  if (count > max) throw tooLarge(`a ${name} asks for ${count} ids; the limit is ${max}`)
  const ids: string[] = []
  for (let i = 0; i < count; i++) ids.push(hex(body, 2 + i * ID_LENGTH))
  return { type: kind === KIND_HAVE ? 'have' : 'get', ids }
}

function header (kind: number, id?: string): Uint8Array {
  const out = Buffer.allocUnsafe(id === undefined ? 2 : 2 + ID_LENGTH)
  out[0] = CHUNK_PROTOCOL_VERSION
  out[1] = kind
  if (id !== undefined) out.write(id, 2, 'hex')
  return out
}

/** A response body as parts (no length prefix); a CHUNK's sealed bytes are not copied. */
export function encodeResponse (response: ChunkResponse): Uint8Array[] {
  switch (response.type) {
    case 'have-ok':
      return [header(KIND_HAVE_OK), response.bits]
    case 'chunk':
      return encodeChunk(response.id, [response.sealed])
    case 'missing':
      if (!isId(response.id)) throw new KithError('CHUNK_BAD_ID', 'not a chunk id')
      return [header(KIND_MISSING, response.id)]
    case 'error': {
      const out = header(KIND_ERROR)
      return [out, Uint8Array.of(response.status), Buffer.from(cleanText(response.message, MAX_ERROR_MESSAGE), 'utf8')]
    }
  }
}

/** A CHUNK response whose sealed bytes are given in pieces (joined in order), sent without joining them. */
export function encodeChunk (id: string, sealed: Uint8Array[]): Uint8Array[] {
  if (!isId(id)) throw new KithError('CHUNK_BAD_ID', 'not a chunk id')
  checkSealedSize(sealed)
  return [header(KIND_CHUNK, id), ...sealed]
}

export function decodeResponse (body: Uint8Array): ChunkResponse {
  if (body.length < 2) throw malformed('a response is at least 2 bytes')
  const kind = body[1]!
  // ERROR's layout is frozen across versions, so a refusal always reads.
  if (kind === KIND_ERROR) {
    if (body.length < 3) throw malformed('an ERROR frame has no status')
    if (body.length > 3 + MAX_ERROR_MESSAGE) throw tooLarge(`an ERROR message is at most ${MAX_ERROR_MESSAGE} bytes`)
    return { type: 'error', status: body[2]!, message: cleanText(Buffer.from(body.subarray(3)).toString('utf8'), MAX_ERROR_MESSAGE) }
  }
  if (body[0] !== CHUNK_PROTOCOL_VERSION) throw unsupported(body[0]!)
  switch (kind) {
    case KIND_HAVE_OK:
      if (body.length > 2 + MAX_HAVE_IDS / 8) throw tooLarge('a HAVE_OK bitfield is longer than any HAVE could ask for')
      return { type: 'have-ok', bits: body.subarray(2) }
    case KIND_CHUNK: {
      const size = body.length - 2 - ID_LENGTH
      if (size < SEAL_OVERHEAD) throw malformed(`a CHUNK frame of ${body.length} bytes is too short to hold an id and a sealed chunk`)
      if (size > MAX_SEALED_CHUNK_SIZE) throw tooLarge(`a sealed chunk of ${size} bytes is over the limit of ${MAX_SEALED_CHUNK_SIZE}`)
      return { type: 'chunk', id: hex(body, 2), sealed: body.subarray(2 + ID_LENGTH) }
    }
    case KIND_MISSING:
      if (body.length !== 2 + ID_LENGTH) throw malformed(`a MISSING frame is ${2 + ID_LENGTH} bytes, not ${body.length}`)
      return { type: 'missing', id: hex(body, 2) }
    default:
      throw malformed(`0x${kind.toString(16)} is not a response kind`)
  }
}

/** A HAVE_OK bitfield for `held` (one flag per id asked). */
export function encodeBits (held: boolean[]): Uint8Array {
  const bits = new Uint8Array(Math.ceil(held.length / 8))
  held.forEach((h, i) => { if (h) bits[i >> 3]! |= 0x80 >> (i & 7) })
  return bits
}

/** The flags of a HAVE_OK bitfield for `count` ids; refuses a wrong length or set spare bits. */
export function decodeBits (bits: Uint8Array, count: number): boolean[] {
  if (bits.length !== Math.ceil(count / 8)) throw malformed(`a HAVE_OK for ${count} ids is ${Math.ceil(count / 8)} bytes, not ${bits.length}`)
  const spare = count % 8 === 0 ? 0 : 0xff >> (count % 8)
  if (spare !== 0 && (bits[bits.length - 1]! & spare) !== 0) throw malformed('a HAVE_OK sets bits past the last id')
  const held: boolean[] = []
  for (let i = 0; i < count; i++) held.push((bits[i >> 3]! & (0x80 >> (i & 7))) !== 0)
  return held
}

function statusOf (err: KithError): Status {
  if (err.code === 'CHUNK_FRAME_TOO_LARGE') return STATUS.TOO_LARGE
  if (err.code === 'UNSUPPORTED_VERSION') return STATUS.UNSUPPORTED_VERSION
  return STATUS.MALFORMED
}

/** The one place a holder's ERROR becomes a local error. */
export function remoteError (peer: PeerId, status: number, message: string): KithError {
  const said = message === '' ? '' : `: ${message}`
  switch (status) {
    case STATUS.BUSY:
      return new KithError('CHUNK_PEER_BUSY', `${peer} is serving too many chunk requests right now${said}; try again shortly`)
    case STATUS.UNSUPPORTED_VERSION:
      return new KithError('UNSUPPORTED_VERSION', `${peer} speaks another version of the chunk protocol${said}; one of you should upgrade kith`)
    case STATUS.INTERNAL:
      return new KithError('CHUNK_PEER_FAILED', `${peer} could not read its chunk store${said}`)
    case STATUS.MALFORMED:
    case STATUS.TOO_LARGE:
      return new KithError('CHUNK_PEER_REFUSED', `${peer} could not read our chunk request${said}; one of you may need to upgrade kith`)
    default:
      return new KithError('CHUNK_PEER_REFUSED', `${peer} refused the chunk request (status ${status})${said}`)
  }
}

// ---------------------------------------------------------------------------
// reading and writing frames on a libp2p stream

/** Received bytes not yet framed: a list of buffers, taken from without copying where possible. */
class ByteQueue {
  private bufs: Uint8Array[] = []
  private offset = 0
  length = 0

  push (buf: Uint8Array): void {
    if (buf.byteLength === 0) return
    this.bufs.push(buf)
    this.length += buf.byteLength
  }

  at (i: number): number {
    let index = i + this.offset
    for (const buf of this.bufs) {
      if (index < buf.byteLength) return buf[index]!
      index -= buf.byteLength
    }
    throw new RangeError('past the end')
  }

  skip (n: number): void {
    this.length -= n
    n += this.offset
    while (n > 0 && this.bufs.length > 0 && n >= this.bufs[0]!.byteLength) {
      n -= this.bufs.shift()!.byteLength
    }
    this.offset = n
  }

  /** Removes and returns the next n bytes; a view when they lie in one buffer, else one copy. */
  take (n: number): Uint8Array {
    const first = this.bufs[0]!
    if (this.offset + n <= first.byteLength) {
      const out = first.subarray(this.offset, this.offset + n)
      this.skip(n)
      return out
    }
    const out = Buffer.allocUnsafe(n)
    this.moveInto(out, 0, n)
    return out
  }

  /** Removes the next n bytes, copying them into `out` from `at`. */
  moveInto (out: Uint8Array, at: number, n: number): void {
    let filled = 0
    while (filled < n) {
      const buf = this.bufs[0]!
      const piece = Math.min(n - filled, buf.byteLength - this.offset)
      out.set(buf.subarray(this.offset, this.offset + piece), at + filled)
      filled += piece
      this.skip(piece)
    }
  }
}

/**
 * Frame bodies at least this long are copied, piece by piece as the pieces
 * arrive, into a buffer of their own (from `FrameReaderInit.buffers` if
 * given): each piece is a view of a decrypted Noise message (up to 64 KiB),
 * which then dies young instead of waiting for its whole frame (a 1 MiB
 * chunk is 16 of them) and reaching V8's old generation and glibc's heap.
 * Shorter bodies are taken as views where they lie in one piece.
 */
export const FILL_FRAME_BYTES = 64 * 1024

export interface FrameReaderInit {
  /** largest frame body accepted; longer ones fail before their body is read */
  maxFrame: number
  /**
   * Buffered bytes above which the reader pauses the stream (`pause: true`,
   * yamux then stops granting window) or aborts it (`pause: false`, for a
   * side that expects nothing more). Must exceed `maxFrame`.
   */
  highWater: number
  pause: boolean
  /** called with the size of every piece received, for progress and stall detection */
  onBytes?: (bytes: number) => void
  /**
   * Bodies at least this long are copied into a buffer of their own as their
   * pieces arrive.
   * @default FILL_FRAME_BYTES
   */
  fillFrom?: number
  /** where those bodies are copied to (see GetChunksOptions.buffers) */
  buffers?: BufferPool
}

/**
 * Reads length-prefixed frames from a libp2p 3 stream with bounded memory.
 * Frames are split off as their pieces arrive (see FILL_FRAME_BYTES); a
 * malformed or oversize length is reported once the frames before it are
 * taken. Finishes on 'end' (never on 'remoteCloseWrite', which can fire while
 * data is still buffered). Pausing makes yamux stop granting window, so what
 * a stream holds is at most `highWater` here plus about two muxer windows
 * (one dispatched on resume, one landing while paused; 4 MiB each in kith's
 * configuration, src/peer/node.ts).
 */
export class FrameReader {
  private readonly stream: Stream
  private readonly init: FrameReaderInit
  /** bytes not yet part of a frame body: lengths and short bodies */
  private readonly queue = new ByteQueue()
  /** whole frame bodies, in order, not yet taken */
  private readonly ready: Uint8Array[] = []
  private readyBytes = 0
  /** a long body being copied into as its pieces arrive */
  private filling: { body: Uint8Array, at: number } | undefined
  /** what the bytes after the last whole frame are, if they are no frame: thrown once the frames before are taken */
  private broken: Error | undefined
  /** bytes received after the broken frame: dropped, but counted against highWater as if they were queued */
  private dropped = 0
  private ended = false
  private error: Error | undefined
  private wake: (() => void) | undefined
  private resuming = false

  constructor (stream: Stream, init: FrameReaderInit) {
    this.stream = stream
    this.init = init
    stream.addEventListener('message', this.onMessage)
    stream.addEventListener('end', this.onEnd)
    stream.addEventListener('close', this.onClose)
    if (stream.readableEnded) this.ended = true
    if (stream.status === 'aborted' || stream.status === 'reset') this.error = new Error(`the stream was ${stream.status}`)
  }

  /** bytes received and not yet taken */
  private get buffered (): number {
    return this.readyBytes + this.queue.length + (this.filling?.at ?? 0) + this.dropped
  }

  private readonly onMessage = (evt: { data: Uint8Array | Iterable<Uint8Array> }): void => {
    let bytes = 0
    if (evt.data instanceof Uint8Array) {
      bytes = evt.data.byteLength
      this.receive(evt.data)
    } else {
      for (const buf of evt.data) {
        bytes += buf.byteLength
        this.receive(buf)
      }
    }
    this.init.onBytes?.(bytes)
    if (this.buffered > this.init.highWater) {
      if (this.init.pause) {
        // never from inside resume(): yamux resumes granting window after the
        // dispatch, so a pause made during it would leave the stream reading
        // as paused while the window stays open (resume() pauses again after)
        if (!this.resuming) this.pause()
      } else if (this.error === undefined) {
        this.error = tooLarge(`more than ${this.init.highWater} bytes arrived unasked`)
        this.stream.abort(this.error)
      }
    }
    this.notify()
  }

  /** Takes one piece: into the long body being filled, then into the queue, which is framed. */
  private receive (piece: Uint8Array): void {
    if (this.broken !== undefined) {
      this.dropped += piece.byteLength
      return
    }
    const filling = this.filling
    if (filling !== undefined) {
      const n = Math.min(piece.byteLength, filling.body.byteLength - filling.at)
      filling.body.set(n === piece.byteLength ? piece : piece.subarray(0, n), filling.at)
      filling.at += n
      if (filling.at < filling.body.byteLength) return
      this.filling = undefined
      this.done(filling.body)
      piece = piece.subarray(n)
    }
    this.queue.push(piece)
    try {
      this.frame()
    } catch (err) {
      this.broken = err as Error
    }
  }

  /** Splits whole frames off the queue, and starts filling a long body whose length it holds. */
  private frame (): void {
    const queue = this.queue
    while (queue.length > 0) {
      const head = readLength(i => queue.at(i), Math.min(queue.length, 8), this.init.maxFrame)
      if (head === undefined) return
      if (head.length < (this.init.fillFrom ?? FILL_FRAME_BYTES)) {
        if (queue.length < head.size + head.length) return
        queue.skip(head.size)
        this.done(queue.take(head.length))
        continue
      }
      queue.skip(head.size)
      // the length is checked against maxFrame: this is the most a frame may take
      const body = this.init.buffers?.take(head.length) ?? Buffer.allocUnsafe(head.length)
      const n = Math.min(queue.length, head.length)
      queue.moveInto(body, 0, n)
      if (n < head.length) {
        this.filling = { body, at: n }
        return
      }
      this.done(body)
    }
  }

  private done (body: Uint8Array): void {
    this.ready.push(body)
    this.readyBytes += body.byteLength
  }

  private readonly onEnd = (): void => {
    this.ended = true
    this.notify()
  }

  private readonly onClose = (evt: Event & { error?: Error }): void => {
    if (evt.error != null) this.error ??= evt.error
    else if (this.stream.readBufferLength === 0) this.ended = true
    this.notify()
  }

  private notify (): void {
    const wake = this.wake
    this.wake = undefined
    wake?.()
  }

  private pause (): void {
    if (this.stream.readStatus === 'readable') this.stream.pause()
  }

  private resume (): void {
    if (this.stream.readStatus !== 'paused') return
    this.resuming = true
    try {
      this.stream.resume()
    } finally {
      this.resuming = false
    }
    if (this.buffered > this.init.highWater) this.pause()
  }

  /** The next frame body, or undefined at a clean end of stream between frames. */
  async next (options: AbortOptions = {}): Promise<Uint8Array | undefined> {
    while (true) {
      options.signal?.throwIfAborted()
      // whole frames that arrived before a reset are still good
      const body = this.ready.shift()
      if (body !== undefined) {
        this.readyBytes -= body.byteLength
        if (this.buffered < this.init.highWater / 2) this.resume()
        return body
      }
      if (this.broken !== undefined) throw this.broken
      if (this.error !== undefined) throw this.error
      if (this.ended) {
        const left = this.buffered
        // a long body's length was read and none of it came: that is a frame cut short too, not a clean end
        if (left === 0 && this.filling === undefined) return undefined
        throw malformed(this.filling !== undefined
          ? `the stream ended in the middle of a frame (${this.filling.at} of its ${this.filling.body.byteLength} bytes came)`
          : `the stream ended in the middle of a frame (${left} bytes left over)`)
      }
      // resume() may hand over buffered data (or the end) at once, with nobody waiting yet
      const before = this.buffered
      this.resume()
      if (this.buffered !== before || this.ready.length > 0 || this.broken !== undefined || this.ended || this.error !== undefined) continue
      await new Promise<void>((resolve, reject) => {
        const signal = options.signal
        const onAbort = (): void => {
          this.wake = undefined
          reject(signal?.reason)
        }
        this.wake = () => {
          signal?.removeEventListener('abort', onAbort)
          resolve()
        }
        signal?.addEventListener('abort', onAbort, { once: true })
      })
    }
  }

  dispose (): void {
    this.stream.removeEventListener('message', this.onMessage)
    this.stream.removeEventListener('end', this.onEnd)
    this.stream.removeEventListener('close', this.onClose)
    this.notify()
  }
}

/** Resolves on the next 'drain' (or also 'idle'), rejects on 'close', abort or timeout. */
async function writable (stream: Stream, events: Array<'drain' | 'idle'>, signal: AbortSignal, timeoutMs: number): Promise<void> {
  signal.throwIfAborted()
  if (stream.writeStatus !== 'writable') throw new KithError('CHUNK_PEER_UNREACHABLE', `the stream is ${stream.writeStatus}`)
  await new Promise<void>((resolve, reject) => {
    const done = (err?: unknown): void => {
      clearTimeout(timer)
      for (const event of events) stream.removeEventListener(event, onReady)
      stream.removeEventListener('close', onClose)
      signal.removeEventListener('abort', onAbort)
      if (err === undefined) resolve()
      else reject(err)
    }
    const onReady = (): void => { done() }
    const onClose = (evt: Event & { error?: Error }): void => { done(evt.error ?? new KithError('CHUNK_PEER_UNREACHABLE', 'the stream closed while sending')) }
    const onAbort = (): void => { done(signal.reason) }
    const timer = setTimeout(() => { done(new KithError('CHUNK_PEER_STALLED', `the other side took nothing for ${timeoutMs} ms`)) }, timeoutMs)
    for (const event of events) stream.addEventListener(event, onReady)
    stream.addEventListener('close', onClose)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

export interface SendOptions {
  signal: AbortSignal
  peer: PeerId
  beforeSend?: BeforeSend
  /** @default SEND_SLICE */
  slice?: number
  /** @default SEND_STALL_TIMEOUT_MS */
  stallTimeoutMs?: number
}

/**
 * Sends one frame with backpressure: in slices (each first cleared by
 * `beforeSend`), waiting for 'drain' whenever `send()` says so and while more
 * than SEND_HIGH_WATER bytes sit in the stream's write buffer.
 */
export async function sendFrame (stream: Stream, parts: Uint8Array[], options: SendOptions): Promise<void> {
  await sendFramed(stream, frame(parts), options)
}

/**
 * `sendFrame` of bytes already framed (one frame or several). The parts go
 * out in sends of MUXER_MESSAGE bytes, joined without copying where a send
 * spans parts: each send is a muxer frame, and a frame of that size with its
 * 12-byte header is exactly one Noise message. (A 64 KiB part sent alone is
 * a frame over Noise's 65,519 bytes, so two messages, the second of 29
 * bytes; a frame's header, a sealed chunk's nonce and tag sent alone are a
 * message each.) `beforeSend` clears `slice` bytes at a time.
 */
async function sendFramed (stream: Stream, framed: Uint8Array[], options: SendOptions): Promise<void> {
  const slice = options.slice ?? SEND_SLICE
  const stallMs = options.stallTimeoutMs ?? SEND_STALL_TIMEOUT_MS
  /** bytes not yet sent, and of them those `beforeSend` has cleared */
  let left = framed.reduce((sum, part) => sum + part.byteLength, 0)
  let cleared = 0
  const send = async (piece: Uint8ArrayList): Promise<void> => {
    if (cleared < piece.byteLength) {
      const ask = Math.min(Math.max(slice, piece.byteLength), left) - cleared
      if (options.beforeSend !== undefined) await options.beforeSend(ask, options.peer, options.signal)
      cleared += ask
    }
    cleared -= piece.byteLength
    left -= piece.byteLength
    options.signal.throwIfAborted()
    if (!stream.send(piece)) await writable(stream, ['drain'], options.signal, stallMs)
    while (stream.writeBufferLength > SEND_HIGH_WATER) await writable(stream, ['drain', 'idle'], options.signal, stallMs)
  }
  let piece = new Uint8ArrayList()
  for (const part of framed) {
    for (let at = 0; at < part.byteLength;) {
      const take = Math.min(part.byteLength - at, MUXER_MESSAGE - piece.byteLength)
      piece.append(take === part.byteLength ? part : part.subarray(at, at + take))
      at += take
      if (piece.byteLength === MUXER_MESSAGE) {
        await send(piece)
        piece = new Uint8ArrayList()
      }
    }
  }
  if (piece.byteLength > 0) await send(piece)
}

async function raceAbort<T> (promise: Promise<T>, signal: AbortSignal): Promise<T> {
  signal.throwIfAborted()
  let onAbort: (() => void) | undefined
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_resolve, reject) => {
        onAbort = () => { reject(signal.reason) }
        signal.addEventListener('abort', onAbort, { once: true })
      })
    ])
  } finally {
    if (onAbort !== undefined) signal.removeEventListener('abort', onAbort)
  }
}

// ---------------------------------------------------------------------------
// the holder's side

export interface ServedEvent {
  peer: PeerId
  type: 'have' | 'get' | 'refused'
  /** ids asked */
  ids: number
  /** CHUNK frames sent (GET) or ids held (HAVE) */
  held: number
  /** MISSING frames sent (GET) or ids not held (HAVE) */
  missing: number
  /** sealed bytes sent */
  bytes: number
  /** why the request failed or was refused, if it did */
  error?: Error
}

export interface ChunkHandlerInit {
  /** chunks are sent as `getParts` hands them over, in pieces, without joining them */
  store: Pick<ChunkStore, 'getParts' | 'has'>
  /**
   * Called before every slice is sent, with its size; resolve when it may go.
   * A bandwidth scheduler (a token bucket) plugs in here. The signal aborts
   * when the stream ends.
   *
   * @default no throttle
   */
  beforeSend?: BeforeSend
  /** @default MAX_CONCURRENT_GETS */
  maxConcurrentGets?: number
  /** @default MAX_GETS_PER_PEER */
  maxGetsPerPeer?: number
  /** @default SEND_SLICE */
  sendSlice?: number
  /** @default REQUEST_TIMEOUT_MS */
  requestTimeoutMs?: number
  /** @default SEND_STALL_TIMEOUT_MS */
  sendStallTimeoutMs?: number
  /** Told about every request once it is done: for metrics, logs and tests. */
  onServed?: (event: ServedEvent) => void
}

type Read = { sealed: Uint8Array[] } | { missing: true } | { error: Error }

/**
 * The holder's side of `/kith/chunks/1.0.0`, for `libp2p.handle`. Gating
 * (friends only) and per-connection stream limits are the registrant's job;
 * this bounds each stream's memory (READ_AHEAD chunks read ahead, SEND_HIGH_WATER
 * queued) and the number of GETs served at once, in all and to each peer. Bad requests get an ERROR
 * frame and a closed stream; nothing a peer sends can throw out of here.
 */
export function chunkHandler (init: ChunkHandlerInit): StreamHandler {
  const maxGets = init.maxConcurrentGets ?? MAX_CONCURRENT_GETS
  const maxPerPeer = init.maxGetsPerPeer ?? MAX_GETS_PER_PEER
  const requestTimeoutMs = init.requestTimeoutMs ?? REQUEST_TIMEOUT_MS
  const stallTimeoutMs = init.sendStallTimeoutMs ?? SEND_STALL_TIMEOUT_MS
  let gets = 0
  /** GETs being served, by peer */
  const getsOf = new Map<string, number>()

  async function read (id: string, signal: AbortSignal): Promise<Read> {
    try {
      const sealed = await raceAbort(init.store.getParts(id), signal)
      // Only chunks sealed for sharing go out here. The store also holds other
      // sealed blobs (friends' backups) that their owner alone may read back,
      // over their own protocol: to this one they are missing.
      if (sealed[0]?.[0] !== SEAL_FORMAT) return { missing: true }
      return { sealed }
    } catch (err) {
      const code = (err as KithError).code
      if (code === 'CHUNK_NOT_FOUND' || code === 'CHUNK_CORRUPT' || code === 'CHUNK_BAD_ID') return { missing: true }
      return { error: err as Error }
    }
  }

  return async (stream: Stream, connection: Connection): Promise<void> => {
    const peer = connection.remotePeer
    const controller = new AbortController()
    const onClose = (evt: Event & { error?: Error }): void => { controller.abort(evt.error ?? new KithError('CHUNK_PEER_UNREACHABLE', 'the stream closed')) }
    stream.addEventListener('close', onClose)
    const signal = controller.signal
    // pause: false - after the request nothing more may come; junk past one request aborts the stream
    const reader = new FrameReader(stream, { maxFrame: MAX_REQUEST_FRAME, highWater: MAX_REQUEST_FRAME + 16, pause: false })
    const send = { signal, peer, beforeSend: init.beforeSend, slice: init.sendSlice, stallTimeoutMs }
    const served: ServedEvent = { peer, type: 'refused', ids: 0, held: 0, missing: 0, bytes: 0 }
    try {
      let request: ChunkRequest
      const timer = setTimeout(() => { controller.abort(new KithError('CHUNK_PEER_STALLED', `no request within ${requestTimeoutMs} ms`)) }, requestTimeoutMs)
      try {
        const body = await reader.next({ signal })
        if (body === undefined) throw malformed('the stream ended before a request came')
        request = decodeRequest(body)
      } catch (err) {
        const code = (err as KithError).code
        if (code !== 'CHUNK_FRAME_MALFORMED' && code !== 'CHUNK_FRAME_TOO_LARGE' && code !== 'UNSUPPORTED_VERSION') throw err
        served.error = err as Error
        await sendFrame(stream, encodeResponse({ type: 'error', status: statusOf(err as KithError), message: (err as Error).message }), send)
        await finish(stream, signal, stallTimeoutMs)
        return
      } finally {
        clearTimeout(timer)
      }
      served.type = request.type
      served.ids = request.ids.length
      if (request.type === 'have') {
        const held: boolean[] = new Array(request.ids.length).fill(false)
        let failed: Error | undefined
        for (let i = 0; i < request.ids.length && failed === undefined; i += HAVE_CONCURRENCY) {
          const slice = request.ids.slice(i, i + HAVE_CONCURRENCY)
          try {
            const answers = await raceAbort(Promise.all(slice.map(async id => await init.store.has(id))), signal)
            answers.forEach((h, j) => { held[i + j] = h })
          } catch (err) {
            if (signal.aborted) throw err
            failed = err as Error
          }
        }
        if (failed !== undefined) {
          served.error = failed
          await sendFrame(stream, encodeResponse({ type: 'error', status: STATUS.INTERNAL, message: 'the holder could not read its chunk store' }), send)
        } else {
          served.held = held.filter(Boolean).length
          served.missing = held.length - served.held
          await sendFrame(stream, encodeResponse({ type: 'have-ok', bits: encodeBits(held) }), send)
        }
      } else if (gets >= maxGets || (getsOf.get(peer.toString()) ?? 0) >= maxPerPeer) {
        const yours = getsOf.get(peer.toString()) ?? 0
        const message = yours >= maxPerPeer ? `already serving you ${yours} chunk requests` : `already serving ${gets} chunk requests`
        served.type = 'refused'
        served.error = new KithError('CHUNK_PEER_BUSY', message)
        await sendFrame(stream, encodeResponse({ type: 'error', status: STATUS.BUSY, message }), send)
      } else {
        const key = peer.toString()
        gets++
        getsOf.set(key, (getsOf.get(key) ?? 0) + 1)
        try {
          const ids = request.ids
          // read a few chunks ahead so the disk and the network overlap
          const ahead: Array<Promise<Read>> = []
          let asked = 0
          const fill = (): void => {
            while (asked < ids.length && ahead.length < READ_AHEAD) {
              ahead.push(read(ids[asked++]!, signal)) // never rejects: failures are Read values
            }
          }
          fill()
          // small frames wait here, copied into one send (COALESCE_BYTES); the rest go as they are
          let batch: Uint8Array[] = []
          let batched = 0
          const flush = async (): Promise<void> => {
            if (batched === 0) return
            const bytes = Buffer.concat(batch, batched)
            batch = []
            batched = 0
            await sendFramed(stream, [bytes], send)
          }
          for (let i = 0; i < ids.length; i++) {
            const got = await raceAbort(ahead.shift()!, signal)
            fill()
            if ('error' in got) {
              served.error = got.error
              await flush()
              await sendFrame(stream, encodeResponse({ type: 'error', status: STATUS.INTERNAL, message: 'the holder could not read its chunk store' }), send)
              break
            }
            let parts: Uint8Array[]
            if ('missing' in got) {
              served.missing++
              parts = encodeResponse({ type: 'missing', id: ids[i]! })
            } else {
              served.held++
              served.bytes += sealedSize(got.sealed)
              parts = encodeChunk(ids[i]!, got.sealed)
            }
            const framed = frame(parts)
            const size = framed.reduce((sum, p) => sum + p.byteLength, 0)
            if (size >= COALESCE_BYTES) {
              await flush()
              await sendFramed(stream, framed, send)
              continue
            }
            batch.push(...framed)
            batched += size
            if (batched >= COALESCE_BYTES) await flush()
          }
          await flush()
        } finally {
          gets--
          const left = (getsOf.get(key) ?? 1) - 1
          if (left > 0) getsOf.set(key, left)
          else getsOf.delete(key)
        }
      }
      await finish(stream, signal, stallTimeoutMs)
    } catch (err) {
      served.error ??= err as Error
      stream.abort(err as Error)
    } finally {
      reader.dispose()
      stream.removeEventListener('close', onClose)
      controller.abort()
      try {
        init.onServed?.(served)
      } catch {}
    }
  }

  /**
   * Closes our end once everything is sent (giving up, and so resetting, if
   * the requester takes nothing for stallMs); waits a little for the
   * requester's end, then lets go.
   */
  async function finish (stream: Stream, signal: AbortSignal, stallMs: number): Promise<void> {
    const closing = AbortSignal.any([signal, AbortSignal.timeout(stallMs)])
    await raceAbort(stream.close({ signal: closing }), closing)
    if (stream.status !== 'open' || stream.remoteWriteStatus === 'closed') return
    const lingered = AbortSignal.any([signal, AbortSignal.timeout(LINGER_MS)])
    try {
      await raceAbort(new Promise(resolve => { stream.addEventListener('remoteCloseWrite', resolve, { once: true }) }), lingered)
    } catch {
      if (!signal.aborted) stream.abort(new KithError('CHUNK_FRAME_MALFORMED', 'the requester did not close its end after its request'))
    }
  }
}

// ---------------------------------------------------------------------------
// the requester's side

export interface GetChunksOptions extends AbortOptions {
  /** Called with the size of every piece received: progress and stall detection. */
  onBytes?: (bytes: number) => void
  /**
   * Chunk frames are copied into buffers from here as their pieces arrive
   * (FILL_FRAME_BYTES); the caller gives each chunk's `sealed` back once
   * nothing refers to it, and the next frame reuses it.
   */
  buffers?: BufferPool
}

async function open (libp2p: ChunkDialer, peer: PeerId, options: AbortOptions): Promise<Stream> {
  try {
    return await dialProtocol(libp2p, peer, CHUNK_PROTOCOL, options)
  } catch (err) {
    if (options.signal?.aborted === true) throw options.signal.reason
    throw new KithError('CHUNK_PEER_UNREACHABLE', `could not open a chunk stream to ${peer}: ${(err as Error).message}`, { cause: err })
  }
}

/** Maps what a stream threw into a typed error (aborts pass through as they are). */
function streamError (err: unknown, peer: PeerId, options: AbortOptions): unknown {
  if (options.signal?.aborted === true) return options.signal.reason
  if (err instanceof KithError) return err
  return new KithError('CHUNK_PEER_UNREACHABLE', `the chunk stream to ${peer} failed: ${(err as Error).message}`, { cause: err })
}

async function sendRequest (stream: Stream, request: ChunkRequest, peer: PeerId, signal: AbortSignal): Promise<void> {
  await sendFrame(stream, [encodeRequest(request)], { signal, peer })
  await stream.close({ signal })
}

function expectResponse (peer: PeerId, response: ChunkResponse): ChunkResponse {
  if (response.type === 'error') throw remoteError(peer, response.status, response.message)
  return response
}

function checkIds (ids: string[]): void {
  for (const id of ids) {
    if (!isId(id)) throw new KithError('CHUNK_BAD_ID', `${JSON.stringify(String(id).slice(0, 80))} is not a chunk id (64 lowercase hex characters)`)
  }
}

async function expectEnd (reader: FrameReader, peer: PeerId, signal: AbortSignal): Promise<void> {
  if (await reader.next({ signal }) !== undefined) throw new KithError('CHUNK_FRAME_MALFORMED', `${peer} sent more frames than were asked for`)
}

/**
 * Asks `peer` which of `ids` it holds (in batches of MAX_HAVE_IDS, one stream
 * each). Throws CHUNK_PEER_UNREACHABLE, CHUNK_PEER_REFUSED, CHUNK_PEER_BUSY,
 * UNSUPPORTED_VERSION or CHUNK_FRAME_* on failure; aborts with the signal's reason.
 */
export async function askHave (libp2p: ChunkDialer, peer: PeerId, ids: string[], options: AbortOptions = {}): Promise<Set<string>> {
  checkIds(ids)
  const held = new Set<string>()
  const signal = options.signal ?? new AbortController().signal
  for (let at = 0; at < ids.length; at += MAX_HAVE_IDS) {
    const batch = ids.slice(at, at + MAX_HAVE_IDS)
    const stream = await open(libp2p, peer, options)
    const reader = new FrameReader(stream, { maxFrame: MAX_RESPONSE_FRAME, highWater: MAX_RESPONSE_FRAME + 16, pause: true })
    try {
      await sendRequest(stream, { type: 'have', ids: batch }, peer, signal)
      const body = await reader.next({ signal })
      if (body === undefined) throw new KithError('CHUNK_FRAME_MALFORMED', `${peer} closed the stream without answering HAVE`)
      const response = expectResponse(peer, decodeResponse(body))
      if (response.type !== 'have-ok') throw new KithError('CHUNK_FRAME_MALFORMED', `${peer} answered HAVE with ${response.type}`)
      decodeBits(response.bits, batch.length).forEach((h, i) => { if (h) held.add(batch[i]!) })
      await expectEnd(reader, peer, signal)
    } catch (err) {
      stream.abort(err as Error)
      throw streamError(err, peer, options)
    } finally {
      reader.dispose()
    }
  }
  return held
}

/**
 * Fetches `ids` from `peer`, yielding one item per id in order: the sealed
 * bytes (not yet verified: `ChunkStore.put` checks them) or `missing`.
 * Asks in batches of MAX_GET_IDS, one stream each. Memory stays at about one
 * frame plus the muxer window: the stream is paused while the consumer is
 * slower than the network. Stopping the iteration early aborts the stream.
 */
export async function * getChunks (libp2p: ChunkDialer, peer: PeerId, ids: string[], options: GetChunksOptions = {}): AsyncGenerator<ChunkItem> {
  checkIds(ids)
  const signal = options.signal ?? new AbortController().signal
  for (let at = 0; at < ids.length; at += MAX_GET_IDS) {
    const batch = ids.slice(at, at + MAX_GET_IDS)
    const stream = await open(libp2p, peer, options)
    const reader = new FrameReader(stream, { maxFrame: MAX_RESPONSE_FRAME, highWater: MAX_RESPONSE_FRAME + 16, pause: true, onBytes: options.onBytes, buffers: options.buffers })
    let complete = false
    try {
      try {
        await sendRequest(stream, { type: 'get', ids: batch }, peer, signal)
      } catch (err) {
        throw streamError(err, peer, options)
      }
      for (const id of batch) {
        let response: ChunkResponse
        try {
          const body = await reader.next({ signal })
          if (body === undefined) throw new KithError('CHUNK_FRAME_MALFORMED', `${peer} ended the answer before chunk ${id.slice(0, 12)}…`)
          response = expectResponse(peer, decodeResponse(body))
          if (response.type !== 'chunk' && response.type !== 'missing') throw new KithError('CHUNK_FRAME_MALFORMED', `${peer} answered GET with ${response.type}`)
          if (response.id !== id) throw new KithError('CHUNK_FRAME_MALFORMED', `${peer} answered with chunk ${response.id.slice(0, 12)}… where ${id.slice(0, 12)}… was due`)
        } catch (err) {
          throw streamError(err, peer, options)
        }
        yield response.type === 'chunk' ? { id, sealed: response.sealed } : { id, missing: true }
      }
      try {
        await expectEnd(reader, peer, signal)
      } catch (err) {
        throw streamError(err, peer, options)
      }
      complete = true
    } finally {
      reader.dispose()
      if (!complete) stream.abort(new Error('chunk request given up'))
    }
  }
}
