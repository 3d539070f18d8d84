import { peerIdFromString } from '@libp2p/peer-id'
import { z } from 'zod'
import type { AbortOptions, Connection, PeerId, Stream } from '@libp2p/interface'
import { KithError, isErrorCode, type ErrorCode } from '../../errors.ts'
import { MAX_FAILURE_MESSAGE } from '../../peer/request-response.ts'
import { dialProtocol } from '../../peer/dial.ts'
import { lengthPrefixed } from '../../peer/length-decoders.ts'
import { cleanText } from '../../peer/text.ts'
import { BufferPool } from '../../transfer/buffer-pool.ts'
import { MAX_SEALED_CHUNK_SIZE } from '../../transfer/constants.ts'
import { chunkId } from '../../transfer/seal.ts'
import type { BandwidthScheduler, Flow } from '../../transfer/scheduler/index.ts'
import { LEGACY_AUDIT_LEAF_SIZE, auditProof, leafCount, type AuditAnswer, type AuditLeafSize } from './audit-tree.ts'
import { BLOB_FORMAT } from './blob.ts'
import type { HostBook } from './host-book.ts'
import type { Place } from './pack-store.ts'
import {
  BACKUP_PROTOCOL, BACKUP_VERSION, HEADER_TIMEOUT_MS, MAX_HEADER, MAX_MANY_BYTES, MAX_RECORD_SIZE, MAX_RECORDS_IN_FLIGHT, MAX_STREAMS_PER_OWNER,
  REQUEST_TIMEOUT_MS, STALL_TIMEOUT_MS,
  deadline, decodeHeader, encodeHeader, orFailure, readBody, requestSchema, responseSchemas, signRequest, signedBody, verifyRequest, writeBody,
  type BackupRequest, type Frames
} from './wire.ts'

/**
 * `/kith/backup/1.0.0`, both ends: the host's handler (served to friends I
 * granted backup, each seeing only its own blobs, keyed by the connection's
 * remote peer, never by anything in the request) and the owner's client.
 * The messages and limits are in wire.ts; the host's policy in host-book.ts.
 * Every byte either way goes through the bandwidth scheduler in class 'backup'.
 */
export { BACKUP_PROTOCOL, MAX_INBOUND_BACKUP_STREAMS } from './wire.ts'

/** What the handler needs of the friend book. */
export interface BackupFriends {
  allows: (peerId: string, service: 'backup') => boolean
  get: (peerId: string) => { publicKey: string } | undefined
}

export interface BackupHandlerInit {
  /** the host's books, and through them its pack files */
  book: HostBook
  bandwidth: BandwidthScheduler
  friends: BackupFriends
  /** this host's peer id: signed requests must name it */
  self: string
}

/** Reads and writes one stream's frames, each counted in the 'backup' class. */
class Framed {
  readonly lp: ReturnType<typeof lengthPrefixed>
  readonly up: Flow
  readonly down: Flow
  /** the request's signal, also aborted once no frame has moved for STALL_TIMEOUT_MS */
  readonly signal: AbortSignal
  /** one stall timer per request, pushed back by every frame (not a timer per frame) */
  private readonly stall: ReturnType<typeof deadline>

  constructor (stream: Stream, bandwidth: BandwidthScheduler, peer: string, maxBody: number, request: AbortSignal) {
    // the read buffer holds at most one announced body (the sender waits for `go` before sending one)
    this.lp = lengthPrefixed(stream, { maxDataLength: MAX_HEADER, maxBufferSize: maxBody + MAX_HEADER })
    this.up = bandwidth.flow({ direction: 'up', peer, class: 'backup' })
    this.down = bandwidth.flow({ direction: 'down', peer, class: 'backup' })
    this.stall = deadline(STALL_TIMEOUT_MS, request)
    this.signal = this.stall.signal
  }

  /** A frame moved: the stall timer starts again. */
  readonly moved = (): void => { this.stall.refresh() }

  get frames (): Frames { return this.lp }

  async send (message: Record<string, unknown>, signal: AbortSignal): Promise<void> {
    const bytes = encodeHeader({ v: BACKUP_VERSION, ...message })
    await this.up.take(bytes.length, signal)
    await this.lp.write(bytes, { signal })
    this.moved()
  }

