import { mkdir, readdir, readFile, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { KithError } from '../../errors.ts'
import { sublevel, type Database, type Sublevel } from '../../peer/database.ts'
import { writeFileAtomic } from '../../peer/home.ts'
import { chunkId } from '../../transfer/seal.ts'
import { PackStore, type PackBatch, type Place } from './pack-store.ts'

/**
 * The host's books: for each owner (a friend I granted backup) the quota,
 * what they use, their blobs, their last write and audit, the audit trail,
 * the last signed counter, and their recovery record, and where each blob's
 * bytes lie: in one of the owner's pack files (pack-store.ts; a row's `pack`
 * and `offset`), or, for a blob kept by a host from before packs, in the
 * engine's chunk store (a row without `pack`).
 *
 * **Quota, exactly.** A put reserves its size before any byte is written:
 * under the owner's lock, `used + size > quota` is refused, otherwise a
 * `pending` row and the new `used` are written in one LevelDB batch. The blob
 * is then appended to the owner's pack, the pack fdatasynced, and its row
 * turned `held` with its place, in one batch for all the blobs of a request;
 * a failed put drops the row and gives the bytes back. So `used` counts
 * every blob held or being written and never passes the quota, whatever
 * runs concurrently. After a kill -9, `open` reconciles with what is on
 * disk: a pending row is dropped (its appended bytes, if any, are dead
 * space), a row whose pack is gone or too short is dropped, and `used` and
 * `blobs` are summed afresh from the rows.
 *
 * **Dead space.** Bytes of a pack no row points at (a removed blob, a write
 * cut by a kill) are counted per pack; a pack at least half dead is
 * compacted (`compact`): its live blobs appended to the current pack,
 * fdatasync, one batch moving their rows, then the old pack unlinked. A kill
 * between the copies and the batch leaves the rows on the old pack (the
 * copies are dead space); one between the batch and the unlink leaves a pack
 * no row points at, which `open` removes.
 *
 * **Owners apart.** Each owner has their own packs: two owners putting the
 * same sealed bytes (which sealing with each owner's keys makes as good as
 * impossible) each keep and pay for a copy. Blobs kept by a host from before
 * packs stay in the engine's chunk store, live for its collections, until
 * removed; they are not moved.
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
/**
 * Packs one compaction round copies from (at most half of each is live: 32
 * MiB of 16 MiB packs): the owner's writes wait for a round, not for a whole
 * forget's worth of packs, and its batch stays small.
 */
const COMPACT_PACKS = 4

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
  /** where it lies in the owner's packs; absent: in the engine's chunk store (kept by a host from before packs) */
  pack?: number
  offset?: number
}

/** A held blob: its sealed size, and its place in the owner's packs (null: in the engine's chunk store). */
export interface Held {
  size: number
  place: Place | null
}

type RowOp = { type: 'put', key: string, value: BlobRow } | { type: 'del', key: string }

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

/** What the book needs of the engine's chunk store, where hosts before packs kept blobs. */
export interface HeldStore {
  has: (id: string) => Promise<boolean>
  /** the sealed bytes, verified; CHUNK_NOT_FOUND or CHUNK_CORRUPT when lost */
  get: (id: string) => Promise<Uint8Array>
}

const blankDoc = (): OwnerDoc => ({ quota: null, used: 0, blobs: 0, lastWrite: null, lastAudit: null, counter: 0, goneSince: null, record: null, trail: [] })
const rowKey = (owner: string, id: string): string => `${owner}/${id}`
const placeOf = (row: BlobRow): Place | null => row.pack !== undefined ? { pack: row.pack, offset: row.offset ?? -1 } : null

export interface HostBookInit {
  db: Database
  /** the home folder: packs go in `backup-host/packs`, recovery records in `backup-host/records` */
  home: string
  /** the engine's chunk store (guardedStore), for blobs kept by a host from before packs */
  store: HeldStore
  /** fdatasync packs before indexing @default true */
  sync?: boolean
  /** @default PACK_SIZE */
  packSize?: number
  /** @default Date.now */
  now?: () => number
}

