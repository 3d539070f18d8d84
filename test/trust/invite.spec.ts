import nacl from 'tweetnacl'
import { decode } from 'cborg'
import { privateKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { afterEach, describe, expect, it, vi } from 'vitest'
import {
  CLOCK_SKEW_S,
  INVITE_VERSION,
  MAX_ADDR_LENGTH,
  MAX_INVITE_ADDRS,
  MAX_INVITE_LIFETIME_S,
  MAX_INVITE_TEXT,
  MAX_INVITE_USES,
  MAX_NAME_LENGTH,
  SECRET_LENGTH,
  checkRedeemProof,
  checkValidity,
  createInvite,
  inviteId,
  parseInvite,
  redeemProof,
  summarise,
  type CreateInviteInit,
  type Invite
} from '../../src/trust/invite.ts'
import { encodeCanonical } from '../../src/peer/canonical.ts'
import { sign, signedMessage } from '../../src/peer/signing.ts'
import { KithError, isErrorCode, type ErrorCode } from '../../src/errors.ts'
import type { Service } from '../../src/trust/grants.ts'

// ---------------------------------------------------------------------------
// fixtures

const BEGIN = '-----BEGIN KITH INVITE-----'
const END = '-----END KITH INVITE-----'

const alice = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(0xa1))
const bob = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(0xb0))
const SECRET = new Uint8Array(SECRET_LENGTH).fill(0x5e)
const NBF_MS = 1_750_000_000_000
const EXP_MS = NBF_MS + 7 * 24 * 3600 * 1000
const ADDRS = ['/ip4/192.0.2.10/tcp/4001', '/ip6/2001:db8::1/tcp/4001', '/dns4/alice.example.org/tcp/443/wss']

function init (overrides: Partial<CreateInviteInit> = {}): CreateInviteInit {
  return {
    secretKey: alice.secretKey,
    publicKey: alice.publicKey,
    name: 'alice',
    addrs: ADDRS,
    notBefore: NBF_MS,
    expires: EXP_MS,
    uses: 3,
    grants: ['relay', 'files', 'locate'],
    secret: SECRET,
    ...overrides
  }
}

/** The body createInvite would sign for init(), as a plain record to tamper with. */
function baseBody (): Record<string, unknown> {
  return {
    v: INVITE_VERSION,
    pub: alice.publicKey,
    name: 'alice',
    addrs: ADDRS,
    nbf: NBF_MS / 1000,
    exp: EXP_MS / 1000,
    secret: SECRET,
    uses: 3,
    grants: ['files', 'locate', 'relay']
  }
}

/** Armours bytes exactly as invite.ts does: 64-column base64 between BEGIN/END lines. */
function armour (bytes: Uint8Array): string {
  const lines = Buffer.from(bytes).toString('base64').match(/.{1,64}/g) ?? []
  return [BEGIN, ...lines, END, ''].join('\n')
}

function envelopeText (bodyBytes: Uint8Array, sig: Uint8Array): string {
  return armour(encodeCanonical({ body: bodyBytes, sig }))
}

/** A properly signed invite text for any body record, valid or not. */
function signedText (body: unknown, secretKey: Uint8Array = alice.secretKey): string {
  const bodyBytes = encodeCanonical(body)
  return envelopeText(bodyBytes, sign('invite/1', bodyBytes, secretKey))
}

/** Takes an armoured invite apart again. */
function openText (text: string): { envelope: Uint8Array, body: Uint8Array, sig: Uint8Array, record: Record<string, unknown> } {
  const lines = text.trim().split('\n')
  const envelope = Uint8Array.from(Buffer.from(lines.slice(1, -1).join(''), 'base64'))
  const { body, sig } = decode(envelope) as { body: Uint8Array, sig: Uint8Array }
  return { envelope, body, sig, record: decode(body) as Record<string, unknown> }
}

/** Calls fn, which must throw a KithError with a known code (and the given one, if any). */
function expectKithError (fn: () => unknown, code?: ErrorCode | ErrorCode[], label?: string): KithError {
  let caught: unknown
  let returned: unknown
  try {
    returned = fn()
  } catch (err) {
    caught = err
  }
  expect(caught, `${label ?? 'call'} should throw, but returned ${JSON.stringify(returned)}`).toBeInstanceOf(KithError)
  const err = caught as KithError
  expect(isErrorCode(err.code), label).toBe(true)
  if (Array.isArray(code)) expect(code, label).toContain(err.code)
  else if (code != null) expect(err.code, `${label ?? ''} ${err.message}`).toBe(code)
  return err
}

