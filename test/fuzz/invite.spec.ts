import fc from 'fast-check'
import { describe, expect, it, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  INVITE_VERSION, MAX_INVITE_LIFETIME_S, MAX_INVITE_TEXT, MAX_INVITE_USES, MAX_INVITE_ADDRS, SECRET_LENGTH,
  createInvite, displayName, inviteId, isMultiaddr, parseInvite, redeemProof, type Invite
} from '../../src/trust/invite.ts'
import { InviteBook, type IssuedInvite } from '../../src/trust/invite-book.ts'
import { encodeCanonical } from '../../src/peer/canonical.ts'
import { openDatabase, sublevel, type Database } from '../../src/peer/database.ts'
import { SERVICES } from '../../src/trust/grants.ts'
import { grants, humanText, keys, mutateField, multiaddrText, peerId, signFast, type Keys } from './arbitraries.ts'
import { flipBit, fuzz, fuzzAsync, rejects, rejectsAsync } from './budget.ts'

/**
 * Invite files (src/trust/invite.ts `parseInvite`) and the use count that
 * stops a replayed redeem (src/trust/invite-book.ts).
 */
const BEGIN = '-----BEGIN KITH INVITE-----'
const END = '-----END KITH INVITE-----'

const name = humanText(64).filter(s => displayName.safeParse(s).success)
const addrs = fc.uniqueArray(multiaddrText.filter(isMultiaddr), { maxLength: MAX_INVITE_ADDRS })
/** A validity window in whole seconds, as the body holds it. */
const window = fc.tuple(fc.integer({ min: 0, max: 2 ** 40 - MAX_INVITE_LIFETIME_S }), fc.integer({ min: 1, max: MAX_INVITE_LIFETIME_S }))
  .map(([nbf, lifetime]) => ({ nbf, exp: nbf + lifetime }))

const fields = fc.record({
  keys,
  name,
  addrs,
  window,
  uses: fc.integer({ min: 1, max: MAX_INVITE_USES }),
  grants,
  secret: fc.uint8Array({ minLength: SECRET_LENGTH, maxLength: SECRET_LENGTH })
})
type Fields = typeof fields extends fc.Arbitrary<infer T> ? T : never

function bodyOf (f: Fields): Record<string, unknown> {
  return { v: INVITE_VERSION, pub: f.keys.publicKey, name: f.name, addrs: f.addrs, nbf: f.window.nbf, exp: f.window.exp, secret: f.secret, uses: f.uses, grants: [...f.grants].sort() }
}

function armour (bytes: Uint8Array): string {
  const lines = Buffer.from(bytes).toString('base64').match(/.{1,64}/g) ?? []
  return [BEGIN, ...lines, END, ''].join('\n')
}

/** The armoured invite for a body, signed by `signer` (what createInvite writes, byte for byte, for a valid body). */
function signedText (body: Record<string, unknown>, signer: Keys): string {
  const bodyBytes = encodeCanonical(body)
  return armour(encodeCanonical({ body: bodyBytes, sig: signFast('invite/1', bodyBytes, signer) }))
}

interface Made { keys: Keys, text: string, body: Record<string, unknown> }

/** A valid invite from a random issuer, with its armoured text and its body as signed. */
const made: fc.Arbitrary<Made> = fields.map(f => ({ keys: f.keys, body: bodyOf(f), text: signedText(bodyOf(f), f.keys) }))

function envelopeOf (text: string): Uint8Array {
  const lines = text.trim().split('\n')
  return Uint8Array.from(Buffer.from(lines.slice(1, -1).join(''), 'base64'))
}

/** What any accepted invite must satisfy, whatever bytes it came from. */
function checkAccepted (invite: Invite): void {
  expect(displayName.safeParse(invite.name).success).toBe(true)
  expect(invite.addrs.length).toBeLessThanOrEqual(MAX_INVITE_ADDRS)
  for (const a of invite.addrs) expect(isMultiaddr(a)).toBe(true)
  expect(invite.expires).toBeGreaterThan(invite.notBefore)
  expect(invite.expires - invite.notBefore).toBeLessThanOrEqual(MAX_INVITE_LIFETIME_S * 1000)
  expect(invite.uses).toBeGreaterThanOrEqual(1)
  expect(invite.uses).toBeLessThanOrEqual(MAX_INVITE_USES)
  expect(invite.secret).toHaveLength(SECRET_LENGTH)
  for (const g of invite.grants) expect(SERVICES).toContain(g)
  expect(invite.id).toBe(inviteId(invite.secret))
}

const PARSE_CODES = ['INVITE_MALFORMED', 'INVITE_BAD_SIGNATURE'] as const

