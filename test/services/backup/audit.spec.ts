import { describe, it, expect, beforeAll, beforeEach, afterAll } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createHash, randomBytes } from 'node:crypto'
import { openDatabase, type Database } from '../../../src/peer/database.ts'
import { LevelOwnerIndex } from '../../../src/services/backup/owner-index.ts'
import { AUDIT_LEAF_SIZE, LEGACY_AUDIT_LEAF_SIZE, auditProof, auditRoot } from '../../../src/services/backup/audit-tree.ts'
import { auditHost } from '../../../src/services/backup/audit.ts'
import { CareBook } from '../../../src/services/backup/care-book.ts'
import { repair } from '../../../src/services/backup/repair.ts'
import type { BackupClient } from '../../../src/services/backup/protocol.ts'
import { KithError } from '../../../src/errors.ts'

/**
 * Audits and repair against hosts that misbehave in ways a real daemon
 * won't on its own: one answers challenges without holding the data (random
 * leaves, made-up paths), one answers for a blob with another blob's proof
 * (swapped), one says it has nothing. The index and care book are real
 * (LevelDB in a temp folder); hosts are the BackupClient surface over a map
 * (the wire is test/integration/backup-care.spec.ts's business).
 */

type Behaviour = 'honest' | 'no-data' | 'swapped' | 'dropped'

function host (peer: string, behaviour: Behaviour, quota = Infinity): BackupClient & { held: Map<string, Uint8Array> } {
  const held = new Map<string, Uint8Array>()
  const used = (): number => [...held.values()].reduce((n, b) => n + b.length, 0)
  const refuse = (): never => { throw new KithError('INTERNAL', 'not used here') }
  return {
    peer,
    held,
    usage: async () => ({ used: used(), quota, blobs: held.size, lastWrite: null, counter: 0 }),
    has: async ids => ids.map(id => held.has(id)),
    put: async (id, sealed) => {
      if (used() + sealed.length > quota) throw new KithError('QUOTA_EXCEEDED', 'full')
      held.set(id, sealed)
      return { stored: true, used: used(), quota }
    },
    get: async id => {
      const sealed = held.get(id)
      if (sealed == null || behaviour === 'dropped') throw new KithError('BLOB_MISSING', 'no such blob')
      return sealed
    },
    putMany: refuse,
    getMany: refuse,
    getEach: refuse,
    remove: refuse,
    list: refuse,
    audit: async challenges => challenges.map(({ id, leaf, leafSize }) => {
      const sealed = held.get(id)
      if (sealed == null || behaviour === 'dropped') return { id, leaf, answer: null }
      const proof = auditProof(sealed, leaf, leafSize)
      if (behaviour === 'no-data') return { id, leaf, answer: { leaf: randomBytes(proof.leaf.length), path: proof.path.map(() => randomBytes(32)) } }
      if (behaviour === 'swapped') {
        const other = [...held.entries()].find(([k]) => k !== id)![1]
        return { id, leaf, answer: auditProof(other, Math.min(leaf, Math.ceil(other.length / leafSize) - 1), leafSize) }
      }
      return { id, leaf, answer: proof }
    }),
    putRecord: refuse,
    getRecord: refuse
  }
}