/** S + L on the signature's second half (little-endian), which tweetnacl alone accepts. */
function malleate (sig: Uint8Array): Uint8Array {
  const L = Buffer.from('edd3f55c1a631258d69cf7a2def9de14' + '00'.repeat(15) + '10', 'hex')
  const out = Uint8Array.from(sig)
  let carry = 0
  for (let i = 0; i < 32; i++) {
    const sum = out[32 + i]! + L[i]! + carry
    out[32 + i] = sum & 0xff
    carry = sum >> 8
  }
  return out
}

function flipBit (text: string, index: number, bit: number): string {
  return text.slice(0, index) + String.fromCharCode(text.charCodeAt(index) ^ (1 << bit)) + text.slice(index + 1)
}

const real = createInvite(init())
/** The smallest invite there can be, for the bit-flip test. */
const small = createInvite(init({ name: 'a', addrs: [], grants: [], uses: 1 }))

// ---------------------------------------------------------------------------

describe('createInvite / parseInvite', () => {
  it('round-trips every field', () => {
    const parsed = parseInvite(real.text)
    expect(parsed).toEqual(real.invite)
    expect(parsed.name).toBe('alice')
    expect(parsed.addrs).toEqual(ADDRS)
    expect(parsed.notBefore).toBe(NBF_MS)
    expect(parsed.expires).toBe(EXP_MS)
    expect(parsed.uses).toBe(3)
    expect(parsed.grants).toEqual(['files', 'locate', 'relay'])
    expect(Buffer.from(parsed.secret)).toEqual(Buffer.from(SECRET))
    expect(Buffer.from(parsed.publicKey)).toEqual(Buffer.from(alice.publicKey))
  })

  it('names the issuer by the peer id of its key', () => {
    const peerId = peerIdFromPrivateKey(privateKeyFromRaw(alice.secretKey))
    expect(parseInvite(real.text).issuer).toBe(peerId.toString())
  })

  it('derives the id from the secret alone', () => {
    const parsed = parseInvite(real.text)
    expect(parsed.id).toBe(inviteId(SECRET))
    expect(parsed.id).toMatch(/^[0-9a-f]{16}$/)
    const other = createInvite(init({ name: 'someone else', uses: 9 }))
    expect(parseInvite(other.text).id).toBe(parsed.id)
    expect(inviteId(new Uint8Array(SECRET_LENGTH))).not.toBe(parsed.id)
  })

  it('makes a fresh random secret when none is given', () => {
    const { secret: _unused, ...rest } = init()
    const one = createInvite(rest)
    const two = createInvite(rest)
    expect(one.invite.secret.length).toBe(SECRET_LENGTH)
    expect(one.invite.id).not.toBe(two.invite.id)
    expect(parseInvite(one.text).id).toBe(one.invite.id)
  })

  it('armours as 64-column base64 between BEGIN and END lines', () => {
    const lines = real.text.split('\n')
    expect(lines[0]).toBe(BEGIN)
    expect(lines.at(-2)).toBe(END)
    expect(lines.at(-1)).toBe('')
    for (const line of lines.slice(1, -2)) {
      expect(line).toMatch(/^[A-Za-z0-9+/=]{1,64}$/)
    }
  })

  it('is deterministic for the same input', () => {
    expect(createInvite(init()).text).toBe(real.text)
  })

  it('rounds times down to whole seconds', () => {
    const { invite, text } = createInvite(init({ notBefore: NBF_MS + 999, expires: EXP_MS + 1 }))
    expect(invite.notBefore).toBe(NBF_MS)
    expect(invite.expires).toBe(EXP_MS)
    expect(parseInvite(text).notBefore).toBe(NBF_MS)
  })

  it('sorts the grants, so the same grants give the same bytes', () => {
    const a = createInvite(init({ grants: ['relay', 'backup', 'files'] }))
    const b = createInvite(init({ grants: ['files', 'relay', 'backup'] }))
    expect(a.text).toBe(b.text)
    expect(parseInvite(a.text).grants).toEqual(['backup', 'files', 'relay'])
  })

  it('accepts the limits themselves', () => {
    const addrs = Array.from({ length: MAX_INVITE_ADDRS }, (_, i) => `/ip4/192.0.2.${i}/tcp/${4000 + i}`)
    const { text } = createInvite(init({
      name: 'n'.repeat(MAX_NAME_LENGTH),
      addrs,
      uses: MAX_INVITE_USES,
      expires: NBF_MS + MAX_INVITE_LIFETIME_S * 1000,
      grants: ['backup', 'files', 'locate', 'relay']
    }))
    const parsed = parseInvite(text)
    expect(parsed.addrs).toEqual(addrs)
    expect(parsed.uses).toBe(MAX_INVITE_USES)
    expect(Buffer.byteLength(text)).toBeLessThan(MAX_INVITE_TEXT)
  })

  it('keeps at most MAX_INVITE_ADDRS addresses', () => {
    const addrs = Array.from({ length: MAX_INVITE_ADDRS + 4 }, (_, i) => `/ip4/192.0.2.${i}/tcp/4001`)
    const { invite, text } = createInvite(init({ addrs }))
    expect(invite.addrs).toEqual(addrs.slice(0, MAX_INVITE_ADDRS))
    expect(parseInvite(text).addrs).toEqual(addrs.slice(0, MAX_INVITE_ADDRS))
  })

  it('refuses to make an invalid invite (BAD_REQUEST)', () => {
    const bad: Array<[string, Partial<CreateInviteInit>]> = [
      ['an empty name', { name: '' }],
      ['a name with a newline', { name: 'ali\nce' }],
      ['a name with a C1 control', { name: 'ali\u009bce' }],
      ['a name too long', { name: 'n'.repeat(MAX_NAME_LENGTH + 1) }],
      ['a bad address', { addrs: ['localhost:4001'] }],
      ['an unknown grant', { grants: ['admin' as Service] }],
      ['no uses', { uses: 0 }],
      ['too many uses', { uses: MAX_INVITE_USES + 1 }],
      ['fractional uses', { uses: 1.5 }],
      ['expiry before start', { expires: NBF_MS - 1000 }],
      ['expiry at start', { expires: NBF_MS }],
      ['a window longer than the maximum', { expires: NBF_MS + (MAX_INVITE_LIFETIME_S + 1) * 1000 }],
      ['a short secret', { secret: new Uint8Array(SECRET_LENGTH - 1) }],
      ['a short public key', { publicKey: alice.publicKey.subarray(1) }]
    ]
    for (const [label, overrides] of bad) {
      expectKithError(() => createInvite(init(overrides)), 'BAD_REQUEST', label)
    }
  })
})