describe('invites, fuzzed', () => {
  it('round-trip: createInvite writes the canonical text of any valid invite, and it parses back to the same invite', () => {
    fuzz(fc.property(fields, f => {
      const { invite, text } = createInvite({
        secretKey: f.keys.secretKey,
        publicKey: f.keys.publicKey,
        name: f.name,
        addrs: f.addrs,
        notBefore: f.window.nbf * 1000,
        expires: f.window.exp * 1000,
        uses: f.uses,
        grants: f.grants,
        secret: f.secret
      })
      expect(text).toBe(signedText(bodyOf(f), f.keys))
      expect(parseInvite(text)).toEqual(invite)
    }), 0.2)
  })

  it('round-trip through mail: quoted with "> " and with CRLF line ends, an invite parses the same', () => {
    fuzz(fc.property(made, fc.constantFrom('quoted', 'crlf', 'both'), ({ text }, form) => {
      const quoted = form === 'crlf' ? text : text.split('\n').map(l => `> ${l}`).join('\n')
      const sent = form === 'quoted' ? quoted : quoted.replaceAll('\n', '\r\n')
      expect(parseInvite(sent)).toEqual(parseInvite(text))
    }))
  })

  it('refuses every truncation of the envelope, and of the text before its END line, with INVITE_MALFORMED', () => {
    fuzz(fc.property(made.chain(m => {
      const envelope = envelopeOf(m.text)
      const endsAt = m.text.indexOf(END) + END.length
      return fc.oneof(
        fc.nat(envelope.length - 1).map(n => armour(envelope.subarray(0, n))),
        fc.nat(endsAt - 1).map(n => m.text.slice(0, n))
      )
    }), text => {
      rejects(() => parseInvite(text), ['INVITE_MALFORMED'], text)
    }))
  })

  it('refuses any single bit flip, of the envelope or of the armoured text', () => {
    fuzz(fc.property(made.chain(m => {
      const envelope = envelopeOf(m.text)
      const text = Buffer.from(m.text, 'utf8')
      return fc.oneof(
        fc.nat(envelope.length * 8 - 1).map(bit => armour(flipBit(envelope, bit))),
        fc.nat(text.length * 8 - 1).map(bit => Buffer.from(flipBit(text, bit)).toString('utf8'))
      )
    }), text => {
      rejects(() => parseInvite(text), PARSE_CODES, text)
    }))
  })

  it('refuses random text and random armoured bytes with INVITE_MALFORMED', () => {
    const junk = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 300 }),
      fc.uint8Array({ maxLength: 300 }).map(armour),
      fc.string({ unit: 'binary', maxLength: 300 }).map(s => `${BEGIN}\n${s}\n${END}\n`)
    )
    fuzz(fc.property(junk, text => { rejects(() => parseInvite(text), ['INVITE_MALFORMED'], text) }))
  })

  it('refuses anything over MAX_INVITE_TEXT bytes with INVITE_TOO_LARGE, whatever it holds', () => {
    // a valid invite padded, or noise; the size is checked before the text is looked at
    const big = fc.tuple(made, fc.integer({ min: 1, max: 4 * MAX_INVITE_TEXT }), fc.constantFrom(' ', '\n', 'A', 'é', '\u0000'))
      .map(([m, extra, pad]) => m.text + pad.repeat(Math.ceil((MAX_INVITE_TEXT + extra - Buffer.byteLength(m.text)) / Buffer.byteLength(pad))))
    fuzz(fc.property(big, text => {
      expect(Buffer.byteLength(text)).toBeGreaterThan(MAX_INVITE_TEXT)
      rejects(() => parseInvite(text), ['INVITE_TOO_LARGE'], text.slice(0, 100))
    }), 0.2)
  })

  it('refuses any validly signed body with a damaged field, or parses it into a valid invite', () => {
    const signed = made.chain(m => mutateField(m.body).map(body => ({ m, body })))
    fuzz(fc.property(signed, ({ m, body }) => {
      const text = signedText(body, m.keys)
      let invite: Invite
      try {
        invite = parseInvite(text)
      } catch (err) {
        // a replaced key no longer matches the signature
        rejects(() => { throw err }, ['INVITE_MALFORMED', 'INVITE_BAD_SIGNATURE', 'UNSUPPORTED_VERSION'], body)
        return
      }
      checkAccepted(invite)
    }))
  })
})

describe('redeeming an invite again, fuzzed (use count, proof bound to the accepter)', () => {
  let dir: string
  let db: Database
  let book: InviteBook
  const ISSUER = '12D3KooWFuzzIssuer'

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kith-fuzz-invites-'))
    db = await openDatabase(join(dir, 'db'))
    book = new InviteBook(sublevel(db, 'invites'))
  })

  afterAll(async () => {
    await db?.close()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('spends each use once: past the count, or with another peer\'s proof, a redeem is refused and changes nothing', async () => {
    const scenario = fc.record({
      secret: fc.uint8Array({ minLength: SECRET_LENGTH, maxLength: SECRET_LENGTH }),
      uses: fc.integer({ min: 1, max: 4 }),
      accepters: fc.uniqueArray(peerId, { minLength: 6, maxLength: 6 })
    })
    await fuzzAsync(fc.asyncProperty(scenario, async ({ secret, uses, accepters }) => {
      const now = Date.now()
      const issued: IssuedInvite = {
        id: inviteId(secret), secret: Buffer.from(secret).toString('base64'), label: null, grants: ['files'],
        notBefore: now - 60_000, expires: now + 3_600_000, uses, redeemedBy: [], revoked: false, created: now
      }
      await book.add(issued)
      const commits: string[] = []
      const attempt = async (accepter: string, proofOf = accepter): Promise<IssuedInvite> =>
        await book.redeem(issued.id, ISSUER, accepter, redeemProof(secret, ISSUER, proofOf), async () => { commits.push(accepter) }, now)

      for (const accepter of accepters.slice(0, uses)) await attempt(accepter)
      const spent = await book.get(issued.id)
      expect(spent.redeemedBy).toEqual(accepters.slice(0, uses))
      // one more peer than the invite allows
      await rejectsAsync(async () => await attempt(accepters[uses]!), ['INVITE_USED'])
      // a peer replaying a proof made for another peer (it saw the request, or the accepter shared it)
      await rejectsAsync(async () => await attempt(accepters[5]!, accepters[0]!), ['INVITE_UNKNOWN'])
      // a first redeemer repeating itself spends nothing
      await attempt(accepters[0]!)
      expect(await book.get(issued.id)).toEqual(spent)
      expect(commits).toEqual([...accepters.slice(0, uses), accepters[0]])
    }), 0.2)
  })
})

