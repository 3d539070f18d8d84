import { EventEmitter } from 'node:events'
import { access, rm } from 'node:fs/promises'
import { userInfo } from 'node:os'
import { randomBytes } from 'node:crypto'
import { multiaddr } from '@multiformats/multiaddr'
import { KithError } from '../errors.ts'
import { homePaths, ensureHome, makeHomePrivate, makeProcessPrivate, writeFileAtomic, type HomePaths } from '../peer/home.ts'
import { openHomeDatabase, sublevel, type Database } from '../peer/database.ts'
import { loadOrCreateIdentity, type Identity } from '../peer/identity.ts'
import { cancelPendingAddressWrite, createNode, DEFAULT_LISTEN, DHT_PROTOCOL, type KithLibp2p, type RelayBudget } from '../peer/node.ts'
import { PING_PROTOCOL } from '../peer/ping.ts'
import { NodeDatastore } from '../peer/datastore.ts'
import { dialPolicyFor, type DialPolicy } from '../peer/dial-policy.ts'
import { ConnectionSlots } from './connection-slots.ts'
import { FriendBook, type Friend, type FriendEvent, checkLabel } from '../trust/friends.ts'
import { InviteBook, type IssuedInvite, type InviteListing } from '../trust/invite-book.ts'
import { createInvite, parseInvite, summarise, type InviteSummary, MAX_INVITE_USES, MAX_INVITE_LIFETIME_S, displayName as displayNameSchema } from '../trust/invite.ts'
import { connectionGater, friendsOnly } from '../trust/gate.ts'
import { redeemHandler, redeem, REDEEM_PROTOCOL, MAX_INBOUND_REDEEM_STREAMS } from '../trust/redeem.ts'
import { GrantSync } from '../trust/grant-sync.ts'
import { DEFAULT_GRANTS, type Service } from '../trust/grants.ts'
import { Presence, type LinkInfo, type PresenceEvent } from './presence.ts'
import { FileService } from './files/file-service.ts'
import { loadConfig, transferEngine, type BandwidthView, type ConfigFile, type TransferEngine } from './engine/index.ts'
import { LocateService } from './locate/index.ts'
import { FriendServices } from './expose/index.ts'
import { BackupService, type BackupEvent } from './backup/index.ts'
import { BackupCare } from './backup/care.ts'
import { BackupHost } from './backup/host.ts'
import { careSettings } from './backup/settings.ts'
import { Reachability, allAddrs, type ReachabilityView, type RelayInUse, type PunchView } from './reachability.ts'
import type { TransferEvent } from './files/transfers.ts'
import { DownloadService, type DownloadEvent } from './downloads/index.ts'
import { ProxyService } from './proxy/index.ts'
import { releaseMemoryWhenQuiet } from './daemon-heap.ts'

/**
 * The running node: opens the home folder, loads the identity and the friend
 * graph, starts libp2p with the gate, keeps friends connected, and offers the
 * operations the local API and the CLI expose.
 */
export interface DaemonInit {
  home: string
  listen?: string[]
  passphrase?: string
  /** display name shown to friends in invites; remembered once set */
  name?: string
  /** cap on what this node serves, bytes per second */
  maxUpload?: number
  /** cap on what this node fetches, bytes per second */
  maxDownload?: number
  /** what this node gives each relayed connection of a friend (default: no limit) */
  relay?: RelayBudget
}

export interface FriendView extends Friend {
  /** my exposed services granted to them (per-service grants, `service:NAME`: src/services/expose) */
  services: string[]
  /** how we are connected; `punch`: how hole punching to them went (null if never tried) */
  link: LinkInfo & { punch: PunchView | null }
}

export interface Status {
  peerId: string
  name: string
  home: string
  addrs: string[]
  friends: { total: number, online: number }
  online: string[]
  started: string
  /** current rates per direction, class and peer, and the caps in force */
  bandwidth: BandwidthView
  /** am I publicly reachable, as friends' dial-backs tell */
  reachability: ReachabilityView
  relays: {
    /** relays I hold a reservation on (behind NAT) */
    using: RelayInUse[]
    /** friends holding a reservation on me */
    serving: Array<{ peerId: string, label: string, expires: number }>
    /** whether I grant reservations now (only while public) */
    offering: boolean
  }
}

export interface CreateInviteRequest {
  label?: string
  expiresIn?: number
  uses?: number
  grants?: Service[]
}

export type DaemonEvent = FriendEvent | PresenceEvent | TransferEvent | DownloadEvent | BackupEvent

