import fc from 'fast-check'
import { createPrivateKey, createPublicKey, sign as cryptoSign, type KeyObject } from 'node:crypto'
import { encode } from 'cborg'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { SERVICES, type Service } from '../../src/trust/grants.ts'
import { signedMessage, type SigningDomain } from '../../src/peer/signing.ts'

/**
 * Generators shared by the fuzz tests: keys, peer ids, multiaddrs, text, and
 * arbitrary CBOR values to put where a field should be.
 */

export interface Keys {
  publicKey: Uint8Array
  /** tweetnacl layout: seed || public key */
  secretKey: Uint8Array
  peerId: string
  privateKey: KeyObject
}

/** PKCS #8 DER of an Ed25519 private key, up to its 32-byte seed. */
const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex')

/**
 * An Ed25519 keypair from a random seed, with its peer id. Made with
 * node:crypto: tweetnacl takes ~17 ms a key and ~11 ms a signature, which
 * would spend the fuzz budget on arithmetic.
 */
export const keys: fc.Arbitrary<Keys> = fc.uint8Array({ minLength: 32, maxLength: 32 }).map(seed => {
  const privateKey = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, seed]), format: 'der', type: 'pkcs8' })
  const publicKey = Uint8Array.from(Buffer.from(createPublicKey(privateKey).export({ format: 'jwk' }).x!, 'base64url'))
  return {
    publicKey,
    secretKey: Uint8Array.from(Buffer.concat([seed, publicKey])),
    peerId: peerIdFromPublicKey(publicKeyFromRaw(publicKey)).toString(),
    privateKey
  }
})

/**
 * What src/peer/signing.ts `sign` makes, through node:crypto: Ed25519 is
 * deterministic, so the bytes are the same.
 */
export function signFast (domain: SigningDomain, body: Uint8Array, signer: Keys): Uint8Array {
  return Uint8Array.from(cryptoSign(null, signedMessage(domain, body), signer.privateKey))
}

/** A base58 Ed25519 peer id. */
export const peerId: fc.Arbitrary<string> = keys.map(k => k.peerId)

/** The services an invite or a friend grants: a subset of SERVICES. */
export const grants: fc.Arbitrary<Service[]> = fc.subarray([...SERVICES])

const port = fc.integer({ min: 0, max: 65535 })
const dnsName = fc.domain({ size: 'small' })

/** An address a node may listen on: TCP over IPv4, IPv6 or DNS, sometimes WebSockets. */
const direct: fc.Arbitrary<string> = fc.tuple(
  fc.oneof(fc.ipV4().map(ip => `/ip4/${ip}`), fc.ipV6().map(ip => `/ip6/${ip}`), fc.tuple(fc.constantFrom('dns4', 'dns6', 'dns'), dnsName).map(([p, n]) => `/${p}/${n}`)),
  port,
  fc.constantFrom('', '/ws', '/wss', '/tls/ws')
).map(([host, p, ws]) => `${host}/tcp/${p}${ws}`)

/**
 * Multiaddr text as kith writes it: direct addresses and relayed ones
 * (`<relay>/p2p/<relay id>/p2p-circuit`). Not every one is in normal form
 * (an IPv6 address may be written another way): callers keep what their
 * format accepts with its own predicate.
 */
export const multiaddrText: fc.Arbitrary<string> = fc.oneof(
  { weight: 3, arbitrary: direct },
  { weight: 1, arbitrary: fc.tuple(direct, peerId).map(([relay, id]) => `${relay}/p2p/${id}/p2p-circuit`) }
)

/** Text of up to `max` UTF-16 units, any code point, lone surrogates and controls included. */
export function anyText (max: number, min = 0): fc.Arbitrary<string> {
  return fc.string({ unit: 'binary', minLength: min, maxLength: max })
}

/** Text people write: letters of many scripts, digits, spaces, emoji. */
export function humanText (max: number, min = 1): fc.Arbitrary<string> {
  return fc.string({ unit: 'grapheme', minLength: min, maxLength: max })
}

/** Any CBOR value kith's decoder takes (no floats, shallow): what a hostile sender puts in a field. */
export const { value: cborValue } = fc.letrec<{ value: unknown }>(tie => ({
  value: fc.oneof(
    { depthSize: 'small', maxDepth: 4 },
    fc.constant(null),
    fc.boolean(),
    fc.integer({ min: -2, max: 70_000 }),
    fc.constantFrom(0, 1, 2, -1, 2 ** 32, 2 ** 40, Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER, 0.5, 1e300),
    anyText(20).filter(s => s.isWellFormed()),
    fc.uint8Array({ maxLength: 70 }),
    fc.array(tie('value'), { maxLength: 4 }),
    fc.dictionary(anyText(6).filter(s => s.isWellFormed()), tie('value'), { maxKeys: 4, noNullPrototype: true })
  )
}))

/**
 * A record with one field damaged: replaced by any CBOR value, removed, or
 * joined by an unknown field. What a hostile signer puts in a body it signs.
 */
export function mutateField (record: Record<string, unknown>): fc.Arbitrary<Record<string, unknown>> {
  const fields = Object.keys(record)
  return fc.oneof(
    fc.tuple(fc.constantFrom(...fields), cborValue).map(([k, v]) => ({ ...record, [k]: v })),
    fc.constantFrom(...fields).map(k => { const out = { ...record }; delete out[k]; return out }),
    fc.tuple(anyText(8).filter(s => s.isWellFormed() && !fields.includes(s) && s !== '__proto__'), cborValue).map(([k, v]) => ({ ...record, [k]: v }))
  )
}

/** CBOR of any value: random structure rather than random bytes. */
export const cborBytes: fc.Arbitrary<Uint8Array> = cborValue.map(v => encode(v))
