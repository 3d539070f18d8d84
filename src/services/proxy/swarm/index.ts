import type { Stats } from 'node:fs'
import { peerIdFromString } from '@libp2p/peer-id'
import type { PeerId } from '@libp2p/interface'
import type { Database } from '../../../peer/database.ts'
import type { KithLibp2p } from '../../../peer/node.ts'
import type { BandwidthScheduler } from '../../../transfer/scheduler/index.ts'
import type { FriendBook } from '../../../trust/friends.ts'
import { friendsOnly } from '../../../trust/gate.ts'
import { ASK_DEADLINE_MS, MAX_INBOUND_SWARM_STREAMS, SWARM_PROTOCOL } from './constants.ts'
import { chunkHashesOf, openHashList, sameFile, type HashList } from './hash-list.ts'
import { SwarmIndex, type Holding } from './holdings.ts'
import { askList, askWho, swarmHandler, type Dialer } from './protocol.ts'

/**
 * The friend swarm behind the local proxy (docs/proxy.md, "The friend
 * swarm"): the index of what this node holds, served to friends on
 * `/kith/swarm/2.0.0` (unless config.json says `proxy.serveFriends: false`),
 * and the asking side: which online friends hold a URL class, and a hash
 * list one of them signed.
 *
 *   const swarm = await Swarm.start({ db, libp2p, friends, secretKey, bandwidth, serve: true })
 *   const held = await swarm.holders(urls, signal)   // hash -> { holding, friends }
 *   const { list, from } = await swarm.hashList(hash, friends, signal)
 */
export interface SwarmInit {
  db: Database
  libp2p: KithLibp2p
  friends: FriendBook
  /** this node's identity key: it signs the hash lists it serves */
  secretKey: Uint8Array
  bandwidth: BandwidthScheduler
  /** answer friends' questions and serve them chunks @default true */
  serve: boolean
}

export interface Held {
  holding: Holding
  friends: PeerId[]
}

/** bytes the proxy's swarm answers took from friends and from the origin since the start */
export interface SwarmStats {
  held: number
  fromFriends: number
  fromOrigin: number
}

export class Swarm {
  readonly index: SwarmIndex
  private readonly init: SwarmInit
  private fromFriends = 0
  private fromOrigin = 0

  private constructor (init: SwarmInit, index: SwarmIndex) {
    this.init = init
    this.index = index
  }

  static async start (init: SwarmInit): Promise<Swarm> {
    const index = await SwarmIndex.open(init.db, init.secretKey)
    if (init.serve) {
      await init.libp2p.handle(SWARM_PROTOCOL, swarmHandler({ index, bandwidth: init.bandwidth }), {
        maxInboundStreams: MAX_INBOUND_SWARM_STREAMS,
        // friends I granted files, as for shared files; strangers never reach it
        middleware: [friendsOnly(init.friends, 'files')]
      })
    }
    return new Swarm(init, index)
  }

  async stop (): Promise<void> {
    if (this.init.serve) await this.init.libp2p.unhandle(SWARM_PROTOCOL).catch(() => {})
  }

  get dialer (): Dialer {
    return this.init.libp2p
  }

  get stats (): SwarmStats {
    return { held: this.index.count, fromFriends: this.fromFriends, fromOrigin: this.fromOrigin }
  }

  counted (source: 'friend' | 'origin', bytes: number): void {
    if (source === 'friend') this.fromFriends += bytes
    else this.fromOrigin += bytes
  }

  /**
   * Offers a file `kith get` placed whole (the queue's onPlaced): hashed in
   * chunks and recorded, unless it is not the file as placed (`placed`, its
   * lstat then: the user may have edited it since) or changed while being
   * hashed. Its whole SHA-256 (the content hash friends ask for it by) is
   * the one the download verified against a checksum when it had one; else
   * it is computed in the same read as the chunks', after the download, so
   * a download with no checksum hashes nothing while it runs
   * (docs/downloads.md, "SHA-256"). Not offered when this node does not
   * serve the swarm.
   */
  async offer (file: { urls: string[], path: string, size: number, placed: Stats, sha256: string | null, etag: string | null, lastModified: string | null }): Promise<void> {
    if (!this.init.serve || file.size === 0 || file.placed.size !== file.size) return
    const { chunks, whole, before, after } = await chunkHashesOf(file.path, { whole: file.sha256 === null })
    if (!sameFile(file.placed, before) || !sameFile(before, after)) return
    await this.index.record({ urls: file.urls, etag: file.etag, lastModified: file.lastModified, hash: file.sha256 ?? whole!, chunks, path: file.path, length: file.size })
  }

