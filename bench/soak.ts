import { mkdtemp, mkdir, rm, readdir, link, unlink } from 'node:fs/promises'
import { rmSync } from 'node:fs'
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { tmpdir, cpus } from 'node:os'
import { join, dirname, basename } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { createTestnet, befriend, waitFor, TestNode, type Testnet } from '../test/helpers/testnet.ts'
import { ApiClient } from '../src/services/api/client.ts'
import { KithError } from '../src/errors.ts'
import { DEFAULT_GRANTS, type Service } from '../src/trust/grants.ts'
import type { Transfer } from '../src/services/files/transfers.ts'
import { currentRss, peakRss, writeRandomFile, fmt, table, MiB, MB } from './lib.ts'
import { Random, seedFrom } from './soak-random.ts'
import { FriendModel, Hasher, checkDestination, expectedFiles, strayEntries, type FetchModel, type ListedFriend, type Peer, type ShareModel, type SourceFile } from './soak-model.ts'

/**
 * `npm run soak` (not part of `npm test`): three kith daemons, all friends,
 * each sharing files of random data, driven for SOAK_MINUTES (10) by a seeded
 * random schedule: fetches started (random priority and destination),
 * paused, resumed, cancelled and reprioritised; grants changed; fresh
 * invites between friends (which must change nothing on the issuer's side,
 * then the accepter's grants are put back); revocations (of a short-lived
 * guest daemon in the middle of a fetch: cut off within seconds, refused by a
 * fresh invite, revoked across a kill -9); kill -9 and clean restarts; a full
 * disk (as root: a small tmpfs as a fetch's destination folder, enlarged
 * once the fetch paused with DISK_FULL).
 *
 * Checked after every restart and at the end (once every fetch finished or
 * was cancelled): each node lists exactly the friends and grants the actions
 * gave it; every file at a destination is complete and matches its source
 * (SHA-256); hidden partial files belong only to unfinished fetches; no
 * daemon ended except by the soak's own kill or stop. Each daemon's open file
 * descriptors at the end are compared with those after the warm-up, and its
 * peak RSS (VmHWM, sampled every 2 s and before each kill) with a bound.
 * Prints a table of figures and every violation; exits 1 if there was one.
 *
 * Environment: SOAK_SEED (random; printed, so a run's choices can be
 * replayed, as far as the daemons' timing allows), SOAK_MINUTES (10),
 * SOAK_MAX_RSS_MB (300), SOAK_VERBOSE=1 prints every action as it runs.
 */

const NAMES = ['ann', 'bob', 'cat'] as const
/** open file descriptors a daemon may hold at the end beyond what it held after the warm-up */
const FD_SLACK = 32
/** unfinished fetches per daemon: more are not started */
const MAX_OPEN_FETCHES = 6
const SAMPLE_MS = 2000
const PROGRESS_MS = 30_000
/** a revoked friend is cut off within this */
const CUT_OFF_MS = 10_000
/** the guest fetches this slowly, so it is mid-transfer when revoked */
const GUEST_RATE = '4MB/s'
/** transfer error codes that say kith broke, not that a friend was away or a disk full */
const BROKEN = new Set(['INTERNAL', 'FILE_VERIFY_FAILED', 'CHUNK_CORRUPT', 'CHUNK_HASH_MISMATCH', 'CHUNK_DECRYPT_FAILED', 'MANIFEST_MALFORMED', 'MANIFEST_BAD_SIGNATURE', 'KEY_UNWRAP_FAILED', 'PROTOCOL_VIOLATION', 'CHUNK_FRAME_MALFORMED', 'SOURCE_UNREADABLE'])

function envNumber (name: string, fallback: number): number {
  const raw = process.env[name]
  if (raw == null || raw === '') return fallback
  const value = Number(raw)
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} wants a positive number; got ${JSON.stringify(raw)}`)
  return value
}

const [SEED, MINUTES, MAX_RSS] = (() => {
  try {
    return [seedFrom(process.env.SOAK_SEED), envNumber('SOAK_MINUTES', 10), envNumber('SOAK_MAX_RSS_MB', 300) * MB] as const
  } catch (err) {
    console.error(`soak: ${(err as Error).message}`)
    process.exit(2)
  }
})()
const VERBOSE = process.env.SOAK_VERBOSE === '1'
const ROOT = process.getuid?.() === 0
const rng = new Random(SEED)
const t0 = performance.now()

function clock (): string {
  const s = Math.floor((performance.now() - t0) / 1000)
  return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`
}

function log (message: string): void {
  process.stderr.write(`[soak ${clock()}] ${message}\n`)
}

// ---------------------------------------------------------------------------
// what happened

interface Violation { at: string, action: number, where: string, what: string }
const violations: Violation[] = []
/** every action, numbered, with its outcome: printed before a violation's report */
const actionLog: string[] = []
let actionNo = 0

function violation (where: string, what: string): void {
  violations.push({ at: clock(), action: actionNo, where, what })
  log(`VIOLATION at action #${actionNo}, ${where}: ${what}`)
}

function note (line: string): void {
  const entry = `#${actionNo} ${clock()} ${line}`
  actionLog.push(entry)
  if (VERBOSE) log(entry)
}

const stats = {
  actions: new Map<string, { ok: number, errors: Map<string, number> }>(),
  fetchesStarted: 0,
  fetchesRefused: new Map<string, number>(),
  done: 0,
  bytes: 0,
  failed: new Map<string, number>(),
  cancelled: 0,
  removed: 0,
  diskFull: 0,
  killed: 0,
  restarted: 0,
  crashes: 0,
  guests: 0
}

function bump (map: Map<string, number>, key: string): void {
  map.set(key, (map.get(key) ?? 0) + 1)
}

