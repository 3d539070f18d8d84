import { createHash, type Hash } from 'node:crypto'
import type { Stats } from 'node:fs'
import { open } from 'node:fs/promises'
import { z } from 'zod'
import { KithError } from '../../../errors.ts'
import { decodeCanonical, encodeCanonical } from '../../../peer/canonical.ts'
import { sign, verify } from '../../../peer/signing.ts'
import { MAX_URL_LENGTH } from '../../downloads/constants.ts'
import { MAX_CLASS_URLS } from '../constants.ts'
import { MAX_SWARM_CHUNKS, MAX_VALIDATOR_LENGTH, SWARM_CHUNK_SIZE } from './constants.ts'

/**
 * A hash list: what one node downloaded whole, cut in SWARM_CHUNK_SIZE
 * chunks, each named by its SHA-256, with the origin's validators it was
 * fetched under and the SHA-256 of the whole file (its content hash, the
 * name friends ask for it by). It is signed by the node that made it
 * (domain `swarm-list/1`, src/peer/signing.ts), so a friend can be held to
 * the list it gave; an asker trusts it only once the origin's validators
 * match and one chunk fetched from the origin hashes as it says.
 *
 *   body = canonical CBOR { v:1, hash, length, chunkSize, chunks, etag, lastModified, urls }
 *   signed = { body, sig }
 */
export const HASH_LIST_VERSION = 1
const DOMAIN = 'swarm-list/1'

export interface HashList {
  /** SHA-256 of the whole file, hex */
  hash: string
  length: number
  chunkSize: number
  /** the chunks' SHA-256, 32 bytes each, in order */
  chunks: Uint8Array
  etag: string | null
  lastModified: string | null
  /** the URL class it was fetched for */
  urls: string[]
}

export interface SignedHashList {
  body: Uint8Array
  sig: Uint8Array
}

/** an ETag or Last-Modified as it travels: printable ASCII, bounded */
export const validatorSchema = z.string().min(1).max(MAX_VALIDATOR_LENGTH).regex(/^[\x21-\x7e][\x20-\x7e]*$/).nullable()

const bodySchema = z.object({
  v: z.literal(HASH_LIST_VERSION),
  hash: z.instanceof(Uint8Array).refine(b => b.length === 32, 'hash must be 32 bytes'),
  length: z.number().int().min(1).max(MAX_SWARM_CHUNKS * SWARM_CHUNK_SIZE),
  chunkSize: z.literal(SWARM_CHUNK_SIZE),
  chunks: z.instanceof(Uint8Array),
  etag: validatorSchema,
  lastModified: validatorSchema,
  urls: z.array(z.string().min(1).max(MAX_URL_LENGTH)).min(1).max(MAX_CLASS_URLS)
}).strict()

export function chunkCount (length: number, chunkSize = SWARM_CHUNK_SIZE): number {
  return Math.ceil(length / chunkSize)
}

/** The SHA-256 of chunk `index` in the list. */
export function chunkHash (list: HashList, index: number): Uint8Array {
  return list.chunks.subarray(index * 32, index * 32 + 32)
}

/** The bytes chunk `index` spans: [first, end). */
export function chunkSpan (list: Pick<HashList, 'length' | 'chunkSize'>, index: number): [number, number] {
  const first = index * list.chunkSize
  return [first, Math.min(first + list.chunkSize, list.length)]
}

export function chunkMatches (list: HashList, index: number, bytes: Uint8Array): boolean {
  const [first, end] = chunkSpan(list, index)
  return bytes.length === end - first && createHash('sha256').update(bytes).digest().equals(chunkHash(list, index))
}

export function signHashList (list: HashList, secretKey: Uint8Array): SignedHashList {
  const body = encodeCanonical({ v: HASH_LIST_VERSION, hash: Buffer.from(list.hash, 'hex'), length: list.length, chunkSize: list.chunkSize, chunks: list.chunks, etag: list.etag, lastModified: list.lastModified, urls: list.urls })
  return { body, sig: sign(DOMAIN, body, secretKey) }
}

