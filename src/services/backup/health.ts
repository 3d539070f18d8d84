/**
 * `kith backup health` (docs/backup.md, "Repair"): per host what I placed
 * there and how its last audit went; per snapshot whether every blob it
 * needs has its replica count on good hosts, and if not, why not, in words
 * that say what to do.
 */
import type { FriendBook } from '../../trust/friends.ts'
import type { AuditOutcome } from './audit.ts'
import type { CareBook } from './care-book.ts'
import type { BlobRecord, OwnerIndex } from './owner-index.ts'
import { isBadHost, targetOf, wantedCopies } from './repair.ts'

export interface HostHealth {
  peerId: string
  /** the friend's name, null if no longer in my friend book */
  name: string | null
  /** they grant me backup now */
  granting: boolean
  /** sealed bytes and blobs my index places there */
  bytes: number
  blobs: number
  /**
   * ok: the last audit passed; failing: it failed; offline: the last audit
   * found no answer (still counted as a copy); unreachable: no answer for
   * longer than the threshold (no longer counted); unaudited: none yet
   */
  state: 'ok' | 'failing' | 'offline' | 'unreachable' | 'unaudited'
  lastAudit: AuditOutcome | null
  /** ms since the epoch */
  lastContact: number | null
  /** my blobs known lost there, not yet placed elsewhere */
  lost: number
  /** its quota refused a repair */
  full: boolean
}

export interface SnapshotHealth {
  seq: number
  id: string
  label: string | null
  created: number
  blobs: number
  /** copies each blob should have */
  wanted: number
  /** fewest good copies of any of its blobs */
  fewest: number
  met: boolean
  /** blobs below their count */
  short: number
  /** blobs no host holds any more, as far as audits know */
  lost: number
  /** why the count is not met, and what to do; null when met */
  why: string | null
}

export interface Health {
  replicas: number
  unreachableAfterMs: number
  auditEveryMs: number
  hosts: HostHealth[]
  snapshots: SnapshotHealth[]
}

export interface HealthInit {
  index: OwnerIndex
  care: CareBook
  friends: FriendBook
  /** friends who grant me backup now */
  hosts: string[]
  replicas: number
  unreachableAfterMs: number
  auditEveryMs: number
}

export async function health (init: HealthInit): Promise<Health> {
  const cares = await init.care.all()
  const bad = (h: string): boolean => isBadHost(cares.get(h), init.unreachableAfterMs)
  const blobs = new Map<string, BlobRecord>()
  const placed = new Map<string, { bytes: number, blobs: number }>()
  for await (const [id, r] of init.index.blobs()) {
    blobs.set(id, r)
    for (const h of r.hosts) {
      const p = placed.get(h) ?? { bytes: 0, blobs: 0 }
      placed.set(h, { bytes: p.bytes + r.size, blobs: p.blobs + 1 })
    }
  }
  const peers = new Set([...init.hosts, ...placed.keys(), ...cares.keys()])
  const hosts: HostHealth[] = [...peers].map(peerId => {
    const care = cares.get(peerId)
    const lastAudit = care?.trail.at(-1) ?? null
    const state: HostHealth['state'] = care?.failing === true
      ? 'failing'
      : bad(peerId) ? 'unreachable' : lastAudit == null ? 'unaudited' : lastAudit.error != null ? 'offline' : 'ok'
    return {
      peerId,
      name: init.friends.get(peerId)?.label ?? null,
      granting: init.hosts.includes(peerId),
      ...(placed.get(peerId) ?? { bytes: 0, blobs: 0 }),
      state,
      lastAudit,
      lastContact: care?.lastContact ?? null,
      lost: care?.lost.length ?? 0,
      full: care?.full ?? false
    }
  }).sort((a, b) => (a.name ?? a.peerId).localeCompare(b.name ?? b.peerId))

  const usable = init.hosts.filter(h => !bad(h))
  const snapshots: SnapshotHealth[] = []
  const copies = await wantedCopies(init.index)
  for (const s of await init.index.snapshots()) {
    let fewest = Infinity
    let short = 0
    let lost = 0
    let wanted = s.replicas ?? init.replicas
    const holders = new Set<string>()
    const needs = await init.index.snapshotBlobs(s.seq)
    for (const id of needs) {
      const r = blobs.get(id)
      const intact = r == null ? [] : r.hosts.filter(h => cares.get(h)?.lost.includes(id) !== true)
      const good = intact.filter(h => !bad(h))
      const target = r == null ? wanted : targetOf(r, init.replicas, copies.get(id))
      wanted = Math.max(wanted, target)
      for (const h of r?.hosts ?? []) holders.add(h)
      fewest = Math.min(fewest, good.length)
      if (good.length < target) short++
      // no copy left that is not known lost (a failing host's copy may still be intact: repair tries it)
      if (intact.length === 0) lost++
    }
    if (needs.size === 0) fewest = 0
    const met = short === 0 && needs.size > 0
    snapshots.push({
      seq: s.seq,
      id: s.id,
      label: s.label,
      created: s.created,
      blobs: needs.size,
      wanted,
      fewest,
      met,
      short,
      lost,
      why: met ? null : whyShort({ lost, short, wanted, usable, holders, cares, blobsKnown: needs.size })
    })
  }
  return { replicas: init.replicas, unreachableAfterMs: init.unreachableAfterMs, auditEveryMs: init.auditEveryMs, hosts, snapshots }
}

