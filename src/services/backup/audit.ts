/**
 * One audit of one host (docs/backup.md, "Audits"): does it still hold what
 * I placed there, bit for bit?
 *
 * I pick up to AUDIT_BLOBS of the blobs my index says it holds, uniformly at
 * random, and one random 16 KiB leaf of each (two 4 KiB leaves of a blob whose
 * root was made before 16 KiB leaves); the host answers each (blob, leaf,
 * leaf size) with the leaf's bytes and its Merkle path, which I check
 * against the audit root I kept when I sealed the blob (audit-tree.ts). A
 * host that dropped, truncated, corrupted or swapped a blob, or that answers
 * without reading the data, cannot produce a path to that root. It costs the
 * host at most AUDIT_BLOBS reads of a blob, and me the 32-byte roots I
 * already keep; the challenges are fresh each time, so old answers are no
 * use to a host. A blob that fails is known lost on that host; a host with
 * any failure is "failing" until an audit passes (repair.ts moves its blobs).
 *
 * Sampling finds a host that lost a fraction f of my blobs with probability
 * about 1 - (1 - f)^AUDIT_BLOBS per audit: a daily audit finds a host that
 * lost a tenth of them within a week with probability above 0.999.
 */
import { randomInt } from 'node:crypto'
import { asKithError } from '../../errors.ts'
import { LEGACY_AUDIT_LEAF_SIZE, leafCount, leafSizeOf, verifyAudit, type AuditLeafSize } from './audit-tree.ts'
import type { BackupClient } from './protocol.ts'
import type { OwnerIndex } from './owner-index.ts'

/** blobs challenged per audit */
export const AUDIT_BLOBS = 16
/**
 * Leaves challenged per blob: one of 16 KiB, or two of a legacy root's 4 KiB.
 * AUDIT_BLOBS of them stay within the host's bounds (32 challenges, 256 KiB
 * of leaves: MAX_AUDIT_CHALLENGES, MAX_AUDIT_BYTES).
 */
function leavesPerBlob (leafSize: AuditLeafSize): number {
  return leafSize === LEGACY_AUDIT_LEAF_SIZE ? 2 : 1
}

export interface AuditFailure {
  /** plaintext id (my index's key) */
  id: string
  sealedId: string
  leaf: number
  /**
   * missing: the host says it has no such blob; damaged: the host says its
   * copy was damaged (its store checks each blob's hash as it reads it);
   * wrong: its answer does not lead to the root
   */
  why: 'missing' | 'damaged' | 'wrong'
}

export interface AuditOutcome {
  host: string
  /** ms since the epoch */
  at: number
  /** the host answered and every answer checked out */
  ok: boolean
  challenges: number
  /** blobs challenged */
  blobs: number
  failures: AuditFailure[]
  /** why the audit could not run (host unreachable, a protocol error); then ok is false and failures empty */
  error: { code: string, message: string } | null
  /** how long it took, ms (monotonic clock); absent in trails written before 2026-12-07 */
  tookMs?: number
}

interface Candidate { id: string, sealedId: string, size: number, root: string, leafSize: AuditLeafSize }

/** Up to `k` of the blobs on `host`, uniformly (reservoir sampling: one pass, k kept). */
async function sample (index: OwnerIndex, host: string, k: number): Promise<Candidate[]> {
  const kept: Candidate[] = []
  let seen = 0
  for await (const [id, r] of index.blobsOn(host)) {
    if (r.size === 0) continue
    seen++
    const c = { id, sealedId: r.sealedId, size: r.size, root: r.root, leafSize: leafSizeOf(r) }
    if (kept.length < k) kept.push(c)
    else {
      const j = randomInt(seen)
      if (j < k) kept[j] = c
    }
  }
  return kept
}

export async function auditHost (host: BackupClient, index: OwnerIndex, signal?: AbortSignal): Promise<AuditOutcome> {
  const at = Date.now()
  const started = performance.now()
  const picked = await sample(index, host.peer, AUDIT_BLOBS)
  const challenges = picked.flatMap(c => {
    const leaves = leafCount(c.size, c.leafSize)
    const chosen = new Set<number>()
    while (chosen.size < Math.min(leavesPerBlob(c.leafSize), leaves)) chosen.add(randomInt(leaves))
    return [...chosen].map(leaf => ({ blob: c, leaf }))
  })
  const base = { host: host.peer, at, challenges: challenges.length, blobs: picked.length }
  let results
  try {
    results = challenges.length === 0
      ? (await host.usage(signal), []) // nothing placed there yet: at least it answers
      : await host.audit(challenges.map(c => ({ id: c.blob.sealedId, leaf: c.leaf, leafSize: c.blob.leafSize })), signal)
  } catch (err) {
    const e = asKithError(err)
    return { ...base, ok: false, failures: [], error: { code: e.code, message: e.message }, tookMs: Math.round(performance.now() - started) }
  }
  const failures: AuditFailure[] = []
  results.forEach((r, i) => {
    const { blob, leaf } = challenges[i]!
    const fail = (why: AuditFailure['why']): void => { failures.push({ id: blob.id, sealedId: blob.sealedId, leaf, why }) }
    if (r.answer == null) fail(r.damaged === true ? 'damaged' : 'missing')
    else if (!verifyAudit(Buffer.from(blob.root, 'hex'), leaf, leafCount(blob.size, blob.leafSize), r.answer, blob.leafSize)) fail('wrong')
  })
  return { ...base, ok: failures.length === 0, failures, error: null, tookMs: Math.round(performance.now() - started) }
}
