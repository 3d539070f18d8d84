import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { join } from 'node:path'
import { createTestnet, waitFor, type Testnet, type TestNode } from '../helpers/testnet.ts'

/**
 * Three real daemons, driven only through the CLI: A invites B and C, both
 * accept, A revokes C; every node survives a clean stop and a kill -9. (Links
 * coming up or going down are polled on the API, what `kith friends --json`
 * prints, and so are the friend lists compared across each restart.)
 */
interface FriendJson {
  peerId: string
  label: string
  state: string
  grantsToThem: string[]
  grantsFromThem: string[]
  link: { online: boolean }
}

async function friends (node: TestNode): Promise<FriendJson[]> {
  return (await node.json<{ friends: FriendJson[] }>('friends')).friends
}

async function friendOf (node: TestNode, peerId: string): Promise<FriendJson | undefined> {
  return (await friends(node)).find(f => f.peerId === peerId)
}

/**
 * The friend list as the API answers it, which `kith friends --json` prints:
 * for the restart tests, which compare it before and after each of six
 * restarts (the first test reads it through the CLI)
 */
async function friendsOnApi (node: TestNode): Promise<FriendJson[]> {
  return (await node.get<{ friends: FriendJson[] }>('/v1/friends')).friends
}

/** polled by the dozen in waitFor: read from the API, not through a CLI process each time */
async function online (node: TestNode, other: TestNode): Promise<boolean> {
  const { friends } = await node.get<{ friends: FriendJson[] }>('/v1/friends')
  return friends.find(f => f.peerId === other.peerId)?.link.online === true
}

