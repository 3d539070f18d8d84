import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import nacl from 'tweetnacl'
import { openDatabase, sublevel, type Database } from '../../../src/peer/database.ts'
import { FriendBook } from '../../../src/trust/friends.ts'
import type { AuditOutcome } from '../../../src/services/backup/audit.ts'
import { auditTrail, DEFAULT_TRAIL_LIMIT, MAX_TRAIL_LIMIT, parseTrailQuery } from '../../../src/services/backup/audit-trail.ts'
import { CareBook, MAX_AUDIT_TRAIL } from '../../../src/services/backup/care-book.ts'

/**
 * The audit trail as `GET /v1/backup/audits` reads it: the query refused
 * when it is anything but ?host=NAME&limit=N in bounds, and the listing
 * (newest first across hosts, by name or peer id, capped per host) from a
 * real care book in a real LevelDB, the same after the database is closed
 * and opened again (a daemon restart).
 */
const q = (text: string): URLSearchParams => new URLSearchParams(text)

describe('audit trail query', () => {
  it('takes host and limit, with a default limit', () => {
    expect(parseTrailQuery(q(''))).toEqual({ host: undefined, limit: DEFAULT_TRAIL_LIMIT })
    expect(parseTrailQuery(q('host=h1&limit=5'))).toEqual({ host: 'h1', limit: 5 })
    expect(parseTrailQuery(q(`limit=${MAX_TRAIL_LIMIT}`)).limit).toBe(MAX_TRAIL_LIMIT)
  })

  it('refuses a negative, zero, huge, non-numeric or repeated limit, an empty or long host, and unknown parameters', () => {
    for (const bad of ['limit=-1', 'limit=0', `limit=${MAX_TRAIL_LIMIT + 1}`, `limit=${'9'.repeat(400)}`, 'limit=abc', 'limit=1e3', 'limit=0x10',
      'limit=%205', 'limit=2.5', 'limit=', 'limit=5&limit=6', 'host=', `host=${'h'.repeat(129)}`, 'host=a&host=b', 'offset=3', 'Limit=3']) {
      expect(() => parseTrailQuery(q(bad)), bad).toThrow(expect.objectContaining({ code: 'BAD_REQUEST', message: expect.stringMatching(/try \?host=NAME&limit=/) }))
    }
  })
})

describe('audit trail listing', () => {
  let dir: string
  let db: Database
  let book: CareBook
  let friends: FriendBook
  const h1 = '12D3KooWHostOneHostOneHostOneHostOneHostOneHostOne1'
  const h2 = '12D3KooWHostTwoHostTwoHostTwoHostTwoHostTwoHostTwo2'
  /** placed blobs on before it stopped being a friend: no label, still audited */
  const gone = '12D3KooWGoneGoneGoneGoneGoneGoneGoneGoneGoneGoneGone'
  const audit = (host: string, at: number, over: Partial<AuditOutcome> = {}): AuditOutcome =>
    ({ host, at, ok: true, challenges: 16, blobs: 16, failures: [], error: null, tookMs: 40, ...over })

  const open = async (): Promise<void> => {
    db = await openDatabase(join(dir, 'db'))
    book = new CareBook(db)
    friends = new FriendBook(sublevel(db, 'friends'))
    await friends.load()
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kith-audit-trail-'))
    await open()
    for (const [peerId, label] of [[h1, 'h1'], [h2, 'h2']] as const) {
      const { publicKey } = nacl.sign.keyPair()
      await friends.befriend({ peerId, publicKey: Buffer.from(publicKey).toString('base64'), label, grantsToThem: [], grantsFromThem: ['backup'], addrs: [], via: 'test' })
    }
    // a trail from before `by` and `tookMs` were kept
    await book.put(h2, { lastContact: 500, firstSeen: 0, failing: false, lost: [], full: false, trail: [{ host: h2, at: 500, ok: true, challenges: 2, blobs: 2, failures: [], error: null }] })
    await book.recordAudit(audit(h1, 1000), 'schedule')
    await book.recordAudit(audit(h2, 2000, { ok: false, failures: [{ id: 'a'.repeat(64), sealedId: 'b'.repeat(64), leaf: 3, why: 'missing' }] }), 'request')
    await book.recordAudit(audit(gone, 3000, { ok: false, error: { code: 'FRIEND_OFFLINE', message: 'not connected' } }), 'schedule')
    await book.recordAudit(audit(h1, 4000), 'request')
  })

  afterAll(async () => {
    await db?.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('lists every host\'s audits newest first, with names, who started them and what they found', async () => {
    const all = await auditTrail({ limit: 100 }, book, friends)
    expect(all.map(a => [a.name, a.at, a.by])).toEqual([['h1', 4000, 'request'], [null, 3000, 'schedule'], ['h2', 2000, 'request'], ['h1', 1000, 'schedule'], ['h2', 500, null]])
    expect(all[1]).toMatchObject({ host: gone, ok: false, error: { code: 'FRIEND_OFFLINE' }, tookMs: 40 })
    expect(all[2]).toMatchObject({ ok: false, failures: [{ sealedId: 'b'.repeat(64), leaf: 3, why: 'missing' }] })
    expect(all[4]).toMatchObject({ tookMs: null, by: null, challenges: 2 })
    expect((await auditTrail({ limit: 2 }, book, friends)).map(a => a.at)).toEqual([4000, 3000])
  })

  it('lists one host by name or peer id, also one no longer a friend; an unknown one is FRIEND_UNKNOWN', async () => {
    expect((await auditTrail({ host: 'h1', limit: 100 }, book, friends)).map(a => a.at)).toEqual([4000, 1000])
    expect((await auditTrail({ host: h2, limit: 1 }, book, friends)).map(a => a.at)).toEqual([2000])
    expect((await auditTrail({ host: gone, limit: 100 }, book, friends)).map(a => a.host)).toEqual([gone])
    await expect(auditTrail({ host: 'h9', limit: 100 }, book, friends)).rejects.toMatchObject({ code: 'FRIEND_UNKNOWN' })
  })

  it('keeps the trail across a restart, the last MAX_AUDIT_TRAIL audits of each host', async () => {
    for (let i = 0; i < MAX_AUDIT_TRAIL + 5; i++) await book.recordAudit(audit(h2, 10_000 + i), 'schedule')
    await db.close()
    await open()
    const trail = await auditTrail({ host: 'h2', limit: MAX_TRAIL_LIMIT }, book, friends)
    expect(trail).toHaveLength(MAX_AUDIT_TRAIL)
    expect(trail[0]).toMatchObject({ at: 10_000 + MAX_AUDIT_TRAIL + 4, by: 'schedule', name: 'h2' })
    expect(trail.at(-1)!.at).toBe(10_005)
    expect((await auditTrail({ host: 'h1', limit: 100 }, book, friends)).map(a => a.at)).toEqual([4000, 1000])
  })
})
