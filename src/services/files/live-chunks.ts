import { KithError, asKithError } from '../../errors.ts'
import type { ManifestSummary } from '../../transfer/manifest.ts'
import { ShareBook } from './share-book.ts'
import { ID_LENGTH } from '../../transfer/constants.ts'
import { notInShare, selects, type Transfer } from './transfers.ts'

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
 * **Cost.** The mark checks (and verifies) each manifest it needs once, in
 * slices (src/peer/slices.ts), keeping no entry: of my shares', the chunk
 * ids (ShareBook.summary); of friends', the chunk ids of the files under
 * the paths it wants, as the entries are walked (ShareBook.walk).
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
  // 1. my shares, newest versions: their chunk ids alone (a share of many files decodes to an object per file)
  for (const share of await init.shares.list()) {
    try {
      const { chunkIds } = await init.shares.summary(share.id, init.publicKey)
      addIds(live, chunkIds)
    } catch (err) {
      throw new KithError('INTERNAL', `the stored manifest of your share ${share.name} (${share.id}) can't be read (${asKithError(err).message}); the chunk store was left as it is`, { cause: err })
    }
  }

  // 2. what open fetches need; 3. the newest finished version of each friend's share
  const wanted = new Map<string, Wanted>()
  const want = (t: Pick<Transfer, 'id' | 'owner' | 'shareId' | 'version'>, path: string, open: boolean): void => {
    const key = `${t.owner}/${t.shareId}/${t.version}`
    init.manifestsUsed?.add(key)
    const paths = wanted.get(key) ?? { transfer: t, paths: new Map<string, boolean>() }
    paths.paths.set(path, open || (paths.paths.get(path) ?? false))
    wanted.set(key, paths)
  }
  const finished = new Map<string, { newest: Pick<Transfer, 'id' | 'owner' | 'shareId' | 'version'>, paths: Set<string> }>()
  for (const t of init.transfers()) {
    if (OPEN.has(t.state)) {
      want(t, t.path, true)
    } else if (t.state === 'done' && init.friends.isActive(t.owner)) {
      const key = `${t.owner}/${t.shareId}`
      const group = finished.get(key) ?? { newest: t, paths: new Set<string>() }
      if (t.version > group.newest.version) group.newest = t
      group.paths.add(t.path)
      finished.set(key, group)
    }
  }
  // a path fetched from an older version that the newest no longer has is superseded
  for (const group of finished.values()) for (const path of group.paths) want(group.newest, path, false)
  for (const manifest of wanted.values()) await addSelected(init, manifest, live)
  return live
}

/** A received manifest the live set needs: a transfer that uses it, and the paths of it wanted (true: an open fetch's, which it must hold). */
interface Wanted {
  transfer: Pick<Transfer, 'id' | 'owner' | 'shareId' | 'version'>
  paths: Map<string, boolean>
}

/**
 * Adds the chunks of the files under the wanted paths of a received
 * manifest (as `select` picks them) to `live`: its saved bytes are walked
 * entry by entry, in slices, and nothing of it is kept.
 */
async function addSelected (init: LiveInit, { transfer: t, paths }: Wanted, live: Set<string>): Promise<void> {
  const saved = await init.shares.receivedManifest(t.owner, t.shareId, t.version)
  if (saved === undefined) {
    throw new KithError('INTERNAL', `the manifest transfer ${t.id} was started from (version ${t.version}) is missing; cancel the transfer to let the chunk store be cleaned`)
  }
  const ownerKey = init.friends.get(t.owner)?.publicKey
  const found = new Set<string>()
  // picked as they come, added once the walk has checked the whole manifest
  const picked = new Set<string>()
  let summary: ManifestSummary
  try {
    // checked against the owner's key when they are still in my book; the signature is checked either way
    summary = await ShareBook.walk(saved, ownerKey !== undefined ? Buffer.from(ownerKey, 'base64') : undefined, (path, ids) => {
      for (const wanted of paths.keys()) {
        if (ids === null) {
          if (path === wanted) found.add(wanted)
        } else if (selects(wanted, path)) {
          found.add(wanted)
          addIds(picked, ids)
        }
      }
    })
  } catch (err) {
    throw new KithError('INTERNAL', `the manifest transfer ${t.id} was started from can't be read (${asKithError(err).message}); cancel the transfer to let the chunk store be cleaned`, { cause: err })
  }
  for (const [path, open] of paths) {
    if (open && path !== '' && !found.has(path)) throw notInShare(path, summary.name)
  }
  for (const id of picked) live.add(id)
}

/** Adds chunk ids given as bytes, 32 each, to `set` as hex. */
function addIds (set: Set<string>, ids: Uint8Array): void {
  const bytes = Buffer.from(ids.buffer, ids.byteOffset, ids.length)
  for (let at = 0; at < bytes.length; at += ID_LENGTH) set.add(bytes.toString('hex', at, at + ID_LENGTH))
}