export class HostBook {
  private readonly db: Database
  private readonly owners: Sublevel<OwnerDoc>
  private readonly rows: Sublevel<BlobRow>
  private readonly recordDir: string
  private readonly store: HeldStore
  readonly packs: PackStore
  private readonly now: () => number
  private readonly docs = new Map<string, OwnerDoc>()
  private readonly tails = new Map<string, Promise<unknown>>()
  /** some rows have no place (blobs kept by a host from before packs, in the chunk store); new rows always have one */
  private legacy = false
  /** compactions asked for and not yet begun, by owner */
  private readonly compacting = new Map<string, Promise<void>>()
  /** compaction loops under way (or asked for), until their last round is done: what `close` waits for */
  private readonly compactions = new Set<Promise<void>>()

  constructor (init: HostBookInit) {
    this.db = init.db
    this.owners = sublevel<OwnerDoc>(init.db, 'backup-host-owners')
    this.rows = sublevel<BlobRow>(init.db, 'backup-host-blobs')
    this.recordDir = join(init.home, 'backup-host', 'records')
    this.store = init.store
    this.packs = new PackStore({ dir: join(init.home, 'backup-host', 'packs'), sync: init.sync, packSize: init.packSize })
    this.now = init.now ?? Date.now
  }

  /**
   * Loads the books and reconciles them with what is on disk (see the module
   * doc), and starts compacting the packs that are at least half dead.
   */
  async open (): Promise<void> {
    await mkdir(this.recordDir, { recursive: true, mode: 0o700 })
    // a record write a kill interrupted: the record before it is still whole
    for (const name of await readdir(this.recordDir)) if (name.endsWith('.tmp')) await rm(join(this.recordDir, name), { force: true })
    await this.packs.open()
    for await (const [owner, doc] of this.owners.iterator()) this.docs.set(owner, { ...blankDoc(), ...doc, used: 0, blobs: 0 })
    const ops: RowOp[] = []
    /** per owner and pack, the end of its last live blob */
    const ends = new Map<string, Map<number, number>>()
    for await (const [key, row] of this.rows.iterator()) {
      const owner = key.slice(0, key.indexOf('/'))
      const id = key.slice(key.indexOf('/') + 1)
      if (row.pending === true) {
        // reserved, never indexed: the bytes a kill after its append left are dead space.
        // (A host from before packs wrote a pending blob to the chunk store: held if it got there.)
        if (!await this.store.has(id)) {
          ops.push({ type: 'del', key })
          continue
        }
        ops.push({ type: 'put', key, value: { size: row.size, at: row.at } })
      } else if (row.pack !== undefined) {
        const offset = row.offset ?? -1
        if (offset < 0 || offset + row.size > (this.packs.sizeOf(owner, row.pack) ?? 0)) {
          ops.push({ type: 'del', key })
          continue
        }
        this.packs.count(owner, row.pack, row.size)
        const owned = ends.get(owner) ?? new Map<number, number>()
        owned.set(row.pack, Math.max(owned.get(row.pack) ?? 0, offset + row.size))
        ends.set(owner, owned)
      } else if (!await this.store.has(id)) {
        ops.push({ type: 'del', key })
        continue
      }
      if (row.pack === undefined) this.legacy = true
      const doc = this.docs.get(owner) ?? blankDoc()
      doc.used += row.size
      doc.blobs += 1
      this.docs.set(owner, doc)
    }
    await this.db.batch([
      ...ops.map(op => ({ ...op, sublevel: this.rows })),
      ...[...this.docs].map(([owner, doc]) => ({ type: 'put' as const, sublevel: this.owners, key: owner, value: doc }))
    ] as never)
    await this.packs.settle(ends)
    // in the background: a start after a kill that left much dead space does not wait for the copies
    for (const owner of this.docs.keys()) void this.compactSoon(owner)
  }