interface Meta {
  peerId?: string
  name?: string
  lastPort?: number
}

export class Daemon extends EventEmitter<{ event: [DaemonEvent] }> {
  readonly paths: HomePaths
  readonly identity: Identity
  readonly libp2p: KithLibp2p
  readonly friends: FriendBook
  readonly invites: InviteBook
  private readonly db: Database
  private readonly presence: Presence
  private readonly meta: Meta
  private readonly started = new Date()
  private transferEngine: TransferEngine | null = null
  private fileService: FileService | null = null
  private downloadService: DownloadService | null = null
  private proxyService: ProxyService | null = null
  private friendServices: FriendServices | null = null
  private backupService: BackupService | null = null
  private backupCare: BackupCare | null = null
  private backupHost: BackupHost | null = null
  /** gives memory back after a burst of traffic */
  private memory: { stop: () => void } | undefined
  private locateService: LocateService | null = null
  readonly reachability: Reachability

  private readonly relayGate: RelayGate
  /** which addresses from outside are dialled, and the datastore holding the DHT's records */
  private readonly net: NetParts
  /** friends' peers tagged, strangers' connections bounded */
  private readonly slots: ConnectionSlots
  /** friends tell each other what they grant (grantsFromThem) */
  private readonly grantSync: GrantSync
  /** what in the home other users could read before this start made it private (home.ts) */
  loosened: string[] = []

  private constructor (paths: HomePaths, db: Database, identity: Identity, libp2p: KithLibp2p, friends: FriendBook, invites: InviteBook, meta: Meta, relayGate: RelayGate, net: NetParts) {
    super()
    this.paths = paths
    this.db = db
    this.identity = identity
    this.libp2p = libp2p
    this.friends = friends
    this.invites = invites
    this.meta = meta
    this.net = net
    this.slots = new ConnectionSlots({ libp2p, friends })
    this.grantSync = new GrantSync({ libp2p, friends })
    this.presence = new Presence(libp2p, friends, net.dialPolicy)
    this.relayGate = relayGate
    this.reachability = new Reachability({ libp2p, friends, onState: state => { relayGate.relaying = state === 'public' } })
  }

  static async start (init: DaemonInit): Promise<Daemon> {
    const paths = homePaths(init.home)
    // what the daemon writes from now on is born private: LevelDB's files, chunks, api.*
    makeProcessPrivate()
    await ensureHome(paths.root)
    const loosened = await makeHomePrivate(paths.root)
    // a bad config.json stops the start before anything else, naming the file
    const config = await loadConfig(paths.root)
    // The database lock is taken first: it is the one-daemon-per-home lock.
    // The database is made on first start only, and checked before it opens.
    const db = await openHomeDatabase(paths)
    try {
      const metaLevel = sublevel<Meta>(db, 'meta')
      const meta: Meta = await metaLevel.get('node') ?? {}
      const identity = await loadIdentityGuarded(paths, meta, init.passphrase)
      if (init.name != null) meta.name = displayNameSchema.parse(init.name)
      meta.name ??= defaultName()
      meta.peerId = identity.peerId.toString()

      const friends = new FriendBook(sublevel(db, 'friends'))
      await friends.load()
      const invites = new InviteBook(sublevel(db, 'invites'))
      const relayGate: RelayGate = { relaying: false }
      const listen = init.listen ?? DEFAULT_LISTEN
      const net: NetParts = { dialPolicy: dialPolicyFor(listen), datastore: new NodeDatastore() }
      const libp2p = await startNode(identity, friends, listen, meta.lastPort, init.relay, relayGate, net)
      const port = libp2p.getMultiaddrs().map(a => Number(a.getComponents().find(c => c.name === 'tcp')?.value)).find(p => p > 0)
      if (port != null) meta.lastPort = port
      await metaLevel.put('node', meta)

      const daemon = new Daemon(paths, db, identity, libp2p, friends, invites, meta, relayGate, net)
      daemon.loosened = loosened
      try {
        await daemon.wire(init.maxUpload, init.maxDownload, config)
      } catch (err) {
        await libp2p.stop()
        throw err
      }
      return daemon
    } catch (err) {
      await db.close()
      throw err
    }
  }

