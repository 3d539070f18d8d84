import { describe, it, expect } from 'vitest'
import { createCipheriv, randomBytes } from 'node:crypto'
import nacl from 'tweetnacl'
import { privateKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { Identity } from '../../../src/peer/identity.ts'
import { sealRecovery, openRecovery, nextRecoverySeq, MAX_RECOVERY_RECORD, type RecoveryContent } from '../../../src/services/backup/recovery.ts'
import { encodeCanonical } from '../../../src/peer/canonical.ts'
import { sign } from '../../../src/peer/signing.ts'
import { codeOf } from '../../helpers/errors.ts'

function identity (): Identity {
  const { secretKey, publicKey } = nacl.sign.keyPair()
  const privateKey = privateKeyFromRaw(secretKey)
  return { privateKey, peerId: peerIdFromPrivateKey(privateKey), secretKey, publicKey }
}

const hex32 = (): string => randomBytes(32).toString('hex')

function content (me: Identity, friend: Identity): RecoveryContent {
  const data = hex32()
  const snap = hex32()
  return {
    created: Date.now(),
    name: 'alice',
    friends: [{
      peerId: friend.peerId.toString(),
      publicKey: Buffer.from(friend.publicKey).toString('base64'),
      label: 'bob',
      grantsToThem: ['backup', 'files'],
      grantsFromThem: ['backup'],
      state: 'active',
      addrs: ['/ip4/127.0.0.1/tcp/4001'],
      lastSeen: null,
      since: 1,
      via: 'inv1'
    }],
    blobs: [
      // a root with 16 KiB audit leaves, and one made before the leaf size was kept (4 KiB, none named)
      [data, { kind: 'data', sealedId: hex32(), size: 1 << 20, root: hex32(), auditLeaf: 16 * 1024, hosts: [friend.peerId.toString()] }],
      [snap, { kind: 'snapshot', sealedId: hex32(), size: 300, root: hex32(), hosts: [friend.peerId.toString(), me.peerId.toString()] }]
    ],
    snapshots: [{
      record: { seq: 1, id: snap, created: 5, label: null, paths: ['/home/a'], tree: [hex32()], stats: { files: 1, dirs: 1, links: 0, bytes: 9, blobs: 3 } },
      needs: [snap, data]
    }]
  }
}

describe('recovery record', () => {
  const me = identity()
  const bob = identity()
  // keys.ts derives it from the seed; any 32 bytes do here
  const key = randomBytes(32)
  const owner = me.peerId.toString()
  const made = content(me, bob)
  const record = sealRecovery(made, { identity: me, key, seq: 7 })

  it('opens to what was sealed, with its seq', () => {
    const opened = openRecovery(record, { owner, key })
    expect(opened.seq).toBe(7)
    expect(opened.content).toEqual(made)
    expect(openRecovery(record, { owner, key, after: 6 }).seq).toBe(7)
  })

  it('refuses a replay: a record at or below the seq already seen', () => {
    expect(codeOf(() => openRecovery(record, { owner, key, after: 7 }))).toBe('RECOVERY_STALE')
    const older = sealRecovery(made, { identity: me, key, seq: 3 })
    expect(codeOf(() => openRecovery(older, { owner, key, after: 7 }))).toBe('RECOVERY_STALE')
    expect(nextRecoverySeq(7)).toBeGreaterThan(7)
    expect(nextRecoverySeq(Number.MAX_SAFE_INTEGER - 5)).toBe(Number.MAX_SAFE_INTEGER - 4)
  })

  it('refuses every single bit flip, truncations and another owner', () => {
    // every byte of the header, a spread of the body, the whole signature
    const positions = new Set<number>()
    for (let i = 0; i < 40; i++) positions.add(i)
    for (let i = 40; i < record.length; i += 13) positions.add(i)
    for (let i = record.length - 64; i < record.length; i++) positions.add(i)
    for (const at of positions) {
      const bad = Uint8Array.from(record)
      bad[at]! ^= 1 << (at % 8)
      expect(codeOf(() => openRecovery(bad, { owner, key })), `bit flip at ${at}`).not.toBe('ok')
    }
    for (const cut of [0, 4, 13, 25, 100, record.length - 64, record.length - 1]) {
      expect(codeOf(() => openRecovery(record.subarray(0, cut), { owner, key })), `cut at ${cut}`).not.toBe('ok')
    }
    expect(codeOf(() => openRecovery(record, { owner: bob.peerId.toString(), key }))).toBe('RECOVERY_BAD_SIGNATURE')
    // bob's own record, under his keys: not mine even if I had his key
    const bobs = sealRecovery(made, { identity: bob, key, seq: 9 })
    expect(codeOf(() => openRecovery(bobs, { owner, key }))).toBe('RECOVERY_BAD_SIGNATURE')
    // signed by me, sealed under another key
    const otherKey = sealRecovery(made, { identity: me, key: randomBytes(32), seq: 9 })
    expect(codeOf(() => openRecovery(otherKey, { owner, key }))).toBe('RECOVERY_MALFORMED')
  })

  /**
   * A record as kith made them in format 1, built here from docs/backup.md's
   * layout: "KRCV" | version | seq | nonce | AES-256-GCM(content) | tag | Ed25519 signature.
   */
  function formatOne (blobs: unknown[][], seq: number): Uint8Array {
    const header = Buffer.alloc(13)
    header.write('KRCV', 0, 'ascii')
    header[4] = 1
    header.writeBigUInt64BE(BigInt(seq), 5)
    const content = encodeCanonical({
      v: 1, created: made.created, name: made.name, friends: made.friends, hosts: [bob.peerId.toString()], blobs,
      snapshots: [{ r: made.snapshots[0]!.record, n: [0] }]
    })
    const nonce = randomBytes(12)
    const cipher = createCipheriv('aes-256-gcm', key, nonce)
    cipher.setAAD(Buffer.concat([Buffer.from('kith/backup/recovery/1\0'), header, Buffer.from(owner)]))
    const unsigned = Buffer.concat([header, nonce, cipher.update(content), cipher.final(), cipher.getAuthTag()])
    return Buffer.concat([unsigned, sign('backup-recovery/1', Buffer.concat([Buffer.from(owner), unsigned]), me.secretKey)])
  }

  it('is made in format 2, and still opens format 1 records: their blobs name no audit leaf size (4 KiB roots)', () => {
    expect(record[4]).toBe(2)
    const id = randomBytes(32)
    const blob = [id, 0, randomBytes(32), 1 << 20, randomBytes(32), [0]]
    const opened = openRecovery(formatOne([blob], 3), { owner, key })
    expect(opened.seq).toBe(3)
    expect(opened.content.blobs).toEqual([[id.toString('hex'), { kind: 'data', sealedId: expect.any(String), size: 1 << 20, root: expect.any(String), hosts: [bob.peerId.toString()] }]])
    expect(opened.content.blobs[0]![1].auditLeaf).toBeUndefined()
    // a format 1 header over content that names a leaf size is neither format: refused
    expect(codeOf(() => openRecovery(formatOne([[...blob, 16384]], 4), { owner, key }))).toBe('RECOVERY_MALFORMED')
  })

  it('refuses oversize, another version, bad content, without allocating for it', () => {
    expect(codeOf(() => openRecovery(new Uint8Array(MAX_RECOVERY_RECORD + 1), { owner, key }))).toBe('RECOVERY_TOO_LARGE')
    const v3 = Uint8Array.from(record)
    v3[4] = 3
    expect(codeOf(() => openRecovery(v3, { owner, key }))).toBe('UNSUPPORTED_VERSION')
    expect(codeOf(() => openRecovery(randomBytes(500), { owner, key }))).toBe('RECOVERY_MALFORMED')
    // well signed and sealed, but a friend in a state no kith writes
    const broken = content(me, bob)
    const sealed = sealRecovery({ ...broken, friends: [{ ...broken.friends[0]!, state: 'gone' as 'active' }] }, { identity: me, key, seq: 11 })
    expect(codeOf(() => openRecovery(sealed, { owner, key }))).toBe('RECOVERY_MALFORMED')
  })
})
