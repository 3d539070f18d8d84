import { KithError, asKithError } from '../../errors.ts'
import { decodeManifest, type Manifest } from '../../transfer/manifest.ts'
import type { ShareBook } from './share-book.ts'
import { ID_LENGTH } from '../../transfer/constants.ts'
import { select, type Transfer } from './transfers.ts'

/**
 * What file sharing keeps alive in the engine's chunk store: the policy half
 * of chunk collection (the mechanism, pins and guards are the engine's:
 * services/engine/collector.ts). FileService declares it to the engine.
 *
 * **Live** (everything else file sharing stored is garbage):
 * 1. every chunk of the newest manifest of each of my shares (an unshared
 *    share has no record left; older versions of a share are superseded, and
 *    their chunks stay only where the newest version still lists them, as
 *    unchanged files keep their chunk ids);
 * 2. the chunks an open fetch needs (queued, running, paused or failed: a
 *    failed fetch can be resumed): those of the files it selects in the
 *    manifest it pinned, whoever the owner is now; `kith cancel` frees them;
 * 3. for each friend's share I finished fetching (some part of), while that
 *    friend is still my friend: the chunks, in the newest version I finished
 *    fetching, of the files under every path I finished fetching of it (in any
 *    version), so I keep serving them to other friends. A newer finished
 *    version supersedes the older ones (their changed files' chunks go); a
 *    revoked friend's shares are no longer served, so their chunks go.
 *
 * **Cost.** The mark decodes (and verifies) each manifest it needs once;
 * of my shares', it keeps only the chunk ids (ShareBook.summary).
 */

/** What the live set is made from: my shares, my fetches and my friends. */
export interface LiveInit {
  shares: ShareBook
  /** my public key: my shares' manifests must be signed by it */
  publicKey: Uint8Array
  transfers: () => Array<Pick<Transfer, 'id' | 'owner' | 'shareId' | 'version' | 'path' | 'state'>>
  friends: {
    get: (peerId: string) => { publicKey: string } | undefined
    isActive: (peerId: string) => boolean
  }
  /** filled with the received manifests (`owner/shareId/version`) the live chunks come from */
  manifestsUsed?: Set<string>
}

const OPEN: ReadonlySet<Transfer['state']> = new Set(['queued', 'running', 'paused', 'failed'])

/**
 * The chunks to keep (see the policy above), added to `live`. Throws, so the cycle deletes
 * nothing, if any manifest it needs is missing or can't be decoded: better a
 * store that keeps too much than a share that can no longer be served.
 */
export async function liveChunks (init: LiveInit, live = new Set<string>()): Promise<Set<string>> {
  const addSelected = (manifest: Manifest, path: string): void => {
    for (const { entry } of select(manifest, path).files) for (const id of entry.chunks) live.add(id)
  }

  // 1. my shares, newest versions: their chunk ids alone (a share of many files decodes to an object per file)
  for (const share of await init.shares.list()) {
    try {
      const { chunkIds } = await init.shares.summary(share.id, init.publicKey)
      for (let at = 0; at < chunkIds.length; at += ID_LENGTH) live.add(chunkIds.toString('hex', at, at + ID_LENGTH))
    } catch (err) {
      throw new KithError('INTERNAL', `the stored manifest of your share ${share.name} (${share.id}) can't be read (${asKithError(err).message}); the chunk store was left as it is`, { cause: err })
    }
  }

  const manifests = new Map<string, Manifest>()
  const received = async (t: Pick<Transfer, 'id' | 'owner' | 'shareId' | 'version'>): Promise<Manifest> => {
    const key = `${t.owner}/${t.shareId}/${t.version}`
    init.manifestsUsed?.add(key)
    let manifest = manifests.get(key)
    if (manifest !== undefined) return manifest
    const saved = await init.shares.receivedManifest(t.owner, t.shareId, t.version)
    if (saved === undefined) {
      throw new KithError('INTERNAL', `the manifest transfer ${t.id} was started from (version ${t.version}) is missing; cancel the transfer to let the chunk store be cleaned`)
    }
    const ownerKey = init.friends.get(t.owner)?.publicKey
    try {
      // checked against the owner's key when they are still in my book; the signature is checked either way
      manifest = decodeManifest(saved, ownerKey !== undefined ? { owner: Buffer.from(ownerKey, 'base64') } : {})
    } catch (err) {
      throw new KithError('INTERNAL', `the manifest transfer ${t.id} was started from can't be read (${asKithError(err).message}); cancel the transfer to let the chunk store be cleaned`, { cause: err })
    }
    manifests.set(key, manifest)
    return manifest
  }

  // 2. what open fetches need; 3. the newest finished version of each friend's share
  const finished = new Map<string, { owner: string, shareId: string, newest: Pick<Transfer, 'id' | 'owner' | 'shareId' | 'version'>, paths: Set<string> }>()
  for (const t of init.transfers()) {
    if (OPEN.has(t.state)) {
      addSelected(await received(t), t.path)
    } else if (t.state === 'done' && init.friends.isActive(t.owner)) {
      const key = `${t.owner}/${t.shareId}`
      const group = finished.get(key) ?? { owner: t.owner, shareId: t.shareId, newest: t, paths: new Set<string>() }
      if (t.version > group.newest.version) group.newest = t
      group.paths.add(t.path)
      finished.set(key, group)
    }
  }
  for (const group of finished.values()) {
    const manifest = await received(group.newest)
    for (const path of group.paths) {
      try {
        addSelected(manifest, path)
      } catch (err) {
        // a path fetched from an older version that the newest no longer has: superseded
        if (asKithError(err).code !== 'SHARE_UNKNOWN') throw err
      }
    }
  }
  return live
}
