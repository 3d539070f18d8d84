import { createCipheriv, createDecipheriv, createHmac, createSecretKey, hash, hkdfSync, randomBytes, type KeyObject } from 'node:crypto'
import { KithError } from '../errors.ts'
import { ID_LENGTH, MAX_SEALED_CHUNK_SIZE, MAX_CHUNK_SIZE, SEAL_OVERHEAD } from './constants.ts'

/**
 * Chunk sealing: AES-256-GCM under a per-share key.
 *
 *   sealed = format(1) || nonce(12) || ciphertext || tag(16)
 *   AD     = "kith/chunk/1\0" || format(1) || shareId(32) || version(u64 BE)
 *            || file(u32 BE) || index(u32 BE)                        (62 bytes)
 *   nonce  = HMAC-SHA256(nonceKey, AD || plaintext)[0..12]
 *   chunk id = hex(sha256(sealed))
 *
 * The nonce is synthetic (as in SIV): derived from the position and the
 * plaintext, so sealing is deterministic. The same chunk sealed twice (after a
 * crash, or by a second run) gives the same bytes and the same id, while two
 * different plaintexts never share a nonce, even if a version number is reused
 * by mistake. Chunks are sealed once, at share time; everyone holding the share
 * stores and serves those exact sealed bytes, so any holder can serve any
 * fetcher and the id in the manifest pins them.
 *
 * The AD binds a chunk to its share, manifest version, file and index, so a
 * sealed chunk moved to another place fails to open even for a key holder who
 * skips the id check. Integrity against key holders comes from the signed
 * manifest listing every chunk id; the AEAD keeps the bytes private from peers
 * that store or relay chunks without holding the key.
 *
 * Keys: encKey and nonceKey are derived from the 32-byte share key with
 * HKDF-SHA256, salted with the share id, so no key is used for two jobs.
 */

export const SEAL_FORMAT = 1
export const SHARE_KEY_LENGTH = 32
const NONCE_LENGTH = 12
const TAG_LENGTH = 16
const AD_DOMAIN = Buffer.from('kith/chunk/1\0', 'utf8')
export const AD_LENGTH = AD_DOMAIN.length + 1 + ID_LENGTH + 8 + 4 + 4
const MAX_U32 = 0xffff_ffff
const HEX_ID = /^[0-9a-f]{64}$/

/** Where a chunk belongs. Ids are lowercase hex. */
export interface ChunkPosition {
  shareId: string
  version: number
  file: number
  index: number
}

/** Keys derived from one share key; derive once per share, reuse for every chunk. */
export interface SealKeys {
  readonly shareId: string
  readonly enc: KeyObject
  readonly nonce: KeyObject
}

export function isId (value: unknown): value is string {
  return typeof value === 'string' && HEX_ID.test(value)
}

/** A fresh random share id (hex). */
export function generateShareId (): string {
  return randomBytes(ID_LENGTH).toString('hex')
}

/** A fresh random share key. Friends receive it with the share offer. */
export function generateShareKey (): Uint8Array {
  return randomBytes(SHARE_KEY_LENGTH)
}

export function deriveSealKeys (shareKey: Uint8Array, shareId: string): SealKeys {
  if (!(shareKey instanceof Uint8Array) || shareKey.length !== SHARE_KEY_LENGTH) {
    throw new KithError('BAD_REQUEST', `a share key must be ${SHARE_KEY_LENGTH} bytes`)
  }
  if (!isId(shareId)) throw new KithError('BAD_REQUEST', 'a share id must be 64 lowercase hex characters')
  const salt = Buffer.from(shareId, 'hex')
  const derive = (info: string): KeyObject =>
    createSecretKey(Buffer.from(hkdfSync('sha256', shareKey, salt, `kith/seal/1 ${info}`, 32)))
  return { shareId, enc: derive('enc'), nonce: derive('nonce') }
}

