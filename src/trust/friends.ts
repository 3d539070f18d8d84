import { EventEmitter } from 'node:events'
import { KithError } from '../errors.ts'
import type { Sublevel } from '../peer/database.ts'
import { isService, type Service } from './grants.ts'
import { isSafeText } from '../peer/text.ts'

/**
 * The friend graph: who my friends are and what each of us grants the other.
 * Kept in LevelDB, keyed by peer id. A revoked friend stays in the book with
 * state `revoked`, so the gate keeps refusing them across restarts.
 */
export interface Friend {
  peerId: string
  /** Ed25519 public key, base64 */
  publicKey: string
  label: string
  /** what I grant them */
  grantsToThem: Service[]
  /** what they grant me */
  grantsFromThem: Service[]
  state: 'active' | 'revoked'
  /** last addresses they were seen at or announced */
  addrs: string[]
  /** ms since epoch, or null if never connected */
  lastSeen: number | null
  /** ms since epoch */
  since: number
  /** the invite that made us friends */
  via: string
}

export type FriendEvent =
  | { type: 'friend:added', friend: Friend }
  | { type: 'friend:changed', friend: Friend }
  | { type: 'friend:revoked', friend: Friend }

export const MAX_LABEL_LENGTH = 64

export function checkLabel (label: unknown): string {
  if (typeof label !== 'string' || label.length === 0 || label.length > MAX_LABEL_LENGTH || !isSafeText(label)) {
    throw new KithError('BAD_REQUEST', `a friend name must be 1 to ${MAX_LABEL_LENGTH} printable characters`)
  }
  if (label.startsWith('12D3Koo')) {
    throw new KithError('BAD_REQUEST', 'a friend name must not look like a peer id')
  }
  return label
}

export class FriendBook extends EventEmitter<{ event: [FriendEvent] }> {
  private readonly level: Sublevel<Friend>
  /** in-memory mirror: the friend count of a personal node is small */
  private readonly byId = new Map<string, Friend>()
  /** the change under way; the next one waits for it (see `serial`) */
  private writing: Promise<unknown> = Promise.resolve()

  constructor (level: Sublevel<Friend>) {
    super()
    // every service of the daemon follows the friend book (11 today): that is not a leak, so
    // Node's warning at 10 would only be noise on stderr; a real leak still shows past this
    this.setMaxListeners(32)
    this.level = level
  }

  async load (): Promise<void> {
    for await (const [key, value] of this.level.iterator()) {
      this.byId.set(key, value)
    }
  }

  list (): Friend[] {
    return [...this.byId.values()].sort((a, b) => a.label.localeCompare(b.label))
  }

  get (peerId: string): Friend | undefined {
    return this.byId.get(peerId)
  }

  isActive (peerId: string): boolean {
    return this.byId.get(peerId)?.state === 'active'
  }

  isRevoked (peerId: string): boolean {
    return this.byId.get(peerId)?.state === 'revoked'
  }

  /** True if `peerId` is an active friend I granted `service`. */
  allows (peerId: string, service: Service): boolean {
    const friend = this.byId.get(peerId)
    return friend?.state === 'active' && friend.grantsToThem.includes(service)
  }

  /** Finds a friend by label or peer id. */
  resolve (name: string): Friend {
    const byId = this.byId.get(name)
    if (byId != null) return byId
    const matches = [...this.byId.values()].filter(f => f.label === name)
    if (matches.length === 1) return matches[0]!
    if (matches.length > 1) throw new KithError('FRIEND_AMBIGUOUS', `more than one friend is called ${name}; use the peer id`)
    throw new KithError('FRIEND_UNKNOWN', `no friend is called ${JSON.stringify(name)}; see \`kith friends\``)
  }

  /** A label not used by another friend: `base`, or `base-2`, `base-3`... */
  freeLabel (base: string, forPeer?: string): string {
    const taken = (l: string): boolean => [...this.byId.values()].some(f => f.label === l && f.peerId !== forPeer)
    if (!taken(base)) return base
    for (let i = 2; ; i++) {
      const candidate = `${base.slice(0, MAX_LABEL_LENGTH - 4)}-${i}`
      if (!taken(candidate)) return candidate
    }
  }

  /**
   * Runs one change of the book after the one before it, so that it reads
   * what that one wrote. Changes come at the same moment (a grant from the
   * API while presence records that the friend connected, a revocation
   * while locate records where they moved): each writes the whole record,
   * so without this the later one wrote back what it had read before the
   * other, and the grant or the revocation was lost, in memory and on disk.
   */
  private async serial<T> (change: () => Promise<T>): Promise<T> {
    const run = this.writing.then(change)
    this.writing = run.catch(() => {})
    return await run
  }

  /** Within `serial` only. */
  private async save (friend: Friend, type: FriendEvent['type']): Promise<Friend> {
    await this.level.put(friend.peerId, friend)
    this.byId.set(friend.peerId, friend)
    this.emit('event', { type, friend })
    return friend
  }

