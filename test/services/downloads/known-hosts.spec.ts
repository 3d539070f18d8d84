import { createHmac, generateKeyPairSync, randomBytes } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { checkHostKey, fingerprint } from '../../../src/services/downloads/known-hosts.ts'

/** known_hosts as OpenSSH writes it: each form of host name, and what a key that is not there gets. */
describe('known_hosts', () => {
  // an ssh-ed25519 public key blob: string "ssh-ed25519", string key
  const blob = (): Buffer => {
    const raw = generateKeyPairSync('ed25519').publicKey.export({ format: 'der', type: 'spki' }).subarray(-32)
    const name = Buffer.from('ssh-ed25519')
    const len = (b: Buffer): Buffer => { const l = Buffer.alloc(4); l.writeUInt32BE(b.length); return l }
    return Buffer.concat([len(name), name, len(raw), raw])
  }
  const key = blob()
  const other = blob()
  const line = (hosts: string, k = key): string => `${hosts} ssh-ed25519 ${k.toString('base64')}`
  const hashed = (name: string): string => {
    const salt = randomBytes(20)
    return `|1|${salt.toString('base64')}|${createHmac('sha1', salt).update(name).digest('base64')}`
  }
  const check = (text: string, host: string, port: number, accepted?: string): void => { checkHostKey(text, host, port, key, accepted, '/k') }

  it('trusts a key listed for the host: plain, in a list, [host]:port, hashed, by pattern', () => {
    expect(() => check(line('example.org'), 'example.org', 22)).not.toThrow()
    expect(() => check(line('a.org,example.org,1.2.3.4'), 'example.org', 22)).not.toThrow()
    expect(() => check(line('[127.0.0.1]:2222'), '127.0.0.1', 2222)).not.toThrow()
    expect(() => check(`# comment\n\n${line(hashed('[127.0.0.1]:2222'))}`, '127.0.0.1', 2222)).not.toThrow()
    expect(() => check(line('*.example.org,!bad.example.org'), 'files.example.org', 22)).not.toThrow()
  })

  it('refuses an unknown host, a changed key, a negated or revoked one, unless that very fingerprint is accepted', () => {
    expect(() => check(line('other.org'), 'example.org', 22)).toThrow(expect.objectContaining({ code: 'HOST_KEY_UNKNOWN' }))
    expect(() => check(line('example.org'), 'example.org', 2222)).toThrow(expect.objectContaining({ code: 'HOST_KEY_UNKNOWN' }))
    expect(() => check(line('*.example.org,!bad.example.org'), 'bad.example.org', 22)).toThrow(expect.objectContaining({ code: 'HOST_KEY_UNKNOWN' }))
    expect(() => check(line('example.org', other), 'example.org', 22)).toThrow(expect.objectContaining({ code: 'HOST_KEY_CHANGED' }))
    expect(() => check(`@revoked ${line('example.org')}\n${line('example.org')}`, 'example.org', 22)).toThrow(expect.objectContaining({ code: 'HOST_KEY_CHANGED' }))
    expect(() => check(line('example.org', other), 'example.org', 22, fingerprint(key))).not.toThrow()
    expect(() => check('', 'example.org', 22, fingerprint(key))).not.toThrow()
    expect(() => check('', 'example.org', 22, fingerprint(other))).toThrow(expect.objectContaining({ code: 'HOST_KEY_UNKNOWN' }))
    expect(() => check(`@cert-authority ${line('example.org')}`, 'example.org', 22)).toThrow(expect.objectContaining({ code: 'HOST_KEY_UNKNOWN' }))
  })

  it('reads a damaged file without trusting anything in it', () => {
    for (const text of ['example.org', 'example.org ssh-ed25519', '@revoked', '|1|bad|', line('example.org').slice(0, 40), line('example.org').replace(/A/g, 'B')]) {
      // a cut or altered key for the host reads as a changed one
      expect(() => check(text, 'example.org', 22)).toThrow(expect.objectContaining({ code: expect.stringMatching(/^HOST_KEY_(UNKNOWN|CHANGED)$/) }))
    }
  })
})
