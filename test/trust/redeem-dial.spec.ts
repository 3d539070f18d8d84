import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { createServer, type Server } from 'node:net'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import nacl from 'tweetnacl'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { createNode, type KithLibp2p } from '../../src/peer/node.ts'
import { openDatabase, sublevel, type Database } from '../../src/peer/database.ts'
import { MAX_INVITE_DIALS } from '../../src/peer/dial-policy.ts'
import { FriendBook } from '../../src/trust/friends.ts'
import { createInvite, parseInvite, MAX_INVITE_ADDRS } from '../../src/trust/invite.ts'
import { redeem } from '../../src/trust/redeem.ts'

/**
 * The accepter's dialling (src/trust/redeem.ts): an invite is a stranger's
 * word, so its addresses go through the dial policy and at most
 * MAX_INVITE_DIALS of them are dialled. Sixteen real TCP listeners count the
 * connections a redeem makes to them (each hangs up at once, so the dial
 * moves on to the next address).
 */
describe('redeeming an invite dials few addresses, and only allowed ones', () => {
  let base: string
  let db: Database
  let friends: FriendBook
  let node: KithLibp2p
  const servers: Server[] = []
  const hits: number[] = []
  const addrs: string[] = []

  beforeAll(async () => {
    base = await mkdtemp(join(tmpdir(), 'kith-redeem-dial-'))
    db = await openDatabase(join(base, 'db'))
    friends = new FriendBook(sublevel(db, 'friends'))
    await friends.load()
    node = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
    for (let i = 0; i < MAX_INVITE_ADDRS; i++) {
      hits.push(0)
      const server = createServer(socket => { hits[i]!++; socket.destroy() })
      await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
      servers.push(server)
      addrs.push(`/ip4/127.0.0.1/tcp/${(server.address() as { port: number }).port}`)
    }
  })

  afterAll(async () => {
    await node?.stop()
    await Promise.all(servers.map(async s => await new Promise(resolve => s.close(resolve))))
    await db?.close()
    await rm(base, { recursive: true, force: true })
  })

  function inviteFor (listed: string[]): ReturnType<typeof parseInvite> {
    const keys = nacl.sign.keyPair()
    const now = Date.now()
    return parseInvite(createInvite({ secretKey: keys.secretKey, publicKey: keys.publicKey, name: 'mallory', addrs: listed, notBefore: now, expires: now + 3_600_000, uses: 1, grants: ['files'] }).text)
  }

  it(`dials at most ${MAX_INVITE_DIALS} of an invite's ${MAX_INVITE_ADDRS} addresses, after dropping refused ones and duplicates`, async () => {
    hits.fill(0)
    const listed = ['/dns4/localhost/tcp/1', '/ip4/224.0.0.1/tcp/1', addrs[0]!, addrs[0]!, ...addrs.slice(1, MAX_INVITE_ADDRS - 3)]
    expect(listed.length).toBe(MAX_INVITE_ADDRS)
    await expect(redeem({ libp2p: node, friends, invite: inviteFor(listed), displayName: 'bob', dialPolicy: { loopback: true } }))
      .rejects.toMatchObject({ code: 'INVITE_ISSUER_UNREACHABLE' })
    const dialled = hits.reduce((sum, n) => sum + n, 0)
    expect(dialled).toBeGreaterThan(0)
    expect(dialled).toBeLessThanOrEqual(MAX_INVITE_DIALS)
    // only the first allowed ones, each once
    expect(hits.slice(MAX_INVITE_DIALS).every(n => n === 0)).toBe(true)
    expect(hits.every(n => n <= 1)).toBe(true)
    expect(friends.list()).toEqual([])
  })

  it('dials nothing when the policy allows none of them, and says why', async () => {
    hits.fill(0)
    const err = await redeem({ libp2p: node, friends, invite: inviteFor(['/dns4/localhost/tcp/1', ...addrs.slice(0, 3)]), displayName: 'bob', dialPolicy: { loopback: false } }).catch(e => e)
    expect(err).toMatchObject({ code: 'INVITE_ISSUER_UNREACHABLE', message: expect.stringMatching(/may be dialled.*dns4.*loopback/s) })
    expect(hits.every(n => n === 0)).toBe(true)
  })
})
