import { peerIdFromString } from '@libp2p/peer-id'
import { KithError, asKithError, type ErrorCode } from '../../errors.ts'
import { parseAddressRecord, type AddressRecord } from '../../peer/address-record.ts'
import type { KithLibp2p } from '../../peer/node.ts'
import { dialable, type DialPolicy } from '../../peer/dial-policy.ts'
import { dialAt } from '../../peer/dial-at.ts'
import type { FriendBook, Friend } from '../../trust/friends.ts'
import type { RecordStore } from './record-store.ts'
import { queryRecord } from './locate-protocol.ts'
import { dhtPeers, getRecords } from './dht.ts'
import { ASK_TIMEOUT_MS, MAX_ASKED_FRIENDS, LOCATE_DIAL_TIMEOUT_MS, DHT_GET_TIMEOUT_MS } from './constants.ts'

/**
 * Finding a friend who moved, one step at a time, each step written down so
 * `kith locate` can show it:
 *
 * 1. already connected? done.
 * 2. (when asked to) dial the last known addresses.
 * 3. ask every connected friend who grants me `locate` for their newest
 *    record of the friend, all at once; verify each answer (signed by the
 *    friend itself, not from the future).
 * 4. if nobody had a newer record than mine: look in the DHT.
 * 5. keep the newest verified record if it beats mine, and dial its
 *    addresses. The Noise handshake proves the peer id, so whoever now holds
 *    an old address can't pass for the friend.
 */
export interface StepError {
  code: ErrorCode
  message: string
}

export interface RecordInfo {
  seq: number
  /** ISO time it was signed */
  time: string
  addrs: string[]
}

export type LocateStep =
  | { step: 'connected', remoteAddr: string }
  | { step: 'known', addrs: string[], ok: boolean, remoteAddr?: string, error?: StepError, ms: number }
  | { step: 'ask', peerId: string, label: string, result: 'record' | 'none' | 'rejected' | 'refused' | 'unreachable', record?: RecordInfo, error?: StepError, ms: number }
  | { step: 'skip', peerId: string, label: string, reason: string }
  | { step: 'dht', result: 'record' | 'none' | 'rejected' | 'skipped', records: number, record?: RecordInfo, error?: StepError, ms: number }
  /** `from`: the label of the friend whose answer won, or 'dht'; `known`: the seq I had */
  | { step: 'verify', from: string, record: RecordInfo, known: number | null, newer: boolean }
  | { step: 'dial', addrs: string[], ok: boolean, remoteAddr?: string, error?: StepError, ms: number }

export interface LocateReport {
  peerId: string
  label: string
  ok: boolean
  /** how the friend was reached */
  via: 'connected' | 'known' | 'friends' | 'dht' | null
  remoteAddr: string | null
  /**
   * the newest verified record of the friend this node holds at the end, and
   * who passed it on: the friend's own label (they pushed it), another
   * friend's label (they answered a locate), or 'dht'
   */
  record: (RecordInfo & { from: string }) | null
  steps: LocateStep[]
  ms: number
  error?: StepError
}

export interface LocatorInit {
  libp2p: KithLibp2p
  friends: FriendBook
  store: RecordStore
  /** look in the DHT when friends don't know */
  dht: boolean
  /** which of a record's addresses may be dialled (src/peer/dial-policy.ts) */
  dialPolicy: DialPolicy
  /** told when a friend's addresses became a newer record's; resolves once presence dropped its dial to the old ones (Presence.moved) */
  moved?: (peerId: string) => Promise<void>
}

export interface LocateOptions {
  /** dial the last known addresses first (a person asking); presence has just tried them otherwise */
  dialKnown?: boolean
  signal?: AbortSignal
}

export function recordInfo (record: AddressRecord): RecordInfo {
  return { seq: record.seq, time: new Date(record.time).toISOString(), addrs: record.addrs }
}

function stepError (err: unknown): StepError {
  const e = asKithError(err)
  return { code: e.code, message: e.message }
}

export class Locator {
  private readonly init: LocatorInit

  constructor (init: LocatorInit) {
    this.init = init
  }

