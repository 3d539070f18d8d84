import { createCipheriv, createDecipheriv, createHash, createHmac, createSecretKey, hash, hkdfSync, randomBytes, type KeyObject } from 'node:crypto'
import { KithError } from '../errors.ts'
import { freeNow, type BufferPool } from './buffer-pool.ts'
import { CIPHER_SLICE, ID_LENGTH, MAX_SEALED_CHUNK_SIZE, MAX_CHUNK_SIZE, SEAL_OVERHEAD } from './constants.ts'

/**
 * Chunk sealing: AES-256-GCM under a per-share key.
 *
 *   sealed = format(1) || nonce(12) || ciphertext || tag(16)
 *   AD     = "kith/chunk/2\0" || format(1) || shareId(32) || fileHash(32)
 *            || index(u32 BE)                                        (82 bytes)
 *   nonce  = HMAC-SHA256(nonceKey, AD || plaintext)[0..12]
 *   chunk id = hex(sha256(sealed))
 *
 * fileHash is the sha256 of the whole plaintext file the chunk is part of (the
 * manifest entry's `sha256`), index the chunk's place in that file.
 *
 * The nonce is synthetic (as in SIV): derived from the position and the
 * plaintext, so sealing is deterministic. The same chunk sealed twice (after a
 * crash, by a second run, or in the next version of the share) gives the same
 * bytes and the same id, while two different plaintexts never share a nonce.
 * Chunks are sealed once, at share time; everyone holding the share stores and
 * serves those exact sealed bytes, so any holder can serve any fetcher and the
 * id in the manifest pins them.
 *
 * The AD binds a chunk to its share, the content of its file and its index, so
 * a sealed chunk moved to another share, another file (other content) or
 * another index fails to open even for a key holder who skips the id check.
 * It deliberately leaves out the manifest version and the file's place in the
 * entry list: a file that is unchanged in the next version of a share, even if
 * other files were added or removed around it, keeps its chunk ids, so friends
 * re-fetch only what changed and stores hold one copy for every version. (Two
 * files of one share with identical content share their chunks too; moving a
 * chunk between them changes nothing.) Integrity against key holders comes
 * from the signed manifest listing every chunk id; the AEAD keeps the bytes
 * private from peers that store or relay chunks without holding the key.
 *
 * Keys: encKey and nonceKey are derived from the 32-byte share key with
 * HKDF-SHA256, salted with the share id, so no key is used for two jobs.
 */

/** Format 2: AD binds (share, file sha256, index). Format 1 bound (share, version, file index, index). */
export const SEAL_FORMAT = 2
export const SHARE_KEY_LENGTH = 32
const NONCE_LENGTH = 12
const TAG_LENGTH = 16
const AD_DOMAIN = Buffer.from('kith/chunk/2\0', 'utf8')
export const AD_LENGTH = AD_DOMAIN.length + 1 + ID_LENGTH + ID_LENGTH + 4
const MAX_U32 = 0xffff_ffff
const HEX_ID = /^[0-9a-f]{64}$/

