/**
 * Blobs: the sealed units a host stores for an owner (docs/backup.md, Formats).
 *
 *   id       = HMAC-SHA256(chunk-id key, kind(1) || plaintext)        (hex; owner only)
 *   sealed   = format(1) || nonce(12) || AES-256-GCM(seal key, plaintext) || tag(16)
 *   nonce    = id[0..12]
 *   AD       = "kith/backup/blob/1\0" || format(1) || kind(1) || id(32) || owner peer id (UTF-8)
 *   sealedId = hex(sha256(sealed))       (src/transfer/seal.ts chunkId: what hosts key by)
 *
 * The id is keyed, so a host that guesses a plaintext can't compute its id,
 * and the sealed bytes say nothing of it. The nonce is synthetic (as in SIV):
 * the same plaintext seals to the same bytes, so a blob sealed again after a
 * crash has the same sealed id and a host holding it already says so; two
 * different plaintexts never share a nonce. The AD binds a blob to its owner,
 * its id and its kind: a host can't pass a tree off as a data chunk, or one
 * owner's blob as another's, and opening re-checks the id over the plaintext.
 * The kind is not in the clear: a host sees only sizes.
 */
import { createCipheriv, createDecipheriv, createHmac, timingSafeEqual } from 'node:crypto'
import { KithError } from '../../errors.ts'
import { CIPHER_SLICE, MAX_CHUNK_SIZE, SEAL_OVERHEAD } from '../../transfer/constants.ts'
import { chunkId } from '../../transfer/seal.ts'
import type { BackupKeys } from './keys.ts'
import type { BlobKind } from './owner-index.ts'

/** The first byte of every sealed blob: backup format 1 (transfer's chunks use 1 and 2). */
export const BLOB_FORMAT = 0x81
/** The largest plaintext one blob holds: a data chunk's maximum (bigger trees are split). */
export const MAX_BLOB_PLAINTEXT = MAX_CHUNK_SIZE
const NONCE_LENGTH = 12
const TAG_LENGTH = 16
const AD_DOMAIN = Buffer.from('kith/backup/blob/1\0', 'utf8')
const KIND_BYTE: Record<BlobKind, number> = { data: 1, tree: 2, snapshot: 3 }
const HEX_ID = /^[0-9a-f]{64}$/

export interface SealedBlob {
  /** plaintext id (owner only) */
  id: string
  /** what hosts key by */
  sealedId: string
  sealed: Uint8Array
}

/** Bytes a plaintext of `length` bytes seals into. */
export function sealedSize (length: number): number {
  return 1 + NONCE_LENGTH + length + TAG_LENGTH
}

/** Copies `part` into `into` at `at`; its length. */
function copyIn (into: Uint8Array, at: number, part: Uint8Array): number {
  into.set(part, at)
  return part.length
}

/** The plaintext id of a blob. */
export function blobId (keys: Pick<BackupKeys, 'chunkId'>, kind: BlobKind, plaintext: Uint8Array): string {
  return createHmac('sha256', keys.chunkId).update(Uint8Array.of(KIND_BYTE[kind])).update(plaintext).digest('hex')
}

export function isBlobId (value: unknown): value is string {
  return typeof value === 'string' && HEX_ID.test(value)
}

function associatedData (owner: string, kind: BlobKind, id: Buffer): Buffer {
  return Buffer.concat([AD_DOMAIN, Uint8Array.of(BLOB_FORMAT, KIND_BYTE[kind]), id, Buffer.from(owner, 'utf8')])
}

/**
 * `id`, when the caller has it already (blobId of this kind and plaintext),
 * saves hashing the plaintext again; `into` (`sealedSize` bytes, a buffer
 * the caller reuses) is where the sealed bytes are written.
 */
