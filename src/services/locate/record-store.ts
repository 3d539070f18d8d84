import { KithError } from '../../errors.ts'
import { parseAddressRecord, checkReplaces, type AddressRecord } from '../../peer/address-record.ts'
import type { Sublevel } from '../../peer/database.ts'

/**
 * The newest verified address record per peer (my friends, and myself), kept
 * in LevelDB. Records are verified before they are offered and verified again
 * when read back, so a damaged database yields no record rather than a wrong
 * one. A record replaces the stored one only if its seq is higher; offers for
 * one peer are applied one at a time.
 *
 * Only peers `keeps` allows are stored (my friends and me): an offer about
 * anyone else is NOT_A_FRIEND, and `drop` / `prune` forget a revoked
 * friend's record. So the store holds one record (at most MAX_RECORD_BYTES)
 * per friend, however many records friends send.
 */
export interface StoredRecord {
  /** the signed envelope, base64 */
  record: string
  /** ms since epoch it was stored */
  received: number
  /** who passed it on: the subject itself, a friend's peer id, or 'dht' */
  from: string
}

export class RecordStore {
  private readonly level: Sublevel<StoredRecord>
  private readonly keeps: (peerId: string) => boolean
  private readonly locks = new Map<string, Promise<unknown>>()

  /** `keeps`: whose records are stored; @default everyone's */
  constructor (level: Sublevel<StoredRecord>, keeps: (peerId: string) => boolean = () => true) {
    this.level = level
    this.keeps = keeps
  }

  async get (peerId: string): Promise<AddressRecord | undefined> {
    return (await this.entry(peerId))?.record
  }

  /** The record with who passed it on and when. */
  async entry (peerId: string): Promise<{ record: AddressRecord, from: string, received: number } | undefined> {
    const stored = await this.level.get(peerId) ?? undefined
    if (stored == null) return undefined
    try {
      // the clock check was made on arrival; a record only ages after that
      const record = parseAddressRecord(Buffer.from(stored.record, 'base64'), { subject: peerId, now: Number.MAX_SAFE_INTEGER })
      return { record, from: stored.from, received: stored.received }
    } catch {
      return undefined
    }
  }

  /**
   * Stores `record` if it is newer than what is kept for its subject, else
   * throws RECORD_STALE. The record must already be verified.
   */
  async offer (record: AddressRecord, from: string): Promise<void> {
    if (!this.keeps(record.peerId)) throw new KithError('NOT_A_FRIEND', `${record.peerId} is not a friend: this node keeps address records of its friends only`)
    await this.serial(record.peerId, async () => {
      checkReplaces(record, await this.get(record.peerId))
      await this.level.put(record.peerId, { record: Buffer.from(record.bytes).toString('base64'), received: Date.now(), from })
    })
  }

  /** Like `offer`, but says whether it was stored instead of throwing RECORD_STALE. */
  async offerIfNewer (record: AddressRecord, from: string): Promise<boolean> {
    try {
      await this.offer(record, from)
      return true
    } catch (err) {
      if (err instanceof KithError && err.code === 'RECORD_STALE') return false
      throw err
    }
  }

  /** Forgets the record of `peerId` (a friend revoked). */
  async drop (peerId: string): Promise<void> {
    await this.serial(peerId, async () => { await this.level.del(peerId) })
  }

  /** Forgets every record `keeps` no longer allows (friends revoked while the node was down); resolves to how many. */
  async prune (): Promise<number> {
    let dropped = 0
    for await (const peerId of this.level.keys()) {
      if (this.keeps(peerId)) continue
      await this.drop(peerId)
      dropped++
    }
    return dropped
  }

  private async serial<T> (key: string, fn: () => Promise<T>): Promise<T> {
    const before = this.locks.get(key) ?? Promise.resolve()
    const run = before.catch(() => {}).then(fn)
    this.locks.set(key, run)
    try {
      return await run
    } finally {
      if (this.locks.get(key) === run) this.locks.delete(key)
    }
  }
}