  async receive (signal: AbortSignal): Promise<Uint8Array> {
    const frame = await this.lp.read({ signal })
    this.moved()
    await this.down.take(frame.byteLength, signal)
    return frame.subarray()
  }

  close (): void {
    this.stall.clear()
    this.up.close()
    this.down.close()
  }
}

function failureOf (err: unknown): { ok: false, code: ErrorCode, message: string } {
  if (err instanceof KithError) return { ok: false, code: err.code, message: cleanText(err.message, MAX_FAILURE_MESSAGE) }
  const name = (err as Error)?.name
  if (name === 'InvalidDataLengthError' || name === 'StreamBufferError') return { ok: false, code: 'PAYLOAD_TOO_LARGE', message: `a backup message was larger than ${MAX_HEADER} bytes` }
  return { ok: false, code: 'INTERNAL', message: 'the backup request failed on the host' }
}

export function backupHandler (init: BackupHandlerInit) {
  /** streams being served, per owner */
  const active = new Map<string, number>()
  const limits: Limits = { records: 0, bodies: new BufferPool(BODIES_KEPT) }
  return async (stream: Stream, connection: Connection): Promise<void> => {
    const owner = connection.remotePeer.toString()
    const limit = deadline(REQUEST_TIMEOUT_MS)
    const io = new Framed(stream, init.bandwidth, owner, MAX_RECORD_SIZE, limit.signal)
    const signal = io.signal
    active.set(owner, (active.get(owner) ?? 0) + 1)
    try {
      if (active.get(owner)! > MAX_STREAMS_PER_OWNER) throw new KithError('BACKUP_HOST_BUSY', `this node serves at most ${MAX_STREAMS_PER_OWNER} of your backup requests at once; try again when one is done`)
      let frame: Uint8Array
      const header = deadline(HEADER_TIMEOUT_MS, signal)
      try {
        frame = await io.receive(header.signal)
      } catch (err) {
        if (err instanceof Error && err.name === 'InvalidDataLengthError') throw err
        throw new KithError('PROTOCOL_VIOLATION', `the backup request could not be read (${(err as Error).message})`)
      } finally {
        header.clear()
      }
      // checked here rather than by libp2p middleware so it binds inbound streams only (see docs/backup.md)
      if (!init.friends.allows(owner, 'backup')) throw new KithError('BACKUP_NOT_GRANTED', 'this node has not granted you backup')
      const request = decodeHeader(frame, requestSchema, 'the backup request')
      await serve(init, limits, io, owner, request, signal)
    } catch (err) {
      try {
        await io.send(failureOf(err), signal)
      } catch {
        stream.abort(err as Error)
      }
    } finally {
      io.close()
      const left = active.get(owner)! - 1
      if (left === 0) active.delete(owner)
      else active.set(owner, left)
    }
    try {
      await stream.close({ signal })
    } catch (err) {
      stream.abort(err as Error)
    } finally {
      limit.clear()
    }
  }
}

/**
 * Buffers kept for the next put-many bodies once the store has written them:
 * a fresh buffer of 128 KiB or more is mapped and faulted in page by page
 * (the daemon's malloc threshold, daemon-heap.ts), about 1,000 faults a
 * sealed blob of 4 MiB. Enough for what a few put-many requests write at once.
 */
const BODIES_KEPT = 16

/** What one handler shares across its streams. */
interface Limits {
  /** recovery records being received now */
  records: number
  /** put-many bodies' buffers, given back once stored */
  bodies: BufferPool
}

