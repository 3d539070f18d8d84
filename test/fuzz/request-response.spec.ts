import fc from 'fast-check'
import { describe, expect, it, beforeAll, afterAll } from 'vitest'
import { randomBytes } from 'node:crypto'
import { lpStream } from '@libp2p/utils'
import type { Stream } from '@libp2p/interface'
import { isErrorCode } from '../../src/errors.ts'
import { decodeCanonical, encodeCanonical } from '../../src/peer/canonical.ts'
import { bytesSublevel, openDatabase, sublevel, type Database } from '../../src/peer/database.ts'
import { isSafeText } from '../../src/peer/text.ts'
import type { KithLibp2p } from '../../src/peer/node.ts'
import { ADDRESS_RECORD_VERSION, MAX_RECORD_BYTES } from '../../src/peer/address-record.ts'
import { FriendBook } from '../../src/trust/friends.ts'
import { InviteBook } from '../../src/trust/invite-book.ts'
import { MAX_REDEEM_MESSAGE, REDEEM_PROTOCOL, redeem, redeemHandler, redeemResponseSchema } from '../../src/trust/redeem.ts'
import type { Invite } from '../../src/trust/invite.ts'
import { ShareBook } from '../../src/services/files/share-book.ts'
import { FILES_PROTOCOL, MAX_FILES_REQUEST, fetchManifest, filesHandler, listResponse, listShares } from '../../src/services/files/files-protocol.ts'
import { LOCATE_PROTOCOL, MAX_LOCATE_MESSAGE } from '../../src/services/locate/constants.ts'
import { locateHandler, pushRecord, queryRecord } from '../../src/services/locate/locate-protocol.ts'
import { MAX_REACH_MESSAGE, MAX_REACH_PORTS, REACH_PROTOCOL, askDialBack, reachHandler, responseSchema as reachResponse } from '../../src/services/reachability.ts'
import { RecordStore } from '../../src/services/locate/record-store.ts'
import { learn, startNode, tempDir } from '../helpers/chunks.ts'
import { anyText, cborBytes, grants, humanText, keys, mutateField, peerId, signFast } from './arbitraries.ts'
import { checkRejection, flipBit, fuzzAsync } from './budget.ts'

/**
 * Every one-request, one-answer protocol (src/peer/request-response.ts
 * `serveOnce`: redeem, files, locate, reach), from both ends, over real libp2p
 * streams: the answering side fed any request, and the asking side fed any
 * answer by a hostile peer.
 */
interface Protocol {
  id: string
  max: number
  /** valid requests, as a friend or a stranger would send them */
  valid: fc.Arbitrary<Record<string, unknown>>
}

const hex = (bytes: number): fc.Arbitrary<string> => fc.uint8Array({ minLength: bytes, maxLength: bytes }).map(b => Buffer.from(b).toString('hex'))

/** A signed address record of a random peer (not the pusher's own). */
const record = keys.map(k => {
  const body = encodeCanonical({ v: ADDRESS_RECORD_VERSION, pub: k.publicKey, addrs: ['/ip4/127.0.0.1/tcp/1'], seq: 1, t: 0 })
  return encodeCanonical({ body, sig: signFast('address-record/1', body, k) })
})

const PROTOCOLS: Protocol[] = [
  {
    id: REDEEM_PROTOCOL,
    max: MAX_REDEEM_MESSAGE,
    valid: fc.record({ v: fc.constant(1), id: hex(8), proof: fc.uint8Array({ minLength: 32, maxLength: 32 }), name: humanText(20).filter(isSafeText), addrs: fc.constant([]), grants })
  },
  {
    id: FILES_PROTOCOL,
    max: MAX_FILES_REQUEST,
    valid: fc.oneof(fc.constant({ v: 1, op: 'list' }), hex(32).map(share => ({ v: 1, op: 'manifest', share })))
  },
  {
    id: LOCATE_PROTOCOL,
    max: MAX_LOCATE_MESSAGE,
    valid: fc.oneof(peerId.map(peer => ({ v: 1, op: 'query', peer })), record.map(r => ({ v: 1, op: 'push', record: r })))
  },
  {
    // a valid one makes the server dial the asker back at 127.0.0.1 (at most once every few seconds)
    id: REACH_PROTOCOL,
    max: MAX_REACH_MESSAGE,
    valid: fc.array(fc.integer({ min: 1, max: 65535 }), { minLength: 1, maxLength: MAX_REACH_PORTS }).map(ports => ({ v: 1, ports }))
  }
]

