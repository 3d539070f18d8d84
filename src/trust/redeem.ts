import { z } from 'zod'
import type { Multiaddr } from '@multiformats/multiaddr'
import type { Connection, Libp2p, Stream, AbortOptions } from '@libp2p/interface'
import { KithError, isErrorCode } from '../errors.ts'
import { encodeCanonical, decodeCanonical } from '../peer/canonical.ts'
import { failureSchema, serveOnce } from '../peer/request-response.ts'
import { dialProtocol } from '../peer/dial.ts'
import { dialable, MAX_INVITE_DIALS, type DialPolicy } from '../peer/dial-policy.ts'
import { safeText } from '../peer/safe-text.ts'
import { checkValidity, redeemProof, displayName, isMultiaddr, type Invite, MAX_INVITE_ADDRS, MAX_ADDR_LENGTH } from './invite.ts'
import { SERVICES, type Service } from './grants.ts'
import type { FriendBook, Friend } from './friends.ts'
import type { InviteBook } from './invite-book.ts'
import { lengthPrefixed } from '../peer/length-decoders.ts'

/**
 * The redeem protocol: the one friend protocol a stranger may open. The
 * accepter proves it holds the invite's secret (an HMAC over both peer ids,
 * see `redeemProof`) over a Noise channel already bound to both identities;
 * the issuer checks it against its invite book, records the friendship and
 * answers with its grants. One request, one response:
 *
 *   accepter -> issuer  { v, id, proof, name, addrs, grants }
 *   issuer -> accepter  { v, ok: true, name, grants } | { v, ok: false, code, message }
 */
export const REDEEM_PROTOCOL = '/kith/redeem/1.0.0'
export const MAX_REDEEM_MESSAGE = 8 * 1024
export const REDEEM_TIMEOUT_MS = 10_000
export const MAX_INBOUND_REDEEM_STREAMS = 2

const VERSION = 1

/** The request, as the issuer parses it (exported for tests). */
export const redeemRequestSchema = z.object({
  v: z.literal(VERSION),
  id: z.string().regex(/^[0-9a-f]{16}$/),
  proof: z.custom<Uint8Array>(b => b instanceof Uint8Array && b.length === 32, 'must be 32 bytes'),
  name: displayName,
  addrs: z.array(safeText(MAX_ADDR_LENGTH)).max(MAX_INVITE_ADDRS),
  grants: z.array(z.enum(SERVICES)).max(SERVICES.length)
}).strict()

/** The answer, as the accepter parses it (exported for tests). */
export const redeemResponseSchema = z.discriminatedUnion('ok', [
  z.object({ v: z.literal(VERSION), ok: z.literal(true), name: displayName, grants: z.array(z.enum(SERVICES)).max(SERVICES.length) }).strict(),
  failureSchema(VERSION)
])

export type RedeemRequest = z.infer<typeof redeemRequestSchema>
type Response = z.infer<typeof redeemResponseSchema>

function parse<T> (schema: z.ZodType<T>, bytes: Uint8Array, what: string): T {
  const result = schema.safeParse(decodeCanonical(bytes, 'PROTOCOL_VIOLATION', what))
  if (!result.success) throw new KithError('PROTOCOL_VIOLATION', `${what} is malformed: ${result.error.issues[0]?.message ?? ''}`)
  return result.data
}

export interface RedeemHandlerInit {
  friends: FriendBook
  invites: InviteBook
  self: string
  displayName: () => string
}

/** Who is redeeming: the peer at the other end of the Noise channel. */
export interface Accepter {
  peerId: string
  /** Ed25519 public key, base64 */
  publicKey: string
  /** the address their connection came from, kept when they announce none */
  remoteAddr: string
}

/**
 * The issuer's decision on one redeem request: checks it against the invite
 * book and records the friendship. A friend who redeems again (the same
 * invite, or another) changes nothing: the answer carries the grants they
 * hold now, not the invite's.
 */
export async function answerRedeem (init: RedeemHandlerInit, request: RedeemRequest, accepter: Accepter, now = Date.now()): Promise<{ name: string, grants: Service[] }> {
  const addrs = request.addrs.filter(isMultiaddr)
  let friend: Friend | undefined
  await init.invites.redeem(request.id, init.self, accepter.peerId, request.proof, async (invite) => {
    friend = await init.friends.admit({
      peerId: accepter.peerId,
      publicKey: accepter.publicKey,
      label: invite.label ?? request.name,
      grantsToThem: invite.grants,
      grantsFromThem: request.grants,
      addrs: addrs.length > 0 ? addrs : [accepter.remoteAddr],
      via: invite.id
    })
  }, now)
  return { name: init.displayName(), grants: friend!.grantsToThem }
}