async function serve (init: BackupHandlerInit, limits: Limits, io: Framed, owner: string, request: BackupRequest, signal: AbortSignal): Promise<void> {
  const { book } = init
  switch (request.op) {
    case 'usage': {
      await io.send({ ok: true, ...book.usage(owner) }, signal)
      return
    }
    case 'has': {
      await io.send({ ok: true, held: await book.has(owner, request.ids) }, signal)
      return
    }
    case 'put': {
      const { id, size } = request
      if (await book.reserve(owner, id, size) === 'held') {
        const { used, quota } = book.usage(owner)
        await io.send({ ok: true, stored: false, used, quota }, signal)
        return
      }
      const batch = book.appender(owner)
      let stored = 0
      try {
        await io.send({ ok: true, go: true }, signal)
        const sealed = await readBody(io.frames, size, io.down, signal, 'the owner', io.moved)
        if (chunkId(sealed) !== id) throw new KithError('CHUNK_HASH_MISMATCH', `the bytes sent as blob ${id} are not it; nothing of it was kept`)
        checkBlobFormat(id, sealed)
        const place = await batch.append(sealed)
        await batch.sync()
        stored = await book.commitMany(owner, [{ id, place }])
      } catch (err) {
        await book.release(owner, id)
        throw err
      } finally {
        batch.end()
      }
      // its row went meanwhile (the owner's data swept): what it appended is dead
      if (stored === 0) void book.compactSoon(owner)
      const { used, quota } = book.usage(owner)
      await io.send({ ok: true, stored: stored > 0, used, quota }, signal)
      return
    }
    case 'put-many': {
      await putMany(init, io, owner, request.blobs, limits.bodies, signal)
      return
    }
    case 'get-many': {
      await getMany(init, io, owner, request.ids, signal)
      return
    }
    case 'get': {
      const sealed = await readHeld(book, owner, request.id)
      await io.send({ ok: true, size: sealed.length }, signal)
      await writeBody(io.frames, sealed, io.up, signal, io.moved)
      return
    }
    case 'remove': {
      checkSignature(init, owner, signedBody('remove', init.self, request.counter, request.ids), request.sig)
      await io.send({ ok: true, ...await book.remove(owner, request.ids, request.counter) }, signal)
      return
    }
    case 'list': {
      await io.send({ ok: true, ...await book.list(owner, request.after, request.limit) }, signal)
      return
    }
    case 'audit': {
      const answers: Array<Record<string, unknown>> = []
      let answered = 0
      for (const { id, leaf, leafSize = LEGACY_AUDIT_LEAF_SIZE } of request.challenges) {
        let sealed: Uint8Array | null = null
        try {
          sealed = await readHeld(book, owner, id)
        } catch (err) {
          if (!(err instanceof KithError && err.code === 'BLOB_MISSING')) throw err
          if (err.cause instanceof KithError && err.cause.code === 'CHUNK_CORRUPT') {
            // my copy was damaged (and is dropped now): an empty leaf says so (wire.ts)
            answers.push({ id, leaf, leafBytes: new Uint8Array(0), path: [] })
            continue
          }
        }
        if (sealed === null || leaf >= leafCount(sealed.length, leafSize)) {
          answers.push({ id, leaf, missing: true })
          continue
        }
        const proof = auditProof(sealed, leaf, leafSize)
        answers.push({ id, leaf, leafBytes: proof.leaf, path: proof.path })
        answered++
      }
      await book.audited(owner, { challenges: request.challenges.length, answered })
      await io.send({ ok: true, answers }, signal)
      return
    }
    case 'put-record': {
      // refused before the bytes move if the counter is stale; checked again as it is kept
      if (request.counter <= book.usage(owner).counter) throw new KithError('BACKUP_REPLAYED', 'this recovery record is not newer than the one kept here')
      if (limits.records >= MAX_RECORDS_IN_FLIGHT) throw new KithError('BACKUP_HOST_BUSY', 'this node is receiving other recovery records; try again shortly')
      limits.records++
      try {
        await io.send({ ok: true, go: true }, signal)
        const record = await readBody(io.frames, request.size, io.down, signal, 'the owner', io.moved)
        checkSignature(init, owner, signedBody('put-record', init.self, request.counter, record), request.sig)
        await book.putRecord(owner, record, request.counter)
      } finally {
        limits.records--
      }
      await io.send({ ok: true }, signal)
      return
    }
    case 'get-record': {
      const record = await book.getRecord(owner)
      if (record === null) throw new KithError('BLOB_MISSING', 'this node keeps no recovery record for you')
      await io.send({ ok: true, size: record.length }, signal)
      await writeBody(io.frames, record, io.up, signal, io.moved)
    }
  }
}

