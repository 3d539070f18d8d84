import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import type { PrivateKey } from '@libp2p/interface'
import { decode } from 'cborg'
import { openDatabase, sublevel, type Database } from '../../src/peer/database.ts'
import { createNode, type KithLibp2p } from '../../src/peer/node.ts'
import { encodeCanonical } from '../../src/peer/canonical.ts'
import { connectionGater } from '../../src/trust/gate.ts'
import { FriendBook } from '../../src/trust/friends.ts'
import { GrantSync, GRANTS_PROTOCOL } from '../../src/trust/grant-sync.ts'
import { waitFor } from '../helpers/testnet.ts'

/**
 * Two in-process nodes with real LevelDB friend books tell each other what
 * they grant: a grant given or taken back after the invite reaches the
 * friend, at once when connected, at the next connection when not; a
 * stranger and a malformed message change nothing.
 */
interface Side {
  key: PrivateKey
  peerId: string
  db: Database
  friends: FriendBook
  node: KithLibp2p
  sync: GrantSync
}

describe('friends tell each other what they grant', () => {
  let dir: string
  let alice: Side, bob: Side

  async function side (name: string, key: PrivateKey): Promise<Side> {
    const db = await openDatabase(join(dir, name))
    const friends = new FriendBook(sublevel(db, 'friends'))
    await friends.load()
    const node = await createNode({ privateKey: key, listen: ['/ip4/127.0.0.1/tcp/0'], gater: connectionGater(friends) })
    await node.start()
    const sync = new GrantSync({ libp2p: node, friends })
    await sync.start()
    return { key, peerId: peerIdFromPrivateKey(key).toString(), db, friends, node, sync }
  }

  async function stopSide (s: Side): Promise<void> {
    await s.sync.stop()
    await s.node.stop()
  }

  const friendOf = (s: Side, label: string, grantsToThem: Array<'files' | 'backup' | 'relay' | 'locate'>) => ({
    peerId: s.peerId,
    publicKey: Buffer.from(s.key.publicKey.raw).toString('base64'),
    label,
    grantsToThem,
    grantsFromThem: ['files' as const],
    addrs: [],
    via: 'test'
  })

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kith-grant-sync-'))
    alice = await side('alice', await generateKeyPair('Ed25519'))
    bob = await side('bob', await generateKeyPair('Ed25519'))
    // as after an invite granting files both ways
    await alice.friends.befriend(friendOf(bob, 'bob', ['files']))
    await bob.friends.befriend(friendOf(alice, 'alice', ['files']))
    await alice.node.dial(bob.node.getMultiaddrs()[0]!)
  })

  afterAll(async () => {
    for (const s of [alice, bob]) if (s != null) { await stopSide(s); await s.db.close() }
    await rm(dir, { recursive: true, force: true })
  })

  it('a grant given later reaches the friend, and one taken back is gone', async () => {
    await alice.friends.grant('bob', 'backup')
    await waitFor(async () => bob.friends.get(alice.peerId)?.grantsFromThem.includes('backup'), 'bob to learn of the backup grant')
    expect(bob.friends.get(alice.peerId)?.grantsFromThem).toEqual(['backup', 'files'])
    await alice.friends.ungrant('bob', 'files')
    await waitFor(async () => bob.friends.get(alice.peerId)?.grantsFromThem.join() === 'backup', 'bob to learn files was taken back')
    // and bob's answer told alice what he grants her
    expect(alice.friends.get(bob.peerId)?.grantsFromThem).toEqual(['files'])
  })

  it('a grant made while the friend is away reaches them at the next connection, also after a restart', async () => {
    await stopSide(bob)
    await alice.friends.grant('bob', 'relay')
    await bob.db.close()
    bob = await side('bob', bob.key)
    expect(bob.friends.get(alice.peerId)?.grantsFromThem).toEqual(['backup'])
    await bob.node.dial(alice.node.getMultiaddrs()[0]!)
    await waitFor(async () => bob.friends.get(alice.peerId)?.grantsFromThem.join() === 'backup,relay', 'bob to learn of the relay grant on connecting')
  })

  it('refuses a stranger, and a friend\'s malformed message, changing nothing', async () => {
    const before = alice.friends.get(bob.peerId)?.grantsFromThem
    const stranger = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
    await stranger.start()
    try {
      const stream = await stranger.dialProtocol(alice.node.getMultiaddrs()[0]!, GRANTS_PROTOCOL)
      const lp = lpStream(stream)
      await expect((async () => {
        await lp.write(encodeCanonical({ v: 1, grants: ['backup'] }))
        await lp.read({ signal: AbortSignal.timeout(5000) })
      })()).rejects.toThrow()
    } finally {
      await stranger.stop()
    }
    const ask = async (message: unknown): Promise<any> => {
      const stream = await bob.node.dialProtocol(alice.node.getMultiaddrs()[0]!, GRANTS_PROTOCOL)
      const lp = lpStream(stream)
      await lp.write(encodeCanonical(message))
      const answer = decode((await lp.read({ signal: AbortSignal.timeout(5000) })).subarray())
      await stream.close()
      return answer
    }
    expect(await ask({ v: 1, grants: ['root'] })).toMatchObject({ ok: false, code: 'PROTOCOL_VIOLATION' })
    expect(await ask({ v: 1, grants: ['files'], extra: 1 })).toMatchObject({ ok: false, code: 'PROTOCOL_VIOLATION' })
    expect(await ask({ v: 2, grants: [] })).toMatchObject({ ok: false, code: 'PROTOCOL_VIOLATION' })
    expect(alice.friends.get(bob.peerId)?.grantsFromThem).toEqual(before)
  })
})