describe('summarise', () => {
  it('gives ISO dates and no secret', () => {
    const summary = summarise(parseInvite(real.text))
    expect(summary).toEqual({
      id: real.invite.id,
      issuer: real.invite.issuer,
      name: 'alice',
      addrs: ADDRS,
      notBefore: new Date(NBF_MS).toISOString(),
      expires: new Date(EXP_MS).toISOString(),
      uses: 3,
      grants: ['files', 'locate', 'relay']
    })
    expect(summary).not.toHaveProperty('secret')
  })
})

describe('the test helpers', () => {
  it('armour and sign exactly as createInvite does, so tampered variants are meaningful', () => {
    expect(signedText(baseBody())).toBe(real.text)
    const opened = openText(real.text)
    expect(Buffer.from(opened.sig)).toEqual(Buffer.from(sign('invite/1', opened.body, alice.secretKey)))
    expect(opened.record.v).toBe(1)
  })
})

describe('damaged invite text', () => {
  it('every truncation is refused with INVITE_MALFORMED', () => {
    const { text } = real
    // dropping only the final newline leaves a whole invite
    expect(text.endsWith(END + '\n')).toBe(true)
    for (let length = 0; length < text.length - 1; length++) {
      expectKithError(() => parseInvite(text.slice(0, length)), 'INVITE_MALFORMED', `prefix of ${length} chars`)
    }
    expect(parseInvite(text.slice(0, -1))).toEqual(real.invite)
  })

  it('every truncation of the envelope bytes, armoured properly, is refused with INVITE_MALFORMED', () => {
    const { envelope } = openText(real.text)
    for (let length = 0; length < envelope.length; length++) {
      expectKithError(() => parseInvite(armour(envelope.subarray(0, length))), 'INVITE_MALFORMED', `envelope prefix of ${length} bytes`)
    }
  })

  it('the small invite used for bit flips is itself valid', () => {
    expect(parseInvite(small.text)).toEqual(small.invite)
    expect(small.text.length).toBeLessThan(400)
  })

  // A bit of every character, the bit turning with its place (bit i % 8 of character i):
  // every character and every bit position. test/fuzz/invite.spec.ts flips any bit of any
  // invite, of its envelope or of its text.
  it('a bit flip in every character is refused', () => {
    const { text } = small
    for (let i = 0; i < text.length; i++) {
      const flipped = flipBit(text, i, i % 8)
      expect(flipped).not.toBe(text)
      expectKithError(() => parseInvite(flipped), ['INVITE_MALFORMED', 'INVITE_BAD_SIGNATURE'], `byte ${i} bit ${i % 8}`)
    }
  })

  it('refuses text that is not an invite at all', () => {
    const notInvites = [
      '',
      '\n\n',
      'hello',
      BEGIN,
      `${BEGIN}\n${END}\n`,
      `${BEGIN}\n\n${END}\n`,
      `${BEGIN}\nAAAA\n${END}\n`,
      `${BEGIN}\n!!!!\n${END}\n`,
      `${BEGIN}\nAAA\n${END}\n`,
      `${BEGIN}\nAB==\n${END}\n`, // non-canonical base64: unused bits set
      `${BEGIN}\nAA=A\n${END}\n`,
      real.text.replace(BEGIN, '-----BEGIN PGP MESSAGE-----'),
      real.text.replace(END, '-----END PGP MESSAGE-----'),
      real.text.replace(BEGIN, BEGIN.toLowerCase()),
      real.text.replace(/\n(?=[A-Za-z0-9+/])/, '\n  x') // junk inside the block
    ]
    for (const text of notInvites) {
      expectKithError(() => parseInvite(text), 'INVITE_MALFORMED', JSON.stringify(text.slice(0, 60)))
    }
  })

  it('refuses non-string input', () => {
    for (const value of [undefined, null, 42, Buffer.from(real.text), { text: real.text }]) {
      expectKithError(() => parseInvite(value as unknown as string), 'INVITE_MALFORMED', String(value))
    }
  })
})

