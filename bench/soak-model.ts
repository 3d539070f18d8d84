import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { readdir, lstat } from 'node:fs/promises'
import { join, relative, basename } from 'node:path'
import type { Service } from '../src/trust/grants.ts'
import type { TransferState } from '../src/services/files/transfers.ts'

/**
 * What the soak run expects of its daemons, from the actions it took: the
 * friends and grants each node lists, and what each fetch leaves at its
 * destination. The checks compare a node's answers and its disk with it and
 * return what differs, one line per problem.
 */

// ---------------------------------------------------------------------------
// shared data

/** A file a node shares: its path inside the share ('' when the share is the file), size and SHA-256. */
export interface SourceFile {
  rel: string
  size: number
  sha: string
}

export interface ShareModel {
  owner: string
  /** the share's name, as friends fetch it: `owner:name` */
  name: string
  kind: 'file' | 'folder'
  files: SourceFile[]
  /** folders inside a folder share, for fetches of part of it */
  dirs: string[]
}

/**
 * What fetching `path` of a share leaves at the destination: path under the
 * destination ('' when the destination is the file itself) -> source file.
 */
export function expectedFiles (share: ShareModel, path: string): Map<string, SourceFile> {
  const out = new Map<string, SourceFile>()
  if (share.kind === 'file') {
    out.set('', share.files[0]!)
    return out
  }
  for (const file of share.files) {
    if (path === '') out.set(file.rel, file)
    else if (file.rel === path) out.set('', file)
    else if (file.rel.startsWith(path + '/')) out.set(file.rel.slice(path.length + 1), file)
  }
  return out
}

// ---------------------------------------------------------------------------
// friends and grants

export interface FriendSide {
  label: string
  state: 'active' | 'revoked'
  /** what this node grants the friend */
  grantsToThem: Service[]
  /** what this node recorded the friend granting it (told at redeem time) */
  grantsFromThem: Service[]
}

/** A friend as `GET /v1/friends` lists it (the fields the model covers). */
export interface ListedFriend extends FriendSide {
  peerId: string
}

export interface Peer {
  name: string
  peerId: string
}

const sorted = (services: readonly Service[]): Service[] => [...new Set(services)].sort()

export class FriendModel {
  /** node name -> friend's peer id -> what the node should list */
  private readonly books = new Map<string, Map<string, FriendSide>>()

  private book (node: string): Map<string, FriendSide> {
    let book = this.books.get(node)
    if (book === undefined) {
      book = new Map()
      this.books.set(node, book)
    }
    return book
  }

  side (node: Peer, friend: Peer): FriendSide | undefined {
    return this.books.get(node.name)?.get(friend.peerId)
  }

  isActive (node: Peer, friend: Peer): boolean {
    return this.side(node, friend)?.state === 'active'
  }

  /**
   * A first invite from `issuer`, made with `--name accepter --grant
   * inviteGrants`, accepted with `--grant acceptGrants`: both list each other.
   */
  befriended (issuer: Peer, accepter: Peer, inviteGrants: readonly Service[], acceptGrants: readonly Service[]): void {
    this.book(issuer.name).set(accepter.peerId, { label: accepter.name, state: 'active', grantsToThem: sorted(inviteGrants), grantsFromThem: sorted(acceptGrants) })
    this.book(accepter.name).set(issuer.peerId, { label: issuer.name, state: 'active', grantsToThem: sorted(acceptGrants), grantsFromThem: sorted(inviteGrants) })
  }

  /**
   * A fresh invite between friends: the issuer's record stays exactly as it
   * was (redeeming again brings back no grant removed since); the accepter
   * grants what it accepted with and records what the issuer answered, the
   * grants it holds now.
   */
  reinvited (issuer: Peer, accepter: Peer, acceptGrants: readonly Service[]): void {
    const mine = this.side(issuer, accepter)
    const theirs = this.side(accepter, issuer)
    if (mine === undefined || theirs === undefined) throw new Error(`${issuer.name} and ${accepter.name} are not friends in the model`)
    this.book(accepter.name).set(issuer.peerId, { ...theirs, grantsToThem: sorted(acceptGrants), grantsFromThem: [...mine.grantsToThem] })
  }

  granted (node: Peer, friend: Peer, service: Service, on: boolean): void {
    const side = this.side(node, friend)
    if (side === undefined) throw new Error(`${friend.name} is not ${node.name}'s friend in the model`)
    const grants = side.grantsToThem.filter(s => s !== service)
    this.book(node.name).set(friend.peerId, { ...side, grantsToThem: sorted(on ? [...grants, service] : grants) })
  }

  revoked (node: Peer, friend: Peer): void {
    const side = this.side(node, friend)
    if (side === undefined) throw new Error(`${friend.name} is not ${node.name}'s friend in the model`)
    this.book(node.name).set(friend.peerId, { ...side, state: 'revoked', grantsToThem: [], grantsFromThem: [] })
  }

  /** How many friends (active and revoked) the node should list. */
  count (node: string): number {
    return this.books.get(node)?.size ?? 0
  }

