import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { multiaddr } from '@multiformats/multiaddr'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import { createTestnet, type Testnet, type TestNode } from '../helpers/testnet.ts'
import { createNode, DHT_PROTOCOL, type KithLibp2p } from '../../src/peer/node.ts'
import { REDEEM_PROTOCOL } from '../../src/trust/redeem.ts'
import { parseInvite, redeemProof } from '../../src/trust/invite.ts'
import { encodeCanonical } from '../../src/peer/canonical.ts'
import { decode } from 'cborg'

/**
 * A stranger (an in-process libp2p node that is nobody's friend) against a
 * real daemon: it reaches identify and redeem, and nothing else (not even
 * ping: test/integration/strangers.spec.ts); bad or replayed redeem requests
 * get typed refusals and change nothing.
 */
describe('the gate against a stranger', () => {
  let net: Testnet
  let daemon: TestNode
  let stranger: KithLibp2p
  let target: ReturnType<typeof multiaddr>

  beforeAll(async () => {
    net = await createTestnet(['gatekeeper'])
    daemon = net.nodes[0]!
    target = multiaddr(daemon.info!.addrs[0]!)
    stranger = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
  })

  afterAll(async () => {
    await stranger?.stop()
    await net?.stop()
  })

  it('lets a stranger connect, but not ping', async () => {
    await stranger.dial(target)
    await expect(stranger.services.ping.ping(target)).rejects.toThrow()
  })

  it('refuses a stranger the friend-only DHT protocol', async () => {
    const stream = await stranger.dialProtocol(target, DHT_PROTOCOL)
    const lp = lpStream(stream)
    await expect((async () => {
      await lp.write(new Uint8Array([8, 5])) // a FIND_NODE-ish protobuf
      await lp.read({ signal: AbortSignal.timeout(5000) })
    })()).rejects.toThrow()
  })

  async function redeemRaw (payload: Uint8Array): Promise<any> {
    const stream = await stranger.dialProtocol(target, REDEEM_PROTOCOL)
    const lp = lpStream(stream, { maxDataLength: 64 * 1024 })
    await lp.write(payload)
    const answer = decode((await lp.read({ signal: AbortSignal.timeout(5000) })).subarray())
    await stream.close().catch(() => {})
    return answer
  }

  it('answers garbage and malformed redeem requests with PROTOCOL_VIOLATION', async () => {
    expect(await redeemRaw(new Uint8Array([0xff, 0x00, 0x13]))).toMatchObject({ ok: false, code: 'PROTOCOL_VIOLATION' })
    expect(await redeemRaw(encodeCanonical({ v: 1, id: 'nope' }))).toMatchObject({ ok: false, code: 'PROTOCOL_VIOLATION' })
    expect(await redeemRaw(encodeCanonical({ v: 2, id: '0000000000000000', proof: new Uint8Array(32), name: 'x', addrs: [], grants: [] })))
      .toMatchObject({ ok: false, code: 'PROTOCOL_VIOLATION' })
  })

  it('refuses a proof made for another peer (a replayed redeem) and spends nothing', async () => {
    const file = join(daemon.home, 'replay.invite')
    await daemon.json('invite', 'create', '-o', file)
    const invite = parseInvite(await readFile(file, 'utf8'))
    const someoneElse = peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()
    const request = { v: 1, id: invite.id, proof: redeemProof(invite.secret, invite.issuer, someoneElse), name: 'mallory', addrs: [], grants: [] }
    expect(await redeemRaw(encodeCanonical(request))).toMatchObject({ ok: false, code: 'INVITE_UNKNOWN' })
    const listed = await daemon.json('invite', 'list')
    expect(listed.invites.find((i: { id: string }) => i.id === invite.id)).toMatchObject({ used: 0, status: 'open' })
    expect((await daemon.json('friends')).friends).toEqual([])

    // the same invite, with a proof bound to the stranger itself, works
    const honest = { ...request, proof: redeemProof(invite.secret, invite.issuer, stranger.peerId.toString()) }
    expect(await redeemRaw(encodeCanonical(honest))).toMatchObject({ ok: true, grants: ['files', 'locate', 'relay'] })
    expect((await daemon.json('friends')).friends.map((f: { peerId: string }) => f.peerId)).toEqual([stranger.peerId.toString()])
  })

  it('refuses a revoked invite', async () => {
    const file = join(daemon.home, 'revoked.invite')
    const made = await daemon.json('invite', 'create', '-o', file)
    await daemon.json('invite', 'revoke', made.invite.id)
    const invite = parseInvite(await readFile(file, 'utf8'))
    const request = { v: 1, id: invite.id, proof: redeemProof(invite.secret, invite.issuer, stranger.peerId.toString()), name: 'late', addrs: [], grants: [] }
    expect(await redeemRaw(encodeCanonical(request))).toMatchObject({ ok: false, code: 'INVITE_REVOKED' })
  })

  it('refuses a redeem frame larger than the limit before reading it', async () => {
    expect(await redeemRaw(new Uint8Array(20 * 1024))).toMatchObject({ ok: false, code: 'PROTOCOL_VIOLATION' })
  })
})