/** an error's stable code: a KithError's, or the one in a CLI failure's JSON */
function codeOf (err: unknown): string | null {
  if (err instanceof KithError) return err.code
  return /"code":"([A-Z_]+)"/.exec((err as Error)?.message ?? '')?.[1] ?? null
}

// ---------------------------------------------------------------------------
// daemons

interface Daemon extends Peer {
  node: TestNode
  api: ApiClient
  /** false while the soak restarts it, or after it crashed */
  up: boolean
  /** where its fetches go: one folder per fetch */
  root: string
  starts: number
  startedAt: number
  fdStart: number
  fdEnd: number
  fdPeak: number
  hwmPeak: number
  rssEnd: number
  /** this run of the daemon went over the RSS bound (reported once per run) */
  overRss: boolean
  crashes: number
}

let testnet: Testnet | undefined
let work: string | undefined
const daemons: Daemon[] = []
const guests = new Set<TestNode>()
/** tmpfs mounts made for the disk-full action, unmounted at the end */
const mounts = new Set<string>()
const friendModel = new FriendModel()
const shares = new Map<string, ShareModel[]>()
/** each node's largest shared file, hard-linked for guests */
const bigFiles = new Map<string, { path: string, share: ShareModel }>()
const fetches: FetchModel[] = []
const byId = new Map<string, FetchModel>()
const hasher = new Hasher()
let stopping = false

async function fdCount (pid: number | undefined): Promise<number> {
  if (pid == null) return NaN
  try {
    return (await readdir(`/proc/${pid}/fd`)).length
  } catch {
    return NaN
  }
}

/** True (and a violation) if the daemon ended by itself since the last look. */
function crashed (d: Daemon): boolean {
  if (!d.up) return false
  const how = d.node.exited
  if (how == null) return false
  d.up = false
  d.crashes++
  stats.crashes++
  violation(d.name, `the daemon exited by itself (${how}); its last output: ${d.node.output.slice(-1500)}`)
  return true
}

async function sampleProcess (d: Daemon): Promise<void> {
  const pid = d.node.pid
  if (!d.up || pid == null) return
  const [fds, hwm] = await Promise.all([fdCount(pid), peakRss(pid)])
  if (Number.isFinite(fds)) d.fdPeak = Math.max(d.fdPeak, fds)
  if (Number.isFinite(hwm)) {
    d.hwmPeak = Math.max(d.hwmPeak, hwm)
    if (hwm > MAX_RSS && !d.overRss) {
      d.overRss = true
      violation(d.name, `peak RSS ${fmt(hwm / MB)} MB is over the bound of ${fmt(MAX_RSS / MB)} MB (pid ${pid}, run ${d.starts})`)
    }
  }
}

async function startDaemon (d: Daemon): Promise<void> {
  if (stopping) throw new Error('the soak is stopping')
  await d.node.start()
  d.api = await ApiClient.forHome(d.node.home)
  d.up = true
  d.starts++
  d.startedAt = performance.now()
  d.overRss = false
}

/** kill -9 (or a clean stop), a pause, and a start with the same home; then the checks. */
async function restart (d: Daemon, how: 'kill' | 'stop'): Promise<void> {
  await sampleProcess(d)
  d.up = false
  if (how === 'kill') {
    await d.node.kill9()
    stats.killed++
  } else {
    const code = await d.node.stop()
    stats.restarted++
    if (code !== 0) violation(d.name, `a clean stop (SIGTERM) exited with ${code}`)
  }
  await sleep(rng.int(0, 2000))
  await startDaemon(d)
  await checkNode(d)
}

/**
 * An invite from `issuer`, naming the accepter `label`, accepted with the
 * default grants: what `befriend` does through the CLI, through the API the
 * CLI uses (two fewer processes to start on a busy machine).
 */
async function invite (issuer: { api: ApiClient }, accepter: { api: ApiClient }, label: string): Promise<void> {
  const { text } = await issuer.api.call<{ text: string }>('POST', '/v1/invites', { label })
  await accepter.api.call('POST', '/v1/invites/accept', { text })
}

async function listFriends (d: Daemon | { api: ApiClient }): Promise<Array<ListedFriend & { link: { online: boolean } }>> {
  return (await d.api.get<{ friends: Array<ListedFriend & { link: { online: boolean } }> }>('/v1/friends')).friends
}

// ---------------------------------------------------------------------------
// fetches

function fetchesOf (d: Daemon): FetchModel[] {
  return fetches.filter(f => f.node === d.name)
}

function isOpen (f: FetchModel): boolean {
  return f.state !== 'done' && f.state !== 'cancelled'
}

/** A state the daemon reports for one of the soak's fetches: counted, and a done one checked on disk. */
async function observe (f: FetchModel, t: Transfer): Promise<void> {
  const before = f.state
  f.state = t.state
  f.error = t.error?.code ?? null
  if (t.state === before) return
  if (t.state === 'failed') {
    bump(stats.failed, f.error ?? '?')
    note(`f${f.n} failed: ${f.error}: ${t.error?.message ?? ''}`)
    if (BROKEN.has(f.error ?? '')) violation(f.node, `fetch f${f.n} (${f.id}) of ${f.owner}:${f.share}/${f.path} failed with ${f.error}: ${t.error?.message ?? ''}`)
  }
  if (t.state === 'cancelled') stats.cancelled++
  if (t.state === 'done' && !f.verified) {
    f.verified = true
    const problems = await checkDestination(f, hasher)
    for (const p of problems) violation(f.node, p)
    if (problems.length === 0) {
      stats.done++
      stats.bytes += f.totalBytes
    }
  }
}

