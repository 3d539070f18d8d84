import { createCipheriv, createHash } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import nacl from 'tweetnacl'
import { expect } from 'vitest'
import { KithError, type ErrorCode } from '../../src/errors.ts'
import type { ChunkStore } from '../../src/transfer/chunk-store.ts'
import type { ChunkSink } from '../../src/transfer/chunker.ts'
import type { ManifestEntry } from '../../src/transfer/manifest.ts'

/** A deterministic Ed25519 keypair from a one-byte seed. */
export function keypair (seed = 1): { publicKey: Uint8Array, secretKey: Uint8Array } {
  return nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(seed))
}

/**
 * Deterministic pseudo-random bytes: the AES-256-CTR keystream under
 * sha256(seed), so a shorter run of a seed is a prefix of a longer one. About
 * 10 ms of CPU a MiB; the SHA-256 per 32 bytes it replaced took 100, a good
 * part of the unit tests that made files of a few MiB.
 */
export function pseudoRandom (length: number, seed = 'kith'): Buffer {
  const key = createHash('sha256').update(seed).digest()
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length))
}

export function hex (byte: number): string {
  return Buffer.alloc(32, byte).toString('hex')
}

/**
 * Manifest entries as plain objects, to compare with `toEqual`: a decoded
 * file keeps its sha256 and pack place behind getters (manifest.ts), which
 * `toEqual` and spreading do not see.
 */
export function plainEntries (entries: ManifestEntry[]): ManifestEntry[] {
  return entries.map(e => e.type === 'dir'
    ? { type: 'dir', path: e.path }
    : { type: 'file', path: e.path, size: e.size, executable: e.executable, sha256: e.sha256, chunks: [...e.chunks], ...(e.pack !== undefined ? { pack: e.pack } : {}) })
}

/** A temp folder, removed by the returned cleanup. */
export async function tempDir (): Promise<{ dir: string, cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'kith-transfer-'))
  return { dir, cleanup: async () => rm(dir, { recursive: true, force: true }) }
}

export function expectCode (fn: () => unknown, code: ErrorCode): KithError {
  let caught: unknown
  try {
    fn()
  } catch (err) {
    caught = err
  }
  expect(caught, `expected ${code}`).toBeInstanceOf(KithError)
  expect((caught as KithError).code).toBe(code)
  return caught as KithError
}

export async function expectCodeAsync (promise: Promise<unknown>, code: ErrorCode): Promise<KithError> {
  let caught: unknown
  try {
    await promise
  } catch (err) {
    caught = err
  }
  expect(caught, `expected ${code}`).toBeInstanceOf(KithError)
  expect((caught as KithError).code).toBe(code)
  return caught as KithError
}

/** A chunker sink that keeps the sealed bytes in `store` (kith's own shares are held in their files instead). */
export function sealedSink (store: ChunkStore): ChunkSink {
  return { put: async (id, sealed) => await store.put(id, Buffer.concat(sealed)) }
}

/** `sealedSink` that also packs small files, as a daemon's share does (chunker.ts). */
export function packingSink (store: ChunkStore): ChunkSink {
  return { ...sealedSink(store), putPack: async (id, sealed) => await store.put(id, Buffer.concat(sealed)) }
}
