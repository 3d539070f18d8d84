/**
 * Fetching many blobs back, many per request (a restore's data blobs).
 *
 * Each blob starts at one of its hosts (rotated by its id, so a restore reads
 * from all of them) and waits in that host's queue; a get-many leaves at once
 * when none is in flight to that host, and otherwise only with a full batch
 * (fullBatch, batch.ts) while fewer than REQUESTS_PER_HOST are, carrying what
 * waits (up to BATCH_BYTES), so blobs share requests. Every blob is opened (openBlob: the AEAD tag over every byte,
 * owner, id and kind in its AD, then the keyed id over the plaintext) before
 * it is handed out; the sealed id is not hashed again on top of that. A host
 * that fails a blob, or the whole request, hands it to the next of its hosts.
 */
import { KithError, asKithError } from '../../errors.ts'
import { BufferPool } from '../../transfer/buffer-pool.ts'
import { SEAL_OVERHEAD } from '../../transfer/constants.ts'
import { fullBatch, takeBatch } from './batch.ts'
import { openBlob } from './blob.ts'
import type { BlobKind, BlobRecord } from './owner-index.ts'
import { unlessBusy, type BackupParts } from './parts.ts'

/** get-many requests in flight to one host (a host serves 8 requests of one owner at once). */
const REQUESTS_PER_HOST = 3
/**
 * Blobs from this size up are read, and opened, into buffers kept for the
 * next ones: a fresh buffer of 128 KiB or more is mapped and faulted in page
 * by page (the daemon's malloc threshold, daemon-heap.ts), and every one
 * dropped waits for V8's next collection in resident memory.
 */
const REUSED_FROM = 128 * 1024
/** Buffers kept per pool: the restore has at most AHEAD_BYTES (8 MiB) of blobs, ~1 MiB each, in flight. */
const BUFFERS_KEPT = 8

interface Want {
  id: string
  kind: BlobKind
  record: BlobRecord
  /** its hosts, in the order they are tried */
  order: string[]
  tried: number
  failures: string[]
  resolve: (plaintext: Uint8Array) => void
  reject: (err: unknown) => void
}

interface HostQueue {
  waiting: Want[]
  inFlight: number
}

export class BlobGetter {
  private readonly parts: BackupParts
  private readonly signal: AbortSignal | undefined
  private readonly queues = new Map<string, HostQueue>()
  /** sealed bodies, given back once opened */
  private readonly sealedBuffers = new BufferPool(BUFFERS_KEPT)
  /** plaintexts handed out, given back by release() */
  private readonly plainBuffers = new BufferPool(BUFFERS_KEPT)

  constructor (parts: BackupParts, signal?: AbortSignal) {
    this.parts = parts
    this.signal = signal
  }

  /**
   * A blob's plaintext, verified; BLOB_MISSING once every host holding it
   * failed (each named). `known`: its index record, when the caller has just read it.
   */
  async get (id: string, kind: BlobKind, known?: BlobRecord): Promise<Uint8Array> {
    const record = known ?? await this.parts.index.blob(id)
    if (record == null) throw new KithError('BLOB_MISSING', `blob ${id.slice(0, 12)}… (${kind}) is not in this node's backup index; was the snapshot forgotten?`)
    if (record.kind !== kind) throw new KithError('BLOB_OPEN_FAILED', `blob ${id.slice(0, 12)}… is a ${record.kind} blob, not a ${kind} blob`)
    if (record.hosts.length === 0) throw new KithError('BLOB_MISSING', `no host holds blob ${id.slice(0, 12)}… (${kind}). kith backup health shows the hosts`)
    const first = Number.parseInt(id.slice(0, 8), 16) % record.hosts.length
    const order = [...record.hosts.slice(first), ...record.hosts.slice(0, first)]
    return await new Promise<Uint8Array>((resolve, reject) => {
      this.enqueue({ id, kind, record, order, tried: 0, failures: [], resolve, reject })
    })
  }

  /** Hands back a plaintext get() gave, once nothing uses it (written out): the next blob is opened into it. */
  release (plaintext: Uint8Array): void {
    this.plainBuffers.give(plaintext)
  }

  private buffer (pool: BufferPool, size: number): Uint8Array {
    return size >= REUSED_FROM ? pool.take(size) : Buffer.allocUnsafe(size)
  }

  private enqueue (want: Want): void {
    const host = want.order[want.tried]!
    let queue = this.queues.get(host)
    if (queue == null) this.queues.set(host, queue = { waiting: [], inFlight: 0 })
    queue.waiting.push(want)
    this.pump(host, queue)
  }

  private pump (host: string, queue: HostQueue): void {
    while (queue.inFlight < REQUESTS_PER_HOST && queue.waiting.length > 0) {
      if (queue.inFlight > 0 && !fullBatch(queue.waiting, w => w.record.size)) break
      const batch = takeBatch(queue.waiting, w => w.record.size)
      queue.inFlight++
      void this.send(host, batch).finally(() => {
        queue.inFlight--
        this.pump(host, queue)
      })
    }
  }

  private async send (host: string, batch: Want[]): Promise<void> {
    // a blob wanted twice (two files, or one file, holding the same chunk) is asked for once: a get-many names each id once
    const ids = [...new Set(batch.map(w => w.record.sealedId))]
    let answers: Map<string, Uint8Array | KithError>
    try {
      const got = await unlessBusy(async () => await this.parts.host(host).getMany(ids, this.signal, {
        buffer: size => this.buffer(this.sealedBuffers, size),
        // each is opened below before anything uses it: the AEAD and the keyed id check every byte
        opened: true
      }), this.signal)
      answers = new Map(ids.map((id, i) => [id, got[i]!]))
    } catch (err) {
      for (const want of batch) this.failed(want, host, err)
      return
    }
    for (const want of batch) {
      const answer = answers.get(want.record.sealedId)!
      if (answer instanceof KithError) {
        this.failed(want, host, answer)
        continue
      }
      const into = this.buffer(this.plainBuffers, Math.max(0, answer.length - SEAL_OVERHEAD))
      try {
        want.resolve(openBlob(this.parts.keys, this.parts.owner, want.kind, want.id, answer, into))
      } catch (err) {
        this.plainBuffers.give(into)
        this.failed(want, host, err)
      }
    }
    for (const answer of answers.values()) if (!(answer instanceof KithError)) this.sealedBuffers.give(answer)
  }

  /** The next of the blob's hosts, or BLOB_MISSING naming what each said. */
  private failed (want: Want, host: string, err: unknown): void {
    if (this.signal?.aborted === true) {
      want.reject(err)
      return
    }
    const error = asKithError(err)
    want.failures.push(`${host}: ${error.code} ${error.message}`)
    want.tried++
    if (want.tried < want.order.length) {
      this.enqueue(want)
      return
    }
    want.reject(new KithError('BLOB_MISSING', `no host gave back blob ${want.id.slice(0, 12)}… (${want.kind}): ${want.failures.join('; ')}. kith backup health shows the hosts`))
  }
}