async function pollTransfers (d: Daemon): Promise<void> {
  if (!d.up) return
  const api = d.api
  let transfers: Transfer[]
  try {
    transfers = (await api.get<{ transfers: Transfer[] }>('/v1/transfers')).transfers
  } catch (err) {
    // restarting, or crashed: the next look says which
    if (d.up && d.api === api && codeOf(err) !== 'DAEMON_NOT_RUNNING') throw err
    return
  }
  for (const t of transfers) {
    const f = byId.get(t.id)
    if (f !== undefined) await observe(f, t)
  }
}

/** Fetches are numbered as they are asked for (refused ones too): fetch n goes into the folder `f<n>`. */
let fetchNo = 0

async function startFetch (d: Daemon, owner: Daemon, share: ShareModel, path: string, priority: string, slot?: { n: number, dir: string }): Promise<FetchModel> {
  const n = slot?.n ?? ++fetchNo
  const folder = slot?.dir ?? join(d.root, `f${n}`)
  await mkdir(folder, { recursive: true })
  const dest = join(folder, path === '' ? share.name : basename(path))
  let transfer: Transfer
  try {
    transfer = (await d.api.call<{ transfer: Transfer }>('POST', '/v1/transfers', { friend: owner.name, share: share.name, path, dest, priority })).transfer
  } catch (err) {
    bump(stats.fetchesRefused, codeOf(err) ?? 'ERROR')
    if (slot === undefined) await rm(folder, { recursive: true, force: true })
    throw err
  }
  const expected = expectedFiles(share, path)
  const f: FetchModel = {
    n,
    node: d.name,
    owner: owner.name,
    share: share.name,
    path,
    dir: folder,
    dest,
    expected,
    totalBytes: [...expected.values()].reduce((sum, s) => sum + s.size, 0),
    id: transfer.id,
    state: transfer.state,
    error: null,
    intent: 'finish',
    verified: false,
    mount: null
  }
  fetches.push(f)
  byId.set(f.id, f)
  stats.fetchesStarted++
  note(`f${n}: ${d.name} fetches ${owner.name}:${share.name}${path !== '' ? `/${path}` : ''} (${fmt(f.totalBytes / MiB, 1)} MiB, ${priority}) as ${f.id}`)
  return f
}

// ---------------------------------------------------------------------------
// checks

/**
 * A node's friends and grants against the model, and its fetches'
 * destinations on disk. Retried for a few seconds, since a start removes the
 * partials of fetches cancelled before a kill in the background.
 */
async function checkNode (d: Daemon, settleMs = 15_000): Promise<void> {
  if (crashed(d)) return
  const friends = friendModel.check(d.name, await listFriends(d))
  for (const p of friends) violation(d.name, p)
  const deadline = performance.now() + settleMs
  let problems: string[]
  while (true) {
    await pollTransfers(d)
    problems = []
    for (const f of fetchesOf(d)) problems.push(...await checkDestination(f, hasher))
    const known = new Set(fetchesOf(d).map(f => basename(f.dir)))
    for (const stray of await strayEntries(d.root, known)) problems.push(`${stray}: not the folder of any fetch`)
    if (problems.length === 0 || performance.now() > deadline) break
    await sleep(500)
  }
  for (const p of problems) violation(d.name, p)
}

// ---------------------------------------------------------------------------
// actions

type Kind = 'fetch' | 'pause' | 'resume' | 'cancel' | 'priority' | 'grant' | 'reinvite' | 'revoke' | 'kill' | 'restart' | 'disk-full' | 'remove' | 'idle'

const WEIGHTS: Array<[Kind, number]> = [
  ['fetch', 30], ['pause', 7], ['resume', 8], ['cancel', 5], ['priority', 3], ['grant', 5], ['reinvite', 4],
  ['revoke', 3], ['kill', 8], ['restart', 4], ['disk-full', 3], ['remove', 3], ['idle', 8]
]

const PRIORITIES = ['urgent', 'normal', 'background'] as const
/** grants the soak changes; files and relay stay, so fetches and connections go on */
const TOGGLED: Service[] = ['backup', 'locate']

const up = (): Daemon[] => daemons.filter(d => d.up)
const daemon = (name: string): Daemon => daemons.find(d => d.name === name)!
/** pairs where `owner` serves `fetcher`: friends both ways, files granted */
const serves = (owner: Daemon, fetcher: Daemon): boolean =>
  friendModel.isActive(fetcher, owner) && friendModel.isActive(owner, fetcher) && friendModel.side(owner, fetcher)!.grantsToThem.includes('files')
const openOn = (d: Daemon): FetchModel[] => fetchesOf(d).filter(f => isOpen(f) && f.intent === 'finish')
const inState = (...states: string[]): FetchModel[] => fetches.filter(f => f.intent === 'finish' && states.includes(f.state) && daemon(f.node).up)

/** Waits until a fetch has moved bytes, or is over, or 15 s passed: what comes next then lands mid-transfer. */
async function moving (f: FetchModel): Promise<void> {
  const d = daemon(f.node)
  await waitFor(async () => {
    const { transfer } = await d.api.get<{ transfer: Transfer }>(`/v1/transfers/${f.id}`)
    await observe(f, transfer)
    return transfer.doneBytes > 0 || transfer.state === 'done' || transfer.state === 'failed' || transfer.state === 'cancelled'
  }, `f${f.n} to move`, 15_000, 50).catch(() => {})
}

/**
 * Starts a fetch of one of the larger files that `d` takes part in, fetching
 * or serving it, and waits until it moves: fetches here finish in a second or
 * two, so a kill or a pause meant for the middle of a transfer needs one.
 */
