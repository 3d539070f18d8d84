import { fdatasync, read } from 'node:fs'
import { mkdir, readdir, rm, stat, truncate, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { constants } from 'node:fs'
import { KithError } from '../../errors.ts'
import { syncDir } from '../../peer/home.ts'
import { MAX_SEALED_CHUNK_SIZE } from '../../transfer/constants.ts'
import { closeFd, openFd, writeAt } from '../../transfer/fd.ts'

/**
 * The host's pack files: each owner's sealed blobs appended one after another
 * to that owner's current pack (docs/backup.md, "Host"):
 *
 *   <dir>/<owner>/<n>.pack     n counts up from 1; a blob never spans two packs
 *
 * This holds the files and what is known of each (its size, the bytes the
 * book points at, the writes under way); which blob lies where is the host
 * book's (a row's `pack` and `offset`), written in the same LevelDB batch that
 * makes the blob held. Bytes no row points at are dead: a write a kill cut
 * before its batch, a removed blob. A pack whose dead bytes reach half of it
 * is compacted by the book (its live blobs appended to the current pack, the
 * rows moved, the pack unlinked).
 *
 * A put-many costs one append per blob (to the page cache), one fdatasync of
 * the pack and one batch, where the chunk store made, fsynced and renamed a
 * file per blob and fsynced its folder: about 4 blobs a MB for a tree of
 * small files, each costing this machine's kernel ~1 ms in a folder where
 * many files were freed lately (docs/backup.md, "Benchmark").
 */

/**
 * A pack is rolled over once it holds this much: a pack is a file created
 * and its folder fsynced once per 16 MiB rather than per blob, and a
 * compaction copies at most half of one (restic's packs are 16 MiB too).
 */
export const PACK_SIZE = 16 * 1024 * 1024

const fdatasyncFd = promisify(fdatasync)

/** Bytes appended to a pack after which an fdatasync starts without waiting for the request's end. */
const SYNC_AHEAD = 1024 * 1024
const readFd = promisify(read)

/** Where a blob lies: pack `pack` of its owner, from `offset`, for its row's size. */
export interface Place {
  pack: number
  offset: number
}

export interface Pack {
  /** bytes appended or being appended: the next append goes here */
  size: number
  /** bytes rows point at */
  live: number
  /** appends and syncs under way (a pack with writers is never compacted) */
  writers: number
  /** open for appends while current or written to */
  fd?: number
  /** no longer current (rolled over, unlinked): closed once its writers are done */
  retired: boolean
  /** the pack's folder entry is not yet fsynced */
  fresh?: true
  /** appends done so far (a count) */
  written: number
  /** of them, the first this many are durable: an fdatasync began after they were done */
  synced: number
  /** bytes appended since the last fdatasync began */
  unsynced: number
  /** the fdatasync under way */
  syncing?: Promise<void>
}

interface OwnerPacks {
  /** the pack appends go to, or null for a new one at the next append */
  current: number | null
  next: number
  packs: Map<number, Pack>
}

const PACK_NAME = /^([1-9][0-9]{0,15})\.pack$/

export interface PackStoreInit {
  dir: string
  /** fdatasync before a batch is indexed @default true */
  sync?: boolean
  /** @default PACK_SIZE */
  packSize?: number
}

export class PackStore {
  private readonly dir: string
  private readonly sync: boolean
  private readonly packSize: number
  private readonly owners = new Map<string, OwnerPacks>()

  constructor (init: PackStoreInit) {
    this.dir = init.dir
    this.sync = init.sync ?? true
    this.packSize = init.packSize ?? PACK_SIZE
  }

  private folder (owner: string): string {
    return join(this.dir, owner)
  }

  private path (owner: string, pack: number): string {
    return join(this.dir, owner, `${pack}.pack`)
  }

  private ownerPacks (owner: string): OwnerPacks {
    let packs = this.owners.get(owner)
    if (packs === undefined) {
      packs = { current: null, next: 1, packs: new Map() }
      this.owners.set(owner, packs)
    }
    return packs
  }

  /** Every pack on disk, by owner, with its size (nothing live yet: the book counts its rows in with `count`). */
  async open (): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 })
    for (const entry of await readdir(this.dir, { withFileTypes: true })) {
      if (!entry.isDirectory()) continue
      const owner = entry.name
      const packs = this.ownerPacks(owner)
      for (const name of await readdir(this.folder(owner))) {
        const n = PACK_NAME.exec(name)
        if (n === null) continue
        const pack = Number(n[1])
        const { size } = await stat(join(this.folder(owner), name))
        packs.packs.set(pack, { size, live: 0, writers: 0, retired: true, written: 0, synced: 0, unsynced: 0 })
        packs.next = Math.max(packs.next, pack + 1)
      }
    }
  }

  /** `bytes` more (or, negative, fewer) of `pack` are pointed at by rows. */
  count (owner: string, pack: number, bytes: number): void {
    const state = this.owners.get(owner)?.packs.get(pack)
    if (state !== undefined) state.live += bytes
  }

  /**
   * At start, before any append, once the book has counted its rows in:
   * unlinks the packs no row points at (a compaction a kill cut after its
   * batch; a revoked owner's, cut before the folder went), cuts each owner's
   * newest pack back to `ends` (the end of its last live blob: what a kill cut
   * before its batch is dead space at the tail) and appends there next while
   * it has room.
   */
  async settle (ends: Map<string, Map<number, number>>): Promise<void> {
    for (const [owner, packs] of this.owners) {
      for (const [pack, state] of [...packs.packs]) {
        if (state.live === 0) await this.unlink(owner, pack)
      }
      if (packs.packs.size === 0) continue
      const newest = Math.max(...packs.packs.keys())
      const state = packs.packs.get(newest)!
      const end = ends.get(owner)?.get(newest) ?? state.size
      if (end < state.size) {
        await truncate(this.path(owner, newest), end)
        state.size = end
      }
      if (state.size < this.packSize) {
        packs.current = newest
        state.retired = false
      }
    }
  }

  /** The size of a pack as appended so far, or undefined if there is no such pack. */
  sizeOf (owner: string, pack: number): number | undefined {
    return this.owners.get(owner)?.packs.get(pack)?.size
  }

  /** What `owner`'s packs take on disk, and of it the bytes no row points at. */
  usage (owner: string): { packs: number, bytes: number, dead: number } {
    let bytes = 0
    let dead = 0
    const packs = this.owners.get(owner)?.packs ?? new Map<number, Pack>()
    for (const state of packs.values()) {
      bytes += state.size
      dead += state.size - state.live
    }
    return { packs: packs.size, bytes, dead }
  }

  /**
   * Packs to compact: no writes under way, at least half dead (so a
   * compaction copies at most as much as it frees), and not the current one
   * unless nothing in it is live (a forget of everything frees its disk
   * too); that one is retired at once, so no append lands in it from now on.
   * At most `max` of them.
   */
  takeCompactable (owner: string, max: number): number[] {
    const packs = this.owners.get(owner)
    if (packs === undefined) return []
    const taken = [...packs.packs]
      .filter(([n, s]) => s.writers === 0 && 2 * s.live <= s.size && (n !== packs.current || s.live === 0))
      .slice(0, max)
      .map(([n]) => n)
    if (packs.current !== null && taken.includes(packs.current)) {
      this.retire(packs.packs.get(packs.current)!)
      packs.current = null
    }
    return taken
  }

  /** A batch of appends for `owner`: `append` each blob, `sync` once, index the places, then `end`. */
  begin (owner: string): PackBatch {
    return new PackBatch(this, owner)
  }

  /**
   * PackBatch's: room for `size` bytes at the end of the owner's current pack
   * (a new one if it has no room), claimed at once so concurrent appends
   * never overlap, and the pack open for writing.
   */
  async claim (owner: string, size: number): Promise<{ place: Place, state: Pack }> {
    const packs = this.ownerPacks(owner)
    let state = packs.current !== null ? packs.packs.get(packs.current) : undefined
    if (state === undefined || (state.size > 0 && state.size + size > this.packSize)) {
      if (state !== undefined) this.retire(state)
      packs.current = packs.next++
      state = { size: 0, live: 0, writers: 0, retired: false, fresh: true, written: 0, synced: 0, unsynced: 0 }
      packs.packs.set(packs.current, state)
    }
    const place = { pack: packs.current!, offset: state.size }
    state.size += size
    state.writers++
    try {
      state.fd ??= await this.opening(owner, place.pack, state)
    } catch (err) {
      this.done(state)
      throw err
    }
    return { place, state }
  }

  /** One open per pack, however many appends wait for it. */
  private readonly opens = new Map<Pack, Promise<number>>()

  private async opening (owner: string, pack: number, state: Pack): Promise<number> {
    let opening = this.opens.get(state)
    if (opening === undefined) {
      opening = (async () => {
        if (state.fresh === true) await mkdir(this.folder(owner), { recursive: true, mode: 0o700 })
        const flags = constants.O_WRONLY | constants.O_NOFOLLOW | (state.fresh === true ? constants.O_CREAT | constants.O_EXCL : 0)
        return await openFd(this.path(owner, pack), flags, 0o600)
      })().finally(() => { this.opens.delete(state) })
      this.opens.set(state, opening)
    }
    return await opening
  }

  /**
   * PackBatch's: an append to the pack is written. Once SYNC_AHEAD bytes
   * wait, an fdatasync starts at once (none runs twice at a time), so the
   * one a request waits for at its end finds little left to write: the disk
   * works while the next bodies arrive, as it did with a file per blob.
   */
  wrote (owner: string, state: Pack, bytes: number): void {
    state.written++
    state.unsynced += bytes
    if (this.sync && state.syncing === undefined && state.unsynced >= SYNC_AHEAD) this.flush(owner, state).catch(() => {})
  }

  /** One fdatasync of the pack (and its folder, for a new pack): makes durable every append written before it began. */
  private async flush (owner: string, state: Pack): Promise<void> {
    const covers = state.written
    state.unsynced = 0
    // holds the descriptor open while it runs
    state.writers++
    const syncing = (async () => {
      await fdatasyncFd(state.fd!)
      if (state.fresh === true) {
        await syncDir(this.folder(owner))
        delete state.fresh
      }
      state.synced = Math.max(state.synced, covers)
    })().finally(() => {
      state.syncing = undefined
      this.done(state)
    })
    state.syncing = syncing
    await syncing
  }

  /**
   * PackBatch's: resolves once the first `upTo` appends of the pack are
   * durable, sharing an fdatasync under way or one another request starts
   * (a group commit); one of its own if none covers them. A failed sync
   * of its own fails it.
   */
  async syncPack (owner: string, state: Pack, upTo: number): Promise<void> {
    if (!this.sync) return
    while (state.synced < upTo) {
      if (state.syncing !== undefined) await state.syncing.catch(() => {})
      else await this.flush(owner, state)
    }
  }

  /** PackBatch's: one writer of a pack is done. */
  done (state: Pack): void {
    state.writers--
    if (state.retired) this.retire(state)
  }

  /** A pack no longer current: closed now or once its last writer is done (never while a write may use its descriptor). */
  private retire (state: Pack): void {
    state.retired = true
    if (state.fd === undefined || state.writers > 0) return
    const fd = state.fd
    delete state.fd
    closeFd(fd).catch(() => {})
  }

  /**
   * A blob's bytes, `size` of them at `place`: CHUNK_NOT_FOUND if the pack is
   * gone or shorter than the place says (the size checked before anything is
   * allocated). The caller checks them against the blob's id.
   */
  async read (owner: string, place: Place, size: number): Promise<Uint8Array> {
    if (!Number.isSafeInteger(size) || size < 1 || size > MAX_SEALED_CHUNK_SIZE || !Number.isSafeInteger(place.offset) || place.offset < 0) {
      throw new KithError('CHUNK_NOT_FOUND', `pack ${place.pack} has no blob of ${size} bytes at ${place.offset}`)
    }
    let fd: number
    try {
      fd = await openFd(this.path(owner, place.pack), constants.O_RDONLY | constants.O_NOFOLLOW)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new KithError('CHUNK_NOT_FOUND', `pack ${place.pack} is gone`)
      throw err
    }
    try {
      const bytes = Buffer.allocUnsafe(size)
      for (let at = 0; at < size;) {
        const { bytesRead } = await readFd(fd, bytes, at, size - at, place.offset + at)
        if (bytesRead === 0) throw new KithError('CHUNK_NOT_FOUND', `pack ${place.pack} ends before the ${size}-byte blob at ${place.offset} does`)
        at += bytesRead
      }
      return bytes
    } finally {
      await closeFd(fd)
    }
  }

  /** Removes a pack (compacted, or nothing in it is pointed at). */
  async unlink (owner: string, pack: number): Promise<void> {
    const packs = this.owners.get(owner)
    const state = packs?.packs.get(pack)
    if (state !== undefined) {
      if (packs!.current === pack) packs!.current = null
      packs!.packs.delete(pack)
      this.retire(state)
    }
    await unlink(this.path(owner, pack)).catch(err => { if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err })
  }

  /** Removes every pack of an owner none of whose rows are left (a revoked friend after the grace period). */
  async removeOwner (owner: string): Promise<void> {
    const packs = this.owners.get(owner)
    if (packs !== undefined) {
      for (const state of packs.packs.values()) this.retire(state)
      packs.packs.clear()
      packs.current = null
    }
    await rm(this.folder(owner), { recursive: true, force: true })
  }

  /** Closes the packs open for appends (their writers, if any, close them when done). */
  close (): void {
    for (const packs of this.owners.values()) {
      for (const state of packs.packs.values()) this.retire(state)
      packs.current = null
    }
  }
}

/**
 * One request's appends (a put-many, or a compaction's copies): each
 * `append` claims room at the end of the current pack at once, so appends
 * of concurrent requests never overlap, and writes there; `sync` makes all
 * of them durable with one fdatasync per pack touched (a group commit); the
 * caller then indexes the places in one batch, and calls `end` whatever
 * happened.
 */
export class PackBatch {
  private readonly store: PackStore
  private readonly owner: string
  /** every claim, each holding its pack open until `end` */
  private readonly claims: Pack[] = []

  constructor (store: PackStore, owner: string) {
    this.store = store
    this.owner = owner
  }

  async append (bytes: Uint8Array): Promise<Place> {
    const { place, state } = await this.store.claim(this.owner, bytes.length)
    this.claims.push(state)
    await writeAt(state.fd!, bytes, place.offset)
    this.store.wrote(this.owner, state, bytes.length)
    return place
  }

  /** Once every append has resolved: makes them durable. */
  async sync (): Promise<void> {
    await Promise.all([...new Set(this.claims)].map(async state => { await this.store.syncPack(this.owner, state, state.written) }))
  }

  end (): void {
    for (const state of this.claims.splice(0)) this.store.done(state)
  }
}
