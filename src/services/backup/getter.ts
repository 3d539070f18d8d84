/**
 * Fetching a restore's blobs back (its data, and its folders' trees a level
 * at a time): many per request, each request read as it arrives.
 *
 * The blobs come from a source in the order the restore writes them (the
 * plan's files, each file's chunks). Each starts at one of its hosts (rotated
 * by its id, so a restore reads from all of them) and waits in that host's
 * queue. Each host has one get-many out at a time, read blob by blob as it
 * arrives (BackupClient.getEach), carrying what waits, up to BATCH_BYTES: a
 * request costs both ends a few ms of CPU whatever it carries, and the
 * source is read ahead (AHEAD_BYTES) so that the next request is full when
 * this one ends. (Two out per host, both read as they came, grew both
 * streams' windows: the 256 MiB bench's owner peaked at 232 and 250 MB,
 * against 226 with one, at the same speed.)
 * A slow host holds the others back by AHEAD_BYTES at most.
 *
 * Memory: a body is read only once `budget` (the restore's) grants its size,
 * given back once the blob is written; the stream's window holds the rest
 * on the host. Every blob is opened (openBlob: the AEAD tag over every byte,
 * owner, id and kind in its AD, then the keyed id over the plaintext) before
 * it is handed out; the sealed id is not hashed again on top of that. A host
 * that fails a blob, or the whole request, hands it to the next of its hosts.
 */
import { KithError, asKithError } from '../../errors.ts'
import { BufferPool } from '../../transfer/buffer-pool.ts'
import { SEAL_OVERHEAD } from '../../transfer/constants.ts'
import { takeBatch } from './batch.ts'
import { openBlob } from './blob.ts'
import type { ByteBudget } from './budget.ts'
import type { BlobRecord } from './owner-index.ts'
import { unlessBusy, type BackupParts } from './parts.ts'

/** A get-many carries about this many sealed bytes (a host takes up to MAX_MANY_BYTES). */
export const BATCH_BYTES = 4 * 1024 * 1024
/** Sealed bytes taken from the source and not yet written, at most (beyond one blob). */
const AHEAD_BYTES = 32 * 1024 * 1024
/**
 * Blobs from this size up are read, and opened, into buffers kept for the
 * next ones: a fresh buffer of 128 KiB or more is mapped and faulted in page
 * by page (the daemon's malloc threshold, daemon-heap.ts), and every one
 * dropped waits for V8's next collection in resident memory.
 */
const REUSED_FROM = 128 * 1024
/**
 * Buffers kept per pool: a sealed body is read into one per host at a time,
 * and the restore's budget (4 MiB) lets about 4 plaintexts of ~1 MiB be
 * written at once. With 8 of each and an 8 MiB budget, the 256 MiB bench's
 * owner peaked at 243 MB, 210 with 4 and 4 MiB, at the same CPU.
 */
const BUFFERS_KEPT = 4

/** A blob to fetch (its kind is its record's). */
export interface Want {
  id: string
  record: BlobRecord
}

interface Queued<W extends Want> {
  want: W
  /** its hosts, in the order they are tried */
  order: string[]
  tried: number
  failures: string[]
}

interface HostQueue<W extends Want> {
  host: string
  waiting: Array<Queued<W>>
  /** a get-many is out */
  busy: boolean
}

export interface GetterInit<W extends Want> {
  parts: BackupParts
  /** sealed bytes read and not yet written, over the whole restore */
  budget: ByteBudget
  signal?: AbortSignal
  /**
   * Writes a blob's plaintext (verified). The buffer is the getter's: it is
   * reused once the promise settles. A rejection ends the fetch.
   */
  write: (want: W, plaintext: Uint8Array) => Promise<void>
}

export class BlobGetter<W extends Want> {
  private readonly init: GetterInit<W>
  /** aborted with the first failure, or the caller's signal */
  private readonly stop = new AbortController()
  private readonly signal: AbortSignal
  private readonly queues = new Map<string, HostQueue<W>>()
  /** sealed bodies, given back once opened */
  private readonly sealedBuffers = new BufferPool(BUFFERS_KEPT)
  /** plaintexts being written, given back once written */
  private readonly plainBuffers = new BufferPool(BUFFERS_KEPT)
  private source: AsyncIterator<W[]> | undefined
  private sourceDone = false
  private feeding = false
  /** sealed bytes of the blobs taken from the source and not yet written */
  private ahead = 0
  /** blobs taken from the source and not yet written, or failed */
  private open = 0
  private readonly writes = new Set<Promise<void>>()
  private failure: { error: unknown } | undefined
  private readonly finished = Promise.withResolvers<void>()

  constructor (init: GetterInit<W>) {
    this.init = init
    this.signal = init.signal != null ? AbortSignal.any([init.signal, this.stop.signal]) : this.stop.signal
  }

  /** Fetches and writes every blob `source` yields; throws the first failure once nothing is being written any more. */
  async run (source: AsyncIterable<W[]>): Promise<void> {
    this.source = source[Symbol.asyncIterator]()
    this.feed()
    try {
      await this.finished.promise
    } finally {
      while (this.writes.size > 0) await Promise.allSettled(this.writes)
      await this.source.return?.()
    }
  }