async function busy (d: Daemon): Promise<void> {
  const fetching = rng.chance(0.5)
  const pairs: Array<[Daemon, Daemon]> = fetching
    ? up().filter(o => o !== d && serves(o, d)).map(o => [d, o])
    : up().filter(x => x !== d && serves(d, x) && openOn(x).length < MAX_OPEN_FETCHES).map(x => [x, d])
  if (pairs.length === 0) return
  const [fetcher, owner] = rng.pick(pairs)
  const share = rng.pick(shares.get(owner.name)!.filter(s => s.kind === 'file' && s.files[0]!.size >= 4 * MiB))
  await moving(await startFetch(fetcher, owner, share, '', rng.pick(PRIORITIES)))
}

async function pauseFetch (f: FetchModel): Promise<void> {
  note(`pause f${f.n} (${f.state})`)
  await observe(f, (await daemon(f.node).api.call<{ transfer: Transfer }>('POST', `/v1/transfers/${f.id}/pause`)).transfer)
}

async function cancelFetch (f: FetchModel): Promise<void> {
  note(`cancel f${f.n} (${f.state})`)
  const { transfer } = await daemon(f.node).api.call<{ transfer: Transfer }>('POST', `/v1/transfers/${f.id}/cancel`)
  f.intent = 'cancel'
  await observe(f, transfer)
}

function feasible (kind: Kind): boolean {
  switch (kind) {
    case 'fetch': return up().some(d => openOn(d).length < MAX_OPEN_FETCHES && up().some(o => o !== d && serves(o, d)))
    case 'pause': return inState('queued', 'running').length > 0
    case 'resume': return inState('paused', 'failed').length > 0
    case 'cancel': return inState('queued', 'running', 'paused', 'failed').length > 0
    case 'priority': return inState('queued', 'running', 'paused').length > 0
    case 'grant': case 'reinvite': case 'kill': case 'restart': case 'idle': return up().length >= 2
    case 'revoke': return up().length > 0 && bigFiles.size > 0
    case 'disk-full': return ROOT && up().some(d => up().some(o => o !== d && serves(o, d)))
    case 'remove': return fetches.some(f => f.state === 'done' && f.intent === 'finish' && f.mount == null)
  }
}

