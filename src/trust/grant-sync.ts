import { z } from 'zod'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import { KithError, isErrorCode } from '../errors.ts'
import { encodeCanonical, decodeCanonical } from '../peer/canonical.ts'
import { failureSchema, serveOnce } from '../peer/request-response.ts'
import { dialProtocol } from '../peer/dial.ts'
import type { KithLibp2p } from '../peer/node.ts'
import { friendsOnly } from './gate.ts'
import { SERVICES, type Service } from './grants.ts'
import type { FriendBook, FriendEvent } from './friends.ts'
import { lengthPrefixed } from '../peer/length-decoders.ts'

/**
 * `/kith/grants/1.0.0`: friends tell each other what they grant, so
 * `grantsFromThem` stays true after the invite (a backup grant with a quota
 * given a week later, a relay grant taken back). Each side sends the whole
 * set it grants the other and answers with the whole set it grants back:
 *
 *   { v:1, grants:[service] }  ->  { v:1, ok:true, grants:[service] }
 *
 * A node sends when a friend connects and whenever what it grants that friend
 * changes (if the friend is offline then, the next connection carries it).
 * Sends to one friend run one at a time and read the book when they go, so
 * the last one sent is the newest. Who is speaking is the connection's
 * authenticated peer, never a field; only active friends get in.
 */
export const GRANTS_PROTOCOL = '/kith/grants/1.0.0'
export const GRANTS_TIMEOUT_MS = 10_000
const MAX_GRANTS_MESSAGE = 256
const VERSION = 1

const grantList = z.array(z.enum(SERVICES)).max(SERVICES.length)
const requestSchema = z.object({ v: z.literal(VERSION), grants: grantList }).strict()
const responseSchema = z.union([z.object({ v: z.literal(VERSION), ok: z.literal(true), grants: grantList }).strict(), failureSchema(VERSION)])

export interface GrantSyncInit {
  libp2p: KithLibp2p
  friends: FriendBook
}

export class GrantSync {
  private readonly libp2p: KithLibp2p
  private readonly friends: FriendBook
  /** per friend, the send under way: the next waits for it */
  private readonly sending = new Map<string, Promise<void>>()
  /** per friend, what was last sent and answered, to skip a change event that did not touch it */
  private readonly sent = new Map<string, string>()
  private stopped = false
  private readonly onConnect = (evt: CustomEvent<PeerId>): void => { this.push(evt.detail.toString(), true) }
  private readonly onFriend = (evt: FriendEvent): void => {
    if (evt.type === 'friend:revoked') this.sent.delete(evt.friend.peerId)
    else this.push(evt.friend.peerId, false)
  }

  constructor (init: GrantSyncInit) {
    this.libp2p = init.libp2p
    this.friends = init.friends
  }

  async start (): Promise<void> {
    await this.libp2p.handle(GRANTS_PROTOCOL, async (stream: Stream, connection: Connection) => {
      const peer = connection.remotePeer.toString()
      await serveOnce(stream, { version: VERSION, schema: requestSchema, maxRequest: MAX_GRANTS_MESSAGE, timeoutMs: GRANTS_TIMEOUT_MS, what: 'the grants message' }, async (request) => {
        await this.friends.setGrantsFromThem(peer, sorted(request.grants))
        return { grants: this.friends.get(peer)?.grantsToThem ?? [] }
      })
    }, { maxInboundStreams: 2, runOnLimitedConnection: true, middleware: [friendsOnly(this.friends)] })
    this.libp2p.addEventListener('peer:connect', this.onConnect)
    this.friends.on('event', this.onFriend)
  }

  async stop (): Promise<void> {
    this.stopped = true
    this.libp2p.removeEventListener('peer:connect', this.onConnect)
    this.friends.off('event', this.onFriend)
    await Promise.allSettled([...this.sending.values()])
    await this.libp2p.unhandle(GRANTS_PROTOCOL).catch(() => {})
  }

  /** Tells `peer` what I grant them now, if they are an active friend I am connected to. */
  private push (peer: string, connected: boolean): void {
    const friend = this.friends.get(peer)
    if (this.stopped || friend?.state !== 'active') return
    if (!connected && this.sent.get(peer) === friend.grantsToThem.join(',')) return
    const previous = this.sending.get(peer) ?? Promise.resolve()
    const next = previous.then(async () => { await this.send(peer) }).finally(() => {
      if (this.sending.get(peer) === next) this.sending.delete(peer)
    })
    this.sending.set(peer, next)
  }

  private async send (peer: string): Promise<void> {
    const friend = this.friends.get(peer)
    if (this.stopped || friend?.state !== 'active' || this.libp2p.getConnections(peerIdFromString(peer)).length === 0) return
    const grants = friend.grantsToThem
    try {
      const theirs = await exchange(this.libp2p, peerIdFromString(peer), grants)
      this.sent.set(peer, grants.join(','))
      await this.friends.setGrantsFromThem(peer, theirs)
    } catch {
      // offline, or an old node without the protocol: the next connection tries again
      this.sent.delete(peer)
    }
  }
}

/** One exchange: sends what I grant `peer`, returns what they grant me. */
export async function exchange (libp2p: KithLibp2p, peer: PeerId, grants: readonly Service[]): Promise<Service[]> {
  const signal = AbortSignal.timeout(GRANTS_TIMEOUT_MS)
  const stream = await dialProtocol(libp2p, peer, GRANTS_PROTOCOL, { signal, runOnLimitedConnection: true })
  try {
    const lp = lengthPrefixed(stream, { maxDataLength: MAX_GRANTS_MESSAGE + 2048 })
    await lp.write(encodeCanonical({ v: VERSION, grants: [...grants] }), { signal })
    const reply = responseSchema.safeParse(decodeCanonical((await lp.read({ signal })).subarray(), 'PROTOCOL_VIOLATION', 'the grants answer'))
    await stream.close({ signal }).catch(() => {})
    if (!reply.success) throw new KithError('PROTOCOL_VIOLATION', `${peer.toString()} sent a malformed grants answer`)
    if (!reply.data.ok) throw new KithError(isErrorCode(reply.data.code) ? reply.data.code : 'PROTOCOL_VIOLATION', reply.data.message)
    return sorted(reply.data.grants)
  } catch (err) {
    stream.abort(err as Error)
    throw err
  }
}

function sorted (grants: readonly Service[]): Service[] {
  return [...new Set(grants)].sort()
}