/**
 * The list in `signed`, if `publicKey` signed it and it is whole: the
 * version known, the chunk count the length's, `hash` the one asked for.
 * SWARM_BAD_LIST otherwise.
 */
export function openHashList (signed: SignedHashList, publicKey: Uint8Array, hash: string): HashList {
  if (!verify(DOMAIN, signed.body, signed.sig, publicKey)) throw new KithError('SWARM_BAD_LIST', 'a friend\'s hash list is not signed by them; it was altered or forged')
  const parsed = bodySchema.safeParse(decodeCanonical(signed.body, 'SWARM_BAD_LIST', 'a friend\'s hash list'))
  if (!parsed.success) throw new KithError('SWARM_BAD_LIST', `a friend's hash list is malformed: ${parsed.error.issues[0]?.message ?? ''}`)
  const body = parsed.data
  if (body.chunks.length !== chunkCount(body.length, body.chunkSize) * 32) throw new KithError('SWARM_BAD_LIST', `a friend's hash list names ${body.chunks.length / 32} chunk hashes for ${body.length} bytes`)
  const list: HashList = { hash: Buffer.from(body.hash).toString('hex'), length: body.length, chunkSize: body.chunkSize, chunks: body.chunks, etag: body.etag, lastModified: body.lastModified, urls: body.urls }
  if (list.hash !== hash) throw new KithError('SWARM_BAD_LIST', 'a friend sent the hash list of another file than the one asked for')
  return list
}

/**
 * The chunks' hashes of a file `kith get` placed (offered to friends), read
 * once into one reused buffer: fresh 1 MiB buffers per read piled up to
 * ~140 MB before a collection freed them, on a 1 GiB file. With `whole`,
 * the whole file's SHA-256 too, in the same read (hex); without, it is not
 * computed (the download verified it against a checksum). The caller checks
 * with `sameFile` that the file did not change meanwhile.
 */
export async function chunkHashesOf (path: string, options: { whole?: boolean, signal?: AbortSignal } = {}): Promise<{ chunks: Buffer, whole: string | null, before: Stats, after: Stats }> {
  const handle = await open(path, 'r')
  try {
    const before = await handle.stat()
    const chunks = new ChunkHasher()
    const whole = options.whole === true ? createHash('sha256') : null
    const buffer = Buffer.allocUnsafe(SWARM_CHUNK_SIZE)
    for (let at = 0; at < before.size;) {
      options.signal?.throwIfAborted()
      const { bytesRead } = await handle.read(buffer, 0, Math.min(buffer.length, before.size - at), at)
      if (bytesRead === 0) break
      chunks.update(buffer.subarray(0, bytesRead))
      whole?.update(buffer.subarray(0, bytesRead))
      at += bytesRead
    }
    return { chunks: chunks.digest(), whole: whole?.digest('hex') ?? null, before, after: await handle.stat() }
  } finally {
    await handle.close()
  }
}

/** The same file, unchanged: same inode, size, mtime and ctime (any write moves ctime). */
export function sameFile (a: Stats, b: Stats): boolean {
  return a.ino === b.ino && a.dev === b.dev && a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs
}

/** SHA-256 of each SWARM_CHUNK_SIZE piece of a stream of bytes, as they go by (the proxy's cache writer feeds it). */
export class ChunkHasher {
  private readonly hashes: Buffer[] = []
  private current: Hash = createHash('sha256')
  private filled = 0

  update (bytes: Uint8Array): void {
    let at = 0
    while (at < bytes.length) {
      const take = Math.min(SWARM_CHUNK_SIZE - this.filled, bytes.length - at)
      this.current.update(bytes.subarray(at, at + take))
      this.filled += take
      at += take
      if (this.filled === SWARM_CHUNK_SIZE) this.cut()
    }
  }

  /** The chunks' hashes, concatenated; the hasher is done after. */
  digest (): Buffer {
    if (this.filled > 0) this.cut()
    return Buffer.concat(this.hashes)
  }

  private cut (): void {
    this.hashes.push(this.current.digest())
    this.current = createHash('sha256')
    this.filled = 0
  }
}