const actions: Record<Kind, () => Promise<void>> = {
  async fetch () {
    const d = rng.pick(up().filter(x => openOn(x).length < MAX_OPEN_FETCHES && up().some(o => o !== x && serves(o, x))))
    const owner = rng.pick(up().filter(o => o !== d && serves(o, d)))
    const share = rng.pick(shares.get(owner.name)!)
    let path = ''
    if (share.kind === 'folder') {
      const what = rng.weighted([['all', 2], ['dir', 1], ['file', 1]])
      if (what === 'dir') path = rng.pick(share.dirs)
      if (what === 'file') path = rng.pick(share.files).rel
    }
    const f = await startFetch(d, owner, share, path, rng.pick(PRIORITIES))
    // now and then paused or cancelled once it moves (most are over before a later action could)
    if (!rng.chance(0.3)) return
    const cancel = rng.chance(0.4)
    await moving(f)
    if (isOpen(f)) await (cancel ? cancelFetch(f) : pauseFetch(f))
  },

  async pause () {
    await pauseFetch(rng.pick(inState('queued', 'running')))
  },

  async resume () {
    const f = rng.pick(inState('paused', 'failed'))
    note(`resume f${f.n} (${f.state}${f.error != null ? ` ${f.error}` : ''})`)
    await observe(f, (await daemon(f.node).api.call<{ transfer: Transfer }>('POST', `/v1/transfers/${f.id}/resume`)).transfer)
  },

  async cancel () {
    await cancelFetch(rng.pick(inState('queued', 'running', 'paused', 'failed')))
  },

  async priority () {
    const f = rng.pick(inState('queued', 'running', 'paused'))
    const priority = rng.pick(PRIORITIES)
    note(`priority f${f.n} ${priority}`)
    await daemon(f.node).api.call('POST', `/v1/transfers/${f.id}/priority`, { priority })
  },

  async grant () {
    const d = rng.pick(up())
    const friend = rng.pick(daemons.filter(o => o !== d && friendModel.isActive(d, o)))
    const service = rng.pick(TOGGLED)
    const on = !friendModel.side(d, friend)!.grantsToThem.includes(service)
    note(`${d.name} ${on ? 'grants' : 'ungrants'} ${friend.name} ${service}`)
    await d.api.call(on ? 'PUT' : 'DELETE', `/v1/friends/${friend.name}/grants/${service}`)
    friendModel.granted(d, friend, service, on)
  },

  /**
   * A fresh invite between friends, with the default grants: the issuer's
   * record of the accepter must not change (no grant removed since comes
   * back); the accepter grants what it accepted with, and then has its own
   * grants put back as they were.
   */
  async reinvite () {
    const issuer = rng.pick(up())
    const accepter = rng.pick(up().filter(o => o !== issuer && friendModel.isActive(issuer, o) && friendModel.isActive(o, issuer)))
    const keep = [...friendModel.side(accepter, issuer)!.grantsToThem]
    note(`${issuer.name} invites ${accepter.name} afresh, who accepts (default grants)`)
    await invite(issuer, accepter, accepter.name)
    friendModel.reinvited(issuer, accepter, DEFAULT_GRANTS)
    for (const service of new Set([...keep, ...DEFAULT_GRANTS])) {
      const on = keep.includes(service)
      if (on === friendModel.side(accepter, issuer)!.grantsToThem.includes(service)) continue
      await accepter.api.call(on ? 'PUT' : 'DELETE', `/v1/friends/${issuer.name}/grants/${service}`)
      friendModel.granted(accepter, issuer, service, on)
    }
    for (const d of [issuer, accepter]) for (const p of friendModel.check(d.name, await listFriends(d))) violation(d.name, `after a fresh invite: ${p}`)
  },

  /**
   * Revocation, on a guest so the three stay friends (a revoked friend can't
   * come back): a fresh daemon befriends one of the three and fetches a file
   * shared with it, slowly; revoked mid-fetch, it must be cut off within
   * seconds, stay revoked across a kill -9 of the revoker (half the time),
   * and be refused when it accepts a fresh invite.
   */
  async revoke () {
    const host = rng.pick(up())
    const name = `guest${++stats.guests}`
    if (stopping) return
    const guest = new TestNode(name, join(dirname(daemons[0]!.node.home), name), ['--max-download', GUEST_RATE])
    guests.add(guest)
    const big = bigFiles.get(host.name)!
    const linked = join(dirname(big.path), `${name}.bin`)
    let shareId: string | undefined
    try {
      await guest.start()
      const gapi = await ApiClient.forHome(guest.home)
      await invite(host, { api: gapi }, name)
      const g: Peer = { name, peerId: guest.peerId }
      friendModel.befriended(host, g, DEFAULT_GRANTS, DEFAULT_GRANTS)
      // the host's largest file under another name: a share of its own, nothing copied
      await link(big.path, linked)
      shareId = (await host.api.call<{ share: { id: string } }>('POST', '/v1/shares', { path: linked, with: [name] })).share.id
      const { transfer } = await gapi.call<{ transfer: Transfer }>('POST', '/v1/transfers', { friend: host.name, share: `${name}.bin`, dest: join(work!, 'guests', name, `${name}.bin`) })
      note(`${name} befriends ${host.name} and fetches ${name}.bin (${fmt(big.share.files[0]!.size / MiB, 1)} MiB at ${GUEST_RATE})`)
      await waitFor(async () => (await gapi.get<{ transfer: Transfer }>(`/v1/transfers/${transfer.id}`)).transfer.doneBytes > 0, `${name}'s fetch to move`, 30_000, 100)
      await host.api.call('POST', `/v1/friends/${name}/revoke`)
      friendModel.revoked(host, g)
      note(`${host.name} revokes ${name} mid-fetch`)
      const cut = performance.now()
      try {
        await waitFor(async () => (await listFriends({ api: gapi })).find(f => f.peerId === host.peerId)?.link.online === false, `${name} cut off`, CUT_OFF_MS, 100)
        note(`${name} cut off after ${fmt(performance.now() - cut)} ms`)
      } catch {
        violation(host.name, `revoked ${name} was still connected ${CUT_OFF_MS / 1000} s later`)
      }
      const after = (await gapi.get<{ transfer: Transfer }>(`/v1/transfers/${transfer.id}`)).transfer
      if (after.state === 'done') violation(name, `its fetch of ${name}.bin finished after ${host.name} revoked it`)
      if (rng.chance(0.5)) {
        note(`kill -9 ${host.name} (revoked ${name})`)
        await restart(host, 'kill')
      }
      try {
        await invite(host, { api: gapi }, name)
        violation(host.name, `revoked ${name} became a friend again by accepting a fresh invite`)
      } catch (err) {
        note(`${name}'s fresh invite refused: ${(err as Error).message.replace(/\s+/g, ' ')}`)
      }
      for (const p of friendModel.check(host.name, await listFriends(host))) violation(host.name, `after revoking ${name}: ${p}`)
    } finally {
      await guest.kill9()
      guests.delete(guest)
      await rm(guest.home, { recursive: true, force: true })
      await rm(join(work!, 'guests', name), { recursive: true, force: true })
      if (shareId !== undefined && host.up) await host.api.call('DELETE', `/v1/shares/${shareId}`).catch(() => {})
      await unlink(linked).catch(() => {})
    }
  },

  async kill () {
    const d = rng.pick(up())
    if (rng.chance(0.6)) await busy(d)
    note(`kill -9 ${d.name} (${openOn(d).length} open fetches of its own)`)
    await restart(d, 'kill')
  },

  async restart () {
    const d = rng.pick(up())
    if (rng.chance(0.6)) await busy(d)
    note(`restart ${d.name} cleanly (${openOn(d).length} open fetches of its own)`)
    await restart(d, 'stop')
  },

  /**
   * A small tmpfs as a fetch's destination folder, half the file's size:
   * the fetch pauses with DISK_FULL, leaving nothing but its hidden partial
   * file; the tmpfs is enlarged and the fetch resumed.
   */
  async 'disk-full' () {
    const d = rng.pick(up().filter(x => up().some(o => o !== x && serves(o, x))))
    const owner = rng.pick(up().filter(o => o !== d && serves(o, d)))
    const { share } = bigFiles.get(owner.name)!
    const size = share.files[0]!.size
    const n = ++fetchNo
    const dir = join(d.root, `f${n}`)
    const small = Math.max(2, Math.floor(size / MiB / 2))
    await mkdir(dir, { recursive: true })
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${small}m`, 'tmpfs', dir])
    mounts.add(dir)
    let fetch: FetchModel
    try {
      fetch = await startFetch(d, owner, share, '', 'normal', { n, dir })
    } catch (err) {
      execFileSync('umount', ['-l', dir])
      mounts.delete(dir)
      await rm(dir, { recursive: true, force: true })
      throw err
    }
    fetch.mount = dir
    note(`f${n} goes to a ${small} MiB tmpfs`)
    const t = await waitFor(async () => {
      const { transfer } = await d.api.get<{ transfer: Transfer }>(`/v1/transfers/${fetch.id}`)
      return ['paused', 'failed', 'done', 'cancelled'].includes(transfer.state) ? transfer : undefined
    }, `f${fetch.n} to fill its disk`, 120_000, 100)
    if (t.state === 'paused' && t.error?.code === 'DISK_FULL') {
      stats.diskFull++
      const left = await readdir(dir)
      if (left.length !== 1 || !/^\.kith-[0-9a-f]{16}\.kith-partial$/.test(left[0]!)) violation(d.name, `f${fetch.n} paused with DISK_FULL, and its full disk holds ${JSON.stringify(left)} instead of one hidden partial file`)
    } else if (t.state === 'done') {
      violation(d.name, `f${fetch.n} finished on a disk smaller than its file`)
    } else {
      note(`f${fetch.n} ended ${t.state} ${t.error?.code ?? ''} before the disk filled`)
    }
    execFileSync('mount', ['-o', `remount,size=${Math.ceil(size / MiB) + 8}m`, dir])
    await observe(fetch, t)
    if (t.state !== 'paused') return
    try {
      await observe(fetch, (await d.api.call<{ transfer: Transfer }>('POST', `/v1/transfers/${fetch.id}/resume`)).transfer)
      note(`f${fetch.n}: tmpfs enlarged, resumed`)
    } catch (err) {
      // a fetch may go on by itself once there is room
      if (codeOf(err) !== 'TRANSFER_STATE') throw err
      note(`f${fetch.n}: tmpfs enlarged; it went on by itself`)
    }
  },

  /** A person deletes what they fetched: the chunks it held are no longer served from there. */
  async remove () {
    const f = rng.pick(fetches.filter(x => x.state === 'done' && x.intent === 'finish' && x.mount == null))
    note(`remove f${f.n}'s destination ${f.dest}`)
    await rm(f.dir, { recursive: true, force: true })
    f.intent = 'removed'
    stats.removed++
  },

  async idle () {
    await sleep(rng.int(1000, 5000))
  }
}