/**
 * A host keeps only sealed backup blobs (blob.ts: their first byte is
 * BLOB_FORMAT). Blobs kept by a host from before packs are in the engine's
 * chunk store, shared with the file service, whose chunk protocol serves
 * friends granted files the chunks sealed for sharing, known by their own
 * first byte (seal.ts: SEAL_FORMAT): bytes of another format taken in there
 * would have let one friend have this node serve them to others. Packs are
 * served by this protocol alone, to their owner; the check still keeps a
 * host to keeping what it agreed to keep.
 */
function checkBlobFormat (id: string, sealed: Uint8Array): void {
  if (sealed[0] !== BLOB_FORMAT) throw new KithError('BLOB_MALFORMED', `the bytes sent as blob ${id.slice(0, 12)}… are not a sealed backup blob (format ${sealed[0] ?? 'none'}, not ${BLOB_FORMAT}); nothing of it was kept`)
}

/** Sealed bytes a put-many has read and is appending to the pack at once (each write overlaps the next read). */
const STORE_AHEAD_BYTES = 8 * 1024 * 1024
const STORE_AHEAD_BLOBS = 16

/**
 * put-many: every blob reserved (or found held, or refused) in one step and
 * one LevelDB batch; then the 'go' bodies, in order, each appended to the
 * owner's pack while the next is read; then one fdatasync of the pack and
 * every appended blob committed, with its place, in one batch. Whatever was
 * reserved and not stored (a bad body, a cut stream) is given back, so the
 * quota stays exact; a kill -9 in between is reconciled at start (its
 * appended bytes are dead space).
 */
async function putMany (init: BackupHandlerInit, io: Framed, owner: string, blobs: Array<{ id: string, size: number }>, bodies: BufferPool, signal: AbortSignal): Promise<void> {
  const { book } = init
  const status = await book.reserveMany(owner, blobs)
  const go = blobs.filter((_, i) => status[i] === 'go')
  const batch = book.appender(owner)
  let placed: Array<{ id: string, place: Place }> = []
  let stored = 0
  let unsynced: unknown = null
  try {
    await io.send({ ok: true, status, used: book.usage(owner).used, quota: book.quotaOf(owner) }, signal)
    const writing = new Set<Promise<void>>()
    let writingBytes = 0
    let failure: unknown = null
    try {
      for (const { id, size } of go) {
        const sealed = await readBody(io.frames, size, io.down, signal, 'the owner', io.moved, bodies.take(size))
        // checked now, not only by the store a moment later: a bad body ends the request before the next is awaited
        if (chunkId(sealed) !== id) {
          bodies.give(sealed)
          throw new KithError('CHUNK_HASH_MISMATCH', `the bytes sent as blob ${id} are not it; nothing of it was kept`)
        }
        try {
          checkBlobFormat(id, sealed)
        } catch (err) {
          bodies.give(sealed)
          throw err
        }
        while (writing.size > 0 && (writingBytes + size > STORE_AHEAD_BYTES || writing.size >= STORE_AHEAD_BLOBS)) await Promise.race(writing)
        if (failure != null) break
        writingBytes += size
        // nothing keeps the buffer once the write is done (or failed): the next body is read into it
        const write: Promise<void> = batch.append(sealed)
          .then(place => { placed.push({ id, place }) }, err => { failure ??= err })
          .finally(() => { bodies.give(sealed); writingBytes -= size; writing.delete(write) })
        writing.add(write)
      }
    } finally {
      // whatever was appended is committed below, even when the request fails
      await Promise.all(writing)
    }
    if (failure != null) throw failure
  } finally {
    try {
      if (placed.length > 0) await batch.sync()
    } catch (err) {
      placed = [] // not durable: nothing is committed, the request fails below
      unsynced = err
    }
    try {
      stored = await book.commitMany(owner, placed)
    } finally {
      batch.end()
    }
    // rows that went meanwhile (the owner's data swept): what was appended for them is dead
    if (stored < placed.length) void book.compactSoon(owner)
    const kept = new Set(placed.map(p => p.id))
    const unstored = go.filter(b => !kept.has(b.id)).map(b => b.id)
    if (unstored.length > 0) await book.drop(owner, unstored, true)
  }
  if (unsynced != null) throw new KithError('INTERNAL', 'the host could not write your blobs to its disk', { cause: unsynced })
  const { used, quota } = book.usage(owner)
  await io.send({ ok: true, stored, used, quota }, signal)
}