describe('mail and line-ending mangling', () => {
  it('parses a mail-quoted invite ("> " before every line)', () => {
    const quoted = real.text.split('\n').map(l => l === '' ? l : `> ${l}`).join('\n')
    expect(parseInvite(quoted)).toEqual(real.invite)
  })

  it('parses quotes nested several deep, with or without the space', () => {
    const nested = real.text.split('\n').map((l, i) => i % 2 === 0 ? `> > ${l}` : `>>> ${l}`).join('\n')
    expect(parseInvite(nested)).toEqual(real.invite)
    const bare = real.text.split('\n').map(l => `>${l}`).join('\n')
    expect(parseInvite(bare)).toEqual(real.invite)
  })

  it('parses CRLF line endings', () => {
    const crlf = real.text.replace(/\n/g, '\r\n')
    expect(crlf).toContain('\r\n')
    expect(parseInvite(crlf)).toEqual(real.invite)
  })

  it('parses a quoted CRLF invite with trailing spaces and blank lines around it', () => {
    const mangled = '\r\n\r\n' + real.text.split('\n').map(l => `> ${l}  \t`).join('\r\n') + '\r\n\r\n'
    expect(parseInvite(mangled)).toEqual(real.invite)
  })

  it('parses an invite indented by a mail client or chat', () => {
    const indented = real.text.split('\n').map(l => `    ${l}`).join('\n')
    expect(parseInvite(indented)).toEqual(real.invite)
  })

  it('parses the block re-wrapped to other line lengths', () => {
    const { envelope } = openText(real.text)
    const b64 = Buffer.from(envelope).toString('base64')
    for (const width of [1, 17, 76, b64.length]) {
      const lines = b64.match(new RegExp(`.{1,${width}}`, 'g')) ?? []
      expect(parseInvite([BEGIN, ...lines, END].join('\n'))).toEqual(real.invite)
    }
  })
})

describe('size limit', () => {
  it('refuses text over MAX_INVITE_TEXT bytes with INVITE_TOO_LARGE, before parsing', () => {
    expectKithError(() => parseInvite('x'.repeat(MAX_INVITE_TEXT + 1)), 'INVITE_TOO_LARGE')
    // a valid invite padded past the limit is still too large
    const padded = real.text + '\n'.repeat(MAX_INVITE_TEXT + 1 - real.text.length)
    expect(Buffer.byteLength(padded)).toBe(MAX_INVITE_TEXT + 1)
    expectKithError(() => parseInvite(padded), 'INVITE_TOO_LARGE')
  })

  it('counts bytes, not characters', () => {
    const text = '\u00e9'.repeat(MAX_INVITE_TEXT / 2 + 1)
    expect(text.length).toBeLessThan(MAX_INVITE_TEXT)
    expectKithError(() => parseInvite(text), 'INVITE_TOO_LARGE')
  })

  it('accepts an invite of exactly MAX_INVITE_TEXT bytes', () => {
    const padded = real.text + '\n'.repeat(MAX_INVITE_TEXT - real.text.length)
    expect(Buffer.byteLength(padded)).toBe(MAX_INVITE_TEXT)
    expect(parseInvite(padded)).toEqual(real.invite)
  })
})

