/**
 * The owner's backup keys, all derived from the identity seed (the first 32
 * bytes of the Ed25519 secret key) with HKDF-SHA256, one info string per
 * purpose ("kith/backup/v1/<purpose>"), so no key can stand in for another
 * and the recovery phrase (the seed) brings every one of them back.
 */
import { hkdfSync } from 'node:crypto'
import { KithError } from '../../errors.ts'
import { gearTable, GEAR_ENTRIES } from '../../transfer/cdc.ts'

export const SEED_LENGTH = 32
export const BACKUP_KEY_LENGTH = 32

export interface BackupKeys {
  /** HMAC-SHA256 key of plaintext ids: a host can't hash a known file to find it */
  chunkId: Uint8Array
  /** AES-256-GCM key sealing every blob */
  seal: Uint8Array
  /** FastCDC's gear table: boundaries say nothing of the content (src/transfer/cdc.ts) */
  gear: Int32Array
  /** seals the recovery record (recovery.ts) */
  recovery: Uint8Array
}

export type BackupKeyPurpose = 'chunk-id' | 'seal' | 'gear' | 'recovery'

/** `length` bytes of key material for one purpose. */
export function deriveBackupKey (seed: Uint8Array, purpose: BackupKeyPurpose, length = BACKUP_KEY_LENGTH): Uint8Array {
  if (seed.length !== SEED_LENGTH) throw new KithError('INTERNAL', `an identity seed is ${SEED_LENGTH} bytes, not ${seed.length}`)
  return new Uint8Array(hkdfSync('sha256', seed, new Uint8Array(0), `kith/backup/v1/${purpose}`, length))
}

export function deriveBackupKeys (seed: Uint8Array): BackupKeys {
  return {
    chunkId: deriveBackupKey(seed, 'chunk-id'),
    seal: deriveBackupKey(seed, 'seal'),
    gear: gearTable(deriveBackupKey(seed, 'gear', GEAR_ENTRIES * 4)),
    recovery: deriveBackupKey(seed, 'recovery')
  }
}
