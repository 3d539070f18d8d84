/**
 * What a run, a restore and a forget share: the owner's keys and index, and
 * a way to reach each host. Also the one place a blob is fetched back.
 */
import { setTimeout } from 'node:timers/promises'
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

/** A host busy with my other requests is asked again this many times, waiting a little longer each time. */
const BUSY_TRIES = 5
const BUSY_WAIT_MS = 200

/** Runs one request to a host, again while the host says it is busy (BACKUP_HOST_BUSY: my other requests fill its streams). */
export async function unlessBusy<T> (request: () => Promise<T>, signal?: AbortSignal): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await request()
    } catch (err) {
      if (!(err instanceof KithError && err.code === 'BACKUP_HOST_BUSY') || attempt >= BUSY_TRIES) throw err
      await setTimeout(BUSY_WAIT_MS * attempt, undefined, signal != null ? { signal } : {})
    }
  }
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
  // each blob starts at another of its hosts, so a restore reads from all of them
  const first = Number.parseInt(id.slice(0, 8), 16) % Math.max(1, record.hosts.length)
  for (const peer of [...record.hosts.slice(first), ...record.hosts.slice(0, first)]) {
    signal?.throwIfAborted()
    try {
      const sealed = await unlessBusy(async () => await parts.host(peer).get(record.sealedId, signal), signal)
      return openBlob(parts.keys, parts.owner, kind, id, sealed)
    } catch (err) {
      if (signal?.aborted === true) throw err
      const error = asKithError(err)
      failures.push(`${peer}: ${error.code} ${error.message}`)
    }
  }
  throw new KithError('BLOB_MISSING', `no host gave back blob ${id.slice(0, 12)}… (${kind}): ${failures.join('; ') || 'no host holds it'}. kith backup health shows the hosts`)
}