describe('signature', () => {
  it('refuses a body whose key was swapped for another (INVITE_BAD_SIGNATURE)', () => {
    const { sig, record } = openText(real.text)
    const swapped = encodeCanonical({ ...record, pub: bob.publicKey })
    expectKithError(() => parseInvite(envelopeText(swapped, sig)), 'INVITE_BAD_SIGNATURE')
  })

  it('refuses a body signed by a key other than the one it names (INVITE_BAD_SIGNATURE)', () => {
    expectKithError(() => parseInvite(signedText(baseBody(), bob.secretKey)), 'INVITE_BAD_SIGNATURE')
  })

  it('refuses any changed field under the original signature', () => {
    const { sig, record } = openText(real.text)
    const changes: Array<Record<string, unknown>> = [
      { name: 'mallory' },
      { uses: 1000 },
      { exp: (record.exp as number) + 1 },
      { grants: ['backup', 'files', 'locate', 'relay'] },
      { addrs: ['/ip4/203.0.113.66/tcp/4001'] },
      { secret: new Uint8Array(SECRET_LENGTH) }
    ]
    for (const change of changes) {
      const text = envelopeText(encodeCanonical({ ...record, ...change }), sig)
      expectKithError(() => parseInvite(text), 'INVITE_BAD_SIGNATURE', JSON.stringify(Object.keys(change)))
    }
  })

  it('refuses a malleated signature (S + L) that tweetnacl alone would accept', () => {
    const { body, sig } = openText(real.text)
    const malleated = malleate(sig)
    expect(nacl.sign.detached.verify(signedMessage('invite/1', body), malleated, alice.publicKey)).toBe(true)
    expectKithError(() => parseInvite(envelopeText(body, malleated)), 'INVITE_BAD_SIGNATURE')
  })

  it('refuses a signature made in another domain', () => {
    const { body } = openText(real.text)
    for (const domain of ['address-record/1', 'manifest/1', 'redeem/1'] as const) {
      expectKithError(() => parseInvite(envelopeText(body, sign(domain, body, alice.secretKey))), 'INVITE_BAD_SIGNATURE', domain)
    }
  })

  it('refuses a signature over the raw body bytes (no domain prefix)', () => {
    const { body } = openText(real.text)
    expectKithError(() => parseInvite(envelopeText(body, nacl.sign.detached(body, alice.secretKey))), 'INVITE_BAD_SIGNATURE')
  })

  it('refuses an all-zero signature', () => {
    const { body } = openText(real.text)
    expectKithError(() => parseInvite(envelopeText(body, new Uint8Array(64))), 'INVITE_BAD_SIGNATURE')
  })
})

describe('envelope', () => {
  const { body, sig } = openText(real.text)

  it('refuses a signature of the wrong length', () => {
    for (const bad of [sig.subarray(0, 63), new Uint8Array(65), new Uint8Array(0)]) {
      expectKithError(() => parseInvite(envelopeText(body, bad)), 'INVITE_MALFORMED', `sig of ${bad.length} bytes`)
    }
  })

  it('refuses extra, missing or mistyped envelope fields', () => {
    const bad: unknown[] = [
      { body, sig, extra: 1 },
      { body },
      { sig },
      { body: 'text', sig },
      { body, sig: 'text' },
      [body, sig],
      body,
      null,
      42
    ]
    for (const envelope of bad) {
      expectKithError(() => parseInvite(armour(encodeCanonical(envelope))), 'INVITE_MALFORMED')
    }
  })

  it('refuses an envelope in non-canonical form', () => {
    // canonical order is "sig" (shorter key) before "body"; write them the other way round
    const reversed = Buffer.concat([
      Buffer.from([0xa2]),
      encodeCanonical('body'), encodeCanonical(body),
      encodeCanonical('sig'), encodeCanonical(sig)
    ])
    expect(reversed.equals(Buffer.from(openText(real.text).envelope))).toBe(false)
    expect(reversed.length).toBe(openText(real.text).envelope.length)
    expectKithError(() => parseInvite(armour(reversed)), 'INVITE_MALFORMED')
  })

  it('refuses trailing bytes after the envelope', () => {
    const { envelope } = openText(real.text)
    expectKithError(() => parseInvite(armour(Buffer.concat([envelope, Buffer.from([0])]))), 'INVITE_MALFORMED')
  })

  it('refuses a properly signed body in non-canonical form', () => {
    const canonical = Buffer.from(encodeCanonical(baseBody()))
    // `uses: 3` written with a needless length byte
    const usesKey = Buffer.concat([Buffer.from(encodeCanonical('uses')), Buffer.from([0x03])])
    const at = canonical.indexOf(usesKey)
    expect(at).toBeGreaterThan(0)
    const nonCanonical = Buffer.concat([
      canonical.subarray(0, at + usesKey.length - 1),
      Buffer.from([0x18, 0x03]),
      canonical.subarray(at + usesKey.length)
    ])
    expect(decode(nonCanonical)).toEqual(decode(canonical))
    const text = envelopeText(nonCanonical, sign('invite/1', nonCanonical, alice.secretKey))
    expectKithError(() => parseInvite(text), 'INVITE_MALFORMED')
  })
})

