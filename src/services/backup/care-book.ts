/**
 * What the owner remembers of its hosts between audits (docs/backup.md,
 * "Audits" and "Repair"), in the home's LevelDB: each host's audit trail,
 * when it last answered, whether it is failing, which of my blobs it lost,
 * whether its quota was full at the last repair; and the recovery record's
 * seq. One JSON document per host, written whole after each audit.
 */
import { getOrUndefined, sublevel, type Database, type Sublevel } from '../../peer/database.ts'
import type { AuditOutcome } from './audit.ts'

/** audits kept per host, newest last */
export const MAX_AUDIT_TRAIL = 50
/** failures kept per audit in the trail (an audit makes at most 32) */
const MAX_TRAIL_FAILURES = 32

/** what started an audit: the timer (care.ts) or someone asking (`kith backup audit`) */
export type AuditTrigger = 'schedule' | 'request'

/** One audit in a host's trail; `by` is absent in trails written before 2026-12-07. */
export interface TrailEntry extends AuditOutcome {
  by?: AuditTrigger
}

export interface HostCare {
  /** ms since the epoch the host last answered an audit (passed or not); null: never */
  lastContact: number | null
  /** ms since the epoch I first looked at this host: the unreachable clock starts here when it never answered */
  firstSeen: number
  /** the last audit that got answers failed; cleared by one that passes */
  failing: boolean
  /** plaintext ids of my blobs that failed a challenge there, until repair has placed them elsewhere */
  lost: string[]
  /** its quota refused a repair's put: not asked again until it frees space (a later audit) */
  full: boolean
  trail: TrailEntry[]
}

interface RecoveryState { seq: number }

export class CareBook {
  private readonly hosts: Sublevel<HostCare>
  private readonly meta: Sublevel<RecoveryState>

  constructor (db: Database) {
    this.hosts = sublevel<HostCare>(db, 'backup-care-hosts')
    this.meta = sublevel<RecoveryState>(db, 'backup-care')
  }

  async host (peer: string): Promise<HostCare> {
    return await getOrUndefined(this.hosts, peer) ?? { lastContact: null, firstSeen: Date.now(), failing: false, lost: [], full: false, trail: [] }
  }

  async all (): Promise<Map<string, HostCare>> {
    const out = new Map<string, HostCare>()
    for await (const [peer, care] of this.hosts.iterator()) out.set(peer, care)
    return out
  }

  async put (peer: string, care: HostCare): Promise<void> {
    await this.hosts.put(peer, care)
  }

  /** Records an audit: the trail, contact, failing, and the blobs found lost. */
  async recordAudit (outcome: AuditOutcome, by: AuditTrigger): Promise<HostCare> {
    const care = await this.host(outcome.host)
    const answered = outcome.error == null
    const lost = new Set(care.lost)
    for (const f of outcome.failures) lost.add(f.id)
    const next: HostCare = {
      ...care,
      lastContact: answered ? outcome.at : care.lastContact,
      failing: answered ? !outcome.ok : care.failing,
      // a host that answers may have freed space since
      full: answered ? false : care.full,
      lost: [...lost],
      trail: [...care.trail, { ...outcome, failures: outcome.failures.slice(0, MAX_TRAIL_FAILURES), by }].slice(-MAX_AUDIT_TRAIL)
    }
    await this.put(outcome.host, next)
    return next
  }

  async recoverySeq (): Promise<number> {
    return (await getOrUndefined(this.meta, 'recovery'))?.seq ?? 0
  }

  async setRecoverySeq (seq: number): Promise<void> {
    await this.meta.put('recovery', { seq })
  }
}
