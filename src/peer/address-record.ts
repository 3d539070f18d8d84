import { z } from 'zod'
import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { KithError } from '../errors.ts'
import { encodeCanonical, decodeCanonical } from './canonical.ts'
import { sign, verify, PUBLIC_KEY_LENGTH, SIGNATURE_LENGTH } from './signing.ts'
import { isSafeText } from './text.ts'

/**
 * Signed address records: where a node can be reached now, signed by the node
 * itself, so that friends can hand each other's records around without being
 * able to change them.
 *
 *   envelope = { body: bstr, sig: bstr(64) }                  (canonical CBOR)
 *   body     = { v: 1, pub: bstr(32), addrs: [multiaddr text], seq: uint, t: uint ms }
 *   sig      = Ed25519(subject key, "kith/address-record/1\0" || sha256(body))
 *
 * The subject is the peer whose key is `pub`: a record can only be signed by
 * the peer it speaks for. `seq` orders one subject's records; a record never
 * replaces one with an equal or higher `seq`. `t` is when it was signed;
 * a record dated more than `MAX_CLOCK_SKEW_MS` ahead is refused, since a node
 * with a clock far ahead would otherwise pin its friends to it.
 *
 * Parsing checks, in order: size, canonical CBOR of the envelope, the
 * signature against `pub` (nothing else of the body is read first), the
 * version, every field, then the expected subject and the clock.
 */
export const ADDRESS_RECORD_VERSION = 1
/** The whole envelope, checked before anything is decoded. */
export const MAX_RECORD_BYTES = 8 * 1024
export const MAX_RECORD_ADDRS = 16
export const MAX_RECORD_ADDR_LENGTH = 256
/** How far ahead of my clock a record's time may be. */
export const MAX_CLOCK_SKEW_MS = 5 * 60 * 1000
/** The latest time a record may carry: the last millisecond a Date can show (year 275760). */
export const MAX_RECORD_TIME_MS = 8.64e15
/** DHT records live under `/kith-addr/<peer id multihash bytes>`. */
export const DHT_RECORD_NAMESPACE = 'kith-addr'

export interface AddressRecord {
  /** the subject, derived from `publicKey` */
  peerId: string
  publicKey: Uint8Array
  /** multiaddrs without a trailing /p2p/<subject> */
  addrs: string[]
  seq: number
  /** ms since epoch when it was signed */
  time: number
  /** the signed envelope exactly as made: what is stored and passed on */
  bytes: Uint8Array
}

interface Body {
  v: number
  pub: Uint8Array
  addrs: string[]
  seq: number
  t: number
}

const bytesOf = (length: number) => z.instanceof(Uint8Array).refine(b => b.length === length, `must be ${length} bytes`)

const envelopeSchema = z.object({
  body: z.instanceof(Uint8Array),
  sig: bytesOf(SIGNATURE_LENGTH)
}).strict()

const bodySchema = z.object({
  v: z.literal(ADDRESS_RECORD_VERSION),
  pub: bytesOf(PUBLIC_KEY_LENGTH),
  addrs: z.array(z.string().max(MAX_RECORD_ADDR_LENGTH).refine(isRecordAddr, 'must be a multiaddr in normal form, without a trailing /p2p')).max(MAX_RECORD_ADDRS),
  seq: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  t: z.number().int().min(0).max(MAX_RECORD_TIME_MS)
}).strict()

/** A multiaddr in normal form that does not end in /p2p/... (the subject is implied). */
export function isRecordAddr (s: string): boolean {
  // a DNS name may hold anything, and addresses are shown to people
  if (!isSafeText(s)) return false
  try {
    const ma = multiaddr(s)
    const components = ma.getComponents()
    return components.length > 0 && ma.toString() === s && components[components.length - 1]!.name !== 'p2p'
  } catch {
    return false
  }
}

/**
 * Drops a trailing /p2p/<id>, as libp2p prints its own addresses. Only a
 * trailing one: a relayed address names its relay with a /p2p in the middle
 * (`.../p2p/<relay>/p2p-circuit`), and `decapsulateCode` would cut the
 * circuit off there, leaving the relay's own address.
 */
export function withoutPeerId (addr: string): string {
  const ma = multiaddr(addr)
  return ma.getComponents().at(-1)?.name === 'p2p' ? ma.decapsulateCode(421).toString() : ma.toString()
}

function malformed (why: string): KithError {
  return new KithError('RECORD_MALFORMED', `the address record is not valid (${why}); it was damaged or made by something that is not kith`)
}

function describe (error: z.ZodError): string {
  return error.issues.map(i => `${i.path.join('.') || 'record'}: ${i.message}`).join('; ')
}