/**
 * get-many: each blob in turn (one read ahead), or missing; the held ones
 * hold MAX_MANY_BYTES at most. The book is asked once for all of them, not
 * again per blob: one removed meanwhile (by this owner) may still be sent.
 */
async function getMany (init: BackupHandlerInit, io: Framed, owner: string, ids: string[], signal: AbortSignal): Promise<void> {
  const held = await init.book.locate(owner, ids)
  const total = held.reduce<number>((sum, h) => sum + (h?.size ?? 0), 0)
  if (total > MAX_MANY_BYTES) throw new KithError('PAYLOAD_TOO_LARGE', `these blobs hold ${total} bytes, more than the ${MAX_MANY_BYTES} one get-many may; ask for fewer at once`)
  const read = (i: number): Promise<Uint8Array | null> => held[i] == null
    ? Promise.resolve(null)
    : init.book.read(owner, ids[i]!, held[i]!).catch(err => {
      if (err instanceof KithError && err.code === 'BLOB_MISSING') return null
      throw err
    })
  let next: Promise<Uint8Array | null> | null = read(0)
  for (let i = 0; i < ids.length; i++) {
    const current: Promise<Uint8Array | null> = next!
    next = i + 1 < ids.length ? read(i + 1) : null
    next?.catch(() => {}) // awaited in turn; a failure must not go unhandled if this one fails first
    const sealed = await current
    if (sealed === null) {
      await io.send({ ok: true, missing: true }, signal)
      continue
    }
    await io.send({ ok: true, size: sealed.length }, signal)
    await writeBody(io.frames, sealed, io.up, signal, io.moved)
  }
}

/** An owner's blob, checked against its id; one lost or damaged here is dropped from the book (BLOB_MISSING, see HostBook.read). */
async function readHeld (book: HostBook, owner: string, id: string): Promise<Uint8Array> {
  const held = (await book.locate(owner, [id]))[0]
  if (held == null) throw new KithError('BLOB_MISSING', `this node holds no blob ${id} for you`)
  return await book.read(owner, id, held)
}

function checkSignature (init: BackupHandlerInit, owner: string, body: Uint8Array, sig: Uint8Array): void {
  const friend = init.friends.get(owner)
  if (friend == null || !verifyRequest(body, sig, Buffer.from(friend.publicKey, 'base64'))) {
    throw new KithError('BACKUP_BAD_SIGNATURE', 'the request is not signed by your key for this host; nothing was changed')
  }
}

// the owner's side ------------------------------------------------------------

interface Dialer {
  dialProtocol: (peer: PeerId, protocol: string, options?: AbortOptions) => Promise<Stream>
}

export interface BackupClientInit {
  libp2p: Dialer
  bandwidth: BandwidthScheduler
  /** the host */
  peer: PeerId | string
  /** signs remove and putRecord; without it those two throw INTERNAL */
  identity?: { secretKey: Uint8Array }
}

export interface Usage {
  used: number
  quota: number
  blobs: number
  lastWrite: number | null
  /** the last signed counter the host accepted from me */
  counter: number
}

export type PutStatus = 'go' | 'held' | 'full' | 'busy'

export interface AuditResult {
  id: string
  leaf: number
  /** null: the host has no such blob, or (damaged) it found its copy damaged */
  answer: AuditAnswer | null
  damaged?: true
}

