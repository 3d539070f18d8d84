import { resolve } from 'node:path'
import { KithError } from '../../errors.ts'
import { getOrUndefined, type Sublevel } from '../../peer/database.ts'
import { unwrapKey } from '../../peer/key-wrap.ts'
import { decodeManifestInSlices, ManifestWriter, summarizeManifestInSlices, type EntryVisitor, type Manifest, type ManifestSummary } from '../../transfer/manifest.ts'
import { chunkSource, type ChunkSink } from '../../transfer/chunker.ts'
import { CHUNK_SIZE, ID_LENGTH } from '../../transfer/constants.ts'
import { deriveSealKeys, generateShareId, generateShareKey, type SealKeys } from '../../transfer/seal.ts'

/**
 * The shares I offer, each a signed manifest over chunks the chunk store holds
 * in the shared files, plus the share key, and the manifests friends sent me.
 * Sharing the same path again makes a new version of the same share.
 *
 * A share is two rows, written in one batch (so a kill -9 leaves both or
 * neither): its record (JSON, small whatever the share's size) and its signed
 * manifest's bytes (binary, under the same id in a sublevel of their own),
 * which only serving the manifest, the chunk collector and a dropped chunk's
 * note read. Before, the record held the manifest as base64 (`manifest`):
 * megabytes for a share of many files, copied and parsed by every read of
 * the share list; `migrate` moves such a record's manifest out.
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

/**
 * A manifest a friend sent me, with the share key wrapped to me: this small
 * record, and the signed manifest's bytes in a row of their own (same key,
 * written in the same batch; `receivedManifest`). Before, the record held
 * the manifest as base64 (`manifest`), megabytes for a share of many files,
 * parsed by every read of the record (the share's keys, pruning);
 * `migrate` moves it out.
 */
export interface ReceivedManifest {
  owner: string
  shareId: string
  version: number
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
  /**
   * A full garbage collection (the daemon's: V8's, `--expose-gc`), run every
   * COLLECT_EVERY_ENTRIES entries while the share is made (the file service
   * gives memory back after a big share itself). Each file read leaves a
   * handle, promises and stats behind, which reach V8's old generation, and
   * the daemon lets that double before it collects it
   * (`--heap-growing-percent=100`, daemon-heap.ts): a share of 100,000
   * small files grew the owner's heap by the share's garbage.
   */
  collect?: () => void
}

/** Entries made between two `ShareInit.collect` calls: a collection of the owner's heap takes tens of ms, 10,000 small files some seconds. */
export const COLLECT_EVERY_ENTRIES = 10_000

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

/** A share's record as stored before its manifest had a row of its own: base64 of the signed manifest. */
type OldRecord = MyShare & { manifest?: string }
/** A received manifest's record as stored before it had a row of its own, the same way. */
type OldReceived = ReceivedManifest & { manifest?: string }

export class ShareBook {
  private readonly mine: Sublevel<MyShare>
  private readonly received: Sublevel<ReceivedManifest>
  /** my shares' signed manifests by share id (a binary sublevel: bytesSublevel in database.ts) */
  private readonly manifests: Sublevel<Uint8Array>
  /** friends' signed manifests, by the key of their record in `received` (binary too) */
  private readonly receivedBytes: Sublevel<Uint8Array>
  private writing: Promise<unknown> = Promise.resolve()

  constructor (mine: Sublevel<MyShare>, received: Sublevel<ReceivedManifest>, manifests: Sublevel<Uint8Array>, receivedBytes: Sublevel<Uint8Array>) {
    this.mine = mine
    this.received = received
    this.manifests = manifests
    this.receivedBytes = receivedBytes
  }