export function peerIdOfKey (publicKey: Uint8Array): string {
  return peerIdFromPublicKey(publicKeyFromRaw(publicKey)).toString()
}

export interface CreateAddressRecordInit {
  /** 64 bytes, tweetnacl layout */
  secretKey: Uint8Array
  publicKey: Uint8Array
  addrs: string[]
  seq: number
  /** ms since epoch; defaults to now */
  time?: number
}

/** Signs a record of where I am. Addresses beyond `MAX_RECORD_ADDRS` are dropped. */
export function createAddressRecord (init: CreateAddressRecordInit): AddressRecord {
  let addrs: string[]
  try {
    addrs = [...new Set(init.addrs.map(withoutPeerId))].slice(0, MAX_RECORD_ADDRS)
  } catch (err) {
    throw new KithError('BAD_REQUEST', `the address record would hold an address that is not a multiaddr (${(err as Error).message})`)
  }
  const body: Body = {
    v: ADDRESS_RECORD_VERSION,
    pub: init.publicKey,
    addrs,
    seq: init.seq,
    t: init.time ?? Date.now()
  }
  const parsed = bodySchema.safeParse(body)
  if (!parsed.success) throw new KithError('BAD_REQUEST', `the address record would be invalid: ${describe(parsed.error)}`)
  const bodyBytes = encodeCanonical(body)
  const bytes = encodeCanonical({ body: bodyBytes, sig: sign('address-record/1', bodyBytes, init.secretKey) })
  if (bytes.length > MAX_RECORD_BYTES) throw new KithError('RECORD_TOO_LARGE', `the address record would be ${bytes.length} bytes, over ${MAX_RECORD_BYTES}`)
  return toRecord(body, bytes)
}

function toRecord (body: Body, bytes: Uint8Array): AddressRecord {
  return { peerId: peerIdOfKey(body.pub), publicKey: body.pub, addrs: body.addrs, seq: body.seq, time: body.t, bytes }
}

export interface ParseOptions {
  /** the peer the record must be about; a record about anyone else is RECORD_WRONG_PEER */
  subject?: string
  /** my clock, ms since epoch; defaults to now */
  now?: number
}

/**
 * Verifies and parses a record. Throws RECORD_TOO_LARGE, RECORD_MALFORMED,
 * RECORD_BAD_SIGNATURE, UNSUPPORTED_VERSION, RECORD_WRONG_PEER or
 * RECORD_FUTURE. It does not know what is stored: see `checkReplaces`.
 */
export function parseAddressRecord (bytes: Uint8Array, options: ParseOptions = {}): AddressRecord {
  if (!(bytes instanceof Uint8Array)) throw malformed('expected bytes')
  if (bytes.length > MAX_RECORD_BYTES) {
    throw new KithError('RECORD_TOO_LARGE', `the address record is ${bytes.length} bytes, over the ${MAX_RECORD_BYTES} any record may have`)
  }
  const envelope = envelopeSchema.safeParse(decodeCanonical(bytes, 'RECORD_MALFORMED', 'the address record'))
  if (!envelope.success) throw malformed(describe(envelope.error))
  const { body: bodyBytes, sig } = envelope.data
  // Only the key is read before the signature checks out.
  const raw = decodeCanonical(bodyBytes, 'RECORD_MALFORMED', 'the address record body') as { pub?: unknown, v?: unknown } | null
  const pub = raw?.pub
  if (!(pub instanceof Uint8Array) || pub.length !== PUBLIC_KEY_LENGTH) throw malformed('no subject key')
  if (!verify('address-record/1', bodyBytes, sig, pub)) {
    throw new KithError('RECORD_BAD_SIGNATURE', 'the address record is not signed by the peer it speaks for: it was forged or altered, and is ignored')
  }
  if (typeof raw?.v === 'number' && raw.v !== ADDRESS_RECORD_VERSION) {
    throw new KithError('UNSUPPORTED_VERSION', `the address record has format version ${raw.v}, which this kith does not know; upgrade kith`)
  }
  const body = bodySchema.safeParse(raw)
  if (!body.success) throw malformed(describe(body.error))
  let record: AddressRecord
  try {
    record = toRecord(body.data as Body, bytes)
  } catch {
    throw malformed('the subject key is not an Ed25519 point')
  }
  if (options.subject != null && record.peerId !== options.subject) {
    throw new KithError('RECORD_WRONG_PEER', `the address record speaks for ${record.peerId}, not for ${options.subject}; it is ignored`)
  }
  const now = options.now ?? Date.now()
  if (record.time > now + MAX_CLOCK_SKEW_MS) {
    throw new KithError('RECORD_FUTURE',
      `the address record of ${record.peerId} is dated ${new Date(record.time).toISOString()}, more than ${MAX_CLOCK_SKEW_MS / 60_000} minutes ahead of this clock; one of the two clocks is wrong`)
  }
  return record
}

