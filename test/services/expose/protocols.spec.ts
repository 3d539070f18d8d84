import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createServer, connect, type Server, type Socket } from 'node:net'
import { once } from 'node:events'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import type { PrivateKey, Stream } from '@libp2p/interface'
import { decode } from 'cborg'
import { openDatabase, sublevel, type Database } from '../../../src/peer/database.ts'
import { createNode, type KithLibp2p } from '../../../src/peer/node.ts'
import { encodeCanonical } from '../../../src/peer/canonical.ts'
import { connectionGater } from '../../../src/trust/gate.ts'
import { FriendBook } from '../../../src/trust/friends.ts'
import { BandwidthScheduler } from '../../../src/transfer/scheduler/index.ts'
import { FriendServices, CATALOG_PROTOCOL, TUNNEL_PROTOCOL } from '../../../src/services/expose/index.ts'
import { askCatalog } from '../../../src/services/expose/catalog-protocol.ts'
import { openTunnel } from '../../../src/services/expose/tunnel-protocol.ts'
import { Inbox, frameHeader } from '../../../src/services/expose/inbox.ts'
import { MAX_CONNECTIONS_PER_FRIEND } from '../../../src/services/expose/constants.ts'
import { freePort } from '../../helpers/servers.ts'
import { KithError } from '../../../src/errors.ts'

/**
 * The two friend-service protocols between two in-process nodes (alice with
 * a real LevelDB friend book and FriendServices; bob a bare libp2p node
 * under the test's control, her friend): every malformed opening header
 * (oversize, truncated, bit-flipped, another version, an extra field, a bad
 * name) is answered PROTOCOL_VIOLATION before alice's program sees a
 * connection; a service not granted and one not exposed answer alike; the
 * per-friend cap answers SERVICE_BUSY; a program that is down answers
 * SERVICE_DOWN; a port kept for a friend's service survives a restart (the
 * same LevelDB); a connection closed under a stream is a failure, never a
 * clean end; a catalog answer with unsafe text is refused by the asker.
 */
/** The code of the KithError `promise` rejects with, or 'ok' (anything else fails the test). */
async function codeOf (promise: Promise<unknown>): Promise<string> {
  try {
    await promise
    return 'ok'
  } catch (err) {
    if (!(err instanceof KithError)) throw err
    return err.code
  }
}

