/**
 * Reading the audit trail (docs/backup.md, "Audits"; `kith backup audits`,
 * `GET /v1/backup/audits`): the last MAX_AUDIT_TRAIL audits of each host, as
 * the care book keeps them in LevelDB, newest first across hosts.
 */
import { KithError, asKithError } from '../../errors.ts'
import type { FriendBook } from '../../trust/friends.ts'
import type { AuditTrigger, CareBook, TrailEntry } from './care-book.ts'

/** audits listed when the query names no limit */
export const DEFAULT_TRAIL_LIMIT = 20
/** the most one listing returns (a hundred hosts' whole trails at 50 each would be 5,000) */
export const MAX_TRAIL_LIMIT = 1000
/** a friend's label or peer id */
const MAX_HOST_LENGTH = 128

export interface TrailQuery {
  /** a friend's name or a peer id; absent: every host */
  host?: string
  limit: number
}

/** An audit as listed: the trail's entry, with the host's name, and null for what trails before 2026-12-07 lack. */
export interface TrailItem extends Omit<TrailEntry, 'by' | 'tookMs'> {
  /** the friend's label; null for a host no longer a friend */
  name: string | null
  by: AuditTrigger | null
  tookMs: number | null
}

const bad = (message: string): KithError => new KithError('BAD_REQUEST', `${message}; try ?host=NAME&limit=${DEFAULT_TRAIL_LIMIT}`)

/** `?host=NAME&limit=N` of GET /v1/backup/audits; anything else is refused, nothing is read before it is checked. */
export function parseTrailQuery (query: URLSearchParams): TrailQuery {
  for (const key of new Set(query.keys())) {
    if (key !== 'host' && key !== 'limit') throw bad(`unknown query parameter ${JSON.stringify(key.slice(0, 32))}: only host and limit are taken`)
    if (query.getAll(key).length > 1) throw bad(`${key} given more than once`)
  }
  const host = query.get('host') ?? undefined
  if (host != null && (host.length === 0 || host.length > MAX_HOST_LENGTH)) throw bad(`host must be a friend's name or peer id of 1 to ${MAX_HOST_LENGTH} characters`)
  const text = query.get('limit')
  if (text == null) return { host, limit: DEFAULT_TRAIL_LIMIT }
  const limit = trailLimit(text)
  if (limit == null) throw bad(`limit must be a whole number from 1 to ${MAX_TRAIL_LIMIT}; got ${JSON.stringify(text.slice(0, 32))}`)
  return { host, limit }
}

/** A listing's limit as written (the query's, `kith backup audits --limit`): 1 to MAX_TRAIL_LIMIT, or null. */
export function trailLimit (text: string): number | null {
  // digits only, and few of them: no "1e3", " 5", "-1", "0x10" or a 400-digit number
  const limit = /^\d{1,7}$/.test(text) ? Number(text) : NaN
  return limit >= 1 && limit <= MAX_TRAIL_LIMIT ? limit : null
}

/**
 * The peer id whose trail `host` names: a friend (by label or id), or a peer
 * id the care book keeps a trail for (a host no longer a friend still holds
 * my blobs until repair moves them). FRIEND_UNKNOWN otherwise.
 */
async function peerOf (host: string, friends: FriendBook, book: CareBook): Promise<string> {
  try {
    return friends.resolve(host).peerId
  } catch (err) {
    if (asKithError(err).code === 'FRIEND_UNKNOWN' && (await book.all()).has(host)) return host
    throw err
  }
}

/** The audits `query` asks for, newest first. */
export async function auditTrail (query: TrailQuery, book: CareBook, friends: FriendBook): Promise<TrailItem[]> {
  const peer = query.host != null ? await peerOf(query.host, friends, book) : undefined
  const cares = await book.all()
  const names = new Map(friends.list().map(f => [f.peerId, f.label]))
  const items: TrailItem[] = []
  for (const [host, care] of cares) {
    if (peer != null && host !== peer) continue
    for (const entry of [...care.trail].reverse()) items.push({ ...entry, name: names.get(host) ?? null, by: entry.by ?? null, tookMs: entry.tookMs ?? null })
  }
  items.sort((a, b) => b.at - a.at || a.host.localeCompare(b.host))
  return items.slice(0, query.limit)
}
