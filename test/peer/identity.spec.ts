import { mkdtemp, readFile, readdir, rm, stat, writeFile, mkdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { scryptSync } from 'node:crypto'
import nacl from 'tweetnacl'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import {
  IDENTITY_FILE_VERSION,
  createIdentity,
  loadIdentity,
  loadOrCreateIdentity,
  type Identity
} from '../../src/peer/identity.ts'
import { sign, verify } from '../../src/peer/signing.ts'
import { KithError, isErrorCode, type ErrorCode } from '../../src/errors.ts'

let dir: string
let keyFile: string
/** one key file createIdentity sealed under 'pw', and its identity: for the tests that need such a file but not a new one (scrypt at the cost createIdentity uses is ~0.13 s of CPU a call) */
let sealedFixture: { bytes: Buffer, identity: Identity }
let fixtureDir: string

beforeAll(async () => {
  fixtureDir = await mkdtemp(join(tmpdir(), 'kith-identity-fixture-'))
  const path = join(fixtureDir, 'identity.key')
  const identity = await createIdentity(path, 'pw')
  sealedFixture = { bytes: await readFile(path), identity }
})

afterAll(async () => {
  await rm(fixtureDir, { recursive: true, force: true })
})

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kith-identity-'))
  keyFile = join(dir, 'identity.key')
})

afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

async function expectKithError (promise: Promise<unknown>, code: ErrorCode): Promise<KithError> {
  let caught: unknown
  try {
    await promise
  } catch (err) {
    caught = err
  }
  expect(caught, `expected ${code}`).toBeInstanceOf(KithError)
  const err = caught as KithError
  expect(isErrorCode(err.code)).toBe(true)
  expect(err.code, err.message).toBe(code)
  return err
}

function expectSameIdentity (a: Identity, b: Identity): void {
  expect(b.peerId.equals(a.peerId)).toBe(true)
  expect(b.peerId.toString()).toBe(a.peerId.toString())
  expect(Buffer.from(b.secretKey)).toEqual(Buffer.from(a.secretKey))
  expect(Buffer.from(b.publicKey)).toEqual(Buffer.from(a.publicKey))
}

/** Writes a plain (unsealed) key file with the given fields. */
async function writeJson (path: string, value: unknown): Promise<void> {
  await writeFile(path, JSON.stringify(value) + '\n', { mode: 0o600 })
}

const sealingKeys = new Map<string, Buffer>()

/** A sealed key file made by hand, with the cheapest scrypt cost the loader allows (its key derived once per passphrase: the salt is fixed). */
function sealedJson (secretKey: Uint8Array, passphrase: string): Record<string, unknown> {
  const kdf = { name: 'scrypt', N: 1 << 14, r: 8, p: 1 }
  const salt = Buffer.alloc(16, 5)
  const nonce = Buffer.alloc(nacl.secretbox.nonceLength, 9)
  let key = sealingKeys.get(passphrase)
  if (key === undefined) {
    key = scryptSync(passphrase, salt, 32, { N: kdf.N, r: kdf.r, p: kdf.p, maxmem: 64 << 20 })
    sealingKeys.set(passphrase, key)
  }
  const sealed = nacl.secretbox(secretKey, nonce, key)
  return {
    version: IDENTITY_FILE_VERSION,
    type: 'ed25519',
    kdf: { ...kdf, salt: salt.toString('base64') },
    nonce: nonce.toString('base64'),
    sealed: Buffer.from(sealed).toString('base64')
  }
}

