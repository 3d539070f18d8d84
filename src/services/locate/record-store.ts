import { KithError } from '../../errors.ts'
import { parseAddressRecord, checkReplaces, type AddressRecord } from '../../peer/address-record.ts'
import type { Sublevel } from '../../peer/database.ts'

/**
 * The newest verified address record per peer (my friends, and myself), kept
 * in LevelDB. Records are verified before they are offered and verified again
 * when read back, so a damaged database yields no record rather than a wrong
 * one. A record replaces the stored one only if its seq is higher; offers for
 * one peer are applied one at a time.
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
  private readonly locks = new Map<string, Promise<unknown>>()

  constructor (level: Sublevel<StoredRecord>) {
    this.level = level
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
