/**
 * The owner's local index of its backups (docs/backup.md, Formats): which
 * blobs it has sealed and where they are placed, and which snapshots it made.
 * Kept in the home's LevelDB; the recovery record carries a copy of it.
 *
 * Keyed by plaintext id (the owner's keyed HMAC, never shown to hosts); each
 * blob records its sealed id (what hosts key by), size, audit root and the
 * hosts verified to hold it.
 */
import type { AuditLeafSize } from './audit-tree.ts'
import { KithError } from '../../errors.ts'
import { sublevel, type Database, type Sublevel } from '../../peer/database.ts'

/** What a blob holds: a data chunk, a tree (folder listing) or a snapshot. */
export type BlobKind = 'data' | 'tree' | 'snapshot'

/** One sealed blob the owner placed (or is placing). */
export interface BlobRecord {
  kind: BlobKind
  /** what hosts see and key by: chunkId (sha256 hex) of the sealed bytes */
  sealedId: string
  /** sealed size, bytes */
  size: number
  /** audit root over the sealed bytes (audit-tree.ts auditRoot), hex */
  root: string
  /** the root's leaf size; absent in records made before it was kept: 4096 (audit-tree.ts leafSizeOf) */
  auditLeaf?: AuditLeafSize
  /** peer ids of hosts verified to hold it (put answered, or has() said yes) */
  hosts: string[]
}

/** One snapshot, as the index lists it (the signed snapshot blob is the truth). */
export interface SnapshotRecord {
  /** the owner's monotonic snapshot sequence number */
  seq: number
  /** plaintext id of the snapshot blob */
  id: string
  /** ms since the epoch */
  created: number
  label: string | null
  paths: string[]
  /** plaintext ids of the root tree's blobs */
  tree: string[]
  stats: { files: number, dirs: number, links: number, bytes: number, blobs: number }
  /** copies of each blob the run asked for (--replicas): what repair keeps; absent in snapshots made before it was kept */
  replicas?: number
}

export interface OwnerIndex {
  /** the record of one blob, or undefined if never sealed */
  blob: (id: string) => Promise<BlobRecord | undefined>
  /** the records of many blobs, in the order asked */
  blobRecords: (ids: string[]) => Promise<Array<BlobRecord | undefined>>
  /** records a blob once it is sealed (hosts: []) */
  putBlob: (id: string, record: BlobRecord) => Promise<void>
  /** a host was verified to hold a blob */
  addHost: (id: string, host: string) => Promise<void>
  /** a host no longer holds a blob (removed, failed an audit) */
  removeHost: (id: string, host: string) => Promise<void>
  /** drops a blob no snapshot needs any more */
  deleteBlob: (id: string) => Promise<void>
  /** every blob: [plaintext id, record] */
  blobs: () => AsyncIterable<[string, BlobRecord]>
  /** the blobs a host holds for me: [plaintext id, record] */
  blobsOn: (host: string) => AsyncIterable<[string, BlobRecord]>
  /** every blob a snapshot needs (snapshot blob, trees, data), plaintext ids */
  snapshotBlobs: (seq: number) => Promise<Set<string>>
  /** snapshots, oldest first */
  snapshots: () => Promise<SnapshotRecord[]>
  /** one snapshot by seq, "latest", or a prefix of its id (SNAPSHOT_UNKNOWN otherwise) */
  snapshot: (ref: string | number) => Promise<SnapshotRecord>
  /** the next snapshot's seq (one past the highest ever made, forgotten ones included) */
  nextSeq: () => Promise<number>
  /** records a snapshot (a run that finished, or one brought back by kith restore) and moves nextSeq past it */
  putSnapshot: (record: SnapshotRecord) => Promise<void>
}

/** Snapshot seqs as keys that sort as numbers. */
function seqKey (seq: number): string {
  return seq.toString().padStart(12, '0')
}

export interface OwnerIndexLevels {
  blobs: Sublevel<BlobRecord>
  snapshots: Sublevel<SnapshotRecord>
  /** `${seqKey}!${id}` for every blob a snapshot needs (its kind as the value) */
  needs: Sublevel<BlobKind>
  /** 'seq': the next snapshot's seq */
  meta: Sublevel<number>
}

/** The owner index in the home's LevelDB (sublevels backup-*). */
export class LevelOwnerIndex implements OwnerIndex {
  private readonly levels: OwnerIndexLevels

  constructor (levels: OwnerIndexLevels) {
    this.levels = levels
  }