/** Bytes for one message: valid, damaged, flipped, cut, or noise. */
function messages (valid: fc.Arbitrary<Record<string, unknown>>): fc.Arbitrary<Uint8Array> {
  const encoded = valid.map(encodeCanonical)
  return fc.oneof(
    encoded,
    valid.chain(mutateField).map(encodeCanonical),
    encoded.chain(b => fc.nat(b.length * 8 - 1).map(bit => flipBit(b, bit))),
    encoded.chain(b => fc.nat(b.length - 1).map(n => b.subarray(0, n))),
    cborBytes,
    fc.uint8Array({ maxLength: 200 })
  )
}

/** How a message goes on the stream: length-prefixed as the protocols expect, or raw (a wrong or oversize prefix). */
interface Sent { framed: boolean, bytes: Uint8Array }

function sent (valid: fc.Arbitrary<Record<string, unknown>>, max: number): fc.Arbitrary<Sent> {
  return fc.oneof(
    { weight: 6, arbitrary: messages(valid).map(bytes => ({ framed: true, bytes })) },
    // a length prefix announcing more than the limit, then some of it
    { weight: 1, arbitrary: fc.tuple(fc.integer({ min: max + 1, max: 2 ** 31 }), fc.uint8Array({ maxLength: 64 })).map(([n, rest]) => ({ framed: false, bytes: Buffer.concat([encodeVarint(n), rest]) })) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 16 }).map(bytes => ({ framed: false, bytes })) }
  )
}

function encodeVarint (n: number): Uint8Array {
  const out: number[] = []
  while (n >= 0x80) {
    out.push((n & 0x7f) | 0x80)
    n = Math.floor(n / 128)
  }
  out.push(n)
  return Uint8Array.from(out)
}

async function send (stream: Stream, message: Sent, max: number): Promise<ReturnType<typeof lpStream>> {
  const lp = lpStream(stream, { maxDataLength: Math.max(max, MAX_RECORD_BYTES) * 4 })
  if (message.framed) await lp.write(message.bytes)
  else stream.send(message.bytes)
  await stream.close().catch(() => {})
  return lp
}