  /** Friends connected now who grant me files: the ones worth asking. */
  private online (): PeerId[] {
    const seen = new Set<string>()
    const out: PeerId[] = []
    for (const connection of this.init.libp2p.getConnections()) {
      const peer = connection.remotePeer.toString()
      const friend = this.init.friends.get(peer)
      if (seen.has(peer) || connection.status !== 'open' || friend?.state !== 'active' || !friend.grantsFromThem.includes('files')) continue
      seen.add(peer)
      out.push(peerIdFromString(peer))
    }
    return out
  }

  /**
   * Who of my online friends holds the URL class, by content hash; friends
   * that don't answer within ASK_DEADLINE_MS are left out.
   */
  async holders (urls: readonly string[], signal: AbortSignal): Promise<Map<string, Held>> {
    const held = new Map<string, Held>()
    const deadline = AbortSignal.any([signal, AbortSignal.timeout(ASK_DEADLINE_MS)])
    await Promise.all(this.online().map(async peer => {
      const holdings = await askWho(this.init.libp2p, peer, urls, { signal: deadline }).catch(() => [])
      for (const holding of holdings) {
        const entry = held.get(holding.hash) ?? { holding, friends: [] }
        // the same content hash under other validators is another claim: the first one stands
        if (entry.holding.length === holding.length && entry.holding.etag === holding.etag && entry.holding.lastModified === holding.lastModified) entry.friends.push(peer)
        held.set(holding.hash, entry)
      }
    }))
    return held
  }

  /**
   * The hash list of `hash`, signed by the friend who gave it and whole;
   * null when none is. With two holders or more, two lists from different
   * friends must agree chunk for chunk: one friend can't make a forged
   * list pass alone (the origin's sample checks one chunk only).
   */
  async hashList (hash: string, friends: readonly PeerId[], signal: AbortSignal): Promise<{ list: HashList, from: PeerId } | null> {
    const ask = async (peer: PeerId): Promise<{ list: HashList, from: PeerId } | null> => {
      try {
        const signed = await askList(this.init.libp2p, peer, hash, { signal: AbortSignal.any([signal, AbortSignal.timeout(ASK_DEADLINE_MS * 2)]) })
        return { list: openHashList(signed, Buffer.from(this.init.friends.get(peer.toString())!.publicKey, 'base64'), hash), from: peer }
      } catch (err) {
        if (signal.aborted) throw signal.reason
        console.error(`kith proxy: no usable hash list from ${peer.toString()}: ${(err as Error).message}`)
        return null
      }
    }
    const asked = friends.filter(peer => this.init.friends.get(peer.toString())?.publicKey != null)
    const got: Array<{ list: HashList, from: PeerId }> = []
    // two friends at once (one round trip before the first byte, not two); more only when one of them fails
    while (got.length < 2 && asked.length > 0) {
      for (const list of await Promise.all(asked.splice(0, 2 - got.length).map(ask))) if (list != null) got.push(list)
    }
    const [first, second] = got
    if (first == null || second == null || sameList(first.list, second.list)) return first ?? null
    console.error(`kith proxy: ${first.from.toString()} and ${second.from.toString()} gave different hash lists for one file; the origin serves it`)
    return null
  }
}

function sameList (a: HashList, b: HashList): boolean {
  return a.length === b.length && a.etag === b.etag && a.lastModified === b.lastModified && Buffer.compare(Buffer.from(a.chunks), Buffer.from(b.chunks)) === 0
}