  private async wire (maxUpload?: number, maxDownload?: number, config: ConfigFile | null = null): Promise<void> {
    this.slots.start()
    await this.libp2p.handle(REDEEM_PROTOCOL, redeemHandler({
      friends: this.friends,
      invites: this.invites,
      self: this.identity.peerId.toString(),
      displayName: () => this.displayName
    }), { maxInboundStreams: MAX_INBOUND_REDEEM_STREAMS, runOnLimitedConnection: true }) // a few hundred bytes: fine over a relay with a budget
    await this.grantSync.start()
    this.libp2p.use(DHT_PROTOCOL, friendsOnly(this.friends))
    this.libp2p.use(PING_PROTOCOL, friendsOnly(this.friends))
    this.friends.on('event', evt => this.emit('event', evt))
    this.presence.on('event', evt => this.emit('event', evt))
    // the engine before the services that plug into it, and stopped after them
    const engine = transferEngine({
      ...(maxUpload != null ? { maxUpload } : {}),
      ...(maxDownload != null ? { maxDownload } : {}),
      config
    })({ db: this.db, home: this.paths.root, libp2p: this.libp2p, friends: this.friends })
    this.transferEngine = engine
    await engine.start()
    this.fileService = await FileService.start({
      db: this.db,
      home: this.paths.root,
      identity: this.identity,
      libp2p: this.libp2p,
      friends: this.friends,
      engine
    })
    this.fileService.on('event', evt => this.emit('event', evt))
    // downloads share the engine's scheduler and, for kith:// URLs and the one queue, file sharing
    this.downloadService = await DownloadService.start({ db: this.db, home: this.paths.root, engine, files: this.fileService, config, onPlaced: file => { this.proxyService?.offer(file) } })
    this.downloadService.on('event', evt => this.emit('event', evt))
    // the DNA-style local proxy on 127.0.0.1: URLs in, bytes out through the scheduler, kept in its cache and
    // offered to friends, friends who hold a file serving it first (docs/proxy.md)
    this.proxyService = await ProxyService.start({ db: this.db, home: this.paths.root, bandwidth: engine.bandwidth, config, friends: { libp2p: this.libp2p, friends: this.friends, secretKey: this.identity.secretKey } })
    // friend services: a local app offered to chosen friends, friends' apps on local ports; traffic through the engine's scheduler
    this.friendServices = await FriendServices.start({ db: this.db, libp2p: this.libp2p, friends: this.friends, bandwidth: engine.bandwidth })
    // the backups I make, placed on friends who granted me backup (src/services/backup)
    this.backupService = await BackupService.start({ db: this.db, identity: this.identity, libp2p: this.libp2p, friends: this.friends, engine })
    this.backupService.on('event', evt => this.emit('event', evt))
    // audits, repair and the recovery record of those backups (docs/backup.md, Audits, Repair, Recovery)
    this.backupCare = new BackupCare({
      db: this.db,
      identity: this.identity,
      friends: this.friends,
      service: this.backupService,
      name: () => this.displayName,
      ...careSettings(config?.backup, config?.path ?? '')
    })
    this.backupCare.start()
    // backup hosting: friends' sealed blobs in the engine's store, within the quotas I grant (docs/backup.md, Host)
    this.backupHost = await BackupHost.start({ db: this.db, home: this.paths.root, libp2p: this.libp2p, friends: this.friends, engine })
    // every service has registered: collection may run
    engine.afterStart()
    const bandwidth = engine.bandwidth
    // after bursts of traffic, and once a minute after the start (what loading the program left)
    this.memory = releaseMemoryWhenQuiet({ rate: () => { const { up, down } = bandwidth.stats(); return up.rate + down.rate }, afterStartMs: 60_000 })
    this.locateService = await LocateService.start({ db: this.db, libp2p: this.libp2p, friends: this.friends, identity: this.identity, dialPolicy: this.net.dialPolicy, dhtRecords: this.net.datastore, moved: async peer => { await this.presence.moved(peer) } })
    this.presence.on('unreachable', peer => this.locateService?.unreachableFriend(peer))
    this.presence.start()
    await this.reachability.start()
  }

  /** the store, scheduler, chunk protocol, limits and collection every service shares */
  get engine (): TransferEngine {
    if (this.transferEngine == null) throw new KithError('INTERNAL', 'the transfer engine is not started')
    return this.transferEngine
  }

  get files (): FileService {
    if (this.fileService == null) throw new KithError('INTERNAL', 'file sharing is not started')
    return this.fileService
  }

  /** Sets the name friends see in my invites, kept across restarts (kith restore brings the old one back). */
  async setDisplayName (name: string): Promise<void> {
    this.meta.name = displayNameSchema.parse(name)
    await sublevel<Meta>(this.db, 'meta').put('node', this.meta)
  }

