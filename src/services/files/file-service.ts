import { EventEmitter } from 'node:events'
import { peerIdFromString } from '@libp2p/peer-id'
import { KithError } from '../../errors.ts'
import { bytesSublevel, sublevel, type Database } from '../../peer/database.ts'
import type { Identity } from '../../peer/identity.ts'
import type { KithLibp2p } from '../../peer/node.ts'
import type { FriendBook } from '../../trust/friends.ts'
import { friendsOnly } from '../../trust/gate.ts'
import type { FileRef } from '../../transfer/chunk-store.ts'
import { deriveSealKeys, type SealKeys } from '../../transfer/seal.ts'
import type { TransferEngine } from '../engine/index.ts'
import { fullCollection, lastResortCollection } from '../daemon-heap.ts'
import { COLLECT_EVERY_ENTRIES, ShareBook, listing, type ShareListing } from './share-book.ts'
import { filesHandler, listShares, FILES_PROTOCOL } from './files-protocol.ts'
import { CANCELLED_CLEANUP_MS, Transfers, type Transfer, type TransferEvent, type StartFetch } from './transfers.ts'
import { liveChunks } from './live-chunks.ts'

/**
 * File sharing as the daemon offers it: my shares, what friends share with
 * me, and fetches. One service plugged into the transfer engine
 * (services/engine): it keeps its share book, the files protocol and its
 * transfers, and declares to the engine the chunks it keeps alive
 * (live-chunks.ts) and its shares' keys, with which the engine's chunk
 * protocol serves my shares and what I fetched to other friends.
 */
export interface ShareView extends ShareListing {
  source: string
  with: Array<{ peerId: string, label: string }>
  /** files found changed since this version was made, so not served where they changed: share it again */
  changed: { at: string, paths: string[] } | null
}

export interface FileServiceInit {
  db: Database
  home: string
  identity: Identity
  libp2p: KithLibp2p
  friends: FriendBook
  /** the daemon's transfer engine, started: its store, scheduler and collector */
  engine: TransferEngine
}

/** A friend's manifest received this recently is kept whatever the collector finds (a fetch may be starting from it). */
const RECEIVED_GRACE_MS = 3600 * 1000

/**
 * Who a share goes to: the named friends, each of whom must hold my `files`
 * grant (SHARE_NOT_GRANTED otherwise), or, with none named, every friend who
 * does. A revoked friend, or one whose grant I removed, is never among them,
 * so the next version of a share they had gets a new key (share-book.ts).
 */
export function shareRecipients (friends: FriendBook, names?: string[]): string[] {
  if (names == null || names.length === 0) return friends.list().filter(f => friends.allows(f.peerId, 'files')).map(f => f.peerId)
  return names.map(name => {
    const friend = friends.resolve(name)
    if (!friends.allows(friend.peerId, 'files')) {
      throw new KithError('SHARE_NOT_GRANTED', `${friend.label} has no files grant from you; run \`kith friend grant ${friend.label} files\` first`)
    }
    return friend.peerId
  })
}

export class FileService extends EventEmitter<{ event: [TransferEvent] }> {
  readonly shares: ShareBook
  readonly transfers: Transfers
  private readonly engine: TransferEngine
  private readonly init: FileServiceInit
  /** my peer id: the owner of my shares' chunks */
  private readonly me: string
  /** my shares' keys by share id, while the share exists */
  private readonly ownKeys = new Map<string, SealKeys>()
  private ownKeysGeneration = 0

