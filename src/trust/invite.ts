import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { z } from 'zod'
import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { KithError } from '../errors.ts'
import { encodeCanonical, decodeCanonical } from '../peer/canonical.ts'
import { sign, verify } from '../peer/signing.ts'
import { isSafeText } from '../peer/text.ts'
import { safeText } from '../peer/safe-text.ts'
import { SERVICES, type Service } from './grants.ts'
import { CLOCK_SKEW_S, INVITE_VERSION, MAX_ADDR_LENGTH, MAX_INVITE_ADDRS, MAX_INVITE_LIFETIME_S, MAX_INVITE_TEXT, MAX_INVITE_USES, MAX_NAME_LENGTH, SECRET_LENGTH } from './invite-constants.ts'

/**
 * Invite files: a signed, versioned, canonical CBOR record, armoured as base64
 * between BEGIN/END lines so it survives mail and chat.
 *
 *   envelope = { body: bstr, sig: bstr(64) }        (canonical CBOR)
 *   body     = { v, pub, name, addrs, nbf, exp, secret, uses, grants }
 *   sig      = Ed25519(issuer, "kith/invite/1\0" || sha256(body))
 *
 * The signature is checked before the body is decoded. The invite id is derived
 * from the secret (never from signature bytes, which are malleable).
 */

export * from './invite-constants.ts'

const BEGIN = '-----BEGIN KITH INVITE-----'
const END = '-----END KITH INVITE-----'

export interface InviteBody {
  v: number
  pub: Uint8Array
  name: string
  addrs: string[]
  nbf: number
  exp: number
  secret: Uint8Array
  uses: number
  grants: Service[]
}

export interface Invite {
  id: string
  issuer: string
  publicKey: Uint8Array
  name: string
  addrs: string[]
  notBefore: number
  expires: number
  secret: Uint8Array
  uses: number
  grants: Service[]
}

export interface InviteSummary {
  id: string
  issuer: string
  name: string
  addrs: string[]
  notBefore: string
  expires: string
  uses: number
  grants: Service[]
}

const bytes = (length: number) => z.instanceof(Uint8Array).refine(b => b.length === length, `must be ${length} bytes`)
const seconds = z.number().int().min(0).max(2 ** 40)

const envelopeSchema = z.object({
  body: z.instanceof(Uint8Array),
  sig: bytes(64)
}).strict()

/** Names come from other people and end up on terminals: safe text only (src/peer/text.ts). */
export const displayName = safeText(MAX_NAME_LENGTH, 1)

const bodySchema = z.object({
  v: z.literal(INVITE_VERSION),
  pub: bytes(32),
  name: displayName,
  addrs: z.array(z.string().max(MAX_ADDR_LENGTH).refine(isMultiaddr, 'must be a multiaddr')).max(MAX_INVITE_ADDRS),
  nbf: seconds,
  exp: seconds,
  secret: bytes(SECRET_LENGTH),
  uses: z.number().int().min(1).max(MAX_INVITE_USES),
  grants: z.array(z.enum(SERVICES)).max(SERVICES.length)
}).strict().refine(b => b.exp > b.nbf && b.exp - b.nbf <= MAX_INVITE_LIFETIME_S, 'validity window is empty or too long')

/** A multiaddr with at least one component, written in its normal form, of safe text (a DNS name may hold anything). */
export function isMultiaddr (s: string): boolean {
  if (!isSafeText(s)) return false
  try {
    const ma = multiaddr(s)
    return ma.getComponents().length > 0 && ma.toString() === s
  } catch {
    return false
  }
}

function malformed (why: string): KithError {
  return new KithError('INVITE_MALFORMED', `this is not a valid kith invite (${why}); ask your friend to send the file again, unchanged`)
}

/** The invite id: a short hash of the secret, the same on both sides. */
export function inviteId (secret: Uint8Array): string {
  return createHash('sha256').update('kith/invite-id\0').update(secret).digest('hex').slice(0, 16)
}

/**
 * What the accepter sends to prove it holds the invite: an HMAC of both peer
 * ids under the secret, so the secret itself never crosses the wire and a proof
 * can't be replayed by a third peer.
 */
export function redeemProof (secret: Uint8Array, issuer: string, accepter: string): Uint8Array {
  return createHmac('sha256', secret).update(`kith/redeem/1\0${issuer}\0${accepter}`).digest()
}

export function checkRedeemProof (secret: Uint8Array, issuer: string, accepter: string, proof: Uint8Array): boolean {
  const expected = redeemProof(secret, issuer, accepter)
  return proof.length === expected.length && timingSafeEqual(expected, proof)
}

export interface CreateInviteInit {
  secretKey: Uint8Array
  publicKey: Uint8Array
  name: string
  addrs: string[]
  notBefore: number
  expires: number
  uses: number
  grants: Service[]
  secret?: Uint8Array
}