/** The issuer's side. */
export function redeemHandler (init: RedeemHandlerInit) {
  return async (stream: Stream, connection: Connection): Promise<void> => {
    await serveOnce(stream, { version: VERSION, schema: redeemRequestSchema, maxRequest: MAX_REDEEM_MESSAGE, timeoutMs: REDEEM_TIMEOUT_MS, what: 'the redeem request' }, async (request) => {
      const peer = connection.remotePeer
      if (peer.publicKey == null) throw new KithError('PROTOCOL_VIOLATION', 'the accepter has no Ed25519 identity')
      return await answerRedeem(init, request, {
        peerId: peer.toString(),
        publicKey: Buffer.from(peer.publicKey.raw).toString('base64'),
        remoteAddr: connection.remoteAddr.toString()
      })
    })
  }
}

export interface RedeemInit extends AbortOptions {
  libp2p: Libp2p
  friends: FriendBook
  invite: Invite
  /** what I call the issuer; defaults to the invite's display name */
  label?: string
  /** what I grant the issuer; defaults to the invite's grants */
  grants?: Service[]
  displayName: string
  /**
   * Which of the invite's addresses may be dialled (src/peer/dial-policy.ts).
   * @default loopback allowed; the node's own gate still refuses what its policy refuses
   */
  dialPolicy?: DialPolicy
}

/** The accepter's side: dial the issuer, prove the secret, record the friendship. */
export async function redeem (init: RedeemInit): Promise<Friend> {
  const { libp2p, invite } = init
  if (invite.issuer === libp2p.peerId.toString()) {
    throw new KithError('INVITE_OWN', 'this invite is your own; send it to the friend you made it for')
  }
  checkValidity(invite)
  const signal = init.signal ?? AbortSignal.timeout(REDEEM_TIMEOUT_MS * 2)
  const grants = init.grants ?? invite.grants
  // a relayed address names the relay with a /p2p in the middle: only a trailing /p2p is the issuer
  const endsWithIssuer = (ma: Multiaddr): boolean => { const last = ma.getComponents().at(-1); return last?.name === 'p2p' && last.value === invite.issuer }
  // the invite is a stranger's word: only addresses the dial policy allows, at most MAX_INVITE_DIALS of them
  const { addrs: allowed, refused } = dialable(invite.addrs, init.dialPolicy ?? { loopback: true }, MAX_INVITE_DIALS)
  const addrs = allowed.map(ma => endsWithIssuer(ma) ? ma : ma.encapsulate(`/p2p/${invite.issuer}`))
  let stream: Stream
  try {
    if (invite.addrs.length === 0) throw new Error('the invite holds no address')
    if (addrs.length === 0) throw new Error(`none of the invite's addresses may be dialled (${refused.map(r => `${r.addr}: ${r.why}`).join('; ')})`)
    // a few hundred bytes: may run over a relayed connection with a budget; tried twice if a connection closes under it
    // (a relay ending a budgeted connection, a duplicate dropped)
    stream = await dialProtocol(libp2p, addrs, REDEEM_PROTOCOL, { signal, runOnLimitedConnection: true })
  } catch (err) {
    throw new KithError('INVITE_ISSUER_UNREACHABLE',
      `could not reach ${invite.name} at ${invite.addrs.join(', ') || '(no address)'}: ${reason(err)}; make sure their node is running and try again (a node that ended its friendship with you refuses your connections)`, { cause: err })
  }
  const lp = lengthPrefixed(stream, { maxDataLength: MAX_REDEEM_MESSAGE })
  const request: RedeemRequest = {
    v: VERSION,
    id: invite.id,
    proof: redeemProof(invite.secret, invite.issuer, libp2p.peerId.toString()),
    name: init.displayName,
    addrs: libp2p.getMultiaddrs().map(a => a.decapsulateCode(421).toString()).slice(0, MAX_INVITE_ADDRS),
    grants
  }
  let response: Response
  try {
    await lp.write(encodeCanonical(request), { signal })
    response = parse(redeemResponseSchema, (await lp.read({ signal })).subarray(), 'the issuer\'s answer')
    await stream.close({ signal }).catch(() => {})
  } catch (err) {
    stream.abort(err as Error)
    if (err instanceof KithError) throw err
    throw new KithError('INVITE_ISSUER_UNREACHABLE', `the issuer dropped the connection during redeem (${reason(err)}); try again`, { cause: err })
  }
  if (!response.ok) {
    const code = isErrorCode(response.code) ? response.code : 'PROTOCOL_VIOLATION'
    throw new KithError(code, `${invite.name} refused the invite: ${response.message}`)
  }
  return await init.friends.befriend({
    peerId: invite.issuer,
    publicKey: Buffer.from(invite.publicKey).toString('base64'),
    label: init.label ?? invite.name,
    grantsToThem: grants,
    grantsFromThem: response.grants,
    addrs: invite.addrs,
    via: invite.id
  })
}

/**
 * An error in words. libp2p's dial errors may carry none of their own: a
 * connection the other side's gate closes during the handshake, or an
 * AggregateError of each address's failure.
 */
function reason (err: unknown): string {
  if (err instanceof AggregateError && err.errors.length > 0) return err.errors.map(reason).join('; ')
  const e = err as Partial<Error> | null
  const words = [e?.name, e?.message].filter(w => typeof w === 'string' && w !== '' && w !== 'Error')
  return words.length > 0 ? words.join(': ') : String(err)
}