  /** Waits for the compactions asked for, every round of them, then closes the packs. */
  async close (): Promise<void> {
    while (this.compactions.size > 0) await Promise.all(this.compactions)
    await Promise.all([...this.tails.values()])
    this.packs.close()
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

  private async save (owner: string, doc: OwnerDoc, rows: RowOp[] = []): Promise<void> {
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

  /** Appends for the owner's reserved blobs: append each, sync, `commitMany` the places, then end the batch. */
  appender (owner: string): PackBatch {
    return this.packs.begin(owner)
  }

  /**
   * Reserved blobs now appended to the owner's packs (and synced) at these
   * places, held from now on: one LevelDB batch. Resolves to how many were
   * made held. A row gone meanwhile (the owner's data swept) leaves its bytes
   * dead: the caller asks for a compaction (`compactSoon`) once its batch
   * has ended, so a pack made for such a request alone does not stay.
   */
  async commitMany (owner: string, placed: Array<{ id: string, place: Place }>): Promise<number> {
    if (placed.length === 0) return 0
    return await this.serial(owner, async () => {
      const rows = await this.rows.getMany(placed.map(({ id }) => rowKey(owner, id)))
      const at = this.now()
      const held: BlobRow[] = []
      const ops: RowOp[] = []
      placed.forEach(({ id, place }, i) => {
        const row = rows[i]
        if (row?.pending !== true) return
        const value = { size: row.size, at, pack: place.pack, offset: place.offset }
        ops.push({ type: 'put', key: rowKey(owner, id), value })
        held.push(value)
      })
      await this.save(owner, { ...this.doc(owner), lastWrite: at }, ops)
      for (const row of held) this.packs.count(owner, row.pack!, row.size)
      return held.length
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

  /** Drops rows (held, or pending when `pending`; with `at`, only a row still at that place), under the owner's lock. */
  private async dropNow (owner: string, ids: string[], pending: boolean, change: Partial<OwnerDoc> = {}, at?: Place | null): Promise<number> {
    const doc = this.doc(owner)
    const ops: RowOp[] = []
    const dead: BlobRow[] = []
    let freed = 0
    const unique = [...new Set(ids)]
    const rows = await this.rows.getMany(unique.map(id => rowKey(owner, id)))
    unique.forEach((id, i) => {
      const row = rows[i]
      if (row === undefined || (row.pending === true) !== pending) return
      if (at !== undefined && (row.pack !== at?.pack || row.offset !== at?.offset)) return
      ops.push({ type: 'del', key: rowKey(owner, id) })
      if (row.pack !== undefined) dead.push(row)
      freed += row.size
    })
    await this.save(owner, { ...doc, ...change, used: doc.used - freed, blobs: doc.blobs - ops.length }, ops)
    for (const row of dead) this.packs.count(owner, row.pack!, -row.size)
    if (dead.length > 0) void this.compactSoon(owner)
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

  /** The sizes and places of the held ones of `ids` (null: not held, or still being written). */
  async locate (owner: string, ids: string[]): Promise<Array<Held | null>> {
    const rows = await this.rows.getMany(ids.map(id => rowKey(owner, id)))
    return rows.map(row => row !== undefined && row.pending !== true ? { size: row.size, place: placeOf(row) } : null)
  }

  /**
   * A held blob's sealed bytes (`held` from `locate`), checked against its
   * id. One whose bytes are gone or damaged is dropped where it was found
   * (its bytes given back) and is BLOB_MISSING, caused by CHUNK_NOT_FOUND or
   * CHUNK_CORRUPT; one a compaction moved meanwhile is read where it went.
   */
  async read (owner: string, id: string, held: Held): Promise<Uint8Array> {
    for (let tries = 1; ; tries++) {
      let lost: KithError
      try {
        if (held.place === null) return await this.store.get(id)
        const sealed = await this.packs.read(owner, held.place, held.size)
        if (chunkId(sealed) === id) return sealed
        lost = new KithError('CHUNK_CORRUPT', `the bytes of blob ${id} in pack ${held.place.pack} are damaged`)
      } catch (err) {
        if (!(err instanceof KithError) || (err.code !== 'CHUNK_NOT_FOUND' && err.code !== 'CHUNK_CORRUPT')) throw err
        lost = err
      }
      const now = (await this.locate(owner, [id]))[0]
      const moved = now?.place != null && held.place !== null && (now.place.pack !== held.place.pack || now.place.offset !== held.place.offset)
      if (moved && tries < 3) {
        held = now
        continue
      }
      const place = held.place
      await this.serial(owner, async () => await this.dropNow(owner, [id], false, {}, place))
      throw new KithError('BLOB_MISSING', `this node lost blob ${id} (${lost.code}); place it again`, { cause: lost })
    }
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

  /** Blobs held in the engine's chunk store (kept by a host from before packs): the engine keeps them (liveChunks). */
  async liveChunks (live: Set<string>): Promise<void> {
    if (!this.legacy) return
    for await (const [key, row] of this.rows.iterator()) if (row.pack === undefined) live.add(key.slice(key.indexOf('/') + 1))
  }

  /**
   * Compacts the owner's packs once the removes under way are done
   * (`compact`, round after round until none is left to compact), one
   * compaction asked for at a time.
   */
  compactSoon (owner: string): Promise<void> {
    let asked = this.compacting.get(owner)
    if (asked === undefined) {
      asked = Promise.resolve().then(async () => {
        this.compacting.delete(owner)
        for (let more = true; more;) more = (await this.compact(owner)).length > 0
      }).catch(() => {})
      const loop = asked
      this.compactions.add(loop)
      void loop.finally(() => { this.compactions.delete(loop) })
      this.compacting.set(owner, asked)
    }
    return asked
  }

  /**
   * Up to COMPACT_PACKS packs of the owner that are at least half dead and
   * not being written to: their live blobs are read, checked against their
   * ids (a damaged or lost one is dropped, as a read would), appended to the
   * current pack and synced; one batch moves their rows; then the packs are
   * unlinked. Under the owner's lock, one blob in memory at a time. Resolves
   * to the packs unlinked.
   */
  async compact (owner: string): Promise<number[]> {
    return await this.serial(owner, async () => {
      const victims = new Set(this.packs.takeCompactable(owner, COMPACT_PACKS))
      if (victims.size === 0) return []
      const moving: Array<{ key: string, row: BlobRow }> = []
      for await (const [key, row] of this.rows.iterator({ gt: `${owner}/`, lt: `${owner}0` })) {
        if (row.pending !== true && row.pack !== undefined && victims.has(row.pack)) moving.push({ key, row })
      }
      // in the order they were appended: blobs put together stay together
      moving.sort((a, b) => a.row.pack! - b.row.pack! || a.row.offset! - b.row.offset!)
      const batch = this.packs.begin(owner)
      const ops: RowOp[] = []
      const moved: BlobRow[] = []
      let lost = 0
      let lostBytes = 0
      try {
        for (const { key, row } of moving) {
          let sealed: Uint8Array | null = null
          try {
            sealed = await this.packs.read(owner, placeOf(row)!, row.size)
          } catch (err) {
            if (!(err instanceof KithError && err.code === 'CHUNK_NOT_FOUND')) throw err
          }
          if (sealed === null || chunkId(sealed) !== key.slice(owner.length + 1)) {
            ops.push({ type: 'del', key })
            lost++
            lostBytes += row.size
            continue
          }
          const place = await batch.append(sealed)
          const value = { ...row, pack: place.pack, offset: place.offset }
          ops.push({ type: 'put', key, value })
          moved.push(value)
        }
        await batch.sync()
        const doc = this.doc(owner)
        await this.save(owner, { ...doc, used: doc.used - lostBytes, blobs: doc.blobs - lost }, ops)
      } finally {
        batch.end()
      }
      for (const row of moved) this.packs.count(owner, row.pack!, row.size)
      // after the batch: a kill before an unlink leaves a pack no row points at, which `open` removes
      for (const pack of victims) await this.packs.unlink(owner, pack)
      return [...victims]
    })
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
        // after the batch: a kill before this leaves packs no row points at, which `open` removes
        await this.packs.removeOwner(owner)
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