  async locate (friend: Friend, options: LocateOptions = {}): Promise<LocateReport> {
    const started = performance.now()
    const { libp2p, friends, store } = this.init
    const target = friend.peerId
    const steps: LocateStep[] = []
    const finish = async (via: LocateReport['via'], remoteAddr: string | null, error?: StepError): Promise<LocateReport> => {
      const known = await store.entry(target)
      return {
        peerId: target,
        label: friend.label,
        ok: via != null,
        via,
        remoteAddr,
        record: known != null ? { ...recordInfo(known.record), from: known.from === 'dht' ? 'dht' : friends.get(known.from)?.label ?? known.from } : null,
        steps,
        ms: Math.round(performance.now() - started),
        ...(error != null ? { error } : {})
      }
    }
    if (friend.state !== 'active') throw new KithError('FRIEND_REVOKED', `${friend.label} was revoked; there is nobody to locate`)

    const open = this.connection(target)
    if (open != null) {
      steps.push({ step: 'connected', remoteAddr: open })
      return await finish('connected', open)
    }

    const mine = await store.get(target)
    if (options.dialKnown === true) {
      const addrs = [...new Set([...friend.addrs, ...(mine?.addrs ?? [])])]
      const result = await this.dial(target, addrs, options.signal)
      steps.push({ step: 'known', addrs, ...result })
      if (result.ok) return await finish('known', result.remoteAddr ?? null)
    }

    // ask connected friends, all at once
    const candidates = friends.list().filter(f => f.state === 'active' && f.peerId !== target && this.connection(f.peerId) != null)
    const asked: Friend[] = []
    for (const f of candidates) {
      if (!f.grantsFromThem.includes('locate')) steps.push({ step: 'skip', peerId: f.peerId, label: f.label, reason: 'they do not grant you locate' })
      else if (asked.length >= MAX_ASKED_FRIENDS) steps.push({ step: 'skip', peerId: f.peerId, label: f.label, reason: `already asking ${MAX_ASKED_FRIENDS} friends` })
      else asked.push(f)
    }
    const signal = options.signal != null ? AbortSignal.any([options.signal, AbortSignal.timeout(ASK_TIMEOUT_MS)]) : AbortSignal.timeout(ASK_TIMEOUT_MS)
    const answers = await Promise.all(asked.map(async f => await this.ask(f, target, signal)))
    steps.push(...answers.map(a => a.step))
    let best: { record: AddressRecord, from: string } | null = null
    for (const a of answers) {
      if (a.record != null && (best == null || a.record.seq > best.record.seq)) best = { record: a.record, from: a.from }
    }
    let via: 'friends' | 'dht' = 'friends'

    // the DHT, when no friend knew anything newer
    if (best == null || (mine != null && best.record.seq <= mine.seq)) {
      const found = await this.fromDht(target, options.signal)
      steps.push(found.step)
      if (found.record != null && (best == null || found.record.seq > best.record.seq)) {
        best = { record: found.record, from: 'dht' }
        via = 'dht'
      }
    }

    if (best == null) {
      return await finish(null, null, { code: 'LOCATE_FAILED', message: `no friend you are connected to knows where ${friend.label} is; try again when a common friend is online` })
    }
    const newer = mine == null || best.record.seq > mine.seq
    const fromLabel = best.from === 'dht' ? 'dht' : friends.get(best.from)?.label ?? best.from
    steps.push({ step: 'verify', from: fromLabel, record: recordInfo(best.record), known: mine?.seq ?? null, newer })
    if (!newer) {
      return await finish(null, null, { code: 'LOCATE_FAILED', message: `no friend knows a newer address of ${friend.label} than the one that failed; they may be offline` })
    }
    await this.adopt(best.record, best.from)
    const result = await this.dial(target, best.record.addrs, options.signal)
    steps.push({ step: 'dial', addrs: best.record.addrs, ...result })
    if (!result.ok) {
      return await finish(null, null, { code: 'LOCATE_FAILED', message: `${friend.label} was not reachable at the addresses of their newest record (${result.error?.message ?? 'unknown error'})` })
    }
    return await finish(via, result.remoteAddr ?? null)
  }

  /** Keeps a newer verified record and makes its addresses the ones to dial. */
  async adopt (record: AddressRecord, from: string): Promise<boolean> {
    if (!await this.init.store.offerIfNewer(record, from)) return false
    await applyRecord(this.init, record)
    return true
  }

  private connection (peer: string): string | null {
    try {
      const open = this.init.libp2p.getConnections(peerIdFromString(peer)).filter(c => c.status === 'open')
      return (open.find(c => c.limits == null) ?? open[0])?.remoteAddr.toString() ?? null
    } catch {
      return null
    }
  }