describe('version', () => {
  it('refuses a properly signed body of an unknown version with UNSUPPORTED_VERSION', () => {
    for (const v of [0, 2, 99]) {
      const err = expectKithError(() => parseInvite(signedText({ ...baseBody(), v })), 'UNSUPPORTED_VERSION', `v ${v}`)
      expect(err.message).toContain(String(v))
    }
  })

  it('a version 2 body with new fields is still UNSUPPORTED_VERSION, not malformed', () => {
    const { secret: _unused, ...rest } = baseBody()
    expectKithError(() => parseInvite(signedText({ ...rest, v: 2, keys: [1, 2, 3] })), 'UNSUPPORTED_VERSION')
  })

  it('checks the signature before the version', () => {
    expectKithError(() => parseInvite(signedText({ ...baseBody(), v: 2 }, bob.secretKey)), 'INVITE_BAD_SIGNATURE')
  })

  it('refuses a missing or non-numeric version as malformed', () => {
    const { v: _unused, ...noVersion } = baseBody()
    expectKithError(() => parseInvite(signedText(noVersion)), 'INVITE_MALFORMED')
    expectKithError(() => parseInvite(signedText({ ...baseBody(), v: '1' })), 'INVITE_MALFORMED')
  })
})

describe('body fields (properly signed)', () => {
  const bad: Array<[string, Record<string, unknown>]> = [
    ['a bad multiaddr', { addrs: ['not a multiaddr'] }],
    ['a host:port address', { addrs: ['192.0.2.1:4001'] }],
    ['an address with a bad port', { addrs: ['/ip4/192.0.2.1/tcp/99999'] }],
    ['an address with an unknown protocol', { addrs: ['/carrier-pigeon/1'] }],
    ['an address that is too long', { addrs: ['/dns4/' + 'a'.repeat(MAX_ADDR_LENGTH) + '/tcp/1'] }],
    ['an address that is not a string', { addrs: [42] }],
    ['addrs that is not a list', { addrs: '/ip4/192.0.2.1/tcp/4001' }],
    ['too many addrs', { addrs: Array.from({ length: MAX_INVITE_ADDRS + 1 }, (_, i) => `/ip4/192.0.2.${i}/tcp/4001`) }],
    ['an unknown grant', { grants: ['files', 'root'] }],
    ['a grant that is not a string', { grants: [1] }],
    ['too many grants', { grants: ['backup', 'files', 'locate', 'relay', 'files'] }],
    ['a NUL in the name', { name: 'ali\u0000ce' }],
    ['a newline in the name', { name: 'alice\n' }],
    ['a carriage return in the name', { name: 'alice\rbob' }],
    ['an escape in the name', { name: '\u001b[31malice' }],
    ['a tab in the name', { name: 'ali\tce' }],
    ['DEL in the name', { name: 'alice\u007f' }],
    ['a C1 control (CSI) in the name', { name: 'alice\u009b31m' }],
    ['a C1 control (NEL) in the name', { name: 'alice\u0085bob' }],
    ['an empty name', { name: '' }],
    ['a name too long', { name: 'n'.repeat(MAX_NAME_LENGTH + 1) }],
    ['a name that is bytes', { name: new Uint8Array([0x61]) }],
    ['uses 0', { uses: 0 }],
    ['negative uses', { uses: -1 }],
    ['fractional uses', { uses: 1.5 }],
    ['too many uses', { uses: MAX_INVITE_USES + 1 }],
    ['exp equal to nbf', { exp: NBF_MS / 1000 }],
    ['exp before nbf', { exp: NBF_MS / 1000 - 1 }],
    ['a window longer than the maximum', { exp: NBF_MS / 1000 + MAX_INVITE_LIFETIME_S + 1 }],
    ['a negative nbf', { nbf: -1 }],
    ['a fractional exp', { exp: EXP_MS / 1000 + 0.5 }],
    ['a time as a string', { nbf: String(NBF_MS / 1000) }],
    ['a short secret', { secret: new Uint8Array(SECRET_LENGTH - 1) }],
    ['a long secret', { secret: new Uint8Array(SECRET_LENGTH + 1) }],
    ['a secret as text', { secret: 'x'.repeat(SECRET_LENGTH) }],
    ['an unknown field', { note: 'hi' }],
    ['a __proto__ field', { ['__proto__']: { polluted: true } }]
  ]

  it('the unmodified base body is accepted', () => {
    expect(parseInvite(signedText(baseBody()))).toEqual(real.invite)
  })

  for (const [label, change] of bad) {
    it(`refuses ${label} with INVITE_MALFORMED`, () => {
      const body: Record<string, unknown> = { ...baseBody() }
      for (const key of Object.keys(change)) {
        Object.defineProperty(body, key, { value: change[key], enumerable: true, writable: true, configurable: true })
      }
      const err = expectKithError(() => parseInvite(signedText(body)), 'INVITE_MALFORMED', label)
      expect(err.message).toMatch(/not a valid kith invite/)
    })
  }

  it('accepts ordinary Unicode names', () => {
    for (const name of ['Zoë', '山田 花子', 'Ольга 🌻', 'a b', 'x'.repeat(MAX_NAME_LENGTH)]) {
      expect(parseInvite(signedText({ ...baseBody(), name })).name).toBe(name)
    }
  })

  for (const field of ['name', 'addrs', 'nbf', 'exp', 'secret', 'uses', 'grants']) {
    it(`refuses a body without ${field}`, () => {
      const body: Record<string, unknown> = { ...baseBody() }
      delete body[field]
      expectKithError(() => parseInvite(signedText(body)), 'INVITE_MALFORMED', field)
    })
  }

  it('refuses a missing or malformed issuer key before checking the signature', () => {
    const { pub: _unused, ...noKey } = baseBody()
    expectKithError(() => parseInvite(signedText(noKey)), 'INVITE_MALFORMED')
    expectKithError(() => parseInvite(signedText({ ...baseBody(), pub: alice.publicKey.subarray(1) })), 'INVITE_MALFORMED')
    expectKithError(() => parseInvite(signedText({ ...baseBody(), pub: Buffer.from(alice.publicKey).toString('hex') })), 'INVITE_MALFORMED')
  })

  it('refuses a body that is not a map', () => {
    for (const body of [null, 1, 'invite', [alice.publicKey], alice.publicKey]) {
      expectKithError(() => parseInvite(signedText(body)), 'INVITE_MALFORMED', JSON.stringify(body))
    }
  })

  it('a __proto__ field does not pollute prototypes', () => {
    const body: Record<string, unknown> = { ...baseBody() }
    Object.defineProperty(body, '__proto__', { value: { polluted: true }, enumerable: true })
    expectKithError(() => parseInvite(signedText(body)), 'INVITE_MALFORMED')
    expect(({} as Record<string, unknown>).polluted).toBeUndefined()
  })
})