describe('createIdentity and loadIdentity', () => {
  it('loads back the identity it created', async () => {
    const created = await createIdentity(keyFile)
    const loaded = await loadIdentity(keyFile)
    expectSameIdentity(created, loaded)
  })

  it('makes a consistent Ed25519 identity', async () => {
    const identity = await createIdentity(keyFile)
    expect(identity.secretKey.length).toBe(64)
    expect(identity.publicKey.length).toBe(32)
    expect(Buffer.from(identity.publicKey)).toEqual(Buffer.from(identity.secretKey.subarray(32)))
    expect(Buffer.from(nacl.sign.keyPair.fromSeed(identity.secretKey.slice(0, 32)).publicKey))
      .toEqual(Buffer.from(identity.publicKey))
    expect(Buffer.from(identity.privateKey.publicKey.raw)).toEqual(Buffer.from(identity.publicKey))
    expect(identity.privateKey.type).toBe('Ed25519')
    expect(peerIdFromPublicKey(publicKeyFromRaw(identity.publicKey)).equals(identity.peerId)).toBe(true)
    // the key signs kith records
    const body = new Uint8Array([1, 2, 3])
    expect(verify('invite/1', body, sign('invite/1', body, identity.secretKey), identity.publicKey)).toBe(true)
  })

  it('makes from a seed the key tweetnacl makes from it (a recovery phrase gives back the same identity)', async () => {
    const seed = new Uint8Array(32).map((_, i) => i * 7 + 1)
    const identity = await createIdentity(keyFile, undefined, seed)
    expect(Buffer.from(identity.secretKey)).toEqual(Buffer.from(nacl.sign.keyPair.fromSeed(seed).secretKey))
  })

  it('makes a new identity each time', async () => {
    const one = await createIdentity(keyFile)
    const two = await createIdentity(join(dir, 'other.key'))
    expect(one.peerId.equals(two.peerId)).toBe(false)
  })

  it('writes the key file with mode 0600 and leaves no temp files', async () => {
    await createIdentity(keyFile)
    expect((await stat(keyFile)).mode & 0o777).toBe(0o600)
    expect(await readdir(dir)).toEqual(['identity.key'])
  })

  it('writes a versioned plain file holding the key in base64', async () => {
    const identity = await createIdentity(keyFile)
    const text = await readFile(keyFile, 'utf8')
    expect(text.endsWith('\n')).toBe(true)
    const json = JSON.parse(text) as Record<string, unknown>
    expect(json).toEqual({
      version: IDENTITY_FILE_VERSION,
      type: 'ed25519',
      secretKey: Buffer.from(identity.secretKey).toString('base64')
    })
  })

  it('loads a fixture file of format version 1', async () => {
    const secretKey = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(42)).secretKey
    await writeJson(keyFile, { version: 1, type: 'ed25519', secretKey: Buffer.from(secretKey).toString('base64') })
    const identity = await loadIdentity(keyFile)
    expect(Buffer.from(identity.secretKey)).toEqual(Buffer.from(secretKey))
    expect(identity.peerId.toString()).toBe(peerIdFromPublicKey(publicKeyFromRaw(secretKey.subarray(32))).toString())
  })

  it('throws a plain ENOENT (not a KithError) when the file is absent', async () => {
    await expect(loadIdentity(keyFile)).rejects.toMatchObject({ code: 'ENOENT' })
  })
})