  private constructor (init: FileServiceInit) {
    super()
    this.init = init
    this.engine = init.engine
    this.me = init.identity.peerId.toString()
    this.shares = new ShareBook(sublevel(init.db, 'shares'), sublevel(init.db, 'received-manifests'), bytesSublevel(init.db, 'share-manifests'), bytesSublevel(init.db, 'received-manifest-bytes'))
    this.transfers = new Transfers({
      libp2p: init.libp2p,
      friends: init.friends,
      shares: this.shares,
      // every chunk a fetch looks at is safe from a sweep under way
      store: init.engine.guardedStore,
      level: sublevel(init.db, 'transfers'),
      secretKey: init.identity.secretKey,
      bandwidth: init.engine.bandwidth,
      home: init.home
    })
    this.transfers.on('event', evt => {
      this.emit('event', evt)
      if (evt.type === 'transfer:state') this.afterTransfer(evt.transfer)
    })
    init.friends.on('event', evt => {
      // a revoked friend's shares are no longer served (live-chunks.ts)
      if (evt.type === 'friend:revoked') this.engine.collector.schedule()
    })
  }

  /** Plugs into the started engine, serves the files protocol and resumes transfers. */
  static async start (init: FileServiceInit): Promise<FileService> {
    const service = new FileService(init)
    // records from before a manifest had a row of its own (share-book.ts)
    await service.shares.migrate()
    init.engine.register({
      name: 'files',
      liveChunks: async live => { await service.liveChunks(live) },
      sealKeys: async (shareId, owner) => await service.sealKeys(shareId, owner),
      onDropped: (id, file) => { service.noteDropped(id, file) }
    })
    const { libp2p, friends } = init
    await libp2p.handle(FILES_PROTOCOL, filesHandler({ shares: service.shares, friends, secretKey: init.identity.secretKey }), {
      middleware: [friendsOnly(friends, 'files')]
    })
    await service.transfers.start()
    return service
  }

  /** File sharing's live chunks for a collection (live-chunks.ts); received manifests no longer needed go with them. */
  private async liveChunks (live: Set<string>): Promise<void> {
    const used = new Set<string>()
    await liveChunks({
      shares: this.shares,
      publicKey: this.init.identity.publicKey,
      transfers: () => this.transfers.list(),
      friends: this.init.friends,
      manifestsUsed: used
    }, live)
    // Friends' manifests go with the chunks they list: kept are those of open
    // fetches and of the newest finished version of each share (as marked),
    // of recent cancels (a start removes their partials), and any received in
    // the last hour (a fetch may be starting from it).
    const now = Date.now()
    for (const t of this.transfers.list()) {
      if (t.state === 'cancelled' && now - t.updated < CANCELLED_CLEANUP_MS) used.add(`${t.owner}/${t.shareId}/${t.version}`)
    }
    await this.shares.pruneReceived(used, now - RECEIVED_GRACE_MS)
  }

  /** A cancelled fetch frees what it stored; a newer finished version supersedes older ones. */
  private afterTransfer (t: Transfer): void {
    if (t.state === 'cancelled') this.engine.collector.schedule()
    if (t.state === 'done' && this.transfers.list().some(o => o.id !== t.id && o.state === 'done' && o.owner === t.owner && o.shareId === t.shareId && o.version < t.version)) {
      this.engine.collector.schedule()
    }
  }

  /**
   * A share's keys: mine from my share book (its key now: older versions'
   * chunks under a key since replaced are no longer served), a friend's from
   * the manifests they sent, newest first (while they are a friend).
   */
  async sealKeys (shareId: string, owner: string): Promise<SealKeys | readonly SealKeys[] | undefined> {
    if (owner !== this.me) return await this.transfers.sealKeys(shareId, owner)
    const cached = this.ownKeys.get(shareId)
    if (cached !== undefined) return cached
    // read once, not for every chunk served
    const generation = this.ownKeysGeneration
    const share = await this.shares.getMine(shareId)
    if (share === undefined) return undefined
    const keys = deriveSealKeys(Buffer.from(share.key, 'base64'), shareId)
    // not kept if a share or unshare ran meanwhile: it may have been removed
    if (generation === this.ownKeysGeneration) this.ownKeys.set(shareId, keys)
    return keys
  }

  /** After my shares change: keys are looked up again. */
  private forgetOwnKeys (): void {
    this.ownKeys.clear()
    this.ownKeysGeneration++
  }