/** Throws RECORD_STALE unless `candidate` is newer than `current`. */
export function checkReplaces (candidate: AddressRecord, current: AddressRecord | undefined): void {
  if (current != null && candidate.seq <= current.seq) {
    throw new KithError('RECORD_STALE',
      `the address record of ${candidate.peerId} has sequence number ${candidate.seq}, not newer than the ${current.seq} already known; it is ignored`)
  }
}

// The DHT namespace ------------------------------------------------------------

const NAMESPACE_PREFIX = new TextEncoder().encode(`/${DHT_RECORD_NAMESPACE}/`)

/** `/kith-addr/<peer id multihash bytes>` */
export function dhtRecordKey (peerIdMultihash: Uint8Array): Uint8Array {
  const key = new Uint8Array(NAMESPACE_PREFIX.length + peerIdMultihash.length)
  key.set(NAMESPACE_PREFIX)
  key.set(peerIdMultihash, NAMESPACE_PREFIX.length)
  return key
}

function subjectOfKey (key: Uint8Array): Uint8Array {
  if (key.length <= NAMESPACE_PREFIX.length || !NAMESPACE_PREFIX.every((b, i) => key[i] === b)) {
    throw malformed(`the DHT key is not under /${DHT_RECORD_NAMESPACE}/`)
  }
  return key.subarray(NAMESPACE_PREFIX.length)
}

function parseForKey (key: Uint8Array, value: Uint8Array): AddressRecord {
  const subject = subjectOfKey(key)
  const record = parseAddressRecord(value)
  const multihash = peerIdFromPublicKey(publicKeyFromRaw(record.publicKey)).toMultihash().bytes
  if (Buffer.compare(Buffer.from(multihash), Buffer.from(subject)) !== 0) {
    throw new KithError('RECORD_WRONG_PEER', `the DHT record under this key speaks for ${record.peerId}, not for the key's peer`)
  }
  return record
}

/** How many subjects the DHT validator remembers the highest sequence number of. */
export const MAX_DHT_SEQ_MEMORY = 4096

/**
 * Validator and selector for the kad-dht `kith-addr` namespace. A record is
 * valid if it parses, its subject is the key's peer, and its seq is not below
 * the highest this node has seen valid for that subject (kad-dht stores any
 * valid PUT over what it holds, so without this a friend could put back an
 * older record). A node takes no record about itself from others (`self`):
 * it puts its own, unvalidated, and is the authority on where it is. With
 * `subjects`, a record about a peer it refuses (not one of my friends) is
 * NOT_A_FRIEND: a friend can't make me hold records of strangers. The
 * selector picks the highest seq.
 */
export function dhtRecordRules (self?: string, subjects?: (peerId: string) => boolean): {
  validators: Record<string, (key: Uint8Array, value: Uint8Array) => Promise<void>>
  selectors: Record<string, (key: Uint8Array, records: Uint8Array[]) => number>
} {
  const highest = new Map<string, number>()
  const validate = async (key: Uint8Array, value: Uint8Array): Promise<void> => {
    const record = parseForKey(key, value)
    if (record.peerId === self) throw new KithError('RECORD_WRONG_PEER', 'this node keeps its own address record in the DHT itself')
    if (subjects != null && !subjects(record.peerId)) throw new KithError('NOT_A_FRIEND', `this node keeps DHT records of its friends only, and ${record.peerId} is not one`)
    const seen = highest.get(record.peerId)
    if (seen != null && record.seq < seen) {
      throw new KithError('RECORD_STALE', `a DHT record of ${record.peerId} with seq ${record.seq} is older than the ${seen} already seen`)
    }
    if (seen == null || record.seq > seen) {
      highest.delete(record.peerId)
      highest.set(record.peerId, record.seq)
      if (highest.size > MAX_DHT_SEQ_MEMORY) highest.delete(highest.keys().next().value!)
    }
  }
  const select = (key: Uint8Array, records: Uint8Array[]): number => {
    let best = 0
    let bestSeq = -1
    records.forEach((value, i) => {
      try {
        const { seq } = parseForKey(key, value)
        if (seq > bestSeq) {
          best = i
          bestSeq = seq
        }
      } catch {}
    })
    return best
  }
  return { validators: { [DHT_RECORD_NAMESPACE]: validate }, selectors: { [DHT_RECORD_NAMESPACE]: select } }
}