  /** What `node` lists that the model does not expect, and what it lacks. */
  check (node: string, listed: readonly ListedFriend[]): string[] {
    const problems: string[] = []
    const expected = this.books.get(node) ?? new Map<string, FriendSide>()
    const seen = new Set<string>()
    for (const friend of listed) {
      seen.add(friend.peerId)
      const want = expected.get(friend.peerId)
      if (want === undefined) {
        problems.push(`lists ${friend.label} (${friend.peerId}), who is no friend of its`)
        continue
      }
      const got: FriendSide = { label: friend.label, state: friend.state, grantsToThem: sorted(friend.grantsToThem), grantsFromThem: sorted(friend.grantsFromThem) }
      for (const key of ['label', 'state', 'grantsToThem', 'grantsFromThem'] as const) {
        if (JSON.stringify(got[key]) !== JSON.stringify(want[key])) {
          problems.push(`${want.label}: ${key} is ${JSON.stringify(got[key])}, expected ${JSON.stringify(want[key])}`)
        }
      }
    }
    for (const [peerId, want] of expected) {
      if (!seen.has(peerId)) problems.push(`lost friend ${want.label} (${peerId}, ${want.state})`)
    }
    return problems
  }
}

// ---------------------------------------------------------------------------
// fetches and what they leave on disk

/** What the soak wants of a fetch it started. */
export type Intent = 'finish' | 'cancel' | 'removed'

export interface FetchModel {
  /** the soak's own number: the fetch's folder is `f<n>` under its node's destination folder */
  n: number
  node: string
  owner: string
  share: string
  path: string
  /** the fetch's own folder; its destination lies inside */
  dir: string
  dest: string
  expected: Map<string, SourceFile>
  totalBytes: number
  /** the daemon's transfer id */
  id: string
  /** as last seen in the daemon's listing */
  state: TransferState
  error: string | null
  intent: Intent
  /** the destination was found complete and verified once it was done */
  verified: boolean
  /** a small tmpfs mounted at `dir` (the disk-full action) */
  mount: string | null
}

const PARTIAL = /^\.kith-[0-9a-f]{16}\.kith-partial$/
const FINAL_STATES: readonly TransferState[] = ['done', 'cancelled']

/** SHA-256 of files, remembered while a file's inode, size and mtime stay the same. */
export class Hasher {
  private readonly known = new Map<string, { key: string, sha: string }>()
  bytes = 0

  async sha (path: string, stat: { ino: number, size: number, mtimeMs: number }): Promise<string> {
    const key = `${stat.ino}/${stat.size}/${stat.mtimeMs}`
    const hit = this.known.get(path)
    if (hit?.key === key) return hit.sha
    const hash = createHash('sha256')
    for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer)
    const sha = hash.digest('hex')
    this.bytes += stat.size
    this.known.set(path, { key, sha })
    return sha
  }
}

/** Every path under `dir` (files, links, anything but folders), recursively; none if it is gone. */
async function walk (dir: string): Promise<string[]> {
  let entries
  try {
    entries = await readdir(dir, { withFileTypes: true })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw err
  }
  const out: string[] = []
  for (const entry of entries) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) out.push(...await walk(path))
    else out.push(path)
  }
  return out
}

/**
 * What is wrong at a fetch's destination: a file that is not complete or
 * not what its source holds, anything unexpected, a hidden partial file of a
 * fetch that is done or cancelled (`partialsMayLinger`: a start removes a
 * cancelled fetch's, in the background), and for a done fetch a file missing.
 * Files of an unfinished fetch may be missing; those present must be whole.
 */
export async function checkDestination (f: FetchModel, hasher: Hasher, partialsMayLinger = false): Promise<string[]> {
  const problems: string[] = []
  const where = `f${f.n} (${f.id}, ${f.state})`
  if (f.intent === 'removed') {
    if ((await walk(f.dir)).length > 0) problems.push(`${where}: files came back in the removed destination ${f.dir}`)
    return problems
  }
  const present = new Set<string>()
  for (const path of await walk(f.dir)) {
    const stat = await lstat(path)
    if (PARTIAL.test(basename(path))) {
      if (FINAL_STATES.includes(f.state) && !partialsMayLinger) problems.push(`${where}: partial file ${path} left behind`)
      continue
    }
    const rel = relative(f.dest, path)
    const source = f.expected.get(rel)
    if (source === undefined || rel.startsWith('..')) {
      problems.push(`${where}: unexpected ${stat.isSymbolicLink() ? 'symlink' : 'file'} ${path}`)
      continue
    }
    present.add(rel)
    if (!stat.isFile()) {
      problems.push(`${where}: ${path} is not a regular file`)
    } else if (stat.size !== source.size) {
      problems.push(`${where}: ${path} has ${stat.size} bytes, its source ${source.size} (a partial destination)`)
    } else if (await hasher.sha(path, stat) !== source.sha) {
      problems.push(`${where}: ${path} differs from its source (SHA-256)`)
    }
  }
  if (f.state === 'done') {
    for (const rel of f.expected.keys()) {
      if (!present.has(rel)) problems.push(`${where}: done, but ${rel === '' ? f.dest : join(f.dest, rel)} is missing`)
    }
  }
  return problems
}

/** Folders under a node's destination folder that no fetch of the model owns (`f<n>` names them). */
export async function strayEntries (root: string, known: ReadonlySet<string>): Promise<string[]> {
  let names: string[]
  try {
    names = await readdir(root)
  } catch {
    return []
  }
  return names.filter(name => !known.has(name)).map(name => join(root, name))
}
