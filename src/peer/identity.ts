import { readFile, stat } from 'node:fs/promises'
import { createPrivateKey, createPublicKey, randomBytes, scrypt as scryptCb, type ScryptOptions } from 'node:crypto'
import nacl from 'tweetnacl'
import { z } from 'zod'
import { privateKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey, PeerId } from '@libp2p/interface'
import { KithError } from '../errors.ts'
import { writeFileAtomic } from './home.ts'

/**
 * The node's Ed25519 keypair, kept in `identity.key` (mode 0600), optionally
 * sealed under a passphrase with scrypt + XSalsa20-Poly1305 (tweetnacl
 * secretbox).
 *
 * A key file that exists but can't be read back is an error naming the file:
 * the node never makes a new identity over a damaged one.
 */
export interface Identity {
  peerId: PeerId
  privateKey: PrivateKey
  /** 64 bytes, tweetnacl layout (seed || public key) */
  secretKey: Uint8Array
  publicKey: Uint8Array
}

export const IDENTITY_FILE_VERSION = 1
const MAX_IDENTITY_FILE = 4096
const SCRYPT = { N: 1 << 15, r: 8, p: 1 } as const

const b64 = z.string().regex(/^[A-Za-z0-9+/]*={0,2}$/).transform(s => Buffer.from(s, 'base64'))

const plainFile = z.object({
  version: z.literal(IDENTITY_FILE_VERSION),
  type: z.literal('ed25519'),
  secretKey: b64
}).strict()

const sealedFile = z.object({
  version: z.literal(IDENTITY_FILE_VERSION),
  type: z.literal('ed25519'),
  kdf: z.object({
    name: z.literal('scrypt'),
    N: z.number().int().min(1 << 14).max(1 << 20),
    r: z.number().int().min(1).max(32),
    p: z.number().int().min(1).max(16),
    salt: b64
  }).strict(),
  nonce: b64,
  sealed: b64
}).strict()

async function deriveKey (passphrase: string, salt: Uint8Array, params: { N: number, r: number, p: number }): Promise<Uint8Array> {
  const options: ScryptOptions = { ...params, maxmem: 256 * params.N * params.r + (1 << 20) }
  return await new Promise((resolve, reject) => {
    scryptCb(passphrase.normalize('NFKC'), salt, 32, options, (err, key) => {
      if (err != null) reject(err)
      else resolve(new Uint8Array(key))
    })
  })
}

function fromSecretKey (secretKey: Uint8Array): Identity {
  const privateKey = privateKeyFromRaw(secretKey)
  return {
    privateKey,
    peerId: peerIdFromPrivateKey(privateKey),
    secretKey,
    publicKey: secretKey.slice(32)
  }
}

async function serialise (secretKey: Uint8Array, passphrase: string | undefined): Promise<string> {
  if (passphrase == null) {
    return JSON.stringify({ version: IDENTITY_FILE_VERSION, type: 'ed25519', secretKey: Buffer.from(secretKey).toString('base64') }) + '\n'
  }
  const salt = randomBytes(16)
  const nonce = randomBytes(nacl.secretbox.nonceLength)
  const key = await deriveKey(passphrase, salt, SCRYPT)
  const sealed = nacl.secretbox(secretKey, nonce, key)
  return JSON.stringify({
    version: IDENTITY_FILE_VERSION,
    type: 'ed25519',
    kdf: { name: 'scrypt', ...SCRYPT, salt: salt.toString('base64') },
    nonce: nonce.toString('base64'),
    sealed: Buffer.from(sealed).toString('base64')
  }) + '\n'
}

function corrupt (path: string, why: string): KithError {
  return new KithError('IDENTITY_CORRUPT',
    `the key file ${path} is damaged (${why}); restore it from a backup. kith will not make a new identity over it`)
}

/** PKCS#8 DER of an Ed25519 private key, up to its 32-byte seed (RFC 8410) */
const ED25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex')

/**
 * The 64-byte secret key (tweetnacl layout: seed || public key) of a seed,
 * with the public half from Node's crypto: tweetnacl's own derivation costs
 * 30-40 ms of CPU while it is not yet compiled, at every daemon start.
 */
function keyFromSeed (seed: Uint8Array): Uint8Array {
  const privateKey = createPrivateKey({ key: Buffer.concat([ED25519_PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' })
  const publicKey = Buffer.from(createPublicKey(privateKey).export({ format: 'jwk' }).x ?? '', 'base64url')
  return new Uint8Array(Buffer.concat([seed, publicKey]))
}

function checkSecretKey (path: string, secretKey: Uint8Array): Uint8Array {
  if (secretKey.length !== nacl.sign.secretKeyLength) throw corrupt(path, `key is ${secretKey.length} bytes, expected 64`)
  const derived = keyFromSeed(secretKey.subarray(0, 32))
  if (Buffer.compare(Buffer.from(derived.subarray(32)), Buffer.from(secretKey.subarray(32))) !== 0) {
    throw corrupt(path, 'public half does not match the private half')
  }
  return secretKey
}

export async function loadIdentity (path: string, passphrase?: string): Promise<Identity> {
  const info = await stat(path)
  if (info.size > MAX_IDENTITY_FILE) throw corrupt(path, `file is ${info.size} bytes, far more than a key`)
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new KithError('IDENTITY_CORRUPT', `can't read the key file ${path} (${(err as Error).message}); check its permissions`, { cause: err })
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    throw corrupt(path, 'not valid JSON; it may be truncated')
  }
  const plain = plainFile.safeParse(json)
  if (plain.success) return fromSecretKey(checkSecretKey(path, plain.data.secretKey))
  const sealed = sealedFile.safeParse(json)
  if (!sealed.success) {
    const version = (json as { version?: unknown } | null)?.version
    if (typeof version === 'number' && version !== IDENTITY_FILE_VERSION) {
      throw new KithError('UNSUPPORTED_VERSION', `the key file ${path} has format version ${version}, which this kith does not know; upgrade kith`)
    }
    throw corrupt(path, 'unexpected fields or values')
  }
  if (passphrase == null) {
    throw new KithError('IDENTITY_LOCKED', `the key file ${path} is protected by a passphrase; give it with --passphrase-file FILE or KITH_PASSPHRASE`)
  }
  const { kdf, nonce, sealed: box } = sealed.data
  if (nonce.length !== nacl.secretbox.nonceLength) throw corrupt(path, 'bad nonce length')
  const key = await deriveKey(passphrase, kdf.salt, kdf)
  const opened = nacl.secretbox.open(box, nonce, key)
  if (opened == null) {
    throw new KithError('IDENTITY_LOCKED', `wrong passphrase for ${path} (or the file is damaged)`)
  }
  return fromSecretKey(checkSecretKey(path, opened))
}

/** A new key file; from `seed` (32 bytes, as a recovery phrase gives back) when there is one, else random. */
export async function createIdentity (path: string, passphrase?: string, seed?: Uint8Array): Promise<Identity> {
  const secretKey = keyFromSeed(seed ?? randomBytes(32))
  await writeFileAtomic(path, await serialise(secretKey, passphrase), 0o600)
  return fromSecretKey(secretKey)
}

/** Loads the identity, or makes one when there is no key file at all. */
export async function loadOrCreateIdentity (path: string, passphrase?: string): Promise<{ identity: Identity, created: boolean }> {
  try {
    return { identity: await loadIdentity(path, passphrase), created: false }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  return { identity: await createIdentity(path, passphrase), created: true }
}
