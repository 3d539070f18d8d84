/**
 * What a run, a restore and a forget share: the owner's keys and index, and
 * a way to reach each host. Also the one place a blob is fetched back.
 */
import { KithError, asKithError } from '../../errors.ts'
import { openBlob } from './blob.ts'
import type { FileCache } from './file-cache.ts'
import type { BackupKeys } from './keys.ts'
import type { BlobKind, LevelOwnerIndex } from './owner-index.ts'
import type { BackupClient } from './protocol.ts'

export interface BackupParts {
  /** my peer id: bound into every blob's AD */
  owner: string
  /** signs snapshots */
  secretKey: Uint8Array
  /** checks snapshots fetched back */
  publicKey: Uint8Array
  keys: BackupKeys
  index: LevelOwnerIndex
  /** what files held when last read: unchanged files are not read again */
  files: FileCache
  /** the client for one host (peer id) */
  host: (peer: string) => BackupClient
}

/**
 * A blob's plaintext, from the first host of those holding it that answers
 * with bytes that verify (the client checks the sealed id, openBlob the
 * seal and the plaintext id). Hosts that fail are tried in turn; the error
 * names each.
 */
export async function fetchBlob (parts: BackupParts, id: string, kind: BlobKind, signal?: AbortSignal): Promise<Uint8Array> {
  const record = await parts.index.blob(id)
  if (record == null) throw new KithError('BLOB_MISSING', `blob ${id.slice(0, 12)}… (${kind}) is not in this node's backup index; was the snapshot forgotten?`)
  if (record.kind !== kind) throw new KithError('BLOB_OPEN_FAILED', `blob ${id.slice(0, 12)}… is a ${record.kind} blob, not a ${kind} blob`)
  const failures: string[] = []
  for (const peer of record.hosts) {
    signal?.throwIfAborted()
    try {
      const sealed = await parts.host(peer).get(record.sealedId, signal)
      return openBlob(parts.keys, parts.owner, kind, id, sealed)
    } catch (err) {
      if (signal?.aborted === true) throw err
      const error = asKithError(err)
      failures.push(`${peer}: ${error.code} ${error.message}`)
    }
  }
  throw new KithError('BLOB_MISSING', `no host gave back blob ${id.slice(0, 12)}… (${kind}): ${failures.join('; ') || 'no host holds it'}. kith backup health shows the hosts`)
}
