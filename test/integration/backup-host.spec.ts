import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'
import { KithError } from '../../src/errors.ts'
import nacl from 'tweetnacl'
import { privateKeyFromRaw } from '@libp2p/crypto/keys'
import { openDatabase, sublevel, type Database } from '../../src/peer/database.ts'
import { createNode, type KithLibp2p } from '../../src/peer/node.ts'
import { FriendBook } from '../../src/trust/friends.ts'
import { parseInvite } from '../../src/trust/invite.ts'
import { redeem } from '../../src/trust/redeem.ts'
import { ApiClient } from '../../src/services/api/client.ts'
import { backupClient, type BackupClient } from '../../src/services/backup/protocol.ts'
import { BandwidthScheduler } from '../../src/transfer/scheduler/index.ts'
import { chunkId } from '../../src/transfer/seal.ts'
import { BLOB_FORMAT } from '../../src/services/backup/blob.ts'
import { createTestnet, waitFor, type TestNode, type Testnet } from '../helpers/testnet.ts'

/**
 * A real host daemon, killed with -9 while an owner writes to it: after the
 * restart the quota accounting is exact (used == the sum of what it holds),
 * and writes stop at the quota. The owner is a node in this process that
 * redeemed the host's invite (the owner's own backup service is another
 * part's test), so the test decides exactly when the bytes move; one daemon
 * keeps the test short.
 */
const BLOB = 256 * 1024
const QUOTA = 3_000_000 // 11 blobs fit, the 12th does not

const codeOf = (err: unknown): string => err instanceof KithError ? err.code : 'other'

/** bytes in the form of a sealed backup blob: its format byte, then what looks like ciphertext (a host takes nothing else) */
function sealedBlob (size: number): Buffer {
  const sealed = randomBytes(size)
  sealed[0] = BLOB_FORMAT
  return sealed
}

describe('backup host under kill -9', () => {
  let net: Testnet
  let host: TestNode
  let ownerNode: KithLibp2p
  let ownerDb: Database
  let client: BackupClient
  const bandwidth = new BandwidthScheduler()

  const hostedOwner = async (): Promise<{ used: number, blobs: number, quota: number }> => {
    const api = await ApiClient.forHome(host.home)
    const { hosted } = await api.get<{ hosted: Array<{ peerId: string, used: number, blobs: number, quota: number }> }>('/v1/backup/hosted')
    return hosted.find(h => h.peerId === ownerNode.peerId.toString())!
  }

  const learnHost = async (): Promise<void> => {
    await ownerNode.peerStore.merge(peerIdFromString(host.peerId), { multiaddrs: host.info!.addrs.map(a => multiaddr(a)) })
  }

  beforeAll(async () => {
    net = await createTestnet(['host'])
    host = net.nodes[0]!
    const { secretKey } = nacl.sign.keyPair()
    ownerNode = await createNode({ privateKey: privateKeyFromRaw(secretKey), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
    await ownerNode.start()
    ownerDb = await openDatabase(join(host.home, '..', 'owner-db'))
    const friends = new FriendBook(sublevel(ownerDb, 'friends'))
    await friends.load()
    const { text } = await (await ApiClient.forHome(host.home)).call<{ text: string }>('POST', '/v1/invites', { label: 'owner' })
    await redeem({ libp2p: ownerNode, friends, invite: parseInvite(text), displayName: 'owner' })
    const grant = await host.cli('friend', 'grant', 'owner', 'backup', '--quota', '3MB')
    expect(grant.code, grant.stderr).toBe(0)
    await learnHost()
    client = backupClient({ libp2p: ownerNode, bandwidth, peer: host.peerId, identity: { secretKey } })
  })

  afterAll(async () => {
    await ownerNode?.stop()
    await ownerDb?.close()
    bandwidth.close()
    await net?.stop()
  })

  it('keeps used equal to what it holds across a kill -9 mid-write, and stops at the quota', async () => {
    expect(await hostedOwner()).toMatchObject({ used: 0, quota: QUOTA })
    // writers keep putting until the host dies under them
    let stored = 0
    let dead = false
    const writer = async (): Promise<void> => {
      while (!dead) {
        const sealed = sealedBlob(BLOB)
        try {
          await client.put(chunkId(sealed), sealed)
          stored++
        } catch (err) {
          if (codeOf(err) === 'QUOTA_EXCEEDED') return
          if (dead) return
          throw err
        }
      }
    }
    const writers = [writer(), writer(), writer()]
    await waitFor(() => stored >= 3, 'three blobs stored')
    dead = true
    await host.kill9()
    await Promise.allSettled(writers)

    await host.start()
    await learnHost()
    const after = await hostedOwner()
    const listed = (await client.list()).ids
    expect(listed.reduce((n, b) => n + b.size, 0)).toBe(after.used)
    expect(after.blobs).toBe(listed.length)
    expect(listed.length).toBeGreaterThanOrEqual(3)
    expect((await client.usage()).used).toBe(after.used)
    for (const { id } of listed) expect(chunkId(await client.get(id))).toBe(id)

    // fill up: writes stop at the quota, exactly
    let refused = 0
    for (let i = 0; i < 12 && refused === 0; i++) {
      const sealed = sealedBlob(BLOB)
      await client.put(chunkId(sealed), sealed).catch(err => { expect(codeOf(err)).toBe('QUOTA_EXCEEDED'); refused++ })
    }
    expect(refused).toBe(1)
    const full = await hostedOwner()
    expect(full.used).toBe(Math.floor(QUOTA / BLOB) * BLOB)
    expect(full.used).toBeLessThanOrEqual(QUOTA)

    // quota 0: nothing new, and the CLI says so
    const zero = await host.cli('friend', 'quota', 'owner', '0')
    expect(zero.stdout).toMatch(/no new writes/)
    const late = sealedBlob(100)
    expect(codeOf(await client.put(chunkId(late), late).catch(e => e))).toBe('QUOTA_EXCEEDED')
    const api = await ApiClient.forHome(host.home)
    const bad: unknown = await api.call('PUT', '/v1/friends/owner/quota', { quota: 'lots' }).catch((e: unknown) => e)
    expect(codeOf(bad)).toBe('BAD_REQUEST')
    expect((bad as Error).message).toMatch(/20GB/)
    const { hosted } = await host.json<{ hosted: Array<{ name: string, used: number, quota: number }> }>('backup', 'hosted')
    expect(hosted).toEqual([expect.objectContaining({ name: 'owner', used: full.used, quota: 0 })])
  })
})