  /** audits, repair, health and the recovery record of my backups (src/services/backup/care.ts) */
  get care (): BackupCare {
    if (this.backupCare == null) throw new KithError('INTERNAL', 'backup care is not started')
    return this.backupCare
  }

  /** backup hosting: what I keep for friends (src/services/backup/host.ts) */
  get hosting (): BackupHost {
    if (this.backupHost == null) throw new KithError('INTERNAL', 'backup hosting is not started')
    return this.backupHost
  }

  get backup (): BackupService {
    if (this.backupService == null) throw new KithError('INTERNAL', 'backup is not started')
    return this.backupService
  }

  /** friend services: what I expose, what I connect to (src/services/expose) */
  get services (): FriendServices {
    if (this.friendServices == null) throw new KithError('INTERNAL', 'friend services are not started')
    return this.friendServices
  }

  /** the local proxy (src/services/proxy); null until started */
  get proxy (): ProxyService | null {
    return this.proxyService
  }

  get downloads (): DownloadService {
    if (this.downloadService == null) throw new KithError('INTERNAL', 'downloads are not started')
    return this.downloadService
  }

  get locate (): LocateService {
    if (this.locateService == null) throw new KithError('INTERNAL', 'locate is not started')
    return this.locateService
  }

  async stop (): Promise<void> {
    this.memory?.stop()
    this.presence.stop()
    this.slots.stop()
    await this.grantSync.stop()
    await this.reachability.stop()
    await this.locateService?.stop()
    await this.transferEngine?.beforeStop()
    await this.backupHost?.stop()
    this.backupCare?.stop()
    await this.backupService?.stop()
    await this.friendServices?.stop()
    await this.proxyService?.stop()
    await this.downloadService?.stop()
    await this.fileService?.stop()
    await this.transferEngine?.stop()
    await this.libp2p.stop()
    cancelPendingAddressWrite(this.libp2p)
    await this.db.close()
    await rm(this.paths.apiInfo, { force: true })
  }

  get displayName (): string {
    return this.meta.name ?? defaultName()
  }

  addrs (): string[] {
    // with public listen addresses friends have not confirmed yet: an invite needs them most
    return allAddrs(this.libp2p)
  }

  status (): Status {
    const friends = this.friends.list().filter(f => f.state === 'active')
    const online = friends.filter(f => this.presence.link(f.peerId).online)
    return {
      peerId: this.identity.peerId.toString(),
      name: this.displayName,
      home: this.paths.root,
      addrs: this.addrs(),
      friends: { total: friends.length, online: online.length },
      online: online.map(f => f.label),
      started: this.started.toISOString(),
      bandwidth: this.engine.bandwidthView(),
      reachability: this.reachability.current,
      relays: { using: this.reachability.relays(), serving: this.reachability.serving(), offering: this.relayGate.relaying }
    }
  }

  listFriends (): FriendView[] {
    return this.friends.list().map(f => this.view(f))
  }

  view (friend: Friend): FriendView {
    return { ...friend, services: this.friendServices?.grantedTo(friend.peerId) ?? [], link: { ...this.presence.link(friend.peerId), punch: this.reachability.punchState(friend.peerId) } }
  }

  async createInvite (req: CreateInviteRequest): Promise<{ invite: InviteSummary, text: string }> {
    const now = Date.now()
    const expiresIn = req.expiresIn ?? 7 * 24 * 3600
    const uses = req.uses ?? 1
    if (!Number.isInteger(expiresIn) || expiresIn < 60 || expiresIn > MAX_INVITE_LIFETIME_S) {
      throw new KithError('BAD_REQUEST', `an invite must last between 1 minute and ${MAX_INVITE_LIFETIME_S / 86400} days`)
    }
    if (!Number.isInteger(uses) || uses < 1 || uses > MAX_INVITE_USES) {
      throw new KithError('BAD_REQUEST', `an invite allows 1 to ${MAX_INVITE_USES} uses`)
    }
    const label = req.label != null ? checkLabel(req.label) : null
    const grants = [...(req.grants ?? DEFAULT_GRANTS)].sort()
    const { invite, text } = createInvite({
      secretKey: this.identity.secretKey,
      publicKey: this.identity.publicKey,
      name: this.displayName,
      addrs: dialableAddrs(this.addrs()),
      notBefore: now,
      expires: now + expiresIn * 1000,
      uses,
      grants
    })
    const issued: IssuedInvite = {
      id: invite.id,
      secret: Buffer.from(invite.secret).toString('base64'),
      label,
      grants,
      notBefore: invite.notBefore,
      expires: invite.expires,
      uses,
      redeemedBy: [],
      revoked: false,
      created: now
    }
    await this.invites.add(issued)
    return { invite: summarise(invite), text }
  }