describe('passphrase-sealed key files', () => {
  it('load only with the right passphrase', async () => {
    const created = await createIdentity(keyFile, 'correct horse battery staple')
    expect((await stat(keyFile)).mode & 0o777).toBe(0o600)

    const text = await readFile(keyFile, 'utf8')
    expect(text).not.toContain(Buffer.from(created.secretKey).toString('base64'))
    const json = JSON.parse(text) as Record<string, unknown>
    expect(json.version).toBe(IDENTITY_FILE_VERSION)
    expect(json).toHaveProperty('kdf.name', 'scrypt')
    expect(json).not.toHaveProperty('secretKey')

    const locked = await expectKithError(loadIdentity(keyFile), 'IDENTITY_LOCKED')
    expect(locked.message).toContain(keyFile)

    const wrong = await expectKithError(loadIdentity(keyFile, 'correct horse battery stapler'), 'IDENTITY_LOCKED')
    expect(wrong.message).toContain(keyFile)

    await expectKithError(loadIdentity(keyFile, ''), 'IDENTITY_LOCKED')

    expectSameIdentity(created, await loadIdentity(keyFile, 'correct horse battery staple'))
  })

  it('normalises the passphrase (NFKC), so composed and decomposed accents agree', async () => {
    await writeJson(keyFile, sealedJson(nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(3)).secretKey, 'caf\u00e9'))
    const composed = await loadIdentity(keyFile, 'caf\u00e9')
    const decomposed = await loadIdentity(keyFile, 'cafe\u0301')
    expectSameIdentity(composed, decomposed)
  })

  it('takes the scrypt cost from the file', async () => {
    const secretKey = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(4)).secretKey
    await writeJson(keyFile, sealedJson(secretKey, 'pw'))
    expect(Buffer.from((await loadIdentity(keyFile, 'pw')).secretKey)).toEqual(Buffer.from(secretKey))
  })

  it('a passphrase given for a plain file is ignored', async () => {
    const created = await createIdentity(keyFile)
    expectSameIdentity(created, await loadIdentity(keyFile, 'unused'))
  })

  it('a tampered sealed box reads as locked-or-damaged, naming the file', async () => {
    const secretKey = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(6)).secretKey
    const json = sealedJson(secretKey, 'pw')
    const sealed = Buffer.from(json.sealed as string, 'base64')
    sealed[0]! ^= 1
    await writeJson(keyFile, { ...json, sealed: sealed.toString('base64') })
    const err = await expectKithError(loadIdentity(keyFile, 'pw'), 'IDENTITY_LOCKED')
    expect(err.message).toContain(keyFile)
  })

  it('refuses scrypt costs outside the allowed range', async () => {
    const json = sealedJson(nacl.sign.keyPair().secretKey, 'pw')
    for (const kdf of [
      { N: 1 << 10, r: 8, p: 1 },
      { N: 1 << 21, r: 8, p: 1 },
      { N: 1 << 14, r: 64, p: 1 },
      { N: 1 << 14, r: 8, p: 0 }
    ]) {
      await writeJson(keyFile, { ...json, kdf: { ...(json.kdf as object), ...kdf } })
      const err = await expectKithError(loadIdentity(keyFile, 'pw'), 'IDENTITY_CORRUPT')
      expect(err.message).toContain(keyFile)
    }
  })

  it('refuses a bad nonce length', async () => {
    const json = sealedJson(nacl.sign.keyPair().secretKey, 'pw')
    await writeJson(keyFile, { ...json, nonce: Buffer.alloc(12).toString('base64') })
    const err = await expectKithError(loadIdentity(keyFile, 'pw'), 'IDENTITY_CORRUPT')
    expect(err.message).toContain(keyFile)
  })
})

