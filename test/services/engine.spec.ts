import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { openDatabase, sublevel, type Database } from '../../src/peer/database.ts'
import type { KithLibp2p } from '../../src/peer/node.ts'
import { FriendBook } from '../../src/trust/friends.ts'
import { transferEngine, type TransferEngine } from '../../src/services/engine/index.ts'
import { makeChunks, startNode, tempDir, type Chunk } from '../helpers/chunks.ts'

/**
 * The transfer engine with more than one service plugged in: a collection
 * keeps the union of what the services declare and frees the rest, against a
 * real chunk store on disk, a real LevelDB home database and a real libp2p
 * node serving the chunk protocol.
 */
const CHUNK = 64 * 1024

async function held (engine: TransferEngine): Promise<Set<string>> {
  const out = new Set<string>()
  for await (const { id } of engine.store.list()) out.add(id)
  return out
}

const ids = (chunks: Chunk[]): string[] => chunks.map(c => c.id)

describe('transfer engine', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let db: Database
  let libp2p: KithLibp2p
  let engine: TransferEngine

  beforeEach(async () => {
    tmp = await tempDir('kith-engine-')
    db = await openDatabase(join(tmp.dir, 'db'))
    const friends = new FriendBook(sublevel(db, 'friends'))
    await friends.load()
    libp2p = await startNode()
    engine = transferEngine()({ db, home: tmp.dir, libp2p, friends })
    await engine.start()
  })

  afterEach(async () => {
    await engine.beforeStop()
    await engine.stop()
    await libp2p.stop()
    await db.close()
    await tmp.cleanup()
  })

  it('keeps every registered service\'s live chunks through a collection and frees what none declares', async () => {
    const files = makeChunks(3, CHUNK)
    const backup = makeChunks(3, CHUNK)
    const shared = makeChunks(1, CHUNK) // live for both
    const orphans = makeChunks(2, CHUNK) // written by a service that no longer needs them
    for (const c of [...files, ...backup, ...shared, ...orphans]) await engine.store.put(c.id, c.sealed)

    engine.register({ name: 'files', liveChunks: async live => { for (const id of ids([...files, ...shared])) live.add(id) } })
    // asked for before the second service registered: waits for afterStart, so its mark sees both
    const early = engine.collect()
    engine.register({ name: 'backup', liveChunks: async live => { for (const id of ids([...backup.slice(0, 2), ...shared])) live.add(id) } })
    expect(() => { engine.register({ name: 'backup', liveChunks: async () => {} }) }).toThrow(/already registered/)
    expect((await held(engine)).size).toBe(9)
    engine.afterStart()

    const result = await early
    expect(new Set(await held(engine))).toEqual(new Set(ids([...files, ...backup.slice(0, 2), ...shared])))
    expect(result.live).toBe(6)
    // freed by this cycle or by the one afterStart runs in the background, just before it
    expect(engine.storeStatus()).toMatchObject({ chunks: 6, bytes: 6 * CHUNK, inFiles: 0 })
    expect(engine.storeStatus().gc.total).toMatchObject({ chunks: 3, bytes: 3 * CHUNK })
  })

  it('deletes nothing when a service can\'t say what it keeps, and names it', async () => {
    const chunks = makeChunks(2, CHUNK)
    for (const c of chunks) await engine.store.put(c.id, c.sealed)
    engine.register({ name: 'files', liveChunks: async () => {} })
    engine.register({ name: 'backup', liveChunks: async () => { throw new Error('the snapshot index is unreadable') } })
    engine.afterStart()
    await expect(engine.collect()).rejects.toThrow(/^backup: .*snapshot index is unreadable/)
    expect((await held(engine)).size).toBe(2)
    expect(engine.storeStatus().gc.error?.message).toMatch(/^backup: /)
  })
})