/** Signs an invite and returns it with its armoured text. */
export function createInvite (init: CreateInviteInit): { invite: Invite, text: string } {
  const body: InviteBody = {
    v: INVITE_VERSION,
    pub: init.publicKey,
    name: init.name,
    addrs: init.addrs.slice(0, MAX_INVITE_ADDRS),
    nbf: Math.floor(init.notBefore / 1000),
    exp: Math.floor(init.expires / 1000),
    secret: init.secret ?? randomBytes(SECRET_LENGTH),
    uses: init.uses,
    grants: [...init.grants].sort()
  }
  const parsed = bodySchema.safeParse(body)
  if (!parsed.success) throw new KithError('BAD_REQUEST', `invite would be invalid: ${describe(parsed.error)}`)
  const bodyBytes = encodeCanonical(body)
  const envelope = encodeCanonical({ body: bodyBytes, sig: sign('invite/1', bodyBytes, init.secretKey) })
  return { invite: toInvite(body), text: armour(envelope) }
}

function armour (bytes: Uint8Array): string {
  const b64 = Buffer.from(bytes).toString('base64')
  const lines = b64.match(/.{1,64}/g) ?? []
  return [BEGIN, ...lines, END, ''].join('\n')
}

/** Finds the armoured block; tolerates mail quoting ("> ") and CRLF, nothing else. */
function dearmour (text: string): Uint8Array {
  const lines = text.split('\n').map(l => l.replace(/[ \t\r]+$/, '').replace(/^(?:> ?)*[ \t]*/, ''))
  while (lines.length > 0 && lines[0] === '') lines.shift()
  while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop()
  if (lines[0] !== BEGIN) throw malformed('it must start with the line ' + BEGIN)
  if (lines[lines.length - 1] !== END || lines.length < 3) throw malformed('it must end with the line ' + END)
  const b64 = lines.slice(1, -1).join('')
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || b64.length % 4 !== 0) throw malformed('the text between the BEGIN and END lines is damaged')
  const decoded = Buffer.from(b64, 'base64')
  if (decoded.toString('base64') !== b64) throw malformed('the text between the BEGIN and END lines is damaged')
  return decoded
}

function describe (error: z.ZodError): string {
  return error.issues.map(i => `${i.path.join('.') || 'record'}: ${i.message}`).join('; ')
}

function toInvite (body: InviteBody): Invite {
  return {
    id: inviteId(body.secret),
    issuer: peerIdFromPublicKey(publicKeyFromRaw(body.pub)).toString(),
    publicKey: body.pub,
    name: body.name,
    addrs: body.addrs,
    notBefore: body.nbf * 1000,
    expires: body.exp * 1000,
    secret: body.secret,
    uses: body.uses,
    grants: body.grants
  }
}

/**
 * Verifies and parses an armoured invite. Checks, in order: size, armour,
 * envelope, signature (including S < L), body fields. It does not check the
 * validity window; call `checkValidity` with the clock you trust.
 */
export function parseInvite (text: string): Invite {
  if (typeof text !== 'string') throw malformed('expected text')
  if (Buffer.byteLength(text, 'utf8') > MAX_INVITE_TEXT) {
    throw new KithError('INVITE_TOO_LARGE', `this file is larger than any invite can be (${MAX_INVITE_TEXT} bytes); check you chose the right file`)
  }
  const envelopeBytes = dearmour(text)
  const envelope = envelopeSchema.safeParse(decodeCanonical(envelopeBytes, 'INVITE_MALFORMED', 'the invite'))
  if (!envelope.success) throw malformed(describe(envelope.error))
  const { body: bodyBytes, sig } = envelope.data
  // The issuer's key sits inside the body, but nothing else of it is trusted
  // before the signature checks out: pull out just the key, verify, then parse.
  const raw = decodeCanonical(bodyBytes, 'INVITE_MALFORMED', 'the invite body') as { pub?: unknown } | null
  const pub = raw?.pub
  if (!(pub instanceof Uint8Array) || pub.length !== 32) throw malformed('no issuer key')
  if (!verify('invite/1', bodyBytes, sig, pub)) {
    throw new KithError('INVITE_BAD_SIGNATURE', 'the invite signature does not match its issuer key: it was altered or forged; ask your friend for a fresh invite')
  }
  const v = (raw as { v?: unknown }).v
  if (typeof v === 'number' && v !== INVITE_VERSION) {
    throw new KithError('UNSUPPORTED_VERSION', `this invite has format version ${v}, which this kith does not know; upgrade kith`)
  }
  const body = bodySchema.safeParse(raw)
  if (!body.success) throw malformed(describe(body.error))
  return toInvite(body.data as InviteBody)
}

/** Throws INVITE_NOT_YET_VALID or INVITE_EXPIRED outside the window, with CLOCK_SKEW_S of slack. */
export function checkValidity (invite: Pick<Invite, 'notBefore' | 'expires'>, now = Date.now()): void {
  if (now + CLOCK_SKEW_S * 1000 < invite.notBefore) {
    throw new KithError('INVITE_NOT_YET_VALID', `this invite is valid only from ${new Date(invite.notBefore).toISOString()}; check your clock or wait until then`)
  }
  if (now - CLOCK_SKEW_S * 1000 > invite.expires) {
    throw new KithError('INVITE_EXPIRED', `this invite expired at ${new Date(invite.expires).toISOString()}; ask your friend for a new one`)
  }
}

export function summarise (invite: Invite): InviteSummary {
  return {
    id: invite.id,
    issuer: invite.issuer,
    name: invite.name,
    addrs: invite.addrs,
    notBefore: new Date(invite.notBefore).toISOString(),
    expires: new Date(invite.expires).toISOString(),
    uses: invite.uses,
    grants: invite.grants
  }
}