  async listInvites (): Promise<InviteListing[]> {
    return await this.invites.list()
  }

  async revokeInvite (id: string): Promise<InviteListing> {
    await this.invites.revoke(id)
    const listing = (await this.invites.list()).find(i => i.id === id)
    if (listing == null) throw new KithError('INVITE_UNKNOWN', `no invite with id ${id}`)
    return listing
  }

  async acceptInvite (text: string, label?: string, grants?: Service[]): Promise<FriendView> {
    const invite = parseInvite(text)
    if (label != null) checkLabel(label)
    const friend = await redeem({
      libp2p: this.libp2p,
      friends: this.friends,
      invite,
      ...(label != null ? { label } : {}),
      ...(grants != null ? { grants } : {}),
      displayName: this.displayName,
      dialPolicy: this.net.dialPolicy
    })
    return this.view(friend)
  }

  async revokeFriend (name: string): Promise<FriendView> {
    const friend = await this.friends.revoke(name)
    return this.view(friend)
  }
}

function defaultName (): string {
  try {
    return userInfo().username.slice(0, 64) || 'kith'
  } catch {
    return 'kith'
  }
}

/** Addresses worth putting in an invite: not the wildcard, loopback last. */
function dialableAddrs (addrs: string[]): string[] {
  const withoutPeer = addrs.map(a => multiaddr(a).decapsulateCode(421).toString())
  const loopback = (a: string): boolean => a.startsWith('/ip4/127.') || a.startsWith('/ip6/::1/')
  return [...withoutPeer.filter(a => !loopback(a)), ...withoutPeer.filter(loopback)]
}

async function loadIdentityGuarded (paths: HomePaths, meta: Meta, passphrase?: string): Promise<Identity> {
  if (meta.peerId != null) {
    try {
      await access(paths.identity)
    } catch {
      throw new KithError('IDENTITY_MISSING',
        `the key file ${paths.identity} is missing, but this home belongs to ${meta.peerId}; restore the key file from a backup (kith will not make a new identity here)`)
    }
  }
  const { identity } = await loadOrCreateIdentity(paths.identity, passphrase)
  if (meta.peerId != null && meta.peerId !== identity.peerId.toString()) {
    throw new KithError('IDENTITY_CORRUPT',
      `the key file ${paths.identity} holds ${identity.peerId.toString()}, but this home belongs to ${meta.peerId}; put the right key file back`)
  }
  return identity
}

/**
 * Starts libp2p. A listen address on port 0 reuses the port of the last run,
 * so friends find the node where they last saw it; if that port is taken
 * now, any free port will do.
 */
/**
 * Whether a node grants relay reservations now: only while friends' dial-backs
 * say it is publicly reachable (Reachability sets it).
 */
interface RelayGate { relaying: boolean }

interface NetParts {
  dialPolicy: DialPolicy
  datastore: NodeDatastore
}

async function startNode (identity: Identity, friends: FriendBook, listen: string[], lastPort: number | undefined, relay: RelayBudget | undefined, relayGate: RelayGate, net: NetParts): Promise<KithLibp2p> {
  const gater = connectionGater(friends, { relaying: () => relayGate.relaying })
  const sticky = lastPort != null ? listen.map(a => a.replace(/\/tcp\/0(?=$|\/)/, `/tcp/${lastPort}`)) : listen
  // the DHT keeps address records of my friends only
  const common = { privateKey: identity.privateKey, gater, ...net, dhtSubjects: (peer: string) => friends.isActive(peer), ...(relay != null ? { relay } : {}) }
  try {
    return await createNode({ ...common, listen: sticky })
  } catch (err) {
    if (sticky.join() === listen.join()) throw listenError(listen, err)
  }
  try {
    return await createNode({ ...common, listen })
  } catch (err) {
    throw listenError(listen, err)
  }
}

function listenError (listen: string[], err: unknown): KithError {
  return new KithError('BAD_REQUEST', `can't listen on ${listen.join(', ')}: ${(err as Error).message}; pick another --listen address`, { cause: err })
}

/** A random bearer token for the local API, made once per home. */
export function newToken (): string {
  return randomBytes(32).toString('base64url')
}

export async function writeApiInfo (paths: HomePaths, url: string, peerId: string): Promise<void> {
  await writeFileAtomic(paths.apiInfo, JSON.stringify({ url, pid: process.pid, peerId }) + '\n', 0o600)
}
