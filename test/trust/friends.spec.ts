import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { openDatabase, sublevel, type Database } from '../../src/peer/database.ts'
import { FriendBook, type Friend } from '../../src/trust/friends.ts'

/**
 * The friend book on a real LevelDB: changes that come at the same moment
 * (a grant from the API while presence records that the friend connected)
 * must all be kept, in memory and on disk. Found by the soak run: a backup
 * grant made as friends connected was gone after the next restart.
 */
const BOB = '12D3KooWBobBobBobBobBobBobBobBobBobBobBobBobBobBobBob1'
const ADDR = '/ip4/192.0.2.7/tcp/4001'

describe('friend book', () => {
  let dir: string
  let db: Database
  let friends: FriendBook

  async function reopen (): Promise<FriendBook> {
    await db.close()
    db = await openDatabase(join(dir, 'db'))
    const book = new FriendBook(sublevel(db, 'friends'))
    await book.load()
    return book
  }

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kith-friends-'))
    db = await openDatabase(join(dir, 'db'))
    friends = new FriendBook(sublevel(db, 'friends'))
    await friends.load()
    await friends.befriend({ peerId: BOB, publicKey: 'AAAA', label: 'bob', grantsToThem: ['files', 'locate', 'relay'], grantsFromThem: ['files'], addrs: [ADDR], via: '0123456789abcdef' })
  })

  afterEach(async () => {
    await db.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('keeps a grant made while the friend is seen connecting', async () => {
    await Promise.all([friends.grant('bob', 'backup'), friends.seen(BOB, ['/ip4/192.0.2.8/tcp/4001'])])
    const check = (f: Friend | undefined): void => {
      expect(f?.grantsToThem).toEqual(['backup', 'files', 'locate', 'relay'])
      expect(f?.addrs).toEqual(['/ip4/192.0.2.8/tcp/4001'])
      expect(f?.lastSeen).not.toBeNull()
    }
    check(friends.get(BOB))
    check((await reopen()).get(BOB))
  })

  it('keeps a revocation made while the friend is seen and located', async () => {
    await Promise.all([friends.revoke('bob'), friends.seen(BOB), friends.moved(BOB, ['/ip4/192.0.2.9/tcp/4001'])])
    expect(friends.get(BOB)?.state).toBe('revoked')
    expect(friends.get(BOB)?.grantsToThem).toEqual([])
    const again = await reopen()
    expect(again.get(BOB)?.state).toBe('revoked')
    expect(again.isRevoked(BOB)).toBe(true)
  })

  it('applies changes in the order they were asked for', async () => {
    await Promise.all([friends.ungrant('bob', 'locate'), friends.seen(BOB), friends.grant('bob', 'backup'), friends.rename('bob', 'robert'), friends.seen(BOB, [ADDR])])
    const expected = { label: 'robert', grantsToThem: ['backup', 'files', 'relay'], state: 'active' }
    expect(friends.get(BOB)).toMatchObject(expected)
    expect((await reopen()).get(BOB)).toMatchObject(expected)
  })

  it('still refuses what is wrong, and changes nothing then', async () => {
    await expect(friends.grant('bob', 'teleport')).rejects.toMatchObject({ code: 'BAD_REQUEST' })
    await expect(friends.grant('nobody', 'files')).rejects.toMatchObject({ code: 'FRIEND_UNKNOWN' })
    await friends.revoke('bob')
    await expect(friends.grant('bob', 'files')).rejects.toMatchObject({ code: 'FRIEND_REVOKED' })
    expect((await reopen()).get(BOB)).toMatchObject({ state: 'revoked', grantsToThem: [] })
  })
})