describe('damaged key files', () => {
  it('every truncation of a plain file is refused, naming the file', async () => {
    await createIdentity(keyFile)
    const full = await readFile(keyFile)
    const damaged = join(dir, 'damaged.key')
    // the last byte is the newline after the JSON; dropping it leaves a whole file
    expect(full[full.length - 1]).toBe(0x0a)
    for (let length = 0; length < full.length - 1; length++) {
      await writeFile(damaged, full.subarray(0, length))
      const err = await expectKithError(loadIdentity(damaged), 'IDENTITY_CORRUPT')
      expect(err.message).toContain(damaged)
    }
    await writeFile(damaged, full.subarray(0, full.length - 1))
    await expect(loadIdentity(damaged)).resolves.toBeDefined()
  })

  it('every truncation of a sealed file is refused, naming the file', async () => {
    const { bytes: full, identity: created } = sealedFixture
    const damaged = join(dir, 'damaged.key')
    expect(full[full.length - 1]).toBe(0x0a)
    // a truncated file fails to parse before any scrypt runs, so every length is cheap
    for (let length = 0; length < full.length - 1; length++) {
      await writeFile(damaged, full.subarray(0, length))
      const err = await expectKithError(loadIdentity(damaged, 'pw'), 'IDENTITY_CORRUPT')
      expect(err.message).toContain(damaged)
    }
    await writeFile(damaged, full.subarray(0, full.length - 1))
    expectSameIdentity(created, await loadIdentity(damaged, 'pw'))
  })

  it('garbage is refused as IDENTITY_CORRUPT, naming the file', async () => {
    const goodKey = Buffer.from(nacl.sign.keyPair().secretKey).toString('base64')
    let seed = 12345
    const noise = Buffer.alloc(300)
    for (let i = 0; i < noise.length; i++) {
      seed = (seed * 1103515245 + 12345) >>> 0
      noise[i] = seed >>> 24
    }
    const garbage: Array<[string, string | Uint8Array]> = [
      ['pseudo-random bytes', noise],
      ['NUL bytes', Buffer.alloc(64)],
      ['whitespace', '  \n\t\n'],
      ['JSON null', 'null'],
      ['a JSON number', '1'],
      ['a JSON string', '"ed25519"'],
      ['a JSON array', '[1, "ed25519"]'],
      ['an empty object', '{}'],
      ['a missing key', JSON.stringify({ version: 1, type: 'ed25519' })],
      ['an unknown key type', JSON.stringify({ version: 1, type: 'rsa', secretKey: goodKey })],
      ['an extra field', JSON.stringify({ version: 1, type: 'ed25519', secretKey: goodKey, note: 'x' })],
      ['a version given as a string', JSON.stringify({ version: '1', type: 'ed25519', secretKey: goodKey })],
      ['a key that is not base64', JSON.stringify({ version: 1, type: 'ed25519', secretKey: '!!!!' })],
      ['a key that is a number', JSON.stringify({ version: 1, type: 'ed25519', secretKey: 7 })],
      ['a 32-byte key', JSON.stringify({ version: 1, type: 'ed25519', secretKey: Buffer.alloc(32, 1).toString('base64') })],
      ['a 65-byte key', JSON.stringify({ version: 1, type: 'ed25519', secretKey: Buffer.alloc(65, 1).toString('base64') })],
      ['an empty key', JSON.stringify({ version: 1, type: 'ed25519', secretKey: '' })],
      ['a file far larger than a key', JSON.stringify({ version: 1, type: 'ed25519', secretKey: goodKey, pad: 'x'.repeat(5000) })]
    ]
    for (const [name, content] of garbage) {
      await writeFile(keyFile, content)
      const err = await expectKithError(loadIdentity(keyFile), 'IDENTITY_CORRUPT')
      expect(err.message, name).toContain(keyFile)
    }
  })

  it('a public half that does not match the private half is refused', async () => {
    const secretKey = Uint8Array.from(nacl.sign.keyPair().secretKey)
    secretKey[40]! ^= 1
    await writeJson(keyFile, { version: 1, type: 'ed25519', secretKey: Buffer.from(secretKey).toString('base64') })
    const err = await expectKithError(loadIdentity(keyFile), 'IDENTITY_CORRUPT')
    expect(err.message).toContain(keyFile)
    expect(err.message).toMatch(/public half/)
  })

  it('a public half taken from another key is refused', async () => {
    const one = nacl.sign.keyPair().secretKey
    const two = nacl.sign.keyPair().secretKey
    const mixed = Buffer.concat([one.subarray(0, 32), two.subarray(32)])
    await writeJson(keyFile, { version: 1, type: 'ed25519', secretKey: mixed.toString('base64') })
    await expectKithError(loadIdentity(keyFile), 'IDENTITY_CORRUPT')
  })

  it('a sealed key with a mismatched public half is refused after opening', async () => {
    const secretKey = Uint8Array.from(nacl.sign.keyPair().secretKey)
    secretKey[63]! ^= 0x80
    await writeJson(keyFile, sealedJson(secretKey, 'pw'))
    const err = await expectKithError(loadIdentity(keyFile, 'pw'), 'IDENTITY_CORRUPT')
    expect(err.message).toContain(keyFile)
  })

  it('a sealed box holding a key of the wrong length is refused', async () => {
    await writeJson(keyFile, sealedJson(new Uint8Array(32).fill(1), 'pw'))
    await expectKithError(loadIdentity(keyFile, 'pw'), 'IDENTITY_CORRUPT')
  })

  it('an unknown format version is UNSUPPORTED_VERSION, naming the file', async () => {
    const identity = await createIdentity(keyFile)
    const secretKey = Buffer.from(identity.secretKey).toString('base64')
    for (const version of [0, 2, 99]) {
      await writeJson(keyFile, { version, type: 'ed25519', secretKey })
      const err = await expectKithError(loadIdentity(keyFile), 'UNSUPPORTED_VERSION')
      expect(err.message).toContain(keyFile)
      expect(err.message).toContain(String(version))
    }
    // a future format with fields this version does not know
    await writeJson(keyFile, { version: 2, type: 'ed448', key: 'AAAA', extra: { x: 1 } })
    await expectKithError(loadIdentity(keyFile), 'UNSUPPORTED_VERSION')
    // and a sealed file of an unknown version, refused before any passphrase is asked for
    await writeJson(keyFile, { ...sealedJson(identity.secretKey, 'pw'), version: 2 })
    await expectKithError(loadIdentity(keyFile), 'UNSUPPORTED_VERSION')
  })
})