function whyShort (s: { lost: number, short: number, wanted: number, usable: string[], holders: Set<string>, cares: Map<string, { full: boolean }>, blobsKnown: number }): string {
  if (s.blobsKnown === 0) return 'this home does not know which blobs the snapshot needs (an unfinished run?)'
  if (s.lost > 0) return `${s.lost} blob${s.lost === 1 ? ' has' : 's have'} no good copy left on any host: run \`kith backup run\` on the same paths to place ${s.lost === 1 ? 'it' : 'them'} again`
  if (s.usable.length < s.wanted) {
    return `no other host: ${s.usable.length} good friend${s.usable.length === 1 ? '' : 's'} grant${s.usable.length === 1 ? 's' : ''} you backup, ${s.wanted} copies need ${s.wanted}; ask another friend to run \`kith friend grant YOURNAME backup\``
  }
  const others = s.usable.filter(h => !s.holders.has(h))
  if (others.length > 0 && others.every(h => s.cares.get(h)?.full === true)) {
    return 'quotas full: the other hosts refused the copies for lack of quota; ask them to raise it (`kith friend quota YOURNAME SIZE`) or forget old snapshots'
  }
  return `${s.short} blob${s.short === 1 ? ' is' : 's are'} short of copies; repair places them at the next audit (\`kith backup audit\` does it now)`
}

/** One friend in `kith backup ledger`: what I keep for them beside what they keep for me. */
export interface LedgerRow {
  peerId: string
  name: string | null
  /** as their host: bytes and blobs I hold for them, the quota I gave; null if I host nothing for them */
  forThem: { used: number, quota: number, blobs: number } | null
  /** as my host: bytes and blobs my index places there, and how its audits go; null if nothing */
  forMe: { bytes: number, blobs: number, state: HostHealth['state'] } | null
}

export function ledger (hosted: Array<{ peerId: string, name: string | null, used: number, quota: number, blobs: number }>, hosts: HostHealth[]): LedgerRow[] {
  const rows = new Map<string, LedgerRow>()
  for (const h of hosted) rows.set(h.peerId, { peerId: h.peerId, name: h.name, forThem: { used: h.used, quota: h.quota, blobs: h.blobs }, forMe: null })
  for (const h of hosts) {
    if (h.blobs === 0 && !h.granting) continue
    const row = rows.get(h.peerId) ?? { peerId: h.peerId, name: h.name, forThem: null, forMe: null }
    rows.set(h.peerId, { ...row, name: row.name ?? h.name, forMe: { bytes: h.bytes, blobs: h.blobs, state: h.state } })
  }
  return [...rows.values()].sort((a, b) => (a.name ?? a.peerId).localeCompare(b.name ?? b.peerId))
}