  /** Takes blobs from the source into their hosts' queues while AHEAD_BYTES allows. */
  private feed (): void {
    if (this.feeding || this.sourceDone || this.failure != null) return
    this.feeding = true
    void (async () => {
      try {
        while (!this.sourceDone && this.failure == null && this.ahead < AHEAD_BYTES) {
          const next = await this.source!.next()
          if (next.done === true) {
            this.sourceDone = true
            break
          }
          for (const want of next.value) this.take(want)
          // what is queued goes out while the source is read further
          for (const queue of this.queues.values()) this.pump(queue)
        }
      } catch (err) {
        this.fail(err)
      } finally {
        this.feeding = false
      }
      for (const queue of this.queues.values()) this.pump(queue)
      this.settled()
    })()
  }

  private take (want: W): void {
    const { id, record } = want
    if (record.hosts.length === 0) {
      this.fail(new KithError('BLOB_MISSING', `no host holds blob ${id.slice(0, 12)}… (${record.kind}). kith backup health shows the hosts`))
      return
    }
    const first = Number.parseInt(id.slice(0, 8), 16) % record.hosts.length
    const order = [...record.hosts.slice(first), ...record.hosts.slice(0, first)]
    this.ahead += record.size
    this.open++
    this.enqueue({ want, order, tried: 0, failures: [] }, false)
  }

  /** Into its next host's queue: at the back, or (a blob another host failed) at the front, it was due already. */
  private enqueue (queued: Queued<W>, front: boolean): void {
    const host = queued.order[queued.tried]!
    let queue = this.queues.get(host)
    if (queue == null) this.queues.set(host, queue = { host, waiting: [], busy: false })
    if (front) queue.waiting.unshift(queued)
    else queue.waiting.push(queued)
  }

  private pump (queue: HostQueue<W>): void {
    if (this.failure != null || queue.busy || queue.waiting.length === 0) return
    queue.busy = true
    void this.request(queue.host, takeBatch(queue.waiting, q => q.want.record.size, BATCH_BYTES)).finally(() => {
      queue.busy = false
      this.pump(queue)
      this.settled()
    })
  }

  private async request (host: string, batch: Array<Queued<W>>): Promise<void> {
    // a blob is asked for once over the restore (the source names each once): a get-many names each id once
    const ids = batch.map(q => q.want.record.sealedId)
    let got = 0
    /** budget taken for a body being read: given back if the request breaks before it is handed on */
    let held = 0
    try {
      // a host busy with my other requests refuses before it sends anything: asked again for what is left
      await unlessBusy(async () => {
        const from = got
        await this.init.parts.host(host).getEach(ids.slice(from), (i, answer) => {
          const queued = batch[from + i]!
          got = from + i + 1
          if (answer instanceof KithError) {
            this.failed(queued, host, answer)
          } else {
            held = 0
            this.opened(queued, host, answer)
          }
        }, {
          signal: this.signal,
          opened: true,
          buffer: async size => {
            await this.init.budget.take(size)
            held = size
            return size >= REUSED_FROM ? this.sealedBuffers.take(size) : Buffer.allocUnsafe(size)
          }
        })
      }, this.signal)
    } catch (err) {
      if (held > 0) this.init.budget.give(held)
      for (const queued of batch.slice(got)) this.failed(queued, host, err)
    }
  }

  /** A sealed body read: opened and handed to the writer, or (bytes that fail) to the next host. */
  private opened (queued: Queued<W>, host: string, sealed: Uint8Array): void {
    const { want } = queued
    const size = want.record.size
    const into = Math.max(0, sealed.length - SEAL_OVERHEAD) >= REUSED_FROM ? this.plainBuffers.take(sealed.length - SEAL_OVERHEAD) : undefined
    let plaintext: Uint8Array
    try {
      plaintext = openBlob(this.init.parts.keys, this.init.parts.owner, want.record.kind, want.id, sealed, into)
    } catch (err) {
      if (into != null) this.plainBuffers.give(into)
      this.init.budget.give(size)
      this.failed(queued, host, err)
      return
    } finally {
      this.sealedBuffers.give(sealed)
    }
    const write: Promise<void> = this.init.write(want, plaintext)
      .catch(err => { this.fail(err) })
      .finally(() => {
        this.plainBuffers.give(plaintext)
        this.init.budget.give(size)
        this.ahead -= size
        this.open--
        this.writes.delete(write)
        this.feed()
        this.settled()
      })
    this.writes.add(write)
  }

  /** The next of the blob's hosts, or BLOB_MISSING naming what each said. */
  private failed (queued: Queued<W>, host: string, err: unknown): void {
    if (this.failure != null || this.init.signal?.aborted === true) {
      this.fail(err)
      this.ahead -= queued.want.record.size
      this.open--
      return
    }
    const error = asKithError(err)
    queued.failures.push(`${host}: ${error.code} ${error.message}`)
    queued.tried++
    if (queued.tried < queued.order.length) {
      this.enqueue(queued, true)
      this.pump(this.queues.get(queued.order[queued.tried]!)!)
      return
    }
    this.ahead -= queued.want.record.size
    this.open--
    this.fail(new KithError('BLOB_MISSING', `no host gave back blob ${queued.want.id.slice(0, 12)}… (${queued.want.record.kind}): ${queued.failures.join('; ')}. kith backup health shows the hosts`))
  }

  /** The first failure ends the fetch: nothing more is asked for, what is out is cut. */
  private fail (err: unknown): void {
    if (this.failure != null) return
    this.failure = { error: err }
    this.stop.abort(err)
    this.settled()
  }

  /** Resolves run() once every blob is written (or, after a failure, once nothing more is out). */
  private settled (): void {
    if (this.failure != null) {
      const out = [...this.queues.values()].some(q => q.busy)
      if (!out && !this.feeding) this.finished.reject(this.failure.error)
      return
    }
    if (this.sourceDone && this.open === 0 && !this.feeding) this.finished.resolve()
  }
}
