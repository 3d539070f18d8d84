import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import nacl from 'tweetnacl'
import { peerIdFromString } from '@libp2p/peer-id'
import { createTestnet, waitFor, startOnFreePort, TestNode, type Testnet } from '../helpers/testnet.ts'
import { ApiClient } from '../../src/services/api/client.ts'
import { KithError } from '../../src/errors.ts'
import { openDatabase, sublevel, type Database } from '../../src/peer/database.ts'
import { createIdentity, type Identity } from '../../src/peer/identity.ts'
import { createNode, type KithLibp2p } from '../../src/peer/node.ts'
import { encodeCanonical } from '../../src/peer/canonical.ts'
import { sign } from '../../src/peer/signing.ts'
import { createAddressRecord, parseAddressRecord, MAX_RECORD_BYTES } from '../../src/peer/address-record.ts'
import { FriendBook } from '../../src/trust/friends.ts'
import { connectionGater } from '../../src/trust/gate.ts'
import { parseInvite } from '../../src/trust/invite.ts'
import { redeem } from '../../src/trust/redeem.ts'
import { pushRecord, queryRecord } from '../../src/services/locate/locate-protocol.ts'
import { listShares } from '../../src/services/files/files-protocol.ts'
import type { LocateReport } from '../../src/services/locate/index.ts'
import { describeReport } from '../../src/services/cli/locate.ts'

/**
 * Finding friends who moved, with real daemons: A befriends B and C, B
 * befriends C; B and C both restart on new ports, each knowing only the
 * other's stale address, and find each other again through A, who stays
 * put. Whoever holds an old port now is refused. Then a friend (an
 * in-process node, so it can send anything) pushes forged, replayed,
 * far-future and oversize records over the wire.
 */
interface FriendJson {
  peerId: string
  label: string
  addrs: string[]
  link: { online: boolean, remoteAddr: string | null }
}

async function api (node: TestNode): Promise<ApiClient> {
  return await ApiClient.forHome(node.home) // re-read: the API port changes on restart
}

async function friendOf (node: TestNode, other: string): Promise<FriendJson> {
  return (await (await api(node)).get<{ friend: FriendJson }>(`/v1/friends/${other}`)).friend
}

async function online (node: TestNode, other: TestNode): Promise<boolean> {
  return (await friendOf(node, other.peerId)).link.online
}

async function befriend (issuer: TestNode, accepter: TestNode): Promise<void> {
  const { text } = await (await api(issuer)).call<{ text: string }>('POST', '/v1/invites', { label: accepter.name })
  await (await api(accepter)).call('POST', '/v1/invites/accept', { text })
}

function portOf (node: TestNode): number {
  return Number(/\/tcp\/(\d+)/.exec(node.info!.addrs[0]!)![1])
}

const listenOn = (port: number): string[] => ['--listen', `/ip4/127.0.0.1/tcp/${port}`]