  /**
   * Moves the manifest out of records stored before it had a row of its own
   * (see MyShare and ReceivedManifest), one record per batch: a kill -9
   * leaves each in the old form or the new. Returns how many moved.
   */
  async migrate (): Promise<number> {
    return await this.exclusive(async () => {
      let moved = 0
      for await (const [id, record] of this.mine.iterator() as AsyncIterable<[string, OldRecord]>) {
        if (record.manifest === undefined) continue
        const { manifest, ...rest } = record
        await this.mine.db.batch([
          { type: 'put', sublevel: this.manifests, key: id, value: Buffer.from(manifest, 'base64') },
          { type: 'put', sublevel: this.mine, key: id, value: rest }
        ])
        moved++
      }
      // keys first, then each record alone: a record of the old form can be megabytes
      const keys: string[] = []
      for await (const key of this.received.keys()) keys.push(key)
      for (const key of keys) {
        const record = await getOrUndefined(this.received, key) as OldReceived | undefined
        if (record?.manifest === undefined) continue
        const { manifest, ...rest } = record
        await this.received.db.batch([
          { type: 'put', sublevel: this.receivedBytes, key, value: Buffer.from(manifest, 'base64') },
          { type: 'put', sublevel: this.received, key, value: rest }
        ])
        moved++
      }
      return moved
    })
  }

  /** The signed manifest of my share `id`, as stored (and served to friends). */
  async manifestBytes (id: string): Promise<Uint8Array | undefined> {
    return await getOrUndefined(this.manifests, id)
  }

