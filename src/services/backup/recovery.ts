/**
 * The recovery record: what a new home needs, beside the phrase, to become
 * this node again (docs/backup.md, "Recovery"). Every host keeps the newest
 * one its owner pushed (protocol.ts putRecord/getRecord); the owner pushes a
 * new one after each backup run, audit repair or friend change.
 *
 *   record    = magic "KRCV" | version(1) | seq(u64 BE) | nonce(12) | ciphertext | tag(16) | signature(64)
 *   ciphertext= AES-256-GCM(recovery key, nonce, canonical CBOR of RecoveryContent)
 *   AD        = "kith/backup/recovery/1\0" | magic | version | seq | owner peer id (UTF-8)
 *   signature = Ed25519 (domain 'backup-recovery/1') over owner peer id (UTF-8) | every byte before it
 *
 * The recovery key derives from the seed (keys.ts), so only the phrase opens
 * a record; the signature lets the owner check it is its own before it
 * spends anything on it, and binds the clear seq. seq grows with every
 * record (max(last + 1, now in ms), so a home restored from an older record
 * still moves past the newest one a host kept); an opener that knows a seq
 * refuses any record at or below it (RECOVERY_STALE): a host can't roll the
 * owner back to an older friend book or index.
 *
 * Content: the friend book (every friend, revoked ones too, so the gate keeps
 * refusing them), the node's name, and the owner index (blobs with their
 * sealed ids, sizes, audit roots and hosts; snapshots). A blob costs about
 * 110 bytes, so the 16 MiB limit holds the index of about 150 000 blobs,
 * some 150 GB of backups at the ~1 MiB average chunk.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import { peerIdFromString } from '@libp2p/peer-id'
import { z } from 'zod'
import { KithError } from '../../errors.ts'
import { decodeCanonical, encodeCanonical } from '../../peer/canonical.ts'
import { sign, verify, SIGNATURE_LENGTH } from '../../peer/signing.ts'
import type { Identity } from '../../peer/identity.ts'
import type { Friend } from '../../trust/friends.ts'
import { SERVICES } from '../../trust/grants.ts'
import { AUDIT_LEAF_SIZES } from './audit-tree.ts'
import type { BlobKind, BlobRecord, SnapshotRecord } from './owner-index.ts'

/**
 * The format version records are made in. 2 adds each blob's audit leaf size
 * (a 7th element of its tuple, audit-tree.ts); version 1 records, made
 * before, are still opened (their blobs' roots are all 4 KiB ones).
 */
export const RECOVERY_VERSION = 2
const READABLE_VERSIONS: readonly number[] = [1, RECOVERY_VERSION]
/** what a host keeps per owner (protocol.ts allows the same) */
export const MAX_RECOVERY_RECORD = 16 * 1024 * 1024
const MAGIC = Buffer.from('KRCV', 'ascii')
const HEADER = MAGIC.length + 1 + 8
const NONCE = 12
const TAG = 16
const AD_DOMAIN = Buffer.from('kith/backup/recovery/1\0', 'utf8')
const KINDS: readonly BlobKind[] = ['data', 'tree', 'snapshot']

export interface RecoveryContent {
  /** ms since the epoch, when the record was made */
  created: number
  /** the name friends see in my invites */
  name: string
  friends: Friend[]
  blobs: Array<[string, BlobRecord]>
  /** each snapshot with the plaintext ids of every blob it needs (OwnerIndex.snapshotBlobs) */
  snapshots: Array<{ record: SnapshotRecord, needs: string[] }>
}

export interface OpenedRecovery {
  seq: number
  content: RecoveryContent
}

// --- the content's wire form: short keys, ids as bytes, hosts as indexes into one list

const bytes32 = z.instanceof(Uint8Array).refine(b => b.length === 32, 'not 32 bytes')
const text = (max: number): z.ZodString => z.string().max(max)
const ms = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER)
const count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER)

const friendWire = z.object({
  peerId: text(128),
  publicKey: text(64),
  label: text(64).min(1),
  grantsToThem: z.array(z.enum(SERVICES)).max(SERVICES.length),
  grantsFromThem: z.array(z.enum(SERVICES)).max(SERVICES.length),
  state: z.enum(['active', 'revoked']),
  addrs: z.array(text(1024)).max(64),
  lastSeen: ms.nullable(),
  since: ms,
  via: text(256)
}).strict()

// the snapshot record's own fields are owner-index.ts's business (and signed and sealed by me): checked loosely here
const snapshotWire = z.object({
  r: z.looseObject({ seq: count, id: text(64), created: ms }),
  n: z.array(count).max(10_000_000)
}).strict()

