/**
 * `kith backup forget`: drops snapshots by a keep policy, then removes from
 * the hosts every blob no remaining snapshot needs, freeing their quota
 * (docs/backup.md, Run and restore).
 *
 * The snapshots go from the index first; what is garbage is then worked out
 * from the index alone (every blob no kept snapshot needs), so a forget that
 * was killed, or a host that was offline, is finished by the next forget.
 * Removes are signed by the owner (the client does it, protocol.ts).
 */
import { KithError, asKithError } from '../../errors.ts'
import type { BackupParts } from './parts.ts'
import type { BlobKind, SnapshotRecord } from './owner-index.ts'
import { loadSnapshot, loadTree } from './restore.ts'

/** Ids per remove request (the wire's MAX_BATCH_IDS). */
const REMOVE_BATCH = 4096

export interface ForgetOptions {
  /** keep the N newest snapshots */
  keepLast?: number
  /** keep the newest snapshot of each of the N last days that have one (UTC days) */
  keepDaily?: number
}

export interface ForgetResult {
  forgotten: SnapshotRecord[]
  kept: SnapshotRecord[]
  /** blobs removed from every host that held them */
  removedBlobs: number
  /** sealed bytes freed, per host peer id */
  freed: Record<string, number>
  /** hosts that could not be reached: their blobs go at the next forget */
  failed: Array<{ host: string, reason: string }>
}

/** The snapshots a policy keeps, oldest first. */
export function keepPolicy (snapshots: SnapshotRecord[], options: ForgetOptions): SnapshotRecord[] {
  const { keepLast, keepDaily } = options
  for (const [name, value] of [['--keep-last', keepLast], ['--keep-daily', keepDaily]] as const) {
    if (value != null && (!Number.isSafeInteger(value) || value < 0)) throw new KithError('BAD_REQUEST', `${name} is a whole number of snapshots, not ${String(value)}`)
  }
  if (keepLast == null && keepDaily == null) throw new KithError('BAD_REQUEST', 'say what to keep: --keep-last N and/or --keep-daily N')
  const newest = [...snapshots].sort((a, b) => b.seq - a.seq)
  const keep = new Set<number>(newest.slice(0, keepLast ?? 0).map(s => s.seq))
  const days = new Set<string>()
  for (const s of newest) {
    if (days.size >= (keepDaily ?? 0)) break
    const day = new Date(s.created).toISOString().slice(0, 10)
    if (days.has(day)) continue
    days.add(day)
    keep.add(s.seq)
  }
  return snapshots.filter(s => keep.has(s.seq))
}

export async function forgetSnapshots (parts: BackupParts, options: ForgetOptions, signal?: AbortSignal): Promise<ForgetResult> {
  const { index } = parts
  const all = await index.snapshots()
  const kept = keepPolicy(all, options)
  const forgotten = all.filter(s => !kept.includes(s))
  for (const s of forgotten) await index.deleteSnapshot(s.seq)
  // the file cache keeps only files a kept snapshot's run saw
  if (forgotten.length > 0) await parts.files.pruneRuns(new Set(kept.map(s => s.seq)))

  const needed = new Set<string>()
  for (const s of kept) for (const id of await needsOf(parts, s, signal)) needed.add(id)
  // garbage, by host: [plaintext id, sealed id]
  const byHost = new Map<string, Array<[string, string]>>()
  let garbage = 0
  for await (const [id, record] of index.blobs()) {
    if (needed.has(id)) continue
    garbage++
    if (record.hosts.length === 0) await index.deleteBlob(id)
    for (const host of record.hosts) {
      const list = byHost.get(host) ?? []
      list.push([id, record.sealedId])
      byHost.set(host, list)
    }
  }

  const freed: Record<string, number> = {}
  const failed: ForgetResult['failed'] = []
  for (const [host, blobs] of byHost) {
    try {
      for (let i = 0; i < blobs.length; i += REMOVE_BATCH) {
        signal?.throwIfAborted()
        const batch = blobs.slice(i, i + REMOVE_BATCH)
        const answer = await parts.host(host).remove(batch.map(([, sealedId]) => sealedId), signal)
        freed[host] = (freed[host] ?? 0) + answer.freed
        for (const [id] of batch) {
          await index.removeHost(id, host)
          const left = await index.blob(id)
          if (left != null && left.hosts.length === 0) await index.deleteBlob(id)
        }
      }
    } catch (err) {
      if (signal?.aborted === true) throw err
      const error = asKithError(err)
      failed.push({ host, reason: `${error.code}: ${error.message}` })
    }
  }
  return { forgotten, kept, removedBlobs: garbage - countLeft(byHost, failed), freed, failed }
}

/**
 * The blobs a snapshot needs, from the index; a snapshot brought back by
 * `kith restore` has no list yet, so its trees are walked (fetched from the
 * hosts) to make one. If that fails, nothing is removed.
 */
async function needsOf (parts: BackupParts, snapshot: SnapshotRecord, signal?: AbortSignal): Promise<Set<string>> {
  const known = await parts.index.snapshotBlobs(snapshot.seq)
  if (known.size > 0) return known
  const needs: Array<[string, BlobKind]> = [[snapshot.id, 'snapshot']]
  const pending = [(await loadSnapshot(parts, snapshot, signal)).tree]
  while (pending.length > 0) {
    const tree = pending.pop()!
    for (const id of tree) needs.push([id, 'tree'])
    for (const entry of await loadTree(parts, tree, signal)) {
      if (entry.type === 'dir') pending.push(entry.tree)
      if (entry.type === 'file') for (const id of entry.chunks) needs.push([id, 'data'])
    }
  }
  await parts.index.addNeeds(snapshot.seq, needs)
  return new Set(needs.map(([id]) => id))
}

/** Blobs still on a host that failed (counted once however many hosts failed). */
function countLeft (byHost: Map<string, Array<[string, string]>>, failed: Array<{ host: string }>): number {
  const left = new Set<string>()
  for (const { host } of failed) for (const [id] of byHost.get(host) ?? []) left.add(id)
  return left.size
}