describe('checkValidity', () => {
  const window: Pick<Invite, 'notBefore' | 'expires'> = { notBefore: NBF_MS, expires: EXP_MS }
  const skew = CLOCK_SKEW_S * 1000

  afterEach(() => {
    vi.useRealTimers()
  })

  it('tolerates five minutes of clock skew', () => {
    expect(CLOCK_SKEW_S).toBe(5 * 60)
  })

  it('accepts times inside the window', () => {
    for (const now of [NBF_MS, NBF_MS + 1, (NBF_MS + EXP_MS) / 2, EXP_MS - 1, EXP_MS]) {
      expect(() => checkValidity(window, now)).not.toThrow()
    }
  })

  it('accepts up to the skew before notBefore, and no further', () => {
    expect(() => checkValidity(window, NBF_MS - skew)).not.toThrow()
    const err = expectKithError(() => checkValidity(window, NBF_MS - skew - 1), 'INVITE_NOT_YET_VALID')
    expect(err.message).toContain(new Date(NBF_MS).toISOString())
    expectKithError(() => checkValidity(window, NBF_MS - 24 * 3600 * 1000), 'INVITE_NOT_YET_VALID')
  })

  it('accepts up to the skew after expires, and no further', () => {
    expect(() => checkValidity(window, EXP_MS + skew)).not.toThrow()
    const err = expectKithError(() => checkValidity(window, EXP_MS + skew + 1), 'INVITE_EXPIRED')
    expect(err.message).toContain(new Date(EXP_MS).toISOString())
    expectKithError(() => checkValidity(window, EXP_MS + 365 * 24 * 3600 * 1000), 'INVITE_EXPIRED')
  })

  it('works on a parsed invite', () => {
    const invite = parseInvite(real.text)
    expect(() => checkValidity(invite, NBF_MS)).not.toThrow()
    expectKithError(() => checkValidity(invite, EXP_MS + skew + 1000), 'INVITE_EXPIRED')
  })

  it('uses the current time by default', () => {
    vi.useFakeTimers({ toFake: ['Date'] })
    vi.setSystemTime(NBF_MS + 1000)
    expect(() => checkValidity(window)).not.toThrow()
    vi.setSystemTime(EXP_MS + skew + 1)
    expectKithError(() => checkValidity(window), 'INVITE_EXPIRED')
    vi.setSystemTime(NBF_MS - skew - 1)
    expectKithError(() => checkValidity(window), 'INVITE_NOT_YET_VALID')
  })

  it('maps to HTTP statuses', () => {
    expect(expectKithError(() => checkValidity(window, EXP_MS + skew + 1)).status).toBe(410)
    expect(expectKithError(() => checkValidity(window, NBF_MS - skew - 1)).status).toBe(400)
  })
})

