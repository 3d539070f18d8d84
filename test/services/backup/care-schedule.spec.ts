import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import nacl from 'tweetnacl'
import { KithError } from '../../../src/errors.ts'
import { openDatabase, sublevel, type Database } from '../../../src/peer/database.ts'
import { createIdentity } from '../../../src/peer/identity.ts'
import { FriendBook } from '../../../src/trust/friends.ts'
import { AUDIT_LEAF_SIZE, auditProof, auditRoot } from '../../../src/services/backup/audit-tree.ts'
import { BackupCare } from '../../../src/services/backup/care.ts'
import { LevelOwnerIndex } from '../../../src/services/backup/owner-index.ts'
import type { BackupClient } from '../../../src/services/backup/protocol.ts'

/**
 * Audits on a schedule (docs/backup.md, Audits): BackupCare on a real
 * LevelDB, a real friend book and owner index, audits a host by itself a
 * period after it first saw it, and again a period later. The host is an
 * honest one over a map (the wire is protocol.spec's business); the period
 * is shortened to 200 ms through the same field config.json sets, and the
 * scheduler sleeps no longer than a tenth of it between looks (mostly
 * waiting: little CPU).
 */
const EVERY_MS = 200

describe('scheduled audits', () => {
  let dir: string
  let db: Database
  let care: BackupCare
  const hostPeer = '12D3KooWHostHostHostHostHostHostHostHostHostHostHost'
  const held = new Map<string, Uint8Array>()
  const refuse = (): never => { throw new KithError('INTERNAL', 'not used here') }
  const host: BackupClient = {
    peer: hostPeer,
    usage: async () => ({ used: 0, quota: Infinity, blobs: held.size, lastWrite: null, counter: 0 }),
    has: async ids => ids.map(id => held.has(id)),
    audit: async challenges => challenges.map(({ id, leaf, leafSize }) => ({ id, leaf, answer: auditProof(held.get(id)!, leaf, leafSize) })),
    putRecord: async () => {},
    put: refuse,
    putMany: refuse,
    get: refuse,
    getMany: refuse,
    getEach: refuse,
    list: refuse,
    remove: refuse,
    getRecord: refuse
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kith-care-schedule-'))
    db = await openDatabase(join(dir, 'db'))
    const friends = new FriendBook(sublevel(db, 'friends'))
    await friends.load()
    const { publicKey } = nacl.sign.keyPair()
    await friends.befriend({ peerId: hostPeer, publicKey: Buffer.from(publicKey).toString('base64'), label: 'h1', grantsToThem: [], grantsFromThem: ['backup'], addrs: [], via: 'test' })
    const index = LevelOwnerIndex.open(db)
    for (let i = 0; i < 3; i++) {
      const sealed = randomBytes(20_000 + i)
      const sealedId = createHash('sha256').update(sealed).digest('hex')
      held.set(sealedId, sealed)
      const root = Buffer.from(auditRoot(sealed, AUDIT_LEAF_SIZE)).toString('hex')
      await index.putBlob(randomBytes(32).toString('hex'), { kind: 'data', sealedId, size: sealed.length, root, auditLeaf: AUDIT_LEAF_SIZE, hosts: [hostPeer] })
    }
    care = new BackupCare({
      db,
      identity: await createIdentity(join(dir, 'identity.key')),
      friends,
      service: { index, client: () => host, exclusive: async work => await work(), on: () => {}, run: refuse },
      name: () => 'owner',
      auditEveryMs: EVERY_MS
    })
  })

  afterAll(async () => {
    care?.stop()
    await db?.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('audits a host by itself a period after it first saw it, and again a period after that', async () => {
    expect((await care.book.all()).get(hostPeer)).toBeUndefined()
    care.start()
    await vi.waitFor(async () => { expect((await care.book.all()).get(hostPeer)?.trail.length ?? 0).toBeGreaterThanOrEqual(2) }, { timeout: 20_000, interval: 200 })
    const { trail } = (await care.book.all()).get(hostPeer)!
    expect(trail.slice(0, 2)).toMatchObject([{ ok: true, blobs: 3, challenges: 3, error: null, by: 'schedule' }, { ok: true, blobs: 3, challenges: 3, error: null, by: 'schedule' }])
    expect(trail[0]!.tookMs).toBeGreaterThanOrEqual(0)
    const { hosts } = await care.health()
    expect(hosts).toMatchObject([{ peerId: hostPeer, state: 'ok', lastAudit: { ok: true } }])
  })
})
