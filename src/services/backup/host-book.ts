import { mkdir, readdir, readFile, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { KithError } from '../../errors.ts'
import { sublevel, type Database, type Sublevel } from '../../peer/database.ts'
import { writeFileAtomic } from '../../peer/home.ts'

/**
 * The host's books: for each owner (a friend I granted backup) the quota,
 * what they use, their blobs, their last write and audit, the audit trail,
 * the last signed counter, and their recovery record. The blobs' bytes live
 * in the engine's chunk store; this book says whose they are.
 *
 * **Quota, exactly.** A put reserves its size before any byte is written:
 * under the owner's lock, `used + size > quota` is refused, otherwise a
 * `pending` row and the new `used` are written in one LevelDB batch. The blob
 * is then stored and its row turned `held`; a failed put drops the row and
 * gives the bytes back. So `used` counts every blob held or being written and
 * never passes the quota, whatever runs concurrently. After a kill -9,
 * `open` reconciles from what the store actually holds: a pending row whose
 * blob made it into the store becomes held, any other row whose blob is gone
 * is dropped, and `used` and `blobs` are summed afresh from the rows.
 *
 * **Shared bytes.** Rows are per owner: two owners putting the same sealed
 * bytes each have a row and each pay for it; the store keeps one copy. A
 * removed blob's bytes leave the disk at the engine's next collection, once
 * no owner (and no other service) declares them live.
 *
 * **Recovery record.** One per owner, the newest by signed counter, kept as a
 * file (`<home>/backup-host/records/<owner>`, written whole or not at all).
 * It has its own allowance (MAX_RECORD_SIZE) outside the quota, so an owner
 * whose quota is full can still update the one thing a restore starts from.
 *
 * Times (lastWrite, lastAudit, goneSince) are wall-clock ms since the epoch:
 * they are shown to people and must survive restarts.
 */

/** The quota of a friend granted backup without one (`kith friend grant NAME backup`). */
export const DEFAULT_QUOTA = 10 * 1024 ** 3
/** How long a revoked friend's (or one whose backup grant was taken back) blobs are kept before they are deleted. */
export const DEFAULT_GRACE_MS = 30 * 24 * 3600 * 1000
/** Audit trail entries kept per owner, newest last. */
export const MAX_TRAIL = 50

export interface AuditEntry {
  /** ms since the epoch */
  at: number
  challenges: number
  /** of them, answered with data (the owner checks the answers; the host can't) */
  answered: number
}

export interface OwnerDoc {
  /** bytes; null: DEFAULT_QUOTA */
  quota: number | null
  used: number
  blobs: number
  lastWrite: number | null
  lastAudit: number | null
  /** last signed counter accepted (remove, put-record); 0 for none */
  counter: number
  /** when I first saw this owner no longer granted backup; null while they are */
  goneSince: number | null
  record: { size: number, counter: number, at: number } | null
  trail: AuditEntry[]
}

interface BlobRow {
  size: number
  /** ms since the epoch */
  at: number
  /** reserved, bytes not yet confirmed in the store */
  pending?: true
}

/** What `kith backup hosted` shows per owner. */
export interface HostedView {
  peerId: string
  quota: number
  used: number
  blobs: number
  lastWrite: number | null
  lastAudit: number | null
  record: { size: number, at: number } | null
  goneSince: number | null
  trail: AuditEntry[]
}

/** What the book needs of the chunk store. */
export interface HeldStore {
  has: (id: string) => Promise<boolean>
}

const blankDoc = (): OwnerDoc => ({ quota: null, used: 0, blobs: 0, lastWrite: null, lastAudit: null, counter: 0, goneSince: null, record: null, trail: [] })
const rowKey = (owner: string, id: string): string => `${owner}/${id}`

export interface HostBookInit {
  db: Database
  /** the home folder: recovery records go in `backup-host/records` */
  home: string
  /** @default Date.now */
  now?: () => number
}

export class HostBook {
  private readonly db: Database
  private readonly owners: Sublevel<OwnerDoc>
  private readonly rows: Sublevel<BlobRow>
  private readonly recordDir: string
  private readonly now: () => number
  private readonly docs = new Map<string, OwnerDoc>()
  private readonly tails = new Map<string, Promise<unknown>>()

  constructor (init: HostBookInit) {
    this.db = init.db
    this.owners = sublevel<OwnerDoc>(init.db, 'backup-host-owners')
    this.rows = sublevel<BlobRow>(init.db, 'backup-host-blobs')
    this.recordDir = join(init.home, 'backup-host', 'records')
    this.now = init.now ?? Date.now
  }

  /** Loads the books and reconciles them with what `store` holds (see the module doc). */
  async open (store: HeldStore): Promise<void> {
    await mkdir(this.recordDir, { recursive: true, mode: 0o700 })
    // a record write a kill interrupted: the record before it is still whole
    for (const name of await readdir(this.recordDir)) if (name.endsWith('.tmp')) await rm(join(this.recordDir, name), { force: true })
    for await (const [owner, doc] of this.owners.iterator()) this.docs.set(owner, { ...blankDoc(), ...doc, used: 0, blobs: 0 })
    const ops: Array<{ type: 'put', key: string, value: BlobRow } | { type: 'del', key: string }> = []
    for await (const [key, row] of this.rows.iterator()) {
      const owner = key.slice(0, key.indexOf('/'))
      const id = key.slice(key.indexOf('/') + 1)
      if (!await store.has(id)) {
        ops.push({ type: 'del', key })
        continue
      }
      if (row.pending === true) ops.push({ type: 'put', key, value: { size: row.size, at: row.at } })
      const doc = this.docs.get(owner) ?? blankDoc()
      doc.used += row.size
      doc.blobs += 1
      this.docs.set(owner, doc)
    }
    await this.db.batch([
      ...ops.map(op => ({ ...op, sublevel: this.rows })),
      ...[...this.docs].map(([owner, doc]) => ({ type: 'put' as const, sublevel: this.owners, key: owner, value: doc }))
    ] as never)
  }

  /** Runs `task` after every earlier task of this owner: the per-owner lock quota and counters rely on. */
  private async serial<T> (owner: string, task: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(owner) ?? Promise.resolve()
    const result = previous.then(task, task)
    const tail = result.then(() => {}, () => {})
    this.tails.set(owner, tail)
    try {
      return await result
    } finally {
      if (this.tails.get(owner) === tail) this.tails.delete(owner)
    }
  }

  private doc (owner: string): OwnerDoc {
    return this.docs.get(owner) ?? blankDoc()
  }

  private async save (owner: string, doc: OwnerDoc, rows: Array<{ type: 'put', key: string, value: BlobRow } | { type: 'del', key: string }> = []): Promise<void> {
    await this.db.batch([
      ...rows.map(op => ({ ...op, sublevel: this.rows })),
      { type: 'put', sublevel: this.owners, key: owner, value: doc }
    ] as never)
    this.docs.set(owner, doc)
  }

  quotaOf (owner: string): number {
    return this.doc(owner).quota ?? DEFAULT_QUOTA
  }

  usage (owner: string): { used: number, quota: number, blobs: number, lastWrite: number | null, counter: number } {
    const doc = this.doc(owner)
    return { used: doc.used, quota: this.quotaOf(owner), blobs: doc.blobs, lastWrite: doc.lastWrite, counter: doc.counter }
  }

  async setQuota (owner: string, quota: number): Promise<void> {
    if (!Number.isSafeInteger(quota) || quota < 0) throw new KithError('BAD_REQUEST', 'a quota is a whole number of bytes, 0 or more')
    await this.serial(owner, async () => { await this.save(owner, { ...this.doc(owner), quota }) })
  }

  /**
   * Reserves `size` bytes for blob `id`: 'held' if the owner has it already
   * (nothing reserved), else the bytes are counted now. QUOTA_EXCEEDED if
   * they don't fit; TRANSFER_STATE if another request is writing this blob.
   */
  async reserve (owner: string, id: string, size: number): Promise<'held' | 'reserved'> {
    return await this.serial(owner, async () => {
      const row = await this.rows.get(rowKey(owner, id))
      if (row?.pending === true) throw new KithError('TRANSFER_STATE', 'this blob is being written by another request; try again when it is done')
      if (row !== undefined) return 'held'
      const doc = this.doc(owner)
      const quota = this.quotaOf(owner)
      if (doc.used + size > quota) {
        throw new KithError('QUOTA_EXCEEDED', `this blob (${size} bytes) would take you past the ${quota}-byte quota your friend granted (${doc.used} used); remove old snapshots or ask for more`)
      }
      await this.save(owner, { ...doc, used: doc.used + size, blobs: doc.blobs + 1 }, [{ type: 'put', key: rowKey(owner, id), value: { size, at: this.now(), pending: true } }])
      return 'reserved'
    })
  }

  /**
   * reserve for many blobs in one step and one LevelDB batch (put-many), in
   * order: each is 'held' (nothing reserved), 'go' (its bytes now counted),
   * 'full' when it would take the owner past the quota (a smaller one after
   * it may still fit), or 'busy' when another request is writing it.
   */
  async reserveMany (owner: string, blobs: Array<{ id: string, size: number }>): Promise<Array<'go' | 'held' | 'full' | 'busy'>> {
    return await this.serial(owner, async () => {
      const rows = await this.rows.getMany(blobs.map(b => rowKey(owner, b.id)))
      const doc = this.doc(owner)
      const quota = this.quotaOf(owner)
      const at = this.now()
      let { used, blobs: count } = doc
      const ops: Array<{ type: 'put', key: string, value: BlobRow }> = []
      const status = blobs.map(({ id, size }, i) => {
        const row = rows[i]
        if (row?.pending === true) return 'busy'
        if (row !== undefined) return 'held'
        if (used + size > quota) return 'full'
        used += size
        count += 1
        ops.push({ type: 'put', key: rowKey(owner, id), value: { size, at, pending: true } })
        return 'go'
      })
      if (ops.length > 0) await this.save(owner, { ...doc, used, blobs: count }, ops)
      return status
    })
  }

  /** Reserved blobs now in the store, in one LevelDB batch. */
  async commitMany (owner: string, ids: string[]): Promise<void> {
    if (ids.length === 0) return
    await this.serial(owner, async () => {
      const rows = await this.rows.getMany(ids.map(id => rowKey(owner, id)))
      const at = this.now()
      const ops = ids.flatMap((id, i) => rows[i] === undefined ? [] : [{ type: 'put' as const, key: rowKey(owner, id), value: { size: rows[i]!.size, at } }])
      await this.save(owner, { ...this.doc(owner), lastWrite: at }, ops)
    })
  }

  /** The reserved blob is in the store. */
  async commit (owner: string, id: string): Promise<void> {
    await this.serial(owner, async () => {
      const row = await this.rows.get(rowKey(owner, id))
      if (row === undefined) return
      const at = this.now()
      await this.save(owner, { ...this.doc(owner), lastWrite: at }, [{ type: 'put', key: rowKey(owner, id), value: { size: row.size, at } }])
    })
  }

  /** The reserved write failed: the bytes are given back. */
  async release (owner: string, id: string): Promise<void> {
    await this.drop(owner, [id], true)
  }

  /** Forgets blobs (held, or pending when `pending`), giving their bytes back; resolves to the bytes freed. */
  async drop (owner: string, ids: string[], pending = false): Promise<number> {
    return await this.serial(owner, async () => await this.dropNow(owner, ids, pending))
  }

  private async dropNow (owner: string, ids: string[], pending: boolean, change: Partial<OwnerDoc> = {}): Promise<number> {
    const doc = this.doc(owner)
    const ops: Array<{ type: 'del', key: string }> = []
    let freed = 0
    for (const id of new Set(ids)) {
      const row = await this.rows.get(rowKey(owner, id))
      if (row === undefined || (row.pending === true) !== pending) continue
      ops.push({ type: 'del', key: rowKey(owner, id) })
      freed += row.size
    }
    await this.save(owner, { ...doc, ...change, used: doc.used - freed, blobs: doc.blobs - ops.length }, ops)
    return freed
  }

  /** An owner's signed remove, refused (changing nothing) unless `counter` is above the last accepted. */
  async remove (owner: string, ids: string[], counter: number): Promise<{ freed: number, used: number }> {
    return await this.serial(owner, async () => {
      this.checkCounter(owner, counter)
      const freed = await this.dropNow(owner, ids, false, { counter })
      return { freed, used: this.doc(owner).used }
    })
  }

  private checkCounter (owner: string, counter: number): void {
    const last = this.doc(owner).counter
    if (counter <= last) throw new KithError('BACKUP_REPLAYED', `this signed request's counter ${counter} is not above ${last}, the last this host accepted: a replay, refused`)
  }

  /** Which of `ids` the owner holds here (pending writes are not held yet). */
  async has (owner: string, ids: string[]): Promise<boolean[]> {
    const rows = await this.rows.getMany(ids.map(id => rowKey(owner, id)))
    return rows.map(row => row !== undefined && row.pending !== true)
  }

  /** The sealed sizes of the held ones of `ids` (null: not held, or still being written). */
  async sizes (owner: string, ids: string[]): Promise<Array<number | null>> {
    const rows = await this.rows.getMany(ids.map(id => rowKey(owner, id)))
    return rows.map(row => row !== undefined && row.pending !== true ? row.size : null)
  }

  async held (owner: string, id: string): Promise<boolean> {
    return (await this.has(owner, [id]))[0]!
  }

  /** The owner's held blobs in id order, after `after`. */
  async list (owner: string, after: string | null, limit: number): Promise<{ ids: Array<{ id: string, size: number }>, next: string | null }> {
    const ids: Array<{ id: string, size: number }> = []
    const range = { gt: after != null ? rowKey(owner, after) : `${owner}/`, lt: `${owner}0` }
    let more = false
    for await (const [key, row] of this.rows.iterator(range)) {
      if (row.pending === true) continue
      if (ids.length === limit) { more = true; break }
      ids.push({ id: key.slice(owner.length + 1), size: row.size })
    }
    return { ids, next: more ? ids[ids.length - 1]!.id : null }
  }

  /** Every blob any owner holds or is writing: the engine keeps them (liveChunks). */
  async liveChunks (live: Set<string>): Promise<void> {
    for await (const key of this.rows.keys()) live.add(key.slice(key.indexOf('/') + 1))
  }

  async audited (owner: string, entry: Omit<AuditEntry, 'at'>): Promise<void> {
    await this.serial(owner, async () => {
      const doc = this.doc(owner)
      const at = this.now()
      await this.save(owner, { ...doc, lastAudit: at, trail: [...doc.trail, { at, ...entry }].slice(-MAX_TRAIL) })
    })
  }

  private recordPath (owner: string): string {
    return join(this.recordDir, owner)
  }

  /** Keeps `record` as the owner's recovery record if `counter` is above the last accepted (BACKUP_REPLAYED otherwise). */
  async putRecord (owner: string, record: Uint8Array, counter: number): Promise<void> {
    await this.serial(owner, async () => {
      this.checkCounter(owner, counter)
      await writeFileAtomic(this.recordPath(owner), record)
      await this.save(owner, { ...this.doc(owner), counter, record: { size: record.length, counter, at: this.now() } })
    })
  }

  async getRecord (owner: string): Promise<Uint8Array | null> {
    if (this.doc(owner).record == null) return null
    try {
      return await readFile(this.recordPath(owner))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
      throw err
    }
  }

  /**
   * Deletes what owners no longer granted backup left here once `graceMs`
   * has passed since I first saw them without it (a grant given back in time
   * keeps everything). Their quota and counter stay: the quota as I set it,
   * the counter so no request they signed before is ever accepted again.
   * Resolves to the owners whose data was deleted.
   */
  async sweep (allowed: (owner: string) => boolean, graceMs: number): Promise<string[]> {
    const deleted: string[] = []
    for (const owner of [...this.docs.keys()]) {
      await this.serial(owner, async () => {
        const doc = this.doc(owner)
        if (allowed(owner) || (doc.blobs === 0 && doc.record === null)) {
          if (doc.goneSince !== null) await this.save(owner, { ...doc, goneSince: null })
          return
        }
        const now = this.now()
        if (doc.goneSince === null) {
          await this.save(owner, { ...doc, goneSince: now })
          if (graceMs > 0) return
        } else if (now - doc.goneSince < graceMs) {
          return
        }
        const keys: string[] = []
        for await (const key of this.rows.keys({ gt: `${owner}/`, lt: `${owner}0` })) keys.push(key)
        await rm(this.recordPath(owner), { force: true })
        await this.save(owner, { ...this.doc(owner), used: 0, blobs: 0, record: null, goneSince: null, trail: [] }, keys.map(key => ({ type: 'del' as const, key })))
        deleted.push(owner)
      })
    }
    return deleted
  }

  /** Every owner I keep something for, or set a quota for. */
  hosted (): HostedView[] {
    return [...this.docs].map(([peerId, doc]) => ({
      peerId,
      quota: this.quotaOf(peerId),
      used: doc.used,
      blobs: doc.blobs,
      lastWrite: doc.lastWrite,
      lastAudit: doc.lastAudit,
      record: doc.record != null ? { size: doc.record.size, at: doc.record.at } : null,
      goneSince: doc.goneSince,
      trail: doc.trail
    }))
  }
}