/** One host, as its owner sees it (docs/backup.md, "Wire protocol"). */
export interface BackupClient {
  readonly peer: string
  usage: (signal?: AbortSignal) => Promise<Usage>
  has: (ids: string[], signal?: AbortSignal) => Promise<boolean[]>
  put: (id: string, sealed: Uint8Array, signal?: AbortSignal) => Promise<{ stored: boolean, used: number, quota: number }>
  /** verified against `id` (BLOB_CORRUPT otherwise) */
  get: (id: string, signal?: AbortSignal) => Promise<Uint8Array>
  /**
   * Many blobs in one request (at most MAX_MANY_BLOBS and MAX_MANY_BYTES):
   * per blob, 'go' (sent and stored now), 'held' (it was already), 'full'
   * (past the quota, not sent) or 'busy' (another request is writing it).
   */
  putMany: (blobs: Array<{ id: string, sealed: Uint8Array }>, signal?: AbortSignal) => Promise<{ status: PutStatus[], used: number, quota: number }>
  /**
   * Many blobs in one request, each verified against its id: the bytes, or
   * BLOB_MISSING / BLOB_CORRUPT for that one. `buffer(size)`, when given,
   * makes the buffer each body is read into (the caller's, to reuse).
   * `opened: true` leaves out the check against the id: for a caller that
   * opens every blob before using it (openBlob), whose AEAD tag and keyed id
   * check every byte, so the sha256 here would be a second pass for nothing.
   */
  getMany: (ids: string[], signal?: AbortSignal, options?: { buffer?: (size: number) => Uint8Array, opened?: boolean }) => Promise<Array<Uint8Array | KithError>>
  /**
   * getMany, each blob handed to `each` in order as it arrives rather than
   * all at the end, so a request may carry far more than the caller holds.
   * `buffer(size)` may wait: the next body is not read until it gives one,
   * and the host, behind the stream's window, waits too.
   */
  getEach: (ids: string[], each: (index: number, got: Uint8Array | KithError) => void, options?: { signal?: AbortSignal, buffer?: (size: number) => Uint8Array | Promise<Uint8Array>, opened?: boolean }) => Promise<void>
  remove: (ids: string[], signal?: AbortSignal) => Promise<{ freed: number, used: number }>
  list: (after?: string, limit?: number, signal?: AbortSignal) => Promise<{ ids: Array<{ id: string, size: number }>, next: string | null }>
  /** `leafSize`: the root's (audit-tree.ts); the legacy 4 KiB is not sent, so hosts from before it was sent still answer those */
  audit: (challenges: Array<{ id: string, leaf: number, leafSize: AuditLeafSize }>, signal?: AbortSignal) => Promise<AuditResult[]>
  putRecord: (record: Uint8Array, signal?: AbortSignal) => Promise<void>
  getRecord: (signal?: AbortSignal) => Promise<Uint8Array | null>
}

/** The last counter signed for each host in this process: two requests in one millisecond still go up. */
const lastCounters = new Map<string, number>()

function nextCounter (host: string, floor = 0): number {
  const next = Math.max(Date.now(), (lastCounters.get(host) ?? 0) + 1, floor + 1)
  lastCounters.set(host, next)
  return next
}

