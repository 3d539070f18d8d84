import { z } from 'zod'
import type { Connection, Stream, PeerId, AbortOptions } from '@libp2p/interface'
import { KithError, isErrorCode } from '../../errors.ts'
import { encodeCanonical, decodeCanonical } from '../../peer/canonical.ts'
import { failureSchema, serveOnce } from '../../peer/request-response.ts'
import { dialProtocol } from '../../peer/dial.ts'
import { safeText } from '../../peer/safe-text.ts'
import { wrapKey } from '../../peer/key-wrap.ts'
import { MAX_MANIFEST_BYTES } from '../../transfer/constants.ts'
import type { FriendBook } from '../../trust/friends.ts'
import { listing, type ShareBook, type ShareListing } from './share-book.ts'
import { lengthPrefixed } from '../../peer/length-decoders.ts'

/**
 * `/kith/files/1.0.0`: what a friend shares with me, and a share's manifest
 * with its key wrapped to me. Only friends I granted `files` get in (the gate
 * middleware), and each sees only the shares shared with them.
 *
 *   { v:1, op:'list' }                 -> { v:1, ok:true, shares:[listing] }
 *   { v:1, op:'manifest', share:id }   -> { v:1, ok:true, manifest:bytes, key:bytes }
 *   any failure                        -> { v:1, ok:false, code, message }
 *
 * The chunks themselves move on `/kith/chunks/1.0.0`.
 */
export const FILES_PROTOCOL = '/kith/files/1.0.0'
export const MAX_FILES_REQUEST = 1024
export const MAX_FILES_RESPONSE = MAX_MANIFEST_BYTES + 64 * 1024
export const FILES_TIMEOUT_MS = 30_000
const VERSION = 1

const requestSchema = z.discriminatedUnion('op', [
  z.object({ v: z.literal(VERSION), op: z.literal('list') }).strict(),
  z.object({ v: z.literal(VERSION), op: z.literal('manifest'), share: z.string().regex(/^[0-9a-f]{64}$/) }).strict()
])

const listingSchema = z.object({
  id: z.string().regex(/^[0-9a-f]{64}$/),
  name: safeText(1024, 1),
  version: z.number().int().min(1),
  size: z.number().int().min(0),
  files: z.number().int().min(0),
  chunks: z.number().int().min(0),
  updated: safeText(64)
}).strict()

const failure = failureSchema(VERSION)
/** The answer to `list`, as the asker parses it (exported for tests). */
export const listResponse = z.union([z.object({ v: z.literal(VERSION), ok: z.literal(true), shares: z.array(listingSchema).max(10_000) }).strict(), failure])
const manifestResponse = z.union([z.object({ v: z.literal(VERSION), ok: z.literal(true), manifest: z.instanceof(Uint8Array), key: z.instanceof(Uint8Array) }).strict(), failure])

export interface FilesHandlerInit {
  shares: ShareBook
  friends: FriendBook
  secretKey: Uint8Array
}

export function filesHandler (init: FilesHandlerInit) {
  return async (stream: Stream, connection: Connection): Promise<void> => {
    const peer = connection.remotePeer.toString()
    await serveOnce(stream, { version: VERSION, schema: requestSchema, maxRequest: MAX_FILES_REQUEST, timeoutMs: FILES_TIMEOUT_MS, what: 'the files request' }, async (request) => {
      const visible = await init.shares.listFor(peer)
      if (request.op === 'list') return { shares: visible.map(listing) }
      const share = visible.find(s => s.id === request.share)
      if (share == null) throw new KithError('SHARE_UNKNOWN', 'no such share is shared with you')
      const friend = init.friends.get(peer)!
      const key = wrapKey(Buffer.from(share.key, 'base64'), Buffer.from(friend.publicKey, 'base64'), init.secretKey)
      const manifest = await init.shares.manifestBytes(share.id)
      // unshared since the list was read
      if (manifest === undefined) throw new KithError('SHARE_UNKNOWN', 'no such share is shared with you')
      return { manifest, key }
    })
  }
}

interface Dialer {
  dialProtocol: (peer: PeerId, protocol: string, options?: AbortOptions) => Promise<Stream>
}

async function ask<T> (dialer: Dialer, peer: PeerId, request: unknown, schema: z.ZodType<T>, options: AbortOptions): Promise<T> {
  const signal = options.signal ?? AbortSignal.timeout(FILES_TIMEOUT_MS)
  let stream: Stream
  try {
    stream = await dialProtocol(dialer, peer, FILES_PROTOCOL, { signal })
  } catch (err) {
    throw new KithError('FRIEND_OFFLINE', `can't reach ${peer.toString()} (${(err as Error).message}); they may be offline, or haven't granted you files`, { cause: err })
  }
  // the stream's read buffer must hold a whole answer: libp2p's default (4 MiB) is below a big share's manifest
  const lp = lengthPrefixed(stream, { maxDataLength: MAX_FILES_RESPONSE, maxBufferSize: MAX_FILES_RESPONSE + 16 })
  try {
    await lp.write(encodeCanonical(request), { signal })
    const reply = schema.safeParse(decodeCanonical((await lp.read({ signal })).subarray(), 'PROTOCOL_VIOLATION', 'the files answer'))
    await stream.close({ signal }).catch(() => {})
    if (!reply.success) throw new KithError('PROTOCOL_VIOLATION', `${peer.toString()} sent a malformed files answer`)
    const data = reply.data as { ok: boolean, code?: string, message?: string }
    if (!data.ok) throw new KithError(isErrorCode(data.code) ? data.code : 'PROTOCOL_VIOLATION', data.message ?? 'refused')
    return reply.data
  } catch (err) {
    stream.abort(err as Error)
    if (err instanceof KithError) throw err
    throw new KithError('FRIEND_OFFLINE', `the connection to ${peer.toString()} broke (${(err as Error).message}); they may have been revoked or gone offline`, { cause: err })
  }
}

export async function listShares (dialer: Dialer, peer: PeerId, options: AbortOptions = {}): Promise<ShareListing[]> {
  const reply = await ask(dialer, peer, { v: VERSION, op: 'list' }, listResponse, options) as { shares: ShareListing[] }
  return reply.shares
}

export async function fetchManifest (dialer: Dialer, peer: PeerId, share: string, options: AbortOptions = {}): Promise<{ manifest: Uint8Array, key: Uint8Array }> {
  return await ask(dialer, peer, { v: VERSION, op: 'manifest', share }, manifestResponse, options) as { manifest: Uint8Array, key: Uint8Array }
}