/** Where a chunk belongs. Ids and hashes are lowercase hex. */
export interface ChunkPosition {
  shareId: string
  /** sha256 of the whole plaintext file the chunk belongs to: the manifest entry's `sha256`. */
  fileHash: string
  /** The chunk's index within that file. */
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

/** The 82 bytes of associated data for a position; exported for docs and tests. */
export function associatedData (position: ChunkPosition): Buffer {
  const { shareId, fileHash, index } = position
  if (!isId(shareId)) throw new KithError('BAD_REQUEST', 'a share id must be 64 lowercase hex characters')
  if (!isId(fileHash)) throw new KithError('BAD_REQUEST', 'a file hash must be 64 lowercase hex characters')
  if (!Number.isInteger(index) || index < 0 || index > MAX_U32) throw new KithError('BAD_REQUEST', `chunk index ${index} is out of range`)
  const ad = Buffer.alloc(AD_LENGTH)
  let at = AD_DOMAIN.copy(ad, 0)
  at = ad.writeUInt8(SEAL_FORMAT, at)
  at += Buffer.from(shareId, 'hex').copy(ad, at)
  at += Buffer.from(fileHash, 'hex').copy(ad, at)
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
  return Buffer.concat(sealChunkParts(keys, position, plaintext))
}

/** `sealChunk` as its pieces in order (format and nonce, ciphertext in CIPHER_SLICE pieces, tag), not joined. */
export function sealChunkParts (keys: SealKeys, position: ChunkPosition, plaintext: Uint8Array): Uint8Array[] {
  checkKeys(keys, position)
  if (plaintext.length > MAX_CHUNK_SIZE) {
    throw new KithError('CHUNK_TOO_LARGE', `a chunk holds at most ${MAX_CHUNK_SIZE} bytes, not ${plaintext.length}`)
  }
  const ad = associatedData(position)
  const nonce = createHmac('sha256', keys.nonce).update(ad).update(plaintext).digest().subarray(0, NONCE_LENGTH)
  return sealParts(keys, ad, nonce, plaintext)
}

/**
 * Seals a chunk again from its plaintext and the nonce it was sealed with
 * (`sealedNonce`), skipping the nonce's HMAC pass: for a holder that keeps
 * the plaintext (a fetched file) instead of the sealed bytes. The result is
 * the original sealed chunk only if the plaintext is unchanged; callers check
 * it against the chunk id.
 */
export function resealChunk (keys: SealKeys, position: ChunkPosition, plaintext: Uint8Array, nonce: Uint8Array): Uint8Array {
  return Buffer.concat(resealChunkParts(keys, position, plaintext, nonce))
}

/**
 * `resealChunk` as its pieces in order (format and nonce, ciphertext, tag),
 * without joining them: for a holder that sends the chunk on at once.
 */
export function resealChunkParts (keys: SealKeys, position: ChunkPosition, plaintext: Uint8Array, nonce: Uint8Array): Uint8Array[] {
  checkKeys(keys, position)
  if (plaintext.length > MAX_CHUNK_SIZE) {
    throw new KithError('CHUNK_TOO_LARGE', `a chunk holds at most ${MAX_CHUNK_SIZE} bytes, not ${plaintext.length}`)
  }
  if (nonce.length !== NONCE_LENGTH) throw new KithError('BAD_REQUEST', `a chunk nonce is ${NONCE_LENGTH} bytes`)
  return sealParts(keys, associatedData(position), nonce, plaintext)
}

/** The nonce a sealed chunk carries (a view into it). */
export function sealedNonce (sealed: Uint8Array | Uint8Array[]): Uint8Array {
  if (sealedSize(sealed) < SEAL_OVERHEAD) throw new KithError('CHUNK_DECRYPT_FAILED', `a sealed chunk is at least ${SEAL_OVERHEAD} bytes`)
  const first = sealed instanceof Uint8Array ? sealed : sealed[0]!.length > NONCE_LENGTH ? sealed[0]! : Buffer.concat(sealed).subarray(0, 1 + NONCE_LENGTH)
  return first.subarray(1, 1 + NONCE_LENGTH)
}

/** Bytes in a sealed chunk given whole or in pieces. */
export function sealedSize (sealed: Uint8Array | Uint8Array[]): number {
  return sealed instanceof Uint8Array ? sealed.length : sealed.reduce((sum, part) => sum + part.length, 0)
}

/** A sealed chunk in pieces: format byte and nonce, the ciphertext in CIPHER_SLICE pieces, then what `final` adds (nothing for GCM) and the tag. */
function sealParts (keys: SealKeys, ad: Buffer, nonce: Uint8Array, plaintext: Uint8Array): Buffer[] {
  const cipher = createCipheriv('aes-256-gcm', keys.enc, nonce, { authTagLength: TAG_LENGTH })
  cipher.setAAD(ad)
  const head = Buffer.allocUnsafe(1 + NONCE_LENGTH)
  head[0] = SEAL_FORMAT
  head.set(nonce, 1)
  const parts = [head]
  for (let at = 0; at < plaintext.length; at += CIPHER_SLICE) parts.push(cipher.update(plaintext.subarray(at, at + CIPHER_SLICE)))
  const final = cipher.final()
  const tag = cipher.getAuthTag()
  parts.push(final.length > 0 ? Buffer.concat([final, tag]) : tag)
  return parts
}

/**
 * Opens a sealed chunk at the position it is claimed to hold. Throws
 * CHUNK_DECRYPT_FAILED if the bytes were altered, sealed under another key, or
 * sealed for another share, another file content or another index.
 * With `into`, the plaintext lands in a buffer taken from that pool (decrypted
 * in CIPHER_SLICE pieces, so nothing chunk-sized is made per call); the caller
 * gives it back once done with it.
 */
export function openChunk (keys: SealKeys, position: ChunkPosition, sealed: Uint8Array, into?: BufferPool): Uint8Array {
  checkKeys(keys, position)
  if (sealed.length < SEAL_OVERHEAD || sealed.length > MAX_SEALED_CHUNK_SIZE) {
    throw new KithError('CHUNK_DECRYPT_FAILED', `a sealed chunk is ${SEAL_OVERHEAD} to ${MAX_SEALED_CHUNK_SIZE} bytes, not ${sealed.length}`)
  }
  if (sealed[0] !== SEAL_FORMAT) {
    throw new KithError('UNSUPPORTED_VERSION', sealed[0]! < SEAL_FORMAT
      ? `this chunk is sealed with format ${sealed[0]}, which this kith no longer reads; the owner must share it again`
      : `this chunk is sealed with format ${sealed[0]}, which this kith does not know; upgrade kith`)
  }
  const ad = associatedData(position)
  const nonce = sealed.subarray(1, 1 + NONCE_LENGTH)
  const body = sealed.subarray(1 + NONCE_LENGTH, sealed.length - TAG_LENGTH)
  const tag = sealed.subarray(sealed.length - TAG_LENGTH)
  const decipher = createDecipheriv('aes-256-gcm', keys.enc, nonce, { authTagLength: TAG_LENGTH })
  decipher.setAAD(ad)
  decipher.setAuthTag(tag)
  let plaintext: Uint8Array
  if (into === undefined) {
    plaintext = decipher.update(body)
  } else {
    // in slices, each freed once copied (node:crypto makes a new one per call); the whole lands in a reused buffer
    plaintext = into.take(body.length)
    for (let at = 0; at < body.length; at += CIPHER_SLICE) {
      const slice = decipher.update(body.subarray(at, at + CIPHER_SLICE))
      plaintext.set(slice, at)
      freeNow(slice)
    }
  }
  try {
    decipher.final() // GCM yields nothing more here; it checks the tag
  } catch {
    plaintext.fill(0) // unauthenticated plaintext never leaves this function
    throw new KithError('CHUNK_DECRYPT_FAILED', `chunk ${position.index} of the file with sha256 ${position.fileHash.slice(0, 8)}… failed authentication: it was altered, or belongs to another share, file or place`)
  }
  return plaintext
}

/** Throws CHUNK_TOO_LARGE unless `sealed` has the size a sealed chunk can have. */
export function checkSealedSize (sealed: Uint8Array | Uint8Array[]): void {
  const size = sealed instanceof Uint8Array || Array.isArray(sealed) ? sealedSize(sealed) : -1
  if (size < SEAL_OVERHEAD || size > MAX_SEALED_CHUNK_SIZE) {
    throw new KithError('CHUNK_TOO_LARGE', `a sealed chunk is ${SEAL_OVERHEAD} to ${MAX_SEALED_CHUNK_SIZE} bytes, not ${size < 0 ? 'a byte array' : size}`)
  }
}

/**
 * Checks bytes received for chunk `id`: CHUNK_TOO_LARGE for an impossible
 * size, CHUNK_HASH_MISMATCH if they don't hash to the id. Whoever sent them
 * is to blame.
 */
export function verifySealed (id: string, sealed: Uint8Array): void {
  checkSealedSize(sealed)
  if (chunkId(sealed) !== id) {
    throw new KithError('CHUNK_HASH_MISMATCH', `the bytes received for chunk ${id.slice(0, 12)}… do not match its id; they were damaged or forged and were not kept`)
  }
}

/** The id of a sealed chunk: lowercase hex sha256 of its sealed bytes (given whole, or in pieces in order). */
export function chunkId (sealed: Uint8Array | Uint8Array[]): string {
  if (sealed instanceof Uint8Array) return hash('sha256', sealed, 'hex')
  const digest = createHash('sha256')
  for (const part of sealed) digest.update(part)
  return digest.digest('hex')
}
