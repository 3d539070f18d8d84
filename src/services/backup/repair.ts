/**
 * Repair (docs/backup.md, "Repair"): keeps each blob's replica count when a
 * host lost blobs, fails audits, or has not answered for `unreachableAfterMs`
 * (7 days by default).
 *
 * A blob's target is the most copies any snapshot needing it asked for
 * (`kith backup run --replicas`, kept in the snapshot's record); for one an
 * older snapshot needs, the number of hosts it was placed on, and at least
 * `replicas` (the run's default, 2). Its good hosts are those neither
 * failing, unreachable past the threshold, nor known to have lost it. For a
 * blob short of its target, repair fetches it from a good host (the client
 * checks the content address; repair checks the audit root as well) and puts
 * it on other friends who granted me backup, least loaded first, until the
 * target is met or nobody is left; only then does it drop the bad hosts from
 * the blob's record. A failing host still serves as a source (the bytes are
 * checked), it only no longer counts as a copy. Bytes come from a replica, never from the source files:
 * those may have changed since, and the snapshot must stay what it was. A
 * blob with no good replica left is dropped from the bad hosts' records, so
 * the next `kith backup run` of the same files seals and places it again
 * (dedup finds no holder); health names it until then.
 */
import { asKithError } from '../../errors.ts'
import { auditRoot, leafSizeOf } from './audit-tree.ts'
import type { BackupClient } from './protocol.ts'
import type { BlobRecord, OwnerIndex } from './owner-index.ts'
import type { CareBook, HostCare } from './care-book.ts'

export const DEFAULT_REPLICAS = 2
export const DEFAULT_UNREACHABLE_MS = 7 * 24 * 3600 * 1000

export interface RepairInit {
  index: OwnerIndex
  care: CareBook
  client: (peer: string) => BackupClient
  /** friends who grant me backup now */
  hosts: () => string[]
  replicas?: number
  unreachableAfterMs?: number
  signal?: AbortSignal
}

export interface RepairReport {
  /** blobs that were short of their target */
  short: number
  /** copies placed on new hosts */
  placed: number
  /** blobs still short after the pass */
  unmet: number
  /** blobs no good host holds any more (the next run places them again) */
  lost: number
  /** why blobs stayed short: no host to take them, every other host's quota full, hosts offline */
  reasons: { noOtherHost: number, quotaFull: number, offline: number }
}

/** Whether a host counts towards replicas: it answers, passes audits, and answered within the threshold. */
export function isBadHost (care: HostCare | undefined, unreachableAfterMs: number, now = Date.now()): boolean {
  if (care == null) return false
  return care.failing || now - (care.lastContact ?? care.firstSeen) > unreachableAfterMs
}

/**
 * The copies a blob should have: the most any snapshot needing it asked for
 * (`wanted`, from wantedCopies); for a blob a snapshot from before runs kept
 * their --replicas needs, the hosts it was placed on and at least `replicas`.
 */
export function targetOf (record: BlobRecord, replicas: number, wanted?: number): number {
  return wanted ?? Math.max(record.hosts.length, replicas)
}

/** Per blob, the most copies any snapshot needing it asked for; blobs an older snapshot (no replicas kept) needs are left out. */
export async function wantedCopies (index: Pick<OwnerIndex, 'snapshots' | 'snapshotBlobs'>): Promise<Map<string, number>> {
  const wanted = new Map<string, number>()
  const legacy = new Set<string>()
  for (const s of await index.snapshots()) {
    for (const id of await index.snapshotBlobs(s.seq)) {
      if (s.replicas == null) legacy.add(id)
      else wanted.set(id, Math.max(wanted.get(id) ?? 0, s.replicas))
    }
  }
  for (const id of legacy) wanted.delete(id)
  return wanted
}