describe('three friends through the CLI', () => {
  let net: Testnet
  let a: TestNode, b: TestNode, c: TestNode
  let inviteB: string, inviteC: string

  beforeAll(async () => {
    net = await createTestnet(['alice', 'bob', 'carol'])
    ;[a, b, c] = net.nodes as [TestNode, TestNode, TestNode]
    inviteB = join(a.home, 'bob.invite')
    inviteC = join(a.home, 'carol.invite')
  })

  afterAll(async () => {
    await net?.stop()
  })

  it('A invites B and C, both accept, and all list the right friends and grants', async () => {
    const made = await a.json('invite', 'create', '--name', 'bob', '--grant', 'files', 'backup', '-o', inviteB)
    expect(made.invite.grants).toEqual(['backup', 'files'])
    await a.json('invite', 'create', '--name', 'carol', '--expires', '1h', '-o', inviteC)

    const shown = await b.json('invite', 'show', inviteB)
    expect(shown.valid).toBe(true)
    expect(shown.invite.issuer).toBe(a.peerId)

    const acceptedB = await b.json('invite', 'accept', inviteB)
    expect(acceptedB.friend).toMatchObject({ peerId: a.peerId, label: 'alice', grantsFromThem: ['backup', 'files'], grantsToThem: ['backup', 'files'] })
    const acceptedC = await c.json('invite', 'accept', inviteC, '--name', 'al', '--grant', 'files')
    expect(acceptedC.friend).toMatchObject({ peerId: a.peerId, label: 'al', grantsFromThem: ['files', 'locate', 'relay'], grantsToThem: ['files'] })

    const ofA = await friends(a)
    expect(ofA.map(f => [f.label, f.peerId, f.state, f.grantsToThem, f.grantsFromThem])).toEqual([
      ['bob', b.peerId, 'active', ['backup', 'files'], ['backup', 'files']],
      ['carol', c.peerId, 'active', ['files', 'locate', 'relay'], ['files']]
    ])
    expect((await friends(b)).map(f => f.peerId)).toEqual([a.peerId])
    expect((await friends(c)).map(f => f.peerId)).toEqual([a.peerId])

    await waitFor(async () => await online(a, b) && await online(a, c) && await online(b, a) && await online(c, a), 'all links up')
    const listed = await a.json('invite', 'list')
    expect(listed.invites.map((i: { label: string, status: string }) => [i.label, i.status]).sort()).toEqual([['bob', 'used'], ['carol', 'used']])
  })

  it('a second acceptance of a single-use invite fails cleanly and changes nothing', async () => {
    const before = await friends(a)
    const again = await c.cli('invite', 'accept', inviteB)
    expect(again.code).toBe(1)
    expect(again.stderr).toContain('INVITE_USED')
    expect(await friends(a)).toEqual(expect.arrayContaining(before.map(f => expect.objectContaining({ peerId: f.peerId, state: f.state, label: f.label }))))
    expect((await friends(a)).length).toBe(2)
    expect((await friends(c)).map(f => f.label)).toEqual(['al'])
  })

  it('a friend who accepts the same invite again gets no removed grant back, and spends no use', async () => {
    await a.json('friend', 'ungrant', 'bob', 'backup')
    const again = await b.json('invite', 'accept', inviteB)
    expect(again.friend).toMatchObject({ peerId: a.peerId, grantsFromThem: ['files'] })
    expect(await friendOf(a, b.peerId)).toMatchObject({ state: 'active', grantsToThem: ['files'] })
    const listed = await a.json('invite', 'list')
    expect(listed.invites.find((i: { label: string }) => i.label === 'bob')).toMatchObject({ used: 1, uses: 1 })
  })

  it('a name with terminal escapes in it comes back from the daemon printed escaped', async () => {
    const named = await a.cli('friend', 'rename', 'mal\u001b[2Jlory\u202egnp.exe\u009b', 'x')
    expect(named.code).toBe(1)
    expect(named.stderr).toContain('FRIEND_UNKNOWN')
    expect(named.stderr).toContain('mal\\u001b[2Jlory\\u202egnp.exe\\x9b')
    expect(named.stderr).not.toMatch(/[\u001b\u202e\u009b]/)
  })

  it('a revoked friend is cut off within 5 s and refused afterwards', async () => {
    const revoked = await a.json('friend', 'revoke', 'carol')
    expect(revoked.friend.state).toBe('revoked')
    await waitFor(async () => !(await online(c, a)) && !(await online(a, c)), 'carol cut off', 5_000, 50)

    // carol can't reach alice any more, not even to redeem a fresh invite
    const fresh = join(a.home, 'carol2.invite')
    await a.json('invite', 'create', '-o', fresh)
    const retry = await c.cli('invite', 'accept', fresh)
    expect(retry.code).toBe(1)
    expect(retry.stderr).toContain('INVITE_ISSUER_UNREACHABLE')
    // the refusal says what happened in words, not `undefined`, and names the likely cause
    expect(retry.stderr).not.toContain('undefined')
    expect(retry.stderr).toContain('a node that ended its friendship with you refuses your connections')
    expect((await friendOf(a, c.peerId))?.state).toBe('revoked')
  })

  it('every node restarts after a clean stop with identity and friends intact, and reconnects', async () => {
    for (const node of [a, b, c]) {
      const before = { peerId: node.peerId, friends: (await friendsOnApi(node)).map(f => [f.peerId, f.label, f.state, f.grantsToThem]) }
      expect(await node.stop()).toBe(0)
      const info = await node.start()
      expect(info.peerId).toBe(before.peerId)
      expect((await friendsOnApi(node)).map(f => [f.peerId, f.label, f.state, f.grantsToThem])).toEqual(before.friends)
    }
    await waitFor(async () => await online(a, b) && await online(b, a), 'alice and bob reconnected')
  })

  it('every node restarts after kill -9 with identity and friends intact, and reconnects', async () => {
    for (const node of [b, a, c]) {
      const before = { peerId: node.peerId, friends: (await friendsOnApi(node)).map(f => [f.peerId, f.label, f.state, f.grantsToThem]) }
      await node.kill9()
      const info = await node.start()
      expect(info.peerId).toBe(before.peerId)
      expect((await friendsOnApi(node)).map(f => [f.peerId, f.label, f.state, f.grantsToThem])).toEqual(before.friends)
      await waitFor(async () => await online(a, b) && await online(b, a), `alice and bob reconnected after ${node.name} was killed`)
    }
    // revocation holds across restarts: alice refuses carol. carol, restarted, may still dial her, and
    // sees the link up for the moment alice takes to drop it, so carol's view is waited on, alice's is not
    expect((await friendOf(a, c.peerId))?.state).toBe('revoked')
    expect(await online(a, c)).toBe(false)
    await waitFor(async () => !await online(c, a), 'carol sees alice offline: alice refuses her connections')
  })
})