async function act (): Promise<void> {
  // a daemon that crashed is started again, so the run goes on (the crash is a violation already)
  for (const d of daemons) {
    crashed(d)
    if (!d.up && !stopping) {
      note(`start ${d.name} again after its crash`)
      await startDaemon(d)
      await checkNode(d)
    }
  }
  const kind = rng.weighted(WEIGHTS.filter(([k]) => feasible(k)))
  actionNo++
  let entry = stats.actions.get(kind)
  if (entry === undefined) stats.actions.set(kind, entry = { ok: 0, errors: new Map() })
  const began = performance.now()
  try {
    await actions[kind]()
    entry.ok++
    if (performance.now() - began > 5000) note(`${kind} took ${fmt((performance.now() - began) / 1000, 1)} s`)
  } catch (err) {
    const code = codeOf(err)
    bump(entry.errors, code ?? 'ERROR')
    note(`${kind} failed after ${fmt((performance.now() - began) / 1000, 1)} s: ${code ?? ''} ${(err as Error).message}`)
    if (code == null || code === 'INTERNAL') violation(kind, `the action failed: ${(err as Error).stack ?? String(err)}`)
  }
}

// ---------------------------------------------------------------------------
// set-up

async function sha256 (path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

/** Random bytes of a size in [lo, hi) MiB, never a whole number of chunks. */
const sizeIn = (lo: number, hi: number): number => rng.int(lo * MiB, hi * MiB - 1) | 1

async function writeSource (path: string, size: number): Promise<SourceFile> {
  await mkdir(dirname(path), { recursive: true })
  await writeRandomFile(path, size)
  return { rel: '', size, sha: await sha256(path) }
}

/**
 * Each node's shares: three files (1-4, 4-16, 16-40 MiB) and a folder of
 * small files in sub-folders, with an empty file and files of exactly one
 * chunk and one chunk plus a byte.
 */
async function makeShares (d: Daemon): Promise<void> {
  const dir = join(work!, 'src', d.name)
  const list: ShareModel[] = []
  for (const [label, lo, hi] of [['small', 1, 4], ['mid', 4, 16], ['big', 16, 40]] as const) {
    const path = join(dir, `${d.name}-${label}.bin`)
    const file = await writeSource(path, sizeIn(lo, hi))
    const share: ShareModel = { owner: d.name, name: basename(path), kind: 'file', files: [file], dirs: [] }
    list.push(share)
    if (label === 'big') bigFiles.set(d.name, { path, share })
  }
  const folder = join(dir, `${d.name}-docs`)
  const files: SourceFile[] = []
  const layout: Array<[string, number]> = [
    ['readme.txt', rng.int(1, 4096)], ['notes.md', rng.int(1, 300 * 1024)],
    ['a/empty.txt', 0], ['a/one.bin', rng.int(1, 300 * 1024)], ['a/two.bin', rng.int(1, 300 * 1024)], ['a/three.bin', rng.int(1, 300 * 1024)],
    ['b/one-chunk.bin', MiB], ['b/x.bin', rng.int(1, 300 * 1024)], ['b/y.bin', rng.int(1, 300 * 1024)],
    ['b/c/chunk-and-a-byte.bin', MiB + 1], ['b/c/z.bin', rng.int(1, 300 * 1024)], ['b/c/w.bin', rng.int(1, 300 * 1024)]
  ]
  for (const [rel, size] of layout) files.push({ ...await writeSource(join(folder, rel), size), rel })
  list.push({ owner: d.name, name: basename(folder), kind: 'folder', files, dirs: ['a', 'b', 'b/c'] })
  const others = daemons.filter(o => o !== d).map(o => o.name)
  for (const share of list) await d.api.call('POST', '/v1/shares', { path: join(dir, share.name), with: others }, { timeoutMs: 0 })
  shares.set(d.name, list)
}

async function setUp (): Promise<void> {
  work = await mkdtemp(join(tmpdir(), 'kith-soak-'))
  log(`starting ${NAMES.join(', ')}`)
  testnet = await createTestnet([...NAMES])
  for (const node of testnet.nodes) {
    daemons.push({
      name: node.name,
      peerId: node.peerId,
      node,
      api: await ApiClient.forHome(node.home),
      up: true,
      root: join(work, 'dest', node.name),
      starts: 1,
      startedAt: performance.now(),
      fdStart: NaN,
      fdEnd: NaN,
      fdPeak: 0,
      hwmPeak: 0,
      rssEnd: NaN,
      overRss: false,
      crashes: 0
    })
  }
  for (const d of daemons) await mkdir(d.root, { recursive: true })
  // all friends, with the default grants; then backup granted here and there, so that grants differ from an invite's
  for (const [i, a] of daemons.entries()) {
    for (const b of daemons.slice(i + 1)) {
      await befriend(a.node, b.node)
      friendModel.befriended(a, b, DEFAULT_GRANTS, DEFAULT_GRANTS)
    }
  }
  for (const a of daemons) {
    for (const b of daemons) {
      if (a === b || !rng.chance(0.5)) continue
      await a.api.call('PUT', `/v1/friends/${b.name}/grants/backup`)
      friendModel.granted(a, b, 'backup', true)
    }
  }
  log('writing and sharing files of random data')
  for (const d of daemons) await makeShares(d)
  // warm-up: each fetches a few small files from each friend, so that what a daemon opens once is open
  for (const d of daemons) {
    for (const o of daemons) {
      if (o !== d) await startFetch(d, o, shares.get(o.name)!.find(s => s.kind === 'folder')!, 'a', 'normal')
    }
  }
  await waitFor(async () => {
    for (const d of daemons) await pollTransfers(d)
    return fetches.every(f => f.state === 'done')
  }, 'the warm-up fetches', 60_000, 250)
  await sleep(3000)
  for (const d of daemons) {
    for (const p of friendModel.check(d.name, await listFriends(d))) violation(d.name, `after the set-up: ${p}`)
    d.fdStart = await fdCount(d.node.pid)
    await sampleProcess(d)
  }
  log(`warmed up: fds ${daemons.map(d => `${d.name} ${d.fdStart}`).join(', ')}; RSS ${await rssLine()}`)
}

async function rssLine (): Promise<string> {
  const parts: string[] = []
  for (const d of daemons) parts.push(`${d.name} ${fmt((await currentRss(d.node.pid)) / MB)}`)
  return `${parts.join(' ')} MB`
}

// ---------------------------------------------------------------------------
// the end

/** Every fetch the soak still wants is resumed until done (a few tries each); the cancelled ones must be cancelled. */
async function finish (): Promise<void> {
  log('the schedule is over: open fetches resume and finish')
  for (const d of daemons) {
    crashed(d)
    if (!d.up) await startDaemon(d)
    await pollTransfers(d)
  }
  const tries = new Map<FetchModel, number>()
  const left = (): FetchModel[] => fetches.filter(f => (f.intent === 'finish' && f.state !== 'done') || (f.intent === 'cancel' && f.state !== 'cancelled' && f.state !== 'done'))
  const bytes = left().reduce((sum, f) => sum + f.totalBytes, 0)
  const deadline = performance.now() + 120_000 + bytes / (2 * MB) * 1000
  while (left().length > 0 && performance.now() < deadline) {
    for (const f of left()) {
      if (f.intent !== 'finish' || (f.state !== 'paused' && f.state !== 'failed')) continue
      const n = (tries.get(f) ?? 0) + 1
      tries.set(f, n)
      if (n > 5) continue
      const d = daemon(f.node)
      if (!serves(daemon(f.owner), d)) {
        note(`cancel f${f.n}: ${f.owner} no longer serves ${f.node}`)
        f.intent = 'cancel'
        await observe(f, (await d.api.call<{ transfer: Transfer }>('POST', `/v1/transfers/${f.id}/cancel`)).transfer)
        continue
      }
      note(`resume f${f.n} (${f.state}${f.error != null ? ` ${f.error}` : ''}) to finish`)
      await observe(f, (await d.api.call<{ transfer: Transfer }>('POST', `/v1/transfers/${f.id}/resume`)).transfer)
    }
    await sleep(1000)
    for (const d of daemons) await pollTransfers(d)
  }
  for (const f of left()) {
    violation(f.node, `f${f.n} (${f.id}) of ${f.owner}:${f.share}/${f.path} did not ${f.intent === 'finish' ? 'finish' : 'end cancelled'}: ${f.state}${f.error != null ? ` ${f.error}` : ''} after ${tries.get(f) ?? 0} resumes`)
  }
  // quiet, then the last look
  await sleep(3000)
  for (const d of daemons) {
    await checkNode(d)
    await sampleProcess(d)
    const bound = d.fdStart + FD_SLACK
    try {
      d.fdEnd = await waitFor(async () => { const n = await fdCount(d.node.pid); return n <= bound ? n : undefined }, `${d.name}'s fds`, 20_000, 500)
    } catch {
      d.fdEnd = await fdCount(d.node.pid)
      violation(d.name, `holds ${d.fdEnd} open file descriptors at the end, ${d.fdStart} after the warm-up (bound ${bound})`)
    }
    d.rssEnd = await currentRss(d.node.pid)
  }
}

// ---------------------------------------------------------------------------
// report

function report (): void {
  const actionRows = [...stats.actions.entries()].sort((a, b) => a[0].localeCompare(b[0])).map(([kind, e]) => [
    kind, String(e.ok + [...e.errors.values()].reduce((s, n) => s + n, 0)), String(e.ok), [...e.errors.entries()].map(([c, n]) => `${c} ${n}`).join(', ')
  ])
  const list = (m: Map<string, number>): string => [...m.entries()].map(([c, n]) => `${c} ${n}`).join(', ') || '-'
  const open = fetches.filter(f => isOpen(f)).length
  console.log(`\nkith soak: seed ${SEED}, ${MINUTES} min of actions, ${fmt((performance.now() - t0) / 60000, 1)} min in all, ${cpus().length} cores, Node ${process.versions.node}, MB = 10^6 bytes`)
  console.log(table(['action', 'run', 'ok', 'errors (expected ones: a friend away, a fetch already over...)'], actionRows))
  console.log()
  console.log(table(['fetches', 'count', 'detail'], [
    ['started', String(stats.fetchesStarted), `refused at start: ${list(stats.fetchesRefused)}`],
    ['done and verified', String(stats.done), `${fmt(stats.bytes / MiB, 1)} MiB moved (whole files)`],
    ['failures seen', String([...stats.failed.values()].reduce((s, n) => s + n, 0)), list(stats.failed)],
    ['cancelled', String(stats.cancelled), ''],
    ['paused by a full disk', String(stats.diskFull), ROOT ? '' : 'not root: the disk-full action was skipped'],
    ['destinations removed', String(stats.removed), ''],
    ['still open at the end', String(open), ''],
    ['restarts', String(stats.killed + stats.restarted), `kill -9 ${stats.killed}, clean ${stats.restarted}, crashes ${stats.crashes}, guests revoked ${stats.guests}`]
  ]))
  console.log()
  console.log(table(['daemon', 'runs', 'fds warm-up', 'fds end', 'fds peak', 'RSS end MB', `peak RSS MB (bound ${fmt(MAX_RSS / MB)})`, 'crashes'], daemons.map(d => [
    d.name, String(d.starts), fmt(d.fdStart), fmt(d.fdEnd), fmt(d.fdPeak), fmt(d.rssEnd / MB), fmt(d.hwmPeak / MB), String(d.crashes)
  ])))
  console.log(`\nhashed ${fmt(hasher.bytes / MiB)} MiB of destinations to check them`)
  if (violations.length === 0) {
    console.log('\ninvariants: all held (no partial destination, friends and grants as expected, no crash, fds and memory within bounds)')
    return
  }
  console.log(`\nVIOLATIONS: ${violations.length} (replay with SOAK_SEED=${SEED})`)
  console.log(table(['at', 'action', 'where', 'what'], violations.map(v => [v.at, `#${v.action}`, v.where, v.what.replace(/\s+/g, ' ').slice(0, 400)])))
  const first = violations[0]!.action
  console.log(`\nactions up to the first violation (#${first}):`)
  for (const line of actionLog.filter(l => Number(/^#(\d+)/.exec(l)?.[1]) <= first).slice(-40)) console.log(`  ${line}`)
}

// ---------------------------------------------------------------------------

async function cleanup (): Promise<void> {
  stopping = true
  for (const g of guests) await g.kill9().catch(() => {})
  guests.clear()
  await testnet?.stop().catch(() => {})
  testnet = undefined
  // a restart under way when the run was interrupted may have started one again
  for (const d of daemons) await d.node.kill9().catch(() => {})
  for (const dir of mounts) { try { execFileSync('umount', ['-l', dir]) } catch {} }
  mounts.clear()
  if (work != null) await rm(work, { recursive: true, force: true }).catch(() => {})
  work = undefined
}

process.on('exit', () => {
  // last resort if something escaped the async clean-up
  for (const n of [...guests, ...daemons.map(d => d.node)]) if (n.pid != null) { try { process.kill(n.pid, 'SIGKILL') } catch {} }
  for (const dir of mounts) { try { execFileSync('umount', ['-l', dir]) } catch {} }
  if (testnet?.nodes[0] != null) rmSync(dirname(testnet.nodes[0].home), { recursive: true, force: true })
  if (work != null) rmSync(work, { recursive: true, force: true })
})
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    log(`${signal}: cleaning up`)
    cleanup().finally(() => process.exit(130))
  })
}

async function main (): Promise<void> {
  log(`seed ${SEED} (replay with SOAK_SEED=${SEED}); ${MINUTES} min of actions; RSS bound ${fmt(MAX_RSS / MB)} MB; fd bound: warm-up + ${FD_SLACK}`)
  if (!ROOT) log('not root: the disk-full action (a small tmpfs) is skipped')
  await setUp()
  const end = performance.now() + MINUTES * 60_000
  let sampling = true
  const sampler = (async () => {
    let lastProgress = performance.now()
    while (sampling) {
      for (const d of daemons) {
        if (crashed(d)) continue
        await sampleProcess(d)
        await pollTransfers(d).catch(err => log(`polling ${d.name}: ${(err as Error).message}`))
      }
      if (performance.now() - lastProgress >= PROGRESS_MS) {
        lastProgress = performance.now()
        const open = fetches.filter(isOpen).length
        log(`${actionNo} actions; fetches ${stats.done} done, ${[...stats.failed.values()].reduce((s, n) => s + n, 0)} failures, ${stats.cancelled} cancelled, ${open} open; ${fmt(stats.bytes / MiB)} MiB; restarts ${stats.killed + stats.restarted}; ` +
          `RSS ${await rssLine()}; fds ${(await Promise.all(daemons.map(async d => `${d.name} ${fmt(await fdCount(d.node.pid))}`))).join(' ')}; violations ${violations.length}`)
      }
      await sleep(SAMPLE_MS)
    }
  })()
  try {
    while (performance.now() < end) {
      await act()
      await sleep(rng.int(200, 2000))
    }
  } finally {
    sampling = false
    await sampler
  }
  await finish()
}

try {
  await main()
} catch (err) {
  violation('soak', `the run stopped: ${(err as Error).stack ?? String(err)}`)
} finally {
  report()
  await cleanup()
}
process.exitCode = violations.length > 0 ? 1 : 0