export function backupClient (init: BackupClientInit): BackupClient {
  const peerId = typeof init.peer === 'string' ? peerIdFromString(init.peer) : init.peer
  const host = peerId.toString()

  /** One request: opens a stream, runs `talk`, closes; failures come out as KithErrors. */
  async function exchange<T> (what: string, outer: AbortSignal | undefined, talk: (io: Framed, answer: <S>(schema: z.ZodType<S>) => Promise<S>, signal: AbortSignal) => Promise<T>): Promise<T> {
    const limit = deadline(REQUEST_TIMEOUT_MS, outer)
    let stream: Stream
    try {
      stream = await dialProtocol(init.libp2p, peerId, BACKUP_PROTOCOL, { signal: limit.signal })
    } catch (err) {
      limit.clear()
      throw new KithError('FRIEND_OFFLINE', `can't reach backup host ${host} (${whyOf(err)}); they may be offline`, { cause: err })
    }
    const io = new Framed(stream, init.bandwidth, host, MAX_RECORD_SIZE, limit.signal)
    const signal = io.signal
    const answer = async <S>(schema: z.ZodType<S>): Promise<S> => {
      const frame = await io.receive(signal)
      const reply = decodeHeader(frame, orFailure(schema), `${host}'s answer to ${what}`)
      if ((reply as { ok: boolean }).ok === false) {
        const failure = reply as z.infer<typeof responseSchemas.failure>
        throw new KithError(isErrorCode(failure.code) ? failure.code : 'PROTOCOL_VIOLATION', `backup host ${host}: ${failure.message}`)
      }
      return reply as S
    }
    try {
      const result = await talk(io, answer, signal)
      await stream.close({ signal }).catch(() => {})
      return result
    } catch (err) {
      stream.abort(err as Error)
      if (err instanceof KithError) throw err
      if (signal.aborted && outer?.aborted === true) throw new KithError('FETCH_ABORTED', `${what} was cancelled`, { cause: err })
      throw new KithError('FRIEND_OFFLINE', `the connection to backup host ${host} broke during ${what} (${whyOf(err)})`, { cause: err })
    } finally {
      io.close()
      limit.clear()
    }
  }

  /** Sends `body` after the host's go; if the host refused meanwhile, its answer is the error. */
  async function sendBody (io: Framed, body: Uint8Array, signal: AbortSignal, answer: <S>(schema: z.ZodType<S>) => Promise<S>): Promise<void> {
    try {
      await writeBody(io.frames, body, io.up, signal, io.moved)
    } catch (err) {
      await answer(responseSchemas.done)
      throw err
    }
  }

  function secretKey (): Uint8Array {
    if (init.identity == null) throw new KithError('INTERNAL', 'this backup client was made without the identity that signs removes and recovery records')
    return init.identity.secretKey
  }

  /** Runs a signed request, once more with a counter above the host's if the host saw a later one (another process of mine, a clock set back). */
  async function signed<T> (run: (counter: number) => Promise<T>): Promise<T> {
    try {
      return await run(nextCounter(host))
    } catch (err) {
      if (!(err instanceof KithError && err.code === 'BACKUP_REPLAYED')) throw err
      const { counter } = await client.usage()
      return await run(nextCounter(host, counter))
    }
  }

  const client: BackupClient = {
    peer: host,

    async usage (signal) {
      return await exchange('usage', signal, async (io, answer, s) => {
        await io.send({ op: 'usage' }, s)
        const { used, quota, blobs, lastWrite, counter } = await answer(responseSchemas.usage)
        return { used, quota, blobs, lastWrite, counter }
      })
    },

    async has (ids, signal) {
      return await exchange('has', signal, async (io, answer, s) => {
        await io.send({ op: 'has', ids }, s)
        const { held } = await answer(responseSchemas.has)
        if (held.length !== ids.length) throw new KithError('PROTOCOL_VIOLATION', `backup host ${host} answered ${held.length} of ${ids.length} ids`)
        return held
      })
    },

    async put (id, sealed, signal) {
      return await exchange('put', signal, async (io, answer, s) => {
        await io.send({ op: 'put', id, size: sealed.length }, s)
        const first = await answer(responseSchemas.goOrStored)
        if (!('go' in first)) return { stored: first.stored, used: first.used, quota: first.quota }
        await sendBody(io, sealed, s, answer)
        const { stored, used, quota } = await answer(responseSchemas.stored)
        return { stored, used, quota }
      })
    },

    async get (id, signal) {
      return await exchange('get', signal, async (io, answer, s) => {
        await io.send({ op: 'get', id }, s)
        const { size } = await answer(responseSchemas.body)
        if (size > MAX_SEALED_CHUNK_SIZE) throw new KithError('PROTOCOL_VIOLATION', `backup host ${host} announced a ${size}-byte blob, more than a sealed blob can be`)
        const sealed = await readBody(io.frames, size, io.down, s, `backup host ${host}`, io.moved)
        if (chunkId(sealed) !== id) throw new KithError('BLOB_CORRUPT', `backup host ${host} sent bytes that are not blob ${id}; it is damaged or swapped there`)
        return sealed
      })
    },

    async putMany (blobs, signal) {
      return await exchange('put-many', signal, async (io, answer, s) => {
        await io.send({ op: 'put-many', blobs: blobs.map(b => ({ id: b.id, size: b.sealed.length })) }, s)
        const { status } = await answer(responseSchemas.statuses)
        if (status.length !== blobs.length) throw new KithError('PROTOCOL_VIOLATION', `backup host ${host} answered ${status.length} of ${blobs.length} blobs`)
        let sent = 0
        for (const [i, blob] of blobs.entries()) {
          if (status[i] !== 'go') continue
          await sendBody(io, blob.sealed, s, answer)
          sent++
        }
        const { stored, used, quota } = await answer(responseSchemas.storedMany)
        if (stored !== sent) throw new KithError('PROTOCOL_VIOLATION', `backup host ${host} stored ${stored} of the ${sent} blobs sent`)
        return { status, used, quota }
      })
    },

    async getMany (ids, signal, options = {}) {
      const out: Array<Uint8Array | KithError> = []
      await client.getEach(ids, (_, got) => { out.push(got) }, { ...options, ...(signal != null ? { signal } : {}) })
      return out
    },

    async getEach (ids, each, options = {}) {
      await exchange('get-many', options.signal, async (io, answer, s) => {
        await io.send({ op: 'get-many', ids }, s)
        let total = 0
        for (const [i, id] of ids.entries()) {
          const item = await answer(responseSchemas.item)
          if ('missing' in item) {
            each(i, new KithError('BLOB_MISSING', `backup host ${host} holds no blob ${id} for me`))
            continue
          }
          total += item.size
          if (total > MAX_MANY_BYTES) throw new KithError('PROTOCOL_VIOLATION', `backup host ${host} sent more than the ${MAX_MANY_BYTES} bytes one get-many holds`)
          const sealed = await readBody(io.frames, item.size, io.down, s, `backup host ${host}`, io.moved, await options.buffer?.(item.size))
          each(i, options.opened === true || chunkId(sealed) === id ? sealed : new KithError('BLOB_CORRUPT', `backup host ${host} sent bytes that are not blob ${id}; it is damaged or swapped there`))
        }
      })
    },

    async remove (ids, signal) {
      const key = secretKey()
      return await signed(async counter => await exchange('remove', signal, async (io, answer, s) => {
        await io.send({ op: 'remove', ids, counter, sig: signRequest(signedBody('remove', host, counter, ids), key) }, s)
        const { freed, used } = await answer(responseSchemas.remove)
        return { freed, used }
      }))
    },

    async list (after, limit = 1000, signal) {
      return await exchange('list', signal, async (io, answer, s) => {
        await io.send({ op: 'list', after: after ?? null, limit }, s)
        const { ids, next } = await answer(responseSchemas.list)
        return { ids, next }
      })
    },

    async audit (challenges, signal) {
      return await exchange('audit', signal, async (io, answer, s) => {
        await io.send({ op: 'audit', challenges: challenges.map(({ id, leaf, leafSize }) => leafSize === LEGACY_AUDIT_LEAF_SIZE ? { id, leaf } : { id, leaf, leafSize }) }, s)
        const { answers } = await answer(responseSchemas.audit)
        if (answers.length !== challenges.length || answers.some((a, i) => a.id !== challenges[i]!.id || a.leaf !== challenges[i]!.leaf)) {
          throw new KithError('PROTOCOL_VIOLATION', `backup host ${host} answered other challenges than those asked`)
        }
        return answers.map(a => 'missing' in a
          ? { id: a.id, leaf: a.leaf, answer: null }
          : a.leafBytes.length === 0
            ? { id: a.id, leaf: a.leaf, answer: null, damaged: true }
            : { id: a.id, leaf: a.leaf, answer: { leaf: a.leafBytes, path: a.path } })
      })
    },

    async putRecord (record, signal) {
      if (record.length === 0 || record.length > MAX_RECORD_SIZE) throw new KithError('PAYLOAD_TOO_LARGE', `a recovery record is 1 to ${MAX_RECORD_SIZE} bytes`)
      const key = secretKey()
      await signed(async counter => await exchange('putRecord', signal, async (io, answer, s) => {
        await io.send({ op: 'put-record', size: record.length, counter, sig: signRequest(signedBody('put-record', host, counter, record), key) }, s)
        await answer(responseSchemas.go)
        await sendBody(io, record, s, answer)
        await answer(responseSchemas.done)
      }))
    },

    async getRecord (signal) {
      try {
        return await exchange('getRecord', signal, async (io, answer, s) => {
          await io.send({ op: 'get-record' }, s)
          const { size } = await answer(responseSchemas.body)
          return await readBody(io.frames, size, io.down, s, `backup host ${host}`, io.moved)
        })
      } catch (err) {
        if (err instanceof KithError && err.code === 'BLOB_MISSING') return null
        throw err
      }
    }
  }
  return client
}

/** What a failure says: libp2p may fail a dial with something that is not an Error (a run once printed "(undefined)"). */
function whyOf (err: unknown): string {
  if (err instanceof Error && err.message !== '') return err.message
  const code = (err as { code?: unknown, name?: unknown } | null)?.code ?? (err as { name?: unknown } | null)?.name
  return typeof code === 'string' ? code : String(err)
}
