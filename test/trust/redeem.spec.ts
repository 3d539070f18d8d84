import { mkdtemp, rm } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import nacl from 'tweetnacl'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { openDatabase, sublevel, type Database } from '../../src/peer/database.ts'
import { FriendBook } from '../../src/trust/friends.ts'
import { InviteBook, type IssuedInvite } from '../../src/trust/invite-book.ts'
import { CLOCK_SKEW_S, inviteId, redeemProof } from '../../src/trust/invite.ts'
import { answerRedeem, type Accepter, type RedeemHandlerInit, type RedeemRequest } from '../../src/trust/redeem.ts'
import type { Service } from '../../src/trust/grants.ts'

/**
 * The issuer's side of redeem on a real LevelDB: the invite book and the
 * friend book a daemon uses, driven by requests carrying real proofs.
 */
function peerOf (seed: number): { peerId: string, publicKey: string } {
  const keys = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(seed))
  return {
    peerId: peerIdFromPublicKey(publicKeyFromRaw(keys.publicKey)).toString(),
    publicKey: Buffer.from(keys.publicKey).toString('base64')
  }
}

const issuer = peerOf(0xa1)
const bob = peerOf(0xb0)
const bobAt: Accepter = { ...bob, remoteAddr: '/ip4/192.0.2.7/tcp/4001' }
const HOUR = 3600 * 1000

describe('redeeming an invite again', () => {
  let dir: string
  let db: Database
  let friends: FriendBook
  let invites: InviteBook
  let init: RedeemHandlerInit
  const created = 1_750_000_000_000

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kith-redeem-'))
    db = await openDatabase(join(dir, 'db'))
    friends = new FriendBook(sublevel(db, 'friends'))
    await friends.load()
    invites = new InviteBook(sublevel(db, 'invites'))
    init = { friends, invites, self: issuer.peerId, displayName: () => 'alice' }
  })

  afterEach(async () => {
    await db.close()
    await rm(dir, { recursive: true, force: true })
  })

  async function issue (uses: number, grants: Service[] = ['files', 'locate', 'relay']): Promise<{ invite: IssuedInvite, secret: Buffer }> {
    const secret = randomBytes(32)
    const invite: IssuedInvite = {
      id: inviteId(secret),
      secret: secret.toString('base64'),
      label: 'bob',
      grants,
      notBefore: created,
      expires: created + HOUR,
      uses,
      redeemedBy: [],
      revoked: false,
      created
    }
    await invites.add(invite)
    return { invite, secret }
  }

  function request (invite: IssuedInvite, secret: Buffer, grants: Service[] = ['files']): RedeemRequest {
    return { v: 1, id: invite.id, proof: redeemProof(secret, issuer.peerId, bob.peerId), name: 'Bob', addrs: ['/ip4/192.0.2.7/tcp/4001'], grants }
  }

  /** Everything the two books hold, as stored on disk. */
  async function state (): Promise<unknown> {
    return {
      friends: await sublevel(db, 'friends').iterator().all(),
      invites: await sublevel(db, 'invites').iterator().all()
    }
  }

  it('a friend who redeems the same invite again gets no removed grant back, and no use is spent', async () => {
    const { invite, secret } = await issue(2)
    const first = await answerRedeem(init, request(invite, secret), bobAt, created + 1000)
    expect(first.grants).toEqual(['files', 'locate', 'relay'])
    await friends.ungrant('bob', 'relay')
    const before = await state()

    const again = await answerRedeem(init, request(invite, secret, ['files', 'backup']), bobAt, created + 2000)
    expect(again.grants).toEqual(['files', 'locate'])
    expect(friends.get(bob.peerId)).toMatchObject({ state: 'active', grantsToThem: ['files', 'locate'], grantsFromThem: ['files'] })
    expect((await invites.get(invite.id)).redeemedBy).toEqual([bob.peerId])
    expect(await state()).toEqual(before)
  })

  it('a friend who redeems another invite keeps the grants they have; the use is spent', async () => {
    const { invite, secret } = await issue(1)
    await answerRedeem(init, request(invite, secret), bobAt, created + 1000)
    await friends.ungrant('bob', 'files')
    const other = await issue(3, ['backup', 'files', 'locate', 'relay'])

    const answer = await answerRedeem(init, request(other.invite, other.secret, ['backup']), bobAt, created + 2000)
    expect(answer.grants).toEqual(['locate', 'relay'])
    expect(friends.get(bob.peerId)).toMatchObject({ grantsToThem: ['locate', 'relay'], grantsFromThem: ['files'] })
    expect((await invites.get(other.invite.id)).redeemedBy).toEqual([bob.peerId])
  })

  it('a replayed redeem after the window ends is refused and changes nothing', async () => {
    const { invite, secret } = await issue(1)
    await answerRedeem(init, request(invite, secret), bobAt, created + 1000)
    await friends.ungrant('bob', 'relay')
    const before = await state()

    const late = created + HOUR + CLOCK_SKEW_S * 1000 + 1
    await expect(answerRedeem(init, request(invite, secret), bobAt, late)).rejects.toMatchObject({ code: 'INVITE_EXPIRED' })
    expect(await state()).toEqual(before)
  })

  it('a revoked friend stays revoked whatever they redeem', async () => {
    const { invite, secret } = await issue(1)
    await answerRedeem(init, request(invite, secret), bobAt, created + 1000)
    await friends.revoke('bob')
    const fresh = await issue(5)
    const before = await state()

    for (const [i, s] of [[invite, secret], [fresh.invite, fresh.secret]] as const) {
      await expect(answerRedeem(init, request(i, s), bobAt, created + 2000)).rejects.toMatchObject({ code: 'FRIEND_REVOKED' })
    }
    expect(friends.get(bob.peerId)).toMatchObject({ state: 'revoked', grantsToThem: [] })
    expect(await state()).toEqual(before)
  })

  it('a first redeem makes a stranger a friend with the invite\'s grants and spends a use', async () => {
    const { invite, secret } = await issue(1)
    const answer = await answerRedeem(init, request(invite, secret), bobAt, created + 1000)
    expect(answer).toEqual({ name: 'alice', grants: ['files', 'locate', 'relay'] })
    expect(friends.get(bob.peerId)).toMatchObject({ label: 'bob', state: 'active', grantsToThem: ['files', 'locate', 'relay'], grantsFromThem: ['files'], addrs: ['/ip4/192.0.2.7/tcp/4001'] })
    expect((await invites.get(invite.id)).redeemedBy).toEqual([bob.peerId])
  })
})