export function sealBlob (keys: Pick<BackupKeys, 'chunkId' | 'seal'>, owner: string, kind: BlobKind, plaintext: Uint8Array, known?: string, into?: Uint8Array): SealedBlob {
  if (plaintext.length > MAX_BLOB_PLAINTEXT) throw new KithError('INTERNAL', `a blob holds at most ${MAX_BLOB_PLAINTEXT} bytes, not ${plaintext.length}`)
  const id = known ?? blobId(keys, kind, plaintext)
  const idBytes = Buffer.from(id, 'hex')
  const nonce = idBytes.subarray(0, NONCE_LENGTH)
  const cipher = createCipheriv('aes-256-gcm', keys.seal, nonce)
  cipher.setAAD(associatedData(owner, kind, idBytes))
  // one buffer for the whole sealed blob, the ciphertext written into it slice by slice
  const size = sealedSize(plaintext.length)
  if (into != null && into.length !== size) throw new KithError('INTERNAL', `a blob of ${plaintext.length} bytes seals into ${size}, not ${into.length}`)
  const sealed = into ?? Buffer.allocUnsafe(size)
  sealed[0] = BLOB_FORMAT
  sealed.set(nonce, 1)
  let at = 1 + NONCE_LENGTH
  for (let i = 0; i < plaintext.length; i += CIPHER_SLICE) at += copyIn(sealed, at, cipher.update(plaintext.subarray(i, i + CIPHER_SLICE)))
  at += copyIn(sealed, at, cipher.final())
  sealed.set(cipher.getAuthTag(), at)
  return { id, sealedId: chunkId(sealed), sealed }
}

/**
 * The plaintext of a sealed blob the owner expects to be `kind` with plaintext
 * id `id`, written into `into` when given (a buffer the caller reuses, at
 * least as long as the plaintext). BLOB_MALFORMED for bytes that can't be a
 * blob, BLOB_OPEN_FAILED when they fail authentication (altered, another
 * owner's, another blob or kind, or sealed with other keys).
 */
export function openBlob (keys: Pick<BackupKeys, 'chunkId' | 'seal'>, owner: string, kind: BlobKind, id: string, sealed: Uint8Array, into?: Uint8Array): Uint8Array {
  if (!isBlobId(id)) throw new KithError('BLOB_MALFORMED', `${JSON.stringify(String(id).slice(0, 80))} is not a blob id (64 hex digits)`)
  if (!(sealed instanceof Uint8Array) || sealed.length < SEAL_OVERHEAD || sealed.length > MAX_BLOB_PLAINTEXT + SEAL_OVERHEAD) {
    throw new KithError('BLOB_MALFORMED', `a sealed blob is ${SEAL_OVERHEAD} to ${MAX_BLOB_PLAINTEXT + SEAL_OVERHEAD} bytes, not ${sealed instanceof Uint8Array ? sealed.length : 'a byte array'}`)
  }
  if (sealed[0] !== BLOB_FORMAT) throw new KithError('BLOB_MALFORMED', `blob ${id.slice(0, 12)}… has format ${sealed[0]}, not ${BLOB_FORMAT}; it is not a backup blob of this version`)
  const idBytes = Buffer.from(id, 'hex')
  const nonce = sealed.subarray(1, 1 + NONCE_LENGTH)
  const failed = (): KithError => new KithError('BLOB_OPEN_FAILED', `blob ${id.slice(0, 12)}… (${kind}) failed authentication: it was altered, swapped for another blob, or sealed by someone else`)
  if (!timingSafeEqual(nonce, idBytes.subarray(0, NONCE_LENGTH))) throw failed()
  const body = sealed.subarray(1 + NONCE_LENGTH, sealed.length - TAG_LENGTH)
  const plaintext = into != null && into.length >= body.length ? into.subarray(0, body.length) : Buffer.allocUnsafe(body.length)
  try {
    const decipher = createDecipheriv('aes-256-gcm', keys.seal, nonce)
    decipher.setAAD(associatedData(owner, kind, idBytes))
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG_LENGTH))
    let at = 0
    for (let i = 0; i < body.length; i += CIPHER_SLICE) at += copyIn(plaintext, at, decipher.update(body.subarray(i, i + CIPHER_SLICE)))
    // GCM's final() hands back nothing; it throws when the tag does not match
    copyIn(plaintext, at, decipher.final())
  } catch {
    throw failed()
  }
  // the AD already binds the id; checking it over the plaintext catches a seal-key holder's forgery
  if (blobId(keys, kind, plaintext) !== id) throw failed()
  return plaintext
}