describe('finding friends who moved', () => {
  let net: Testnet
  let a: TestNode, b: TestNode, c: TestNode
  let base: string
  let stranger: TestNode

  beforeAll(async () => {
    net = await createTestnet(['alice', 'bob', 'carol'])
    ;[a, b, c] = net.nodes as [TestNode, TestNode, TestNode]
    base = await mkdtemp(join(tmpdir(), 'kith-locate-'))
    stranger = new TestNode('mallory', join(base, 'mallory'))
  })

  afterAll(async () => {
    await stranger?.kill9()
    await net?.stop()
    if (base != null) await rm(base, { recursive: true, force: true })
  })

  it('A befriends B and C, B befriends C, and all three connect', async () => {
    await befriend(a, b)
    await befriend(a, c)
    await befriend(b, c)
    await waitFor(async () => await online(a, b) && await online(a, c) && await online(b, c) && await online(c, b), 'all links up', 10_000, 50)
  })

  it('B and C restart on new ports and find each other through A within 5 s; a stranger on C\'s old port is refused', async () => {
    const invitesBefore = await Promise.all([a, b, c].map(async n => (await (await api(n)).get<{ invites: unknown[] }>('/v1/invites')).invites.length))
    const oldB = portOf(b)
    const oldC = portOf(c)
    await Promise.all([b.stop(), c.stop()])
    // a stranger takes over C's old port before either comes back
    await stranger.start(listenOn(oldC))
    const spawned = Date.now()
    const [newB, newC] = await Promise.all([startOnFreePort(b, [oldB, oldC]), startOnFreePort(c, [oldB, oldC])])
    const up = Date.now()
    expect([portOf(b), portOf(c)]).toEqual([newB, newC])
    expect([newB, newC]).not.toContain(oldB)
    expect([newB, newC]).not.toContain(oldC)

    await waitFor(async () => await online(b, c) && await online(c, b), 'B and C reconnected', 5_000, 50)
    const done = Date.now()
    console.log(`B and C reconnected ${done - up} ms after both daemons were up (${done - spawned} ms after both were restarted)`)

    // B knows C at C's new port now, not at the stranger's (identify, which brings the listen addresses kept in the
    // friend book, completes a moment after the connection that makes a friend online)
    const knowsAt = async (node: TestNode, other: TestNode, port: number): Promise<boolean> => (await friendOf(node, other.peerId)).addrs.some(addr => addr.endsWith(`/tcp/${port}`))
    await waitFor(async () => await knowsAt(b, c, newC) && await knowsAt(c, b, newB), 'B and C know each other at their new ports', 5_000, 50)
    expect(await knowsAt(b, c, oldC)).toBe(false)
    // nobody counts the stranger as a friend, and no invite was made or used again
    for (const n of [a, b, c]) {
      const { friends } = await (await api(n)).get<{ friends: FriendJson[] }>('/v1/friends')
      expect(friends.map(f => f.peerId)).not.toContain(stranger.peerId)
    }
    const invitesAfter = await Promise.all([a, b, c].map(async n => (await (await api(n)).get<{ invites: unknown[] }>('/v1/invites')).invites.length))
    expect(invitesAfter).toEqual(invitesBefore)

    // it was A who told them: at least one of them holds the other's record as passed on by alice
    // (had they met some other way, each would hold the record the other pushed itself)
    const locateB = await (await api(b)).call<{ locate: LocateReport }>('POST', '/v1/friends/carol/locate')
    const locateC = await (await api(c)).call<{ locate: LocateReport }>('POST', `/v1/friends/${encodeURIComponent(b.peerId)}/locate`)
    expect(locateB.locate).toMatchObject({ ok: true, via: 'connected', peerId: c.peerId })
    expect(locateC.locate).toMatchObject({ ok: true, via: 'connected', peerId: b.peerId })
    expect([locateB.locate.record?.from, locateC.locate.record?.from]).toContain('alice')

    // `kith locate` on a connected friend says so
    const connected = await b.json<{ locate: LocateReport }>('locate', 'carol')
    expect(connected.locate).toMatchObject({ ok: true, via: 'connected', peerId: c.peerId })
  })

  it('kith locate shows each step, and refuses a stranger holding the last known address', async () => {
    // C goes away and the stranger takes C's current port: B's last known address now leads to the wrong peer
    const cPort = portOf(c)
    await c.stop()
    await waitFor(async () => !(await online(b, c)), 'B sees C offline', 5_000, 50)
    await stranger.stop()
    await stranger.start(listenOn(cPort))
    const failed = await b.cli('locate', 'carol', '--json')
    expect(failed.code).toBe(1)
    expect(JSON.parse(failed.stderr).error.code).toBe('LOCATE_FAILED')
    const report = (JSON.parse(failed.stdout) as { locate: LocateReport }).locate
    expect(report.ok).toBe(false)
    const known = report.steps.find(s => s.step === 'known')
    expect(known).toMatchObject({ ok: false, addrs: expect.arrayContaining([`/ip4/127.0.0.1/tcp/${cPort}`]) })
    expect(report.steps.find(s => s.step === 'ask')).toMatchObject({ label: 'alice', result: 'record' })
    expect(report.steps.find(s => s.step === 'verify')).toMatchObject({ from: 'alice', newer: false })
    expect(await online(b, c)).toBe(false)
    console.log(`kith locate with a stranger on C's last address:\n${describeReport(report)}`)

    // C comes back on yet another port; `kith locate` (text) walks the steps to it through A
    const newest = await startOnFreePort(c, [cPort])
    const up = Date.now()
    await waitFor(async () => await online(a, c), 'C back with A', 5_000, 50)
    const located = await b.cli('locate', 'carol')
    const ms = Date.now() - up
    // presence may have found C by itself already; either way B and C are connected and the output says how
    expect(located.code, located.stderr).toBe(0)
    expect(located.stdout).toMatch(/^locating carol/)
    expect(located.stdout).toMatch(/carol is connected/)
    await waitFor(async () => await online(b, c), 'B and C connected again', 5_000, 50)
    console.log(`C's third address reached by B ${ms} ms after C was up:\n${located.stdout}`)
    expect((await friendOf(b, c.peerId)).addrs.some(addr => addr.endsWith(`/tcp/${newest}`))).toBe(true)
  })

  describe('a friend pushing bad records over the wire', () => {
    let dir: string
    let db: Database
    let identity: Identity
    let node: KithLibp2p
    let book: FriendBook
    const other = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(9))

    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'kith-mallet-'))
      db = await openDatabase(join(dir, 'db'))
      identity = await createIdentity(join(dir, 'identity.key'))
      book = new FriendBook(sublevel(db, 'friends'))
      node = await createNode({ privateKey: identity.privateKey, listen: ['/ip4/127.0.0.1/tcp/0'], gater: connectionGater(book) })
      const { text } = await (await api(a)).call<{ text: string }>('POST', '/v1/invites', { label: 'mallet' })
      await redeem({ libp2p: node, friends: book, invite: parseInvite(text), displayName: 'mallet' })
    })

    afterAll(async () => {
      await node?.stop()
      await db?.close()
      if (dir != null) await rm(dir, { recursive: true, force: true })
    })

    const alice = (): ReturnType<typeof peerIdFromString> => peerIdFromString(a.peerId)
    const record = (seq: number, addrs: string[], time = Date.now()) =>
      createAddressRecord({ secretKey: identity.secretKey, publicKey: identity.publicKey, addrs, seq, time })
    const refusal = async (bytes: Uint8Array): Promise<string> => {
      try {
        await pushRecord(node, alice(), bytes)
        return 'accepted'
      } catch (err) {
        return (err as KithError).code
      }
    }

    it('keeps a genuine record, refuses forged, replayed, far-future and oversize ones, and they change nothing', async () => {
      const mine = node.getMultiaddrs()[0]!.decapsulateCode(421).toString()
      // identify has told A where I listen
      await waitFor(async () => (await friendOf(a, 'mallet')).addrs.includes(mine), 'A knows my address', 5_000, 50)
      const good = [mine, '/ip4/10.9.9.9/tcp/9']
      await pushRecord(node, alice(), record(100, good).bytes)
      await waitFor(async () => JSON.stringify((await friendOf(a, 'mallet')).addrs) === JSON.stringify(good), 'A took the record', 10_000, 20)

      const evil = ['/ip4/10.6.6.6/tcp/6']
      const forgedBody = encodeCanonical({ v: 1, pub: identity.publicKey, addrs: evil, seq: 200, t: Date.now() })
      const forged = encodeCanonical({ body: forgedBody, sig: sign('address-record/1', forgedBody, other.secretKey) })
      const someoneElse = createAddressRecord({ secretKey: other.secretKey, publicKey: other.publicKey, addrs: evil, seq: 300 }).bytes
      const padBody = encodeCanonical({ v: 1, pub: identity.publicKey, addrs: evil, seq: 400, t: Date.now(), pad: new Uint8Array(MAX_RECORD_BYTES) })
      const oversize = encodeCanonical({ body: padBody, sig: sign('address-record/1', padBody, identity.secretKey) })
      expect({
        forged: await refusal(forged),
        someoneElse: await refusal(someoneElse),
        replayed: await refusal(record(100, good).bytes),
        older: await refusal(record(50, evil).bytes),
        future: await refusal(record(500, evil, Date.now() + 3600_000).bytes),
        oversize: await refusal(oversize),
        huge: await refusal(new Uint8Array(64 * 1024)),
        garbage: await refusal(new Uint8Array([1, 2, 3]))
      }).toEqual({
        forged: 'RECORD_BAD_SIGNATURE',
        someoneElse: 'RECORD_WRONG_PEER',
        replayed: 'RECORD_STALE',
        older: 'RECORD_STALE',
        future: 'RECORD_FUTURE',
        oversize: 'RECORD_TOO_LARGE',
        huge: 'PROTOCOL_VIOLATION',
        garbage: 'RECORD_MALFORMED'
      })
      // nothing changed: A still has seq 100 and its addresses
      expect((await friendOf(a, 'mallet')).addrs).toEqual(good)
      // B, who may ask A, gets the genuine record (B is A's friend with locate, and I am A's friend)
      await pushRecord(node, alice(), record(101, good).bytes) // a newer one is still welcome
    })

    it('answers "where is X" only to friends with the locate grant, only about its friends, only with verified records', async () => {
      const aboutB = await queryRecord(node, alice(), b.peerId)
      expect(aboutB).not.toBeNull()
      expect(parseAddressRecord(aboutB!, { subject: b.peerId }).addrs.some(addr => addr.endsWith(`/tcp/${portOf(b)}`))).toBe(true)
      // about a stranger, or about myself: nothing, the same answer as for a friend without a record
      expect(await queryRecord(node, alice(), stranger.peerId)).toBeNull()
      expect(await queryRecord(node, alice(), node.peerId.toString())).toBeNull()
      // without the grant: refused, but pushing my own record still works
      await (await api(a)).call('DELETE', '/v1/friends/mallet/grants/locate')
      await expect(queryRecord(node, alice(), b.peerId)).rejects.toMatchObject({ code: 'LOCATE_NOT_GRANTED' })
      await pushRecord(node, alice(), record(102, [node.getMultiaddrs()[0]!.decapsulateCode(421).toString()]).bytes)
      // a stranger: the gate aborts the stream before the handler sees it
      const strangerNode = await createNode({ privateKey: (await createIdentity(join(dir, 'stranger.key'))).privateKey, listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
      try {
        await strangerNode.peerStore.merge(alice(), { multiaddrs: node.getConnections(alice()).map(c => c.remoteAddr.decapsulateCode(421)) })
        await expect(pushRecord(strangerNode, alice(), createAddressRecord({ secretKey: other.secretKey, publicKey: other.publicKey, addrs: [], seq: 1 }).bytes))
          .rejects.toMatchObject({ code: 'FRIEND_OFFLINE' })
        await expect(queryRecord(strangerNode, alice(), b.peerId)).rejects.toMatchObject({ code: 'FRIEND_OFFLINE' })
        // the same gate holds for the files protocol (it was not run before src/peer/node.ts fixed libp2p's middleware)
        await expect(listShares(strangerNode, alice())).rejects.toMatchObject({ code: 'FRIEND_OFFLINE' })
      } finally {
        await strangerNode.stop()
      }
      // revoked: the stream does not even open
      await (await api(a)).call('POST', '/v1/friends/mallet/revoke')
      await expect(pushRecord(node, alice(), record(103, ['/ip4/10.1.1.1/tcp/1']).bytes)).rejects.toBeInstanceOf(KithError)
    })
  })
})