/** The 62 bytes of associated data for a position; exported for docs and tests. */
export function associatedData (position: ChunkPosition): Buffer {
  const { shareId, version, file, index } = position
  if (!isId(shareId)) throw new KithError('BAD_REQUEST', 'a share id must be 64 lowercase hex characters')
  if (!Number.isSafeInteger(version) || version < 1) throw new KithError('BAD_REQUEST', `manifest version ${version} is not a positive integer`)
  if (!Number.isInteger(file) || file < 0 || file > MAX_U32) throw new KithError('BAD_REQUEST', `file index ${file} is out of range`)
  if (!Number.isInteger(index) || index < 0 || index > MAX_U32) throw new KithError('BAD_REQUEST', `chunk index ${index} is out of range`)
  const ad = Buffer.alloc(AD_LENGTH)
  let at = AD_DOMAIN.copy(ad, 0)
  at = ad.writeUInt8(SEAL_FORMAT, at)
  at += Buffer.from(shareId, 'hex').copy(ad, at)
  at = ad.writeBigUInt64BE(BigInt(version), at)
  at = ad.writeUInt32BE(file, at)
  ad.writeUInt32BE(index, at)
  return ad
}

function checkKeys (keys: SealKeys, position: ChunkPosition): void {
  if (keys.shareId !== position.shareId) {
    throw new KithError('BAD_REQUEST', `these keys belong to share ${keys.shareId.slice(0, 8)}, not ${String(position.shareId).slice(0, 8)}`)
  }
}

/** Seals one plaintext chunk at its position. Deterministic for given keys, position and bytes. */
export function sealChunk (keys: SealKeys, position: ChunkPosition, plaintext: Uint8Array): Uint8Array {
  checkKeys(keys, position)
  if (plaintext.length > MAX_CHUNK_SIZE) {
    throw new KithError('CHUNK_TOO_LARGE', `a chunk holds at most ${MAX_CHUNK_SIZE} bytes, not ${plaintext.length}`)
  }
  const ad = associatedData(position)
  const nonce = createHmac('sha256', keys.nonce).update(ad).update(plaintext).digest().subarray(0, NONCE_LENGTH)
  const cipher = createCipheriv('aes-256-gcm', keys.enc, nonce, { authTagLength: TAG_LENGTH })
  cipher.setAAD(ad)
  const sealed = Buffer.allocUnsafe(plaintext.length + SEAL_OVERHEAD)
  sealed[0] = SEAL_FORMAT
  nonce.copy(sealed, 1)
  let at = 1 + NONCE_LENGTH
  at += cipher.update(plaintext).copy(sealed, at)
  at += cipher.final().copy(sealed, at)
  cipher.getAuthTag().copy(sealed, at)
  return sealed
}

/**
 * Opens a sealed chunk at the position it is claimed to hold. Throws
 * CHUNK_DECRYPT_FAILED if the bytes were altered, sealed under another key, or
 * sealed for another share, version, file or index.
 */
export function openChunk (keys: SealKeys, position: ChunkPosition, sealed: Uint8Array): Uint8Array {
  checkKeys(keys, position)
  if (sealed.length < SEAL_OVERHEAD || sealed.length > MAX_SEALED_CHUNK_SIZE) {
    throw new KithError('CHUNK_DECRYPT_FAILED', `a sealed chunk is ${SEAL_OVERHEAD} to ${MAX_SEALED_CHUNK_SIZE} bytes, not ${sealed.length}`)
  }
  if (sealed[0] !== SEAL_FORMAT) {
    throw new KithError('UNSUPPORTED_VERSION', `this chunk is sealed with format ${sealed[0]}, which this kith does not know; upgrade kith`)
  }
  const ad = associatedData(position)
  const nonce = sealed.subarray(1, 1 + NONCE_LENGTH)
  const body = sealed.subarray(1 + NONCE_LENGTH, sealed.length - TAG_LENGTH)
  const tag = sealed.subarray(sealed.length - TAG_LENGTH)
  const decipher = createDecipheriv('aes-256-gcm', keys.enc, nonce, { authTagLength: TAG_LENGTH })
  decipher.setAAD(ad)
  decipher.setAuthTag(tag)
  const plaintext = decipher.update(body)
  try {
    decipher.final() // GCM yields nothing more here; it checks the tag
  } catch {
    plaintext.fill(0) // unauthenticated plaintext never leaves this function
    throw new KithError('CHUNK_DECRYPT_FAILED', `chunk ${position.index} of file ${position.file} failed authentication: it was altered, or belongs to another share, version or place`)
  }
  return plaintext
}

/** The id of a sealed chunk: lowercase hex sha256 of its sealed bytes. */
export function chunkId (sealed: Uint8Array): string {
  return hash('sha256', sealed, 'hex')
}