describe('request/response protocols, fuzzed over libp2p', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let db: Database
  let friends: FriendBook
  let invites: InviteBook
  let server: KithLibp2p
  let hostile: KithLibp2p
  let client: KithLibp2p
  let clientFriends: FriendBook
  /** what the hostile peer answers next, on every protocol */
  let answer: Sent = { framed: true, bytes: new Uint8Array() }

  beforeAll(async () => {
    tmp = await tempDir('kith-fuzz-rr-')
    db = await openDatabase(`${tmp.dir}/db`)
    friends = new FriendBook(sublevel(db, 'friends'))
    await friends.load()
    invites = new InviteBook(sublevel(db, 'invites'))
    const shares = new ShareBook(sublevel(db, 'shares'), sublevel(db, 'received'), bytesSublevel(db, 'share-manifests'), bytesSublevel(db, 'received-bytes'))
    const records = new RecordStore(sublevel(db, 'records'))
    server = await startNode()
    await server.handle(REDEEM_PROTOCOL, redeemHandler({ friends, invites, self: server.peerId.toString(), displayName: () => 'server' }))
    await server.handle(FILES_PROTOCOL, filesHandler({ shares, friends, secretKey: randomBytes(64) }))
    await server.handle(LOCATE_PROTOCOL, locateHandler({
      onPush: async (r, from) => { await records.offer(r, from) },
      onQuery: async (_asker, subject) => (await records.get(subject))?.bytes ?? null
    }))
    await server.handle(REACH_PROTOCOL, reachHandler(server))
    hostile = await startNode()
    for (const p of PROTOCOLS) {
      await hostile.handle(p.id, async (stream: Stream) => {
        // answers without reading the request, as a hostile peer may
        await send(stream, answer, p.max)
      }, { runOnLimitedConnection: true })
    }
    client = await startNode()
    clientFriends = new FriendBook(sublevel(db, 'client-friends'))
    await clientFriends.load()
    await learn(client, server.peerId, server.getMultiaddrs())
    await learn(client, hostile.peerId, hostile.getMultiaddrs())
  })

  afterAll(async () => {
    await client?.stop()
    await hostile?.stop()
    await server?.stop()
    await db?.close()
    await tmp?.cleanup()
  })

  for (const protocol of PROTOCOLS) {
    it(`${protocol.id}: any request gets a well-formed answer (a typed refusal, never INTERNAL) and a refused one changes nothing`, async () => {
      await fuzzAsync(fc.asyncProperty(sent(protocol.valid, protocol.max), async message => {
        const before = JSON.stringify([friends.list(), await invites.list()])
        const stream = await client.dialProtocol(server.peerId, protocol.id)
        const lp = await send(stream, message, protocol.max)
        const reply = decodeCanonical((await lp.read({ signal: AbortSignal.timeout(5000) })).subarray(), 'PROTOCOL_VIOLATION', 'the answer') as Record<string, unknown>
        expect(reply.v).toBe(1)
        if (reply.ok === false) {
          expect(isErrorCode(reply.code), String(reply.code)).toBe(true)
          expect(reply.code, String(reply.message)).not.toBe('INTERNAL')
          expect(isSafeText(String(reply.message))).toBe(true)
          expect(JSON.stringify([friends.list(), await invites.list()])).toBe(before)
        } else {
          expect(reply.ok).toBe(true)
        }
      }), 0.2)
    })
  }

  it('parses every valid request: none is refused as malformed', async () => {
    const valid = fc.oneof(...PROTOCOLS.map(p => p.valid.map(request => ({ p, request }))))
    await fuzzAsync(fc.asyncProperty(valid, async ({ p, request }) => {
      const stream = await client.dialProtocol(server.peerId, p.id)
      const lp = await send(stream, { framed: true, bytes: encodeCanonical(request) }, p.max)
      const reply = decodeCanonical((await lp.read({ signal: AbortSignal.timeout(5000) })).subarray(), 'PROTOCOL_VIOLATION', 'the answer') as Record<string, unknown>
      expect(reply.code, String(reply.message)).not.toBe('PROTOCOL_VIOLATION')
    }), 0.2)
  })

  /** An invite naming the hostile peer as its issuer, so that redeem() dials it. */
  function inviteFromHostile (): Invite {
    const now = Date.now()
    return {
      id: '0123456789abcdef', issuer: hostile.peerId.toString(), publicKey: hostile.peerId.publicKey!.raw, name: 'hostile',
      addrs: hostile.getMultiaddrs().map(a => a.toString()), notBefore: now - 60_000, expires: now + 3_600_000,
      secret: randomBytes(32), uses: 1, grants: ['files']
    }
  }

  const calls = {
    redeem: async () => await redeem({ libp2p: client, friends: clientFriends, invite: inviteFromHostile(), displayName: 'client', signal: AbortSignal.timeout(5000) }),
    list: async () => await listShares(client, hostile.peerId, { signal: AbortSignal.timeout(5000) }),
    manifest: async () => await fetchManifest(client, hostile.peerId, 'ab'.repeat(32), { signal: AbortSignal.timeout(5000) }),
    push: async () => { await pushRecord(client, hostile.peerId, new Uint8Array(10), { signal: AbortSignal.timeout(5000) }) },
    query: async () => await queryRecord(client, hostile.peerId, hostile.peerId.toString(), { signal: AbortSignal.timeout(5000) }),
    reach: async () => {
      // a dial-back is asked over a direct connection only
      await client.dial(hostile.peerId)
      return await askDialBack(client, hostile.peerId, [1], AbortSignal.timeout(5000))
    }
  }

  /** Valid answers to each call, for the hostile peer to damage. */
  const listing = fc.record({ id: hex(32), name: humanText(20).filter(isSafeText), version: fc.integer({ min: 1, max: 99 }), size: fc.nat(), files: fc.nat(), chunks: fc.nat(), updated: fc.constant('2026-01-01T00:00:00.000Z') })
  const failure = fc.record({ v: fc.constant(1), ok: fc.constant(false), code: fc.constantFrom('SHARE_UNKNOWN', 'RECORD_STALE', 'INVITE_USED', 'NOT_AN_ERROR'), message: anyText(60).filter(isSafeText) })
  const answers: Record<keyof typeof calls, fc.Arbitrary<Record<string, unknown>>> = {
    redeem: fc.oneof(fc.record({ v: fc.constant(1), ok: fc.constant(true), name: humanText(20).filter(isSafeText), grants }), failure),
    list: fc.oneof(fc.array(listing, { maxLength: 3 }).map(shares => ({ v: 1, ok: true, shares })), failure),
    manifest: fc.oneof(fc.record({ v: fc.constant(1), ok: fc.constant(true), manifest: fc.uint8Array({ maxLength: 50 }), key: fc.uint8Array({ maxLength: 50 }) }), failure),
    push: fc.oneof(fc.constant({ v: 1, ok: true }), failure),
    query: fc.oneof(fc.record({ v: fc.constant(1), ok: fc.constant(true), record: fc.oneof(fc.constant(null), fc.uint8Array({ maxLength: 50 })) }), failure),
    reach: fc.oneof(fc.array(fc.record({ addr: fc.constantFrom('/ip4/127.0.0.1/tcp/1', '/ip4/7.7.7.7/tcp/4001'), ok: fc.boolean() }), { maxLength: MAX_REACH_PORTS })
      .map(results => ({ v: 1, ok: true, results })), failure)
  }

  it('the asking side fails with a KithError on any answer a hostile peer sends, or takes a well-formed one', async () => {
    const asked = Object.keys(calls) as Array<keyof typeof calls>
    const scenario = fc.constantFrom(...asked).chain(call => sent(answers[call], 1024).map(message => ({ call, message })))
    await fuzzAsync(fc.asyncProperty(scenario, async ({ call, message }) => {
      answer = message
      try {
        await calls[call]()
      } catch (err) {
        checkRejection(err, undefined, message.bytes)
      }
    }), 0.5)
  })

  // Found by the property above: askDialBack (src/services/reachability.ts) let the stream's own error out
  // (UnexpectedEOFError when the friend closes without answering) where the other askers throw FRIEND_OFFLINE.
  it('the reach asker fails with a KithError when the friend closes without answering', async () => {
    answer = { framed: false, bytes: new Uint8Array() }
    try {
      await calls.reach()
    } catch (err) {
      checkRejection(err)
      return
    }
    throw new Error('an empty answer was taken')
  })

  it('round-trip: the asking side returns exactly what a valid answer holds', async () => {
    const scenario = fc.constantFrom('redeem', 'list', 'query', 'reach' as const).chain(call => answers[call].filter(a => a.ok === true).map(a => ({ call, a })))
    await fuzzAsync(fc.asyncProperty(scenario, async ({ call, a }) => {
      answer = { framed: true, bytes: encodeCanonical(a) }
      if (call === 'redeem') {
        expect(redeemResponseSchema.safeParse(a).success).toBe(true)
        const friend = await calls.redeem()
        expect([...friend.grantsFromThem].sort()).toEqual([...(a.grants as string[])].sort())
      } else if (call === 'list') {
        expect(listResponse.safeParse(a).success).toBe(true)
        expect(await calls.list()).toEqual(a.shares)
      } else if (call === 'reach') {
        expect(reachResponse.safeParse(a).success).toBe(true)
        expect(await calls.reach()).toEqual(a.results)
      } else {
        const got = await calls.query()
        expect(got === null ? null : Buffer.from(got).toString('hex')).toBe(a.record === null ? null : Buffer.from(a.record as Uint8Array).toString('hex'))
      }
    }), 0.2)
  })
})
