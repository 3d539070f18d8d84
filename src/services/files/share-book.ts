import { resolve } from 'node:path'
import { KithError } from '../../errors.ts'
import { getOrUndefined, type Sublevel } from '../../peer/database.ts'
import { unwrapKey } from '../../peer/key-wrap.ts'
import { createManifest, decodeManifest, type Manifest } from '../../transfer/manifest.ts'
import { chunkSource, type ChunkSink } from '../../transfer/chunker.ts'
import { deriveSealKeys, generateShareId, generateShareKey, type SealKeys } from '../../transfer/seal.ts'

/**
 * The shares I offer, each a signed manifest over chunks the chunk store holds
 * in the shared files, plus the share key, and the manifests friends sent me.
 * Sharing the same path again makes a new version of the same share.
 */
export interface MyShare {
  id: string
  name: string
  /** absolute path of the shared file or folder */
  source: string
  /** peer ids of the friends it is shared with */
  with: string[]
  /** base64 share key: the same from version to version until a friend is removed from `with` */
  key: string
  version: number
  /** base64 of the signed manifest */
  manifest: string
  size: number
  files: number
  chunks: number
  created: number
  updated: number
  /** files found changed since this version was made (so not served where they changed); gone with the next version */
  changed?: ShareChange
}

/** Shared files that no longer hold what the share's newest version says: `kith share` of it again serves them. */
export interface ShareChange {
  /** when the first was found (ms) */
  at: number
  /** absolute paths, at most MAX_CHANGED_PATHS */
  paths: string[]
}

/** Changed files remembered per share, so a share of many files stays a small record. */
const MAX_CHANGED_PATHS = 10

export interface ShareListing {
  id: string
  name: string
  version: number
  size: number
  files: number
  chunks: number
  updated: string
}

/** A manifest a friend sent me, with the share key wrapped to me. */
export interface ReceivedManifest {
  owner: string
  shareId: string
  version: number
  /** base64 */
  manifest: string
  /** base64, wrapped to me by the owner */
  wrappedKey: string
  received: number
}

export interface ShareInit {
  source: string
  /** peer ids of the friends to share it with, all of them: a friend left out loses the share, and the key of its next versions */
  with: string[]
  name?: string
  secretKey: Uint8Array
  publicKey: Uint8Array
  store: ChunkSink
  signal?: AbortSignal
}

export function listing (share: MyShare): ShareListing {
  return {
    id: share.id,
    name: share.name,
    version: share.version,
    size: share.size,
    files: share.files,
    chunks: share.chunks,
    updated: new Date(share.updated).toISOString()
  }
}

export class ShareBook {
  private readonly mine: Sublevel<MyShare>
  private readonly received: Sublevel<ReceivedManifest>
  private writing: Promise<unknown> = Promise.resolve()

  constructor (mine: Sublevel<MyShare>, received: Sublevel<ReceivedManifest>) {
    this.mine = mine
    this.received = received
  }

  async list (): Promise<MyShare[]> {
    const out: MyShare[] = []
    for await (const share of this.mine.values()) out.push(share)
    return out.sort((a, b) => a.name.localeCompare(b.name))
  }

  async getMine (id: string): Promise<MyShare | undefined> {
    return await getOrUndefined(this.mine, id)
  }

  /** Shares a given friend may see. */
  async listFor (peerId: string): Promise<MyShare[]> {
    return (await this.list()).filter(s => s.with.includes(peerId))
  }

  /** By id, or by name when the name is unique. */
  async resolve (ref: string): Promise<MyShare> {
    const byId = await this.mine.get(ref)
    if (byId != null) return byId
    const shares = await this.list()
    const matches = shares.filter(s => s.name === ref || s.id.startsWith(ref))
    if (matches.length === 1) return matches[0]!
    if (matches.length > 1) throw new KithError('BAD_REQUEST', `more than one share matches ${JSON.stringify(ref)}; use its id from \`kith shares\``)
    throw new KithError('SHARE_UNKNOWN', `you share nothing called ${JSON.stringify(ref)}; see \`kith shares\``)
  }

