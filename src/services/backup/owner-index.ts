/**
 * The owner's local index of its backups (docs/backup.md, Formats): which
 * blobs it has sealed and where they are placed, and which snapshots it made.
 * Kept in the home's LevelDB; the recovery record carries a copy of it.
 *
 * Keyed by plaintext id (the owner's keyed HMAC, never shown to hosts); each
 * blob records its sealed id (what hosts key by), size, audit root and the
 * hosts verified to hold it.
 */

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
  /** plaintext id of the root tree blob */
  tree: string
  stats: { files: number, dirs: number, bytes: number, blobs: number }
}

export interface OwnerIndex {
  /** the record of one blob, or undefined if never sealed */
  blob: (id: string) => Promise<BlobRecord | undefined>
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
  /** one snapshot by seq or by a prefix of its id (SNAPSHOT_UNKNOWN otherwise) */
  snapshot: (ref: string | number) => Promise<SnapshotRecord>
  /** the next snapshot's seq (one past the highest ever made, forgotten ones included) */
  nextSeq: () => Promise<number>
}