  static open (db: Database): LevelOwnerIndex {
    return new LevelOwnerIndex({
      blobs: sublevel<BlobRecord>(db, 'backup-blobs'),
      snapshots: sublevel<SnapshotRecord>(db, 'backup-snapshots'),
      needs: sublevel<BlobKind>(db, 'backup-needs'),
      meta: sublevel<number>(db, 'backup-meta')
    })
  }

  async blob (id: string): Promise<BlobRecord | undefined> {
    return await this.levels.blobs.get(id)
  }

  /** Many records at once (one LevelDB read for all: a restore's next files). */
  async blobRecords (ids: string[]): Promise<Array<BlobRecord | undefined>> {
    return ids.length === 0 ? [] : await this.levels.blobs.getMany(ids)
  }

  async putBlob (id: string, record: BlobRecord): Promise<void> {
    await this.levels.blobs.put(id, record)
  }

  /** Writes many blob records in one LevelDB batch (a run records each host's confirmed blobs this way). */
  async putBlobs (records: Array<[string, BlobRecord]>): Promise<void> {
    if (records.length > 0) await this.levels.blobs.batch(records.map(([key, value]) => ({ type: 'put' as const, key, value })))
  }

  async addHost (id: string, host: string): Promise<void> {
    const record = await this.blob(id)
    if (record == null) throw new KithError('INTERNAL', `blob ${id} is not in the backup index`)
    if (record.hosts.includes(host)) return
    await this.putBlob(id, { ...record, hosts: [...record.hosts, host] })
  }

  async removeHost (id: string, host: string): Promise<void> {
    const record = await this.blob(id)
    if (record == null || !record.hosts.includes(host)) return
    await this.putBlob(id, { ...record, hosts: record.hosts.filter(h => h !== host) })
  }

  async deleteBlob (id: string): Promise<void> {
    await this.levels.blobs.del(id)
  }

  async * blobs (): AsyncIterable<[string, BlobRecord]> {
    yield * this.levels.blobs.iterator()
  }

  async * blobsOn (host: string): AsyncIterable<[string, BlobRecord]> {
    for await (const [id, record] of this.levels.blobs.iterator()) if (record.hosts.includes(host)) yield [id, record]
  }

  async snapshotBlobs (seq: number): Promise<Set<string>> {
    const prefix = `${seqKey(seq)}!`
    const ids = new Set<string>()
    for await (const key of this.levels.needs.keys({ gt: prefix, lt: `${prefix}~` })) ids.add(key.slice(prefix.length))
    return ids
  }

  /** Records blobs the snapshot `seq` (made now, or being made) needs. */
  async addNeeds (seq: number, blobs: Array<[string, BlobKind]>): Promise<void> {
    await this.levels.needs.batch(blobs.map(([id, kind]) => ({ type: 'put' as const, key: `${seqKey(seq)}!${id}`, value: kind })))
  }

  /** Forgets what the snapshot `seq` needs (it was forgotten, or a killed run left a partial list). */
  async clearNeeds (seq: number): Promise<void> {
    const prefix = `${seqKey(seq)}!`
    await this.levels.needs.clear({ gt: prefix, lt: `${prefix}~` })
  }

  async snapshots (): Promise<SnapshotRecord[]> {
    return await this.levels.snapshots.values().all()
  }

  async snapshot (ref: string | number): Promise<SnapshotRecord> {
    const all = await this.snapshots()
    const text = String(ref)
    const found = /^\d+$/.test(text)
      ? all.filter(s => s.seq === Number(text))
      : text === 'latest' ? all.slice(-1) : all.filter(s => text.length >= 4 && s.id.startsWith(text.toLowerCase()))
    if (found.length === 1) return found[0]!
    if (found.length > 1) throw new KithError('SNAPSHOT_UNKNOWN', `${JSON.stringify(text)} names ${found.length} snapshots; give more of the id, or the number`)
    throw new KithError('SNAPSHOT_UNKNOWN', `no snapshot ${JSON.stringify(text)}; kith backup list shows them (by number, id, or "latest")`)
  }

  async putSnapshot (record: SnapshotRecord): Promise<void> {
    await this.levels.snapshots.put(seqKey(record.seq), record)
    if (record.seq >= await this.nextSeq()) await this.levels.meta.put('seq', record.seq + 1)
  }

  async deleteSnapshot (seq: number): Promise<void> {
    await this.levels.snapshots.del(seqKey(seq))
    await this.clearNeeds(seq)
  }

  async nextSeq (): Promise<number> {
    return await this.levels.meta.get('seq') ?? 1
  }
}