  private async ask (friend: Friend, target: string, signal: AbortSignal): Promise<{ step: LocateStep, record: AddressRecord | null, from: string }> {
    const started = performance.now()
    const base = { step: 'ask' as const, peerId: friend.peerId, label: friend.label }
    let bytes: Uint8Array | null
    try {
      bytes = await queryRecord(this.init.libp2p, peerIdFromString(friend.peerId), target, { signal })
    } catch (err) {
      const error = stepError(err)
      const result = error.code === 'FRIEND_OFFLINE' || error.code === 'PROTOCOL_VIOLATION' ? 'unreachable' : 'refused'
      return { step: { ...base, result, error, ms: Math.round(performance.now() - started) }, record: null, from: friend.peerId }
    }
    if (bytes == null) return { step: { ...base, result: 'none', ms: Math.round(performance.now() - started) }, record: null, from: friend.peerId }
    try {
      const record = parseAddressRecord(bytes, { subject: target })
      return { step: { ...base, result: 'record', record: recordInfo(record), ms: Math.round(performance.now() - started) }, record, from: friend.peerId }
    } catch (err) {
      return { step: { ...base, result: 'rejected', error: stepError(err), ms: Math.round(performance.now() - started) }, record: null, from: friend.peerId }
    }
  }

  private async fromDht (target: string, outer?: AbortSignal): Promise<{ step: LocateStep, record: AddressRecord | null }> {
    const started = performance.now()
    const dht = this.init.libp2p.services.dht
    if (!this.init.dht || dhtPeers(dht) === 0) {
      return { step: { step: 'dht', result: 'skipped', records: 0, ms: 0 }, record: null }
    }
    const signal = outer != null ? AbortSignal.any([outer, AbortSignal.timeout(DHT_GET_TIMEOUT_MS)]) : AbortSignal.timeout(DHT_GET_TIMEOUT_MS)
    const found = await getRecords(dht, peerIdFromString(target), { signal })
    let best: AddressRecord | null = null
    let error: StepError | undefined
    for (const bytes of found) {
      try {
        const record = parseAddressRecord(bytes, { subject: target })
        if (best == null || record.seq > best.seq) best = record
      } catch (err) {
        error ??= stepError(err)
      }
    }
    const result = best != null ? 'record' : error != null ? 'rejected' : 'none'
    return {
      step: { step: 'dht', result, records: found.length, ...(best != null ? { record: recordInfo(best) } : {}), ...(error != null && best == null ? { error } : {}), ms: Math.round(performance.now() - started) },
      record: best
    }
  }

  private async dial (target: string, addrs: string[], outer?: AbortSignal): Promise<{ ok: boolean, remoteAddr?: string, error?: StepError, ms: number }> {
    const started = performance.now()
    const { addrs: allowed, refused } = dialable(addrs, this.init.dialPolicy)
    const targets = allowed.map(a => a.encapsulate(`/p2p/${target}`))
    if (targets.length === 0) {
      const why = refused.length > 0 ? ` (${refused.map(r => `${r.addr}: ${r.why}`).join('; ')})` : ''
      return { ok: false, error: { code: 'LOCATE_FAILED', message: `no address to dial${why}` }, ms: 0 }
    }
    const signal = outer != null ? AbortSignal.any([outer, AbortSignal.timeout(LOCATE_DIAL_TIMEOUT_MS)]) : AbortSignal.timeout(LOCATE_DIAL_TIMEOUT_MS)
    try {
      // dialing multiaddrs ending in /p2p/<target>: the Noise handshake must prove that peer id;
      // not behind a dial by peer id under way to the old addresses (src/peer/dial-at.ts)
      const connection = await dialAt(this.init.libp2p, peerIdFromString(target), targets, signal)
      if (connection.remotePeer.toString() !== target) throw new KithError('LOCATE_FAILED', `reached ${connection.remotePeer.toString()} instead`)
      return { ok: true, remoteAddr: connection.remoteAddr.toString(), ms: Math.round(performance.now() - started) }
    } catch (err) {
      const error = err instanceof KithError ? stepError(err) : { code: 'FRIEND_OFFLINE' as const, message: (err as Error).message }
      return { ok: false, error, ms: Math.round(performance.now() - started) }
    }
  }
}

/**
 * Makes a newly stored record's addresses the friend's addresses, in the
 * friend book and in libp2p's peer store: those the dial policy allows (the
 * record keeps them all, signed, for friends it is passed on to).
 */
export async function applyRecord (init: Pick<LocatorInit, 'libp2p' | 'friends' | 'dialPolicy' | 'moved'>, record: AddressRecord): Promise<void> {
  const multiaddrs = dialable(record.addrs, init.dialPolicy).addrs
  if (multiaddrs.length === 0) return
  await init.friends.moved(record.peerId, multiaddrs.map(a => a.toString()))
  // replace, not merge: the stale addresses may belong to somebody else now
  await init.libp2p.peerStore.patch(peerIdFromString(record.peerId), { multiaddrs }).catch(() => {})
  await init.moved?.(record.peerId)
}