describe('audits and repair', () => {
  let dir: string
  let db: Database
  let index: LevelOwnerIndex
  let care: CareBook

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kith-audit-'))
  })

  /** Each test its own database: repair walks every blob of the index. */
  beforeEach(async (ctx) => {
    await db?.close()
    db = await openDatabase(join(dir, ctx.task.id), 'new')
    index = LevelOwnerIndex.open(db)
    care = new CareBook(db)
  })

  afterAll(async () => {
    await db?.close()
    await rm(dir, { recursive: true, force: true })
  })

  /**
   * Places `count` blobs of about 20 KiB on the given hosts: the even ones
   * with 16 KiB audit leaves, the odd ones as records made before those were
   * kept (no leaf size: 4 KiB leaves), which must still be audited.
   */
  async function place (count: number, hosts: Array<ReturnType<typeof host>>): Promise<string[]> {
    const ids: string[] = []
    for (let i = 0; i < count; i++) {
      const sealed = randomBytes(20_000 + i)
      const sealedId = createHash('sha256').update(sealed).digest('hex')
      const id = randomBytes(32).toString('hex')
      const legacy = i % 2 === 1
      const root = Buffer.from(auditRoot(sealed, legacy ? LEGACY_AUDIT_LEAF_SIZE : AUDIT_LEAF_SIZE)).toString('hex')
      await index.putBlob(id, { kind: 'data', sealedId, size: sealed.length, root, ...legacy ? {} : { auditLeaf: AUDIT_LEAF_SIZE }, hosts: [] })
      for (const h of hosts) {
        h.held.set(sealedId, sealed)
        await index.addHost(id, h.peer)
      }
      ids.push(id)
    }
    return ids
  }

  it('passes an honest host and fails one without the data, a swapper and a dropper', async () => {
    const honest = host('honest', 'honest')
    const noData = host('no-data', 'no-data')
    const swapped = host('swapped', 'swapped')
    const dropped = host('dropped', 'dropped')
    await place(5, [honest, noData, swapped, dropped])
    const good = await auditHost(honest, index)
    // one 16 KiB leaf of each of the 3 current blobs, two 4 KiB leaves of each of the 2 legacy ones
    expect(good).toMatchObject({ ok: true, blobs: 5, challenges: 7, failures: [], error: null })
    for (const [h, why] of [[noData, 'wrong'], [swapped, 'wrong'], [dropped, 'missing']] as const) {
      const outcome = await auditHost(h, index)
      expect(outcome.ok, h.peer).toBe(false)
      expect(outcome.failures).toHaveLength(7)
      expect(new Set(outcome.failures.map(f => f.why))).toEqual(new Set([why]))
    }
    const down = host('down', 'honest')
    await place(1, [down])
    down.audit = async () => { throw new KithError('FRIEND_OFFLINE', 'unreachable') }
    expect(await auditHost(down, index)).toMatchObject({ ok: false, failures: [], error: { code: 'FRIEND_OFFLINE' } })
  })

  it('re-places a failing host\'s blobs on another friend, and says when quotas are full', async () => {
    const a = host('a', 'honest')
    const bad = host('bad', 'no-data')
    const c = host('c', 'honest')
    const tight = host('tight', 'honest', 10_000)
    const clients = new Map([a, bad, c, tight].map(h => [h.peer, h]))
    const ids = await place(3, [a, bad])
    await care.recordAudit(await auditHost(bad, index), 'request')
    expect((await care.host('bad')).failing).toBe(true)

    // only a full host to move to: nothing placed, and that is the reason
    const full = await repair({ index, care, client: p => clients.get(p)!, hosts: () => ['a', 'bad', 'tight'] })
    expect(full).toMatchObject({ placed: 0, lost: 0, reasons: { quotaFull: 3 } })
    expect((await care.host('tight')).full).toBe(true)

    const report = await repair({ index, care, client: p => clients.get(p)!, hosts: () => ['a', 'bad', 'c', 'tight'] })
    expect(report).toMatchObject({ placed: 3, unmet: 0, lost: 0 })
    for (const id of ids) {
      const record = (await index.blob(id))!
      expect(record.hosts.sort()).toEqual(['a', 'c'])
      expect(c.held.has(record.sealedId)).toBe(true)
    }
  })

  it('treats a host silent past the threshold as gone, and copies from it while it still answers', async () => {
    const a = host('a', 'honest')
    const silent = host('silent', 'honest')
    const c = host('c', 'honest')
    const clients = new Map([a, silent, c].map(h => [h.peer, h]))
    const ids = await place(2, [a, silent])
    const week = 7 * 24 * 3600 * 1000
    await care.put('silent', { ...await care.host('silent'), lastContact: Date.now() - week - 60_000 })
    await care.put('a', { ...await care.host('a'), lastContact: Date.now() })
    // a longer threshold: nothing to do
    expect(await repair({ index, care, client: p => clients.get(p)!, hosts: () => ['a', 'silent', 'c'], unreachableAfterMs: 2 * week })).toMatchObject({ short: 0 })
    const report = await repair({ index, care, client: p => clients.get(p)!, hosts: () => ['a', 'silent', 'c'] })
    expect(report).toMatchObject({ short: 2, placed: 2, unmet: 0 })
    for (const id of ids) expect((await index.blob(id))!.hosts.sort()).toEqual(['a', 'c'])
  })
  it('repairs to the copies the snapshot asked for (--replicas), and to 2 for a snapshot that did not say', async () => {
    const a = host('a', 'honest')
    const c = host('c', 'honest')
    const clients = new Map([a, c].map(h => [h.peer, h]))
    const [one] = await place(1, [a])
    const snapshot = { id: randomBytes(32).toString('hex'), created: 1, label: null, paths: ['/x'], tree: [], stats: { files: 1, dirs: 0, links: 0, bytes: 1, blobs: 1 } }
    await index.putSnapshot({ ...snapshot, seq: 1, replicas: 1 })
    await index.addNeeds(1, [[one!, 'data']])
    const run = async (): Promise<unknown> => await repair({ index, care, client: p => clients.get(p)!, hosts: () => ['a', 'c'] })
    // one copy asked for, one held: nothing to do (before, repair made a second copy nobody asked for)
    expect(await run()).toMatchObject({ short: 0, placed: 0 })
    // a snapshot from before runs kept --replicas also needs it: at least 2
    await index.putSnapshot({ ...snapshot, seq: 2 })
    await index.addNeeds(2, [[one!, 'data']])
    expect(await run()).toMatchObject({ short: 1, placed: 1 })
    expect((await index.blob(one!))!.hosts.sort()).toEqual(['a', 'c'])
  })
})