export async function repair (init: RepairInit): Promise<RepairReport> {
  const replicas = init.replicas ?? DEFAULT_REPLICAS
  const threshold = init.unreachableAfterMs ?? DEFAULT_UNREACHABLE_MS
  const cares = await init.care.all()
  const bad = (h: string): boolean => isBadHost(cares.get(h), threshold)
  const lostOn = (h: string, id: string): boolean => cares.get(h)?.lost.includes(id) === true
  const available = init.hosts().filter(h => !bad(h))
  const offline = new Set<string>()
  const full = new Set([...cares].filter(([, c]) => c.full).map(([h]) => h))
  // bytes each host holds for me, to fill the least loaded first
  const load = new Map<string, number>(available.map(h => [h, 0]))
  const work: Array<[string, BlobRecord]> = []
  const wanted = await wantedCopies(init.index)
  for await (const [id, r] of init.index.blobs()) {
    for (const h of r.hosts) load.set(h, (load.get(h) ?? 0) + r.size)
    const good = r.hosts.filter(h => !bad(h) && !lostOn(h, id))
    if (good.length < targetOf(r, replicas, wanted.get(id))) work.push([id, r])
  }
  const report: RepairReport = { short: work.length, placed: 0, unmet: 0, lost: 0, reasons: { noOtherHost: 0, quotaFull: 0, offline: 0 } }
  const settled = new Map<string, Set<string>>() // host -> lost ids now dealt with

  for (const [id, r] of work) {
    init.signal?.throwIfAborted()
    const badHere = r.hosts.filter(h => bad(h) || lostOn(h, id))
    const good = r.hosts.filter(h => !badHere.includes(h))
    let need = targetOf(r, replicas, wanted.get(id)) - good.length
    const pool = available.filter(h => !r.hosts.includes(h)).sort((a, b) => (load.get(a) ?? 0) - (load.get(b) ?? 0))
    // a failing or silent host may still hold this blob intact: the bytes are checked, so it can be the source
    const sources = [...good, ...badHere.filter(h => !lostOn(h, id))]
    // nowhere to put it: fetch nothing (only what is known lost leaves the record)
    const sealed = pool.length === 0 && sources.length > 0 ? 'nowhere' : await fetchGood(init, id, r, sources, offline)
    if (sealed === 'none') {
      // no intact copy anywhere: forget the bad ones so the next run places the blob again
      for (const h of badHere) {
        await init.index.removeHost(id, h)
        if (lostOn(h, id)) settledAdd(settled, h, id)
      }
      report.lost++
      report.unmet++
      continue
    }
    if (sealed === 'offline') {
      report.unmet++
      report.reasons.offline++
      continue
    }
    let sawFull = false
    let sawOffline = false
    for (const h of sealed === 'nowhere' ? [] : pool) {
      if (need === 0) break
      if (full.has(h)) { sawFull = true; continue }
      if (offline.has(h)) { sawOffline = true; continue }
      try {
        await init.client(h).put(r.sealedId, sealed as Uint8Array, init.signal)
        await init.index.addHost(id, h)
        load.set(h, (load.get(h) ?? 0) + r.size)
        report.placed++
        need--
      } catch (err) {
        const code = asKithError(err).code
        if (code === 'QUOTA_EXCEEDED') {
          full.add(h)
          sawFull = true
          await init.care.put(h, { ...await init.care.host(h), full: true })
        } else {
          offline.add(h)
          sawOffline = true
        }
      }
    }
    // the bad hosts give way to as many new ones as were placed (lost copies always: they are gone)
    let replaced = targetOf(r, replicas, wanted.get(id)) - good.length - need
    for (const h of badHere) {
      if (lostOn(h, id) || replaced > 0) {
        if (!lostOn(h, id)) replaced--
        await init.index.removeHost(id, h)
        if (lostOn(h, id)) settledAdd(settled, h, id)
      }
    }
    if (need > 0) {
      report.unmet++
      if (sawFull) report.reasons.quotaFull++
      else if (sawOffline) report.reasons.offline++
      else report.reasons.noOtherHost++
    }
  }
  for (const [h, ids] of settled) {
    const care = await init.care.host(h)
    await init.care.put(h, { ...care, lost: care.lost.filter(id => !ids.has(id)) })
  }
  return report
}

function settledAdd (settled: Map<string, Set<string>>, host: string, id: string): void {
  let ids = settled.get(host)
  if (ids == null) settled.set(host, ids = new Set())
  ids.add(id)
}

/**
 * The sealed bytes from the first source that has them intact, checked against the audit root. 'offline'
 * when none gave them but one could not be reached (it may come back); 'none'
 * when every source answered without them (each is marked as having lost it).
 */
async function fetchGood (init: RepairInit, id: string, r: BlobRecord, sources: string[], offline: Set<string>): Promise<Uint8Array | 'none' | 'offline'> {
  for (const h of sources) {
    if (offline.has(h)) continue
    try {
      const sealed = await init.client(h).get(r.sealedId, init.signal)
      if (Buffer.from(auditRoot(sealed, leafSizeOf(r))).toString('hex') === r.root) return sealed
    } catch (err) {
      if (asKithError(err).code === 'FRIEND_OFFLINE') {
        offline.add(h)
        continue
      }
    }
    const care = await init.care.host(h)
    if (!care.lost.includes(id)) await init.care.put(h, { ...care, lost: [...care.lost, id] })
  }
  return sources.some(h => offline.has(h)) ? 'offline' : 'none'
}