  /** A file of one of my shares no longer holds its chunk: `kith shares` says so until the share's next version. */
  private noteDropped (id: string, file: FileRef): void {
    if (file.owner !== this.me) return
    this.shares.markChanged(file.position.shareId, id, file.path, this.init.identity.publicKey).catch(() => {
      // only a note for the user; the chunk is already not served
    })
  }

  /** Stops the transfers; the engine's collection was stopped before (daemon.ts). */
  async stop (): Promise<void> {
    await this.transfers.stop()
  }

  private view (share: Awaited<ReturnType<ShareBook['list']>>[number]): ShareView {
    return {
      ...listing(share),
      source: share.source,
      with: share.with.map(peerId => ({ peerId, label: this.init.friends.get(peerId)?.label ?? peerId })),
      changed: share.changed !== undefined ? { at: new Date(share.changed.at).toISOString(), paths: share.changed.paths } : null
    }
  }

  /**
   * Shares a path with the named friends; with none named, with every
   * friend I granted `files`.
   */
  async share (req: { path: string, with?: string[], name?: string }): Promise<{ share: ShareView, skipped: Array<{ path: string, reason: string }> }> {
    const peers = shareRecipients(this.init.friends, req.with)
    // the chunks are written before the manifest that refers to them is saved: pinned till then
    const gc = this.engine.collector
    const pin = gc.pin()
    let made
    try {
      made = await this.shares.share({
        source: req.path,
        with: peers,
        ...(req.name != null ? { name: req.name } : {}),
        secretKey: this.init.identity.secretKey,
        publicKey: this.init.identity.publicKey,
        collect: fullCollection,
        // served from the shared files themselves: no sealed copy (a file
        // changed since is no longer served; sharing it again makes a new version),
        // except packs of small files
        store: {
          put: async (id, sealed, place) => {
            await gc.use(id, pin)
            // just read there: a row left pointing elsewhere (a renamed file, a duplicate, a sealed copy) moves here
            return await this.engine.store.putInFile(id, sealed, { ...place, owner: this.me }, { replace: true })
          },
          // a pack of small files lies in many files: kept sealed (chunker.ts)
          putPack: async (id, sealed) => {
            await gc.use(id, pin)
            return await this.engine.store.put(id, Buffer.concat(sealed), { verified: true })
          }
        }
      })
    } catch (err) {
      // what a failed share stored is referenced by nothing (released first, so this sweep may take it)
      pin.release()
      gc.schedule()
      throw err
    }
    pin.release()
    this.forgetOwnKeys()
    const { share, skipped } = made
    // an ordinary collection frees a big share's garbage, but V8 keeps the pages: after 100,000
    // files, resident 155 -> 128 MB with this, and the peak serving the share 202 -> 166 MB
    if (share.files >= COLLECT_EVERY_ENTRIES) lastResortCollection()
    // a new version may leave the old one's changed chunks behind
    if (share.version > 1) gc.schedule()
    return { share: this.view(share), skipped }
  }

  async listMine (): Promise<ShareView[]> {
    return (await this.shares.list()).map(s => this.view(s))
  }

  async unshare (ref: string): Promise<ShareView> {
    const share = await this.shares.unshare(ref)
    this.forgetOwnKeys()
    this.engine.collector.schedule()
    return this.view(share)
  }

  /** What a friend shares with me, asked of their node. */
  async listFriend (name: string): Promise<{ friend: string, shares: ShareListing[] }> {
    const friend = this.init.friends.resolve(name)
    if (friend.state !== 'active') throw new KithError('FRIEND_REVOKED', `${friend.label} is not your friend any more`)
    return { friend: friend.label, shares: await listShares(this.init.libp2p, peerIdFromString(friend.peerId)) }
  }

  async fetch (req: StartFetch): Promise<Transfer> {
    return await this.transfers.fetch(req)
  }
}