describe('friend services on the wire', () => {
  let dir: string
  let db: Database
  let alice: KithLibp2p
  let bob: KithLibp2p
  let services: FriendServices
  let friends: FriendBook
  let echo: Server
  const served: Socket[] = []

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kith-expose-'))
    db = await openDatabase(join(dir, 'alice'))
    friends = new FriendBook(sublevel(db, 'friends'))
    await friends.load()
    const aliceKey = await generateKeyPair('Ed25519')
    const bobKey: PrivateKey = await generateKeyPair('Ed25519')
    alice = await createNode({ privateKey: aliceKey, listen: ['/ip4/127.0.0.1/tcp/0'], gater: connectionGater(friends) })
    bob = await createNode({ privateKey: bobKey, listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
    await Promise.all([alice.start(), bob.start()])
    await friends.befriend({ peerId: peerIdFromPrivateKey(bobKey).toString(), publicKey: Buffer.from(bobKey.publicKey.raw).toString('base64'), label: 'bob', grantsToThem: [], grantsFromThem: [], addrs: [], via: 'test' })
    echo = createServer(socket => {
      served.push(socket)
      socket.on('error', () => {})
      socket.pipe(socket)
    })
    echo.listen(0, '127.0.0.1')
    await once(echo, 'listening')
    services = await FriendServices.start({ db, libp2p: alice, friends, bandwidth: new BandwidthScheduler() })
    const port = (echo.address() as { port: number }).port
    await services.expose({ name: 'echo', port, to: ['bob'], description: 'echoes' })
    await services.expose({ name: 'private', port })
    await services.expose({ name: 'down', port: await freePort(), to: ['bob'] })
    await bob.peerStore.merge(alice.peerId, { multiaddrs: alice.getMultiaddrs() })
  })

  afterAll(async () => {
    await services?.stop()
    await Promise.all([alice?.stop(), bob?.stop()])
    echo?.close()
    for (const s of served) s.destroy()
    await db?.close()
    await rm(dir, { recursive: true, force: true })
  })

  /** Opens a tunnel stream from bob, sends `bytes` (then closes its writing end if `end`), and reads alice's answer. */
  async function answerTo (bytes: Uint8Array, end = false): Promise<{ ok: boolean, code?: string, message?: string }> {
    const stream: Stream = await bob.dialProtocol(alice.peerId, TUNNEL_PROTOCOL)
    const inbox = new Inbox(stream, 1 << 20)
    stream.send(bytes)
    if (end) await stream.close()
    const signal = AbortSignal.timeout(15_000)
    try {
      return decode(await inbox.header(4096, signal)) as { ok: boolean, code?: string }
    } finally {
      inbox.dispose()
      stream.abort(new Error('done'))
    }
  }

  const header = (value: unknown): Uint8Array => frameHeader(encodeCanonical(value))

  it('carries bytes both ways to a granted service', async () => {
    const { stream, inbox } = await openTunnel(bob, alice.peerId, 'echo', AbortSignal.timeout(15_000))
    stream.send(new TextEncoder().encode('hello'))
    expect(new TextDecoder().decode(await inbox.next(AbortSignal.timeout(15_000)))).toBe('hello')
    inbox.dispose()
    await stream.close()
    expect(await askCatalog(bob, alice.peerId)).toEqual([{ name: 'down', description: '' }, { name: 'echo', description: 'echoes' }])
  })

  it('refuses every malformed opening header before connecting anywhere', async () => {
    const before = served.length
    const good = encodeCanonical({ v: 1, service: 'echo' })
    const flipped = Uint8Array.from(good)
    flipped[2] = flipped[2]! ^ 0x40
    const cases: Array<[string, Uint8Array, boolean]> = [
      ['oversize', Uint8Array.of(0xff, 0xff, ...good), false],
      ['zero length', Uint8Array.of(0, 0), false],
      ['truncated', frameHeader(good).subarray(0, 6), true],
      ['bit flipped', frameHeader(flipped), false],
      ['another version', header({ v: 2, service: 'echo' }), false],
      ['an extra field', header({ v: 1, service: 'echo', host: '10.0.0.1', port: 22 }), false],
      ['an address for a name', header({ v: 1, service: '10.0.0.1:22' }), false],
      ['an upper-case name', header({ v: 1, service: 'Echo' }), false],
      ['not CBOR', frameHeader(new TextEncoder().encode('GET / HTTP/1.1\r\n')), false]
    ]
    for (const [what, bytes, end] of cases) {
      const answer = await answerTo(bytes, end)
      expect({ what, ok: answer.ok, code: answer.code }).toEqual({ what, ok: false, code: 'PROTOCOL_VIOLATION' })
    }
    expect(served.length).toBe(before)
  })

  it('answers a service not granted as one not exposed, a program that is down as SERVICE_DOWN', async () => {
    const notGranted = await answerTo(header({ v: 1, service: 'private' }))
    const unknown = await answerTo(header({ v: 1, service: 'nothing' }))
    expect(notGranted).toEqual({ v: 1, ok: false, code: 'SERVICE_UNKNOWN', message: 'no service called private is offered to you here; `kith services` lists those that are' })
    expect({ ...unknown, message: undefined }).toEqual({ ...notGranted, message: undefined })
    expect(await codeOf(openTunnel(bob, alice.peerId, 'down', AbortSignal.timeout(15_000)))).toBe('SERVICE_DOWN')
  })

  it(`caps a friend at ${MAX_CONNECTIONS_PER_FRIEND} connections, answering SERVICE_BUSY`, async () => {
    const open = await Promise.all(Array.from({ length: MAX_CONNECTIONS_PER_FRIEND }, async () => await openTunnel(bob, alice.peerId, 'echo', AbortSignal.timeout(30_000))))
    expect(await codeOf(openTunnel(bob, alice.peerId, 'echo', AbortSignal.timeout(15_000)))).toBe('SERVICE_BUSY')
    expect(services.summary().serving).toBe(MAX_CONNECTIONS_PER_FRIEND)
    for (const t of open) {
      t.inbox.dispose()
      t.stream.abort(new Error('done'))
    }
  })

  it('keeps a connected port across a restart, until disconnected', async () => {
    const kept = await services.connect({ friend: 'bob', service: 'web' })
    expect(kept).toMatchObject({ service: 'web', host: '127.0.0.1', listening: true })
    await services.stop()
    services = await FriendServices.start({ db, libp2p: alice, friends, bandwidth: new BandwidthScheduler() })
    expect(services.connections()).toEqual([{ ...kept, error: null }])
    const socket = connect(kept.port, '127.0.0.1')
    socket.on('error', () => {})
    await once(socket, 'connect')
    socket.destroy()
    await services.disconnect('bob', 'web')
    expect(services.connections()).toEqual([])
    await services.stop()
    services = await FriendServices.start({ db, libp2p: alice, friends, bandwidth: new BandwidthScheduler() })
    expect(services.connections()).toEqual([])
  })

  it('takes a connection closed under a stream for a failure, not for the service\'s end', async () => {
    const { stream, inbox } = await openTunnel(bob, alice.peerId, 'echo', AbortSignal.timeout(15_000))
    stream.send(new TextEncoder().encode('hello'))
    expect(new TextDecoder().decode(await inbox.next(AbortSignal.timeout(15_000)))).toBe('hello')
    // cut as a relay's spent budget cuts it: no FIN of the stream, the connection gone underneath
    for (const connection of alice.getConnections(bob.peerId)) connection.abort(new Error('cut'))
    expect(await codeOf(inbox.next(AbortSignal.timeout(15_000)))).toBe('FRIEND_OFFLINE')
    inbox.dispose()
  })

  it('refuses a catalog answer carrying unsafe text, or a name that is not one', async () => {
    const answers = [
      { v: 1, ok: true, services: [{ name: 'blog', description: 'my \u202eblog' }] },
      { v: 1, ok: true, services: [{ name: '../etc', description: '' }] },
      { v: 1, ok: true, services: [{ name: 'blog', description: 'x'.repeat(201) }] },
      { v: 1, ok: true, services: [{ name: 'blog', description: '', extra: 1 }] }
    ]
    for (const answer of answers) {
      await bob.handle(CATALOG_PROTOCOL, async (stream: Stream) => {
        const lp = lpStream(stream)
        await lp.read()
        await lp.write(encodeCanonical(answer))
        await stream.close()
      }, { force: true })
      expect(await codeOf(askCatalog(alice, bob.peerId))).toBe('PROTOCOL_VIOLATION')
    }
  })
})