const contentWire = z.object({
  v: z.union(READABLE_VERSIONS.map(version => z.literal(version))),
  created: ms,
  name: text(255),
  friends: z.array(friendWire).max(10_000),
  hosts: z.array(text(128)).max(10_000),
  // [id, kind, sealedId, size, root, host indexes, audit leaf size (absent: 4 KiB, records from before it was kept)]
  blobs: z.array(z.tuple([bytes32, z.number().int().min(0).max(KINDS.length - 1), bytes32, count, bytes32, z.array(count).max(64),
    z.union(AUDIT_LEAF_SIZES.map(size => z.literal(size))).optional()])).max(1_000_000),
  snapshots: z.array(snapshotWire).max(1_000_000)
}).strict()

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex')
const unhex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s, 'hex'))

function toWire (content: RecoveryContent): unknown {
  const hosts: string[] = []
  const hostIndex = new Map<string, number>()
  const indexOf = (host: string): number => {
    let i = hostIndex.get(host)
    if (i == null) {
      i = hosts.push(host) - 1
      hostIndex.set(host, i)
    }
    return i
  }
  const blobAt = new Map(content.blobs.map(([id], i) => [id, i]))
  const blobIndex = (id: string): number => {
    const i = blobAt.get(id)
    if (i == null) throw new KithError('INTERNAL', `a snapshot needs blob ${id}, which the index does not hold`)
    return i
  }
  return {
    v: RECOVERY_VERSION,
    created: content.created,
    name: content.name,
    // canonical CBOR refuses undefined: copy the known fields only
    friends: content.friends.map(f => ({
      peerId: f.peerId, publicKey: f.publicKey, label: f.label, grantsToThem: f.grantsToThem, grantsFromThem: f.grantsFromThem,
      state: f.state, addrs: f.addrs, lastSeen: f.lastSeen, since: f.since, via: f.via
    })),
    blobs: content.blobs.map(([id, r]) => [unhex(id), KINDS.indexOf(r.kind), unhex(r.sealedId), r.size, unhex(r.root), r.hosts.map(indexOf), ...r.auditLeaf != null ? [r.auditLeaf] : []]),
    hosts,
    snapshots: content.snapshots.map(s => ({ r: JSON.parse(JSON.stringify(s.record)) as unknown, n: s.needs.map(id => blobIndex(id)) }))
  }
}

/** The content of a record whose header says `version`: the content must say the same, and a version 1 blob names no leaf size. */
function fromWire (value: unknown, version: number): RecoveryContent {
  const parsed = contentWire.safeParse(value)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    throw new KithError('RECOVERY_MALFORMED', `the recovery record's content breaks its format (${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'}); it was made by a kith that does not match this one, or forged`)
  }
  const w = parsed.data
  if (w.v !== version || (version === 1 && w.blobs.some(b => b[6] !== undefined))) {
    throw new KithError('RECOVERY_MALFORMED', `the recovery record's content is format ${w.v}${w.v === version ? ' with audit leaf sizes, which came with format 2' : ''} under a header of format ${version}; it was forged or damaged`)
  }
  const blobs = w.blobs.map(([id, kind, sealedId, size, root, hostIdx, auditLeaf]): [string, BlobRecord] => {
    const hosts = hostIdx.map(i => {
      const host = w.hosts[i]
      if (host == null) throw new KithError('RECOVERY_MALFORMED', `the recovery record names host ${i} of ${w.hosts.length}`)
      return host
    })
    return [hex(id), { kind: KINDS[kind]!, sealedId: hex(sealedId), size, root: hex(root), ...auditLeaf != null ? { auditLeaf } : {}, hosts }]
  })
  const snapshots = w.snapshots.map(s => ({
    record: s.r as unknown as SnapshotRecord,
    needs: s.n.map(i => {
      const blob = blobs[i]
      if (blob == null) throw new KithError('RECOVERY_MALFORMED', `the recovery record names blob ${i} of ${blobs.length}`)
      return blob[0]
    })
  }))
  return { created: w.created, name: w.name, friends: w.friends, blobs, snapshots }
}

// --- sealing and opening

function associatedData (header: Uint8Array, owner: string): Buffer {
  return Buffer.concat([AD_DOMAIN, header, Buffer.from(owner, 'utf8')])
}

function signedBody (owner: string, unsigned: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from(owner, 'utf8'), unsigned])
}

/** The next seq after `last`: past it, and past every record made before now. */
export function nextRecoverySeq (last: number): number {
  return Math.max(last + 1, Date.now())
}