  /**
   * Records the friendship a redeemed invite makes (the issuer's side). A
   * stranger becomes a friend with the invite's grants. A friendship that
   * exists is left exactly as it is: redeeming again, the same invite or
   * another, must not bring back a grant removed since. A revoked friend is
   * refused (the gate already keeps them out; this holds if it did not).
   */
  async admit (init: Omit<Friend, 'state' | 'lastSeen' | 'since'>): Promise<Friend> {
    return await this.serial(async () => {
      const existing = this.byId.get(init.peerId)
      if (existing?.state === 'revoked') {
        throw new KithError('FRIEND_REVOKED', 'this node ended its friendship with you; an invite does not bring it back')
      }
      return existing ?? await this.add(init)
    })
  }

  /** Adds a friend, or makes a known one active again with the new grants. */
  async befriend (init: Omit<Friend, 'state' | 'lastSeen' | 'since'>): Promise<Friend> {
    return await this.serial(async () => await this.add(init))
  }

  private async add (init: Omit<Friend, 'state' | 'lastSeen' | 'since'>): Promise<Friend> {
    const existing = this.byId.get(init.peerId)
    const friend: Friend = {
      ...init,
      label: existing?.label ?? this.freeLabel(init.label, init.peerId),
      state: 'active',
      lastSeen: existing?.lastSeen ?? null,
      since: existing?.since ?? Date.now()
    }
    return await this.save(friend, existing == null ? 'friend:added' : 'friend:changed')
  }

  async rename (name: string, label: string): Promise<Friend> {
    return await this.serial(async () => {
      const friend = this.resolve(name)
      checkLabel(label)
      if (this.freeLabel(label, friend.peerId) !== label) {
        throw new KithError('FRIEND_NAME_TAKEN', `another friend is already called ${label}`)
      }
      return await this.save({ ...friend, label }, 'friend:changed')
    })
  }

  async grant (name: string, service: string): Promise<Friend> {
    return await this.serial(async () => {
      const friend = this.activeFriend(name)
      if (!isService(service)) throw new KithError('BAD_REQUEST', `unknown service ${JSON.stringify(service)}`)
      if (friend.grantsToThem.includes(service)) return friend
      return await this.save({ ...friend, grantsToThem: [...friend.grantsToThem, service].sort() }, 'friend:changed')
    })
  }

  async ungrant (name: string, service: string): Promise<Friend> {
    return await this.serial(async () => {
      const friend = this.activeFriend(name)
      if (!isService(service)) throw new KithError('BAD_REQUEST', `unknown service ${JSON.stringify(service)}`)
      return await this.save({ ...friend, grantsToThem: friend.grantsToThem.filter(s => s !== service) }, 'friend:changed')
    })
  }

  async revoke (name: string): Promise<Friend> {
    return await this.serial(async () => {
      const friend = this.resolve(name)
      if (friend.state === 'revoked') return friend
      return await this.save({ ...friend, state: 'revoked', grantsToThem: [], grantsFromThem: [] }, 'friend:revoked')
    })
  }

  /** Records that a friend was seen, and where. Quiet: no event, it happens often. */
  async seen (peerId: string, addrs?: string[]): Promise<void> {
    await this.serial(async () => {
      const friend = this.byId.get(peerId)
      if (friend == null) return
      const updated = { ...friend, lastSeen: Date.now(), addrs: addrs != null && addrs.length > 0 ? addrs : friend.addrs }
      await this.level.put(peerId, updated)
      this.byId.set(peerId, updated)
    })
  }

  /**
   * Records where a friend is now, from an address record they signed (they
   * need not be connected). Quiet, like `seen`; only active friends.
   */
  async moved (peerId: string, addrs: string[]): Promise<void> {
    await this.serial(async () => {
      const friend = this.byId.get(peerId)
      if (friend?.state !== 'active' || addrs.length === 0) return
      const updated = { ...friend, addrs }
      await this.level.put(peerId, updated)
      this.byId.set(peerId, updated)
    })
  }

  /** Updates what a friend grants me (they told me over the wire: grant-sync.ts); sorted, as they come from there. */
  async setGrantsFromThem (peerId: string, grants: Service[]): Promise<void> {
    await this.serial(async () => {
      const friend = this.byId.get(peerId)
      if (friend?.state !== 'active' || friend.grantsFromThem.join(',') === grants.join(',')) return
      await this.save({ ...friend, grantsFromThem: grants }, 'friend:changed')
    })
  }

  private activeFriend (name: string): Friend {
    const friend = this.resolve(name)
    if (friend.state !== 'active') throw new KithError('FRIEND_REVOKED', `${friend.label} was revoked; a revoked friend can't be granted anything`)
    return friend
  }
}