describe('loadOrCreateIdentity', () => {
  it('creates an identity only when the file is absent, then loads it', async () => {
    const first = await loadOrCreateIdentity(keyFile)
    expect(first.created).toBe(true)
    expect((await stat(keyFile)).mode & 0o777).toBe(0o600)
    const second = await loadOrCreateIdentity(keyFile)
    expect(second.created).toBe(false)
    expectSameIdentity(first.identity, second.identity)
  })

  it('creates a sealed identity when given a passphrase', async () => {
    const first = await loadOrCreateIdentity(keyFile, 'pw')
    expect(first.created).toBe(true)
    await expectKithError(loadIdentity(keyFile), 'IDENTITY_LOCKED')
    const second = await loadOrCreateIdentity(keyFile, 'pw')
    expect(second.created).toBe(false)
    expectSameIdentity(first.identity, second.identity)
  })

  async function expectUntouched (content: string | Uint8Array, code: ErrorCode, passphrase?: string): Promise<void> {
    await writeFile(keyFile, content, { mode: 0o600 })
    const before = await readFile(keyFile)
    const err = await expectKithError(loadOrCreateIdentity(keyFile, passphrase), code)
    expect(err.message).toContain(keyFile)
    expect((await readFile(keyFile)).equals(before)).toBe(true)
    expect(await readdir(dir)).toEqual(['identity.key'])
  }

  it('never creates over an empty file', async () => {
    await expectUntouched('', 'IDENTITY_CORRUPT')
  })

  it('never creates over a truncated file', async () => {
    await createIdentity(keyFile)
    const full = await readFile(keyFile)
    await expectUntouched(full.subarray(0, 20), 'IDENTITY_CORRUPT')
  })

  it('never creates over garbage or a mismatched key', async () => {
    await expectUntouched('garbage', 'IDENTITY_CORRUPT')
    const secretKey = Uint8Array.from(nacl.sign.keyPair().secretKey)
    secretKey[33]! ^= 1
    await expectUntouched(JSON.stringify({ version: 1, type: 'ed25519', secretKey: Buffer.from(secretKey).toString('base64') }), 'IDENTITY_CORRUPT')
  })

  it('never creates over a file of an unknown version', async () => {
    await expectUntouched(JSON.stringify({ version: 2, type: 'ed25519', secretKey: '' }), 'UNSUPPORTED_VERSION')
  })

  it('never creates over a sealed file it cannot open', async () => {
    const sealed = sealedFixture.bytes
    await expectUntouched(sealed, 'IDENTITY_LOCKED')
    await expectUntouched(sealed, 'IDENTITY_LOCKED', 'wrong')
  })

  it('does not create when the folder is missing', async () => {
    const missing = join(dir, 'no-such-folder', 'identity.key')
    await expect(loadOrCreateIdentity(missing)).rejects.toMatchObject({ code: 'ENOENT' })
    expect(await readdir(dir)).toEqual([])
  })

  it('does not treat a folder in place of the key file as absent', async () => {
    await mkdir(keyFile)
    await expect(loadOrCreateIdentity(keyFile)).rejects.toBeInstanceOf(KithError)
    expect((await stat(keyFile)).isDirectory()).toBe(true)
  })
})
