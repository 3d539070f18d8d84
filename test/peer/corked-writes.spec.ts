import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createHash, randomBytes } from 'node:crypto'
import { Socket } from 'node:net'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { createNode, type KithLibp2p } from '../../src/peer/node.ts'

/**
 * src/peer/corked-writes.ts: a node's TCP connections send each batch of
 * Noise messages in one socket write (a writev), not one write per piece
 * (length, header, data, tag), and every byte still arrives, in order.
 */
describe('corked writes', () => {
  let x: KithLibp2p, y: KithLibp2p
  /** the kernel-bound writes each socket made (Node calls _write or _writev once per write or uncorked batch) */
  const writes = new Map<Socket, number>()
  const { _write: write, _writev: writev } = Socket.prototype as unknown as Record<string, (...args: unknown[]) => unknown>

  beforeAll(async () => {
    const proto = Socket.prototype as unknown as Record<string, (...args: unknown[]) => unknown>
    proto._write = function (this: Socket, ...args: unknown[]) { writes.set(this, (writes.get(this) ?? 0) + 1); return write!.apply(this, args) }
    proto._writev = function (this: Socket, ...args: unknown[]) { writes.set(this, (writes.get(this) ?? 0) + 1); return writev!.apply(this, args) }
    const make = async (): Promise<KithLibp2p> => await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
    ;[x, y] = [await make(), await make()]
  })

  afterAll(async () => {
    Object.assign(Socket.prototype, { _write: write, _writev: writev })
    await x?.stop()
    await y?.stop()
  })

  it('sends 8 MiB whole, in about one socket write per 64 KiB Noise message', async () => {
    const data = randomBytes(8 * 1024 * 1024)
    const received = Promise.withResolvers<{ bytes: number, sha: string }>()
    await x.handle('/test/bulk/1.0.0', async (stream) => {
      const hash = createHash('sha256')
      let bytes = 0
      for await (const chunk of stream) {
        hash.update(chunk.subarray())
        bytes += chunk.byteLength
      }
      received.resolve({ bytes, sha: hash.digest('hex') })
      await stream.close()
    })
    const stream = await y.dialProtocol(x.getMultiaddrs()[0]!, '/test/bulk/1.0.0')
    writes.clear()
    // uneven pieces, so Noise messages carry several pieces each
    for (let at = 0; at < data.length;) {
      const piece = data.subarray(at, at + 1000 + Math.floor(Math.random() * 300_000))
      at += piece.length
      if (!stream.send(piece)) await stream.onDrain()
    }
    await stream.close()
    const got = await received.promise
    expect(got).toEqual({ bytes: data.length, sha: createHash('sha256').update(data).digest('hex') })
    const sent = Math.max(...writes.values())
    // uncorked, each message took 4 writes or more (2-byte length, header, data, tag): over 500 here
    expect(sent).toBeLessThan(Math.ceil(data.length / 65_519) * 1.5)
  })
})