  /**
   * Chunks, seals and signs a file or folder for the friends in `with`.
   * Sharing a path already shared makes the next version of that share (same
   * id). Its key stays while no friend is dropped, so unchanged files keep
   * their chunk ids and friends fetch only what changed. A friend the last
   * version was shared with who is not in `with` (left out, or, as the file
   * service sees to, revoked or no longer granted `files`) still holds that
   * key: the new version gets a new one, which they never get, so nothing of
   * it opens for them. Its chunks are all new, and friends fetch it whole.
   */
  async share (init: ShareInit): Promise<{ share: MyShare, manifest: Manifest, skipped: Array<{ path: string, reason: string }> }> {
    const source = resolve(init.source)
    const previous = (await this.list()).find(s => s.source === source)
    const id = previous?.id ?? generateShareId()
    const recipients = [...new Set(init.with)].sort()
    const dropped = previous?.with.filter(peer => !recipients.includes(peer)) ?? []
    const key = previous != null && dropped.length === 0 ? Buffer.from(previous.key, 'base64') : generateShareKey()
    const version = (previous?.version ?? 0) + 1
    const result = await chunkSource(source, {
      keys: deriveSealKeys(key, id),
      version,
      store: init.store,
      ...(init.signal != null ? { signal: init.signal } : {})
    })
    const name = init.name ?? previous?.name ?? source.split('/').filter(Boolean).pop() ?? 'share'
    const { manifest, bytes } = createManifest({
      secretKey: init.secretKey,
      publicKey: init.publicKey,
      shareId: id,
      version,
      name,
      chunkSize: result.chunkSize,
      entries: result.entries,
      packs: result.packs
    })
    const now = Date.now()
    const share: MyShare = {
      id,
      name,
      source,
      with: recipients,
      key: Buffer.from(key).toString('base64'),
      version,
      manifest: Buffer.from(bytes).toString('base64'),
      size: manifest.totalSize,
      files: manifest.entries.filter(e => e.type === 'file').length,
      chunks: manifest.chunkCount,
      created: previous?.created ?? now,
      updated: now
    }
    await this.exclusive(async () => { await this.mine.put(id, share) })
    return { share, manifest, skipped: result.skipped }
  }

  /**
   * Notes that `path` no longer holds chunk `chunkId` of share `id`, if that
   * chunk is in its newest version (a row of an older one may linger until
   * collected). Returns whether the share's record changed.
   */
  async markChanged (id: string, chunkId: string, path: string, ownerKey: Uint8Array): Promise<boolean> {
    return await this.exclusive(async () => {
      const share = await this.getMine(id)
      if (share === undefined || share.changed?.paths.includes(path) === true || (share.changed?.paths.length ?? 0) >= MAX_CHANGED_PATHS) return false
      const manifest = ShareBook.decode(share.manifest, ownerKey)
      if (!manifest.entries.some(e => e.type === 'file' && e.chunks.includes(chunkId))) return false
      await this.mine.put(id, { ...share, changed: { at: share.changed?.at ?? Date.now(), paths: [...(share.changed?.paths ?? []), path] } })
      return true
    })
  }

  async unshare (ref: string): Promise<MyShare> {
    return await this.exclusive(async () => {
      const share = await this.resolve(ref)
      await this.mine.del(share.id)
      return share
    })
  }

  /** Runs read-modify-writes of my shares one at a time, so none undoes another (a note on a share just replaced or removed). */
  private async exclusive<T> (task: () => Promise<T>): Promise<T> {
    const run = this.writing.then(task)
    this.writing = run.catch(() => {})
    return await run
  }

  async saveReceived (received: ReceivedManifest): Promise<void> {
    await this.received.put(`${received.owner}/${received.shareId}/${received.version}`, received)
  }

  async getReceived (owner: string, shareId: string, version: number): Promise<ReceivedManifest | undefined> {
    return await this.received.get(`${owner}/${shareId}/${version}`) ?? undefined
  }

  /**
   * Forgets the manifests friends sent me that are not in `keep`
   * (`owner/shareId/version`) and were received before `receivedBefore`.
   * Returns how many went.
   */
  async pruneReceived (keep: ReadonlySet<string>, receivedBefore: number): Promise<number> {
    const doomed: string[] = []
    // keys first: a manifest can be megabytes, and most are kept
    for await (const key of this.received.keys()) {
      if (keep.has(key)) continue
      const value = await getOrUndefined(this.received, key)
      if (value !== undefined && value.received < receivedBefore) doomed.push(key)
    }
    if (doomed.length > 0) await this.received.batch(doomed.map(key => ({ type: 'del' as const, key })))
    return doomed.length
  }

  /**
   * The seal keys of a friend's share, from the manifests of it I saved,
   * newest version first and each once. Versions share a key until the owner
   * removes a friend from the share; a fetched file of an older version
   * holds chunks sealed under an older key.
   */
  async receivedKeys (owner: string, shareId: string, ownerKey: Uint8Array, secretKey: Uint8Array): Promise<SealKeys[]> {
    const prefix = `${owner}/${shareId}/`
    const saved: ReceivedManifest[] = []
    for await (const value of this.received.values({ gte: prefix, lt: `${prefix}\xff` })) saved.push(value)
    const keys = new Map<string, SealKeys>()
    for (const received of saved.sort((a, b) => b.version - a.version)) {
      const key = unwrapKey(Buffer.from(received.wrappedKey, 'base64'), ownerKey, secretKey)
      const hex = Buffer.from(key).toString('hex')
      if (!keys.has(hex)) keys.set(hex, deriveSealKeys(key, shareId))
    }
    return [...keys.values()]
  }

  /** Decodes a stored manifest, checking again that its owner signed it. */
  static decode (manifest: string, owner: Uint8Array): Manifest {
    return decodeManifest(Buffer.from(manifest, 'base64'), { owner })
  }
}