describe('redeemProof / checkRedeemProof', () => {
  const issuer = peerIdFromPrivateKey(privateKeyFromRaw(alice.secretKey)).toString()
  const accepter = peerIdFromPrivateKey(privateKeyFromRaw(bob.secretKey)).toString()
  const mallory = peerIdFromPrivateKey(privateKeyFromRaw(nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(0x66)).secretKey)).toString()
  const proof = redeemProof(SECRET, issuer, accepter)

  it('is a deterministic 32-byte HMAC that the issuer can check', () => {
    expect(proof.length).toBe(32)
    expect(Buffer.from(redeemProof(SECRET, issuer, accepter))).toEqual(Buffer.from(proof))
    expect(checkRedeemProof(SECRET, issuer, accepter, proof)).toBe(true)
  })

  it('does not contain the secret', () => {
    expect(Buffer.from(proof).includes(Buffer.from(SECRET.subarray(0, 8)))).toBe(false)
  })

  it('binds the accepter: a proof cannot be replayed by another peer', () => {
    expect(checkRedeemProof(SECRET, issuer, mallory, proof)).toBe(false)
  })

  it('binds the issuer: a proof for one issuer is worthless at another', () => {
    expect(checkRedeemProof(SECRET, mallory, accepter, proof)).toBe(false)
  })

  it('binds the roles: swapping issuer and accepter fails', () => {
    expect(checkRedeemProof(SECRET, accepter, issuer, proof)).toBe(false)
    expect(Buffer.from(redeemProof(SECRET, accepter, issuer))).not.toEqual(Buffer.from(proof))
  })

  it('separates the two ids unambiguously', () => {
    expect(Buffer.from(redeemProof(SECRET, 'ab', 'c'))).not.toEqual(Buffer.from(redeemProof(SECRET, 'a', 'bc')))
  })

  it('binds the secret', () => {
    const other = new Uint8Array(SECRET_LENGTH).fill(0x5f)
    expect(checkRedeemProof(other, issuer, accepter, proof)).toBe(false)
  })

  it('refuses altered, short, long and empty proofs without throwing', () => {
    for (let i = 0; i < proof.length; i++) {
      const altered = Uint8Array.from(proof)
      altered[i]! ^= 1 << (i % 8)
      expect(checkRedeemProof(SECRET, issuer, accepter, altered), `byte ${i}`).toBe(false)
    }
    const long = new Uint8Array(33)
    long.set(proof)
    for (const bad of [proof.subarray(0, 31), long, new Uint8Array(0)]) {
      expect(checkRedeemProof(SECRET, issuer, accepter, bad)).toBe(false)
    }
  })
})