  /**
   * My share's manifest, checked again (its signature by `owner` included)
   * without its entries: its chunk ids and counts. Throws SHARE_UNKNOWN if
   * the share has no manifest row. In slices: the daemon goes on answering
   * meanwhile (src/peer/slices.ts).
   */
  async summary (id: string, owner: Uint8Array): Promise<ManifestSummary> {
    const bytes = await this.manifestBytes(id)
    if (bytes === undefined) throw new KithError('SHARE_UNKNOWN', `your share ${id} has no stored manifest`)
    return await summarizeManifestInSlices(bytes, { owner })
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
  async share (init: ShareInit): Promise<{ share: MyShare, manifest: Uint8Array, skipped: Array<{ path: string, reason: string }> }> {
    const source = resolve(init.source)
    const previous = (await this.list()).find(s => s.source === source)
    const id = previous?.id ?? generateShareId()
    const recipients = [...new Set(init.with)].sort()
    const dropped = previous?.with.filter(peer => !recipients.includes(peer)) ?? []
    const key = previous != null && dropped.length === 0 ? Buffer.from(previous.key, 'base64') : generateShareKey()
    const version = (previous?.version ?? 0) + 1
    const name = init.name ?? previous?.name ?? source.split('/').filter(Boolean).pop() ?? 'share'
    // entries go into the manifest's encoding as the files are read: no object per file is held
    const writer = new ManifestWriter({ shareId: id, version, name, chunkSize: CHUNK_SIZE })
    let made = 0
    const result = await chunkSource(source, {
      keys: deriveSealKeys(key, id),
      version,
      store: init.store,
      chunkSize: CHUNK_SIZE,
      entries: {
        add: entry => {
          writer.add(entry)
          if (++made % COLLECT_EVERY_ENTRIES === 0) init.collect?.()
        }
      },
      ...(init.signal != null ? { signal: init.signal } : {})
    })
    const bytes = writer.finish({ secretKey: init.secretKey, publicKey: init.publicKey, packs: result.packs })
    // checked as a friend will check it, so a share made is always one that can be fetched
    const summary = await summarizeManifestInSlices(bytes, { owner: init.publicKey })
    const now = Date.now()
    const share: MyShare = {
      id,
      name,
      source,
      with: recipients,
      key: Buffer.from(key).toString('base64'),
      version,
      size: summary.totalSize,
      files: summary.files,
      chunks: summary.chunkCount,
      created: previous?.created ?? now,
      updated: now
    }
    await this.exclusive(async () => {
      await this.mine.db.batch([
        { type: 'put', sublevel: this.manifests, key: id, value: bytes },
        { type: 'put', sublevel: this.mine, key: id, value: share }
      ])
    })
    return { share, manifest: bytes, skipped: result.skipped }
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
      if (!holds((await this.summary(id, ownerKey)).chunkIds, chunkId)) return false
      await this.mine.put(id, { ...share, changed: { at: share.changed?.at ?? Date.now(), paths: [...(share.changed?.paths ?? []), path] } })
      return true
    })
  }

  async unshare (ref: string): Promise<MyShare> {
    return await this.exclusive(async () => {
      const share = await this.resolve(ref)
      await this.mine.db.batch([{ type: 'del', sublevel: this.mine, key: share.id }, { type: 'del', sublevel: this.manifests, key: share.id }])
      return share
    })
  }

  /** Runs read-modify-writes of my shares one at a time, so none undoes another (a note on a share just replaced or removed). */
  private async exclusive<T> (task: () => Promise<T>): Promise<T> {
    const run = this.writing.then(task)
    this.writing = run.catch(() => {})
    return await run
  }

  /** Keeps a friend's manifest (its signed bytes) and its record, both or neither. */
  async saveReceived (received: ReceivedManifest, manifest: Uint8Array): Promise<void> {
    const key = `${received.owner}/${received.shareId}/${received.version}`
    await this.received.db.batch([
      { type: 'put', sublevel: this.receivedBytes, key, value: manifest },
      { type: 'put', sublevel: this.received, key, value: received }
    ])
  }

  async getReceived (owner: string, shareId: string, version: number): Promise<ReceivedManifest | undefined> {
    return await getOrUndefined(this.received, `${owner}/${shareId}/${version}`)
  }

  /** The signed bytes of a friend's manifest I kept (`saveReceived`). */
  async receivedManifest (owner: string, shareId: string, version: number): Promise<Uint8Array | undefined> {
    return await getOrUndefined(this.receivedBytes, `${owner}/${shareId}/${version}`)
  }

  /**
   * Forgets the manifests friends sent me that are not in `keep`
   * (`owner/shareId/version`) and were received before `receivedBefore`.
   * Returns how many went.
   */
  async pruneReceived (keep: ReadonlySet<string>, receivedBefore: number): Promise<number> {
    const doomed: string[] = []
    for await (const [key, value] of this.received.iterator()) {
      if (!keep.has(key) && value.received < receivedBefore) doomed.push(key)
    }
    if (doomed.length > 0) {
      await this.received.db.batch(doomed.flatMap(key => [
        { type: 'del' as const, sublevel: this.received, key },
        { type: 'del' as const, sublevel: this.receivedBytes, key }
      ]))
    }
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

  /** Decodes a stored manifest, checking again that its owner signed it; in slices, as `summary`. */
  static async decode (manifest: Uint8Array, owner: Uint8Array): Promise<Manifest> {
    return await decodeManifestInSlices(manifest, { owner })
  }

  /**
   * A stored manifest's entries as it is checked again (its signature by
   * `owner`, if given, included), each handed to `visit` and none kept;
   * in slices, as `summary`. What `visit` saw is the manifest's only once
   * this resolves.
   */
  static async walk (manifest: Uint8Array, owner: Uint8Array | undefined, visit: EntryVisitor): Promise<ManifestSummary> {
    return await summarizeManifestInSlices(manifest, { ...(owner !== undefined ? { owner } : {}), visit })
  }
}

/** Whether `ids` (32 bytes each) holds the chunk with hex id `id`. */
function holds (ids: Uint8Array, id: string): boolean {
  const wanted = Buffer.from(id, 'hex')
  // a malformed id (not 64 hex digits) is held by no share, and must not step the loop by 0
  if (wanted.length !== ID_LENGTH) return false
  for (let at = 0; at < ids.length; at += ID_LENGTH) if (wanted.equals(ids.subarray(at, at + ID_LENGTH))) return true
  return false
}