export function sealRecovery (content: RecoveryContent, opts: { identity: Identity, key: Uint8Array, seq: number }): Uint8Array {
  if (!Number.isSafeInteger(opts.seq) || opts.seq < 1) throw new RangeError(`a recovery seq is a positive integer, not ${opts.seq}`)
  const owner = opts.identity.peerId.toString()
  const header = Buffer.alloc(HEADER)
  MAGIC.copy(header, 0)
  header[MAGIC.length] = RECOVERY_VERSION
  header.writeBigUInt64BE(BigInt(opts.seq), MAGIC.length + 1)
  const nonce = randomBytes(NONCE)
  const cipher = createCipheriv('aes-256-gcm', opts.key, nonce)
  cipher.setAAD(associatedData(header, owner))
  const unsigned = Buffer.concat([header, nonce, cipher.update(encodeCanonical(toWire(content))), cipher.final(), cipher.getAuthTag()])
  if (unsigned.length + SIGNATURE_LENGTH > MAX_RECOVERY_RECORD) {
    throw new KithError('RECOVERY_TOO_LARGE', `the recovery record would be ${unsigned.length + SIGNATURE_LENGTH} bytes, more than the ${MAX_RECOVERY_RECORD} a host keeps; forget old snapshots (kith backup forget) to shrink the index`)
  }
  return Buffer.concat([unsigned, sign('backup-recovery/1', signedBody(owner, unsigned), opts.identity.secretKey)])
}

/**
 * Opens a record that must be `owner`'s, sealed under `key`, and newer than
 * `after` (the highest seq this home has seen; 0 when none). Checks, cheapest
 * first: size, layout, version, signature, seq, then decryption and format.
 */
export function openRecovery (record: Uint8Array, opts: { owner: string, key: Uint8Array, after?: number }): OpenedRecovery {
  if (record.length > MAX_RECOVERY_RECORD) {
    throw new KithError('RECOVERY_TOO_LARGE', `the recovery record is ${record.length} bytes, more than any kith makes (${MAX_RECOVERY_RECORD})`)
  }
  if (record.length < HEADER + NONCE + TAG + SIGNATURE_LENGTH || Buffer.compare(Buffer.from(record.subarray(0, MAGIC.length)), MAGIC) !== 0) {
    throw new KithError('RECOVERY_MALFORMED', `the recovery record (${record.length} bytes) is not one: truncated, or some other data`)
  }
  const buf = Buffer.from(record.buffer, record.byteOffset, record.length)
  const version = buf[MAGIC.length]!
  if (!READABLE_VERSIONS.includes(version)) {
    throw new KithError('UNSUPPORTED_VERSION', `the recovery record has format version ${version}, which this kith does not know; upgrade kith`)
  }
  const unsigned = buf.subarray(0, buf.length - SIGNATURE_LENGTH)
  const publicKey = peerIdFromString(opts.owner).publicKey?.raw
  if (publicKey == null || !verify('backup-recovery/1', signedBody(opts.owner, unsigned), buf.subarray(buf.length - SIGNATURE_LENGTH), publicKey)) {
    throw new KithError('RECOVERY_BAD_SIGNATURE', 'the recovery record is not signed by this identity: it was altered, or it is another node\'s')
  }
  const seq64 = buf.readBigUInt64BE(MAGIC.length + 1)
  if (seq64 > BigInt(Number.MAX_SAFE_INTEGER) || seq64 === 0n) throw new KithError('RECOVERY_MALFORMED', `the recovery record's seq ${seq64} is out of range`)
  const seq = Number(seq64)
  if (opts.after != null && seq <= opts.after) {
    throw new KithError('RECOVERY_STALE', `the recovery record has seq ${seq}, not newer than ${opts.after} already seen: an old record was replayed`)
  }
  const header = unsigned.subarray(0, HEADER)
  const nonce = unsigned.subarray(HEADER, HEADER + NONCE)
  const tag = unsigned.subarray(unsigned.length - TAG)
  let plaintext: Buffer
  try {
    const decipher = createDecipheriv('aes-256-gcm', opts.key, nonce)
    decipher.setAAD(associatedData(header, opts.owner))
    decipher.setAuthTag(tag)
    plaintext = Buffer.concat([decipher.update(unsigned.subarray(HEADER + NONCE, unsigned.length - TAG)), decipher.final()])
  } catch (err) {
    // signed by the owner but not sealed under its recovery key: a bug, or keys derived differently
    throw new KithError('RECOVERY_MALFORMED', 'the recovery record does not open with this phrase\'s recovery key', { cause: err })
  }
  return { seq, content: fromWire(decodeCanonical(plaintext, 'RECOVERY_MALFORMED', 'the recovery record\'s content'), version) }
}
