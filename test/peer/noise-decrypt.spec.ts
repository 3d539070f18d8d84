import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createHash, randomBytes } from 'node:crypto'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { Uint8ArrayList } from 'uint8arraylist'
import { createNode, type KithLibp2p } from '../../src/peer/node.ts'
import { decrypt, type NoiseMessageStream } from '../../src/peer/noise-decrypt.ts'

/**
 * src/peer/noise-decrypt.ts: a kith node's Noise connections decrypt with the
 * replacement, and bytes still arrive whole; Noise's own method still copies
 * a message that lies in two pieces into one, only to hand it to a cipher
 * that does not use it (if that test fails, Noise stopped copying and the
 * replacement is no longer needed).
 */

/** what the cipher was handed: where to decrypt to, per message */
function recorder (): { stream: NoiseMessageStream, dsts: Array<Uint8Array | undefined> } {
  const dsts: Array<Uint8Array | undefined> = []
  const stream = {
    decrypt,
    handshake: {
      decrypt: (ciphertext: Uint8Array | Uint8ArrayList, dst?: Uint8Array) => {
        dsts.push(dst)
        return ciphertext.subarray(0, ciphertext.byteLength - 16)
      }
    }
  }
  return { stream, dsts }
}

describe('Noise decrypt without copying', () => {
  let x: KithLibp2p, y: KithLibp2p
  beforeAll(async () => {
    const make = async (): Promise<KithLibp2p> => await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
    ;[x, y] = [await make(), await make()]
  })
  afterAll(async () => {
    await x?.stop()
    await y?.stop()
  })

  it('a node\'s connections use the replacement, and 8 MiB arrive whole', async () => {
    const data = randomBytes(8 * 1024 * 1024)
    const received = Promise.withResolvers<{ bytes: number, sha: string }>()
    await x.handle('/test/noise-decrypt/1.0.0', async (stream) => {
      const hash = createHash('sha256')
      let bytes = 0
      for await (const chunk of stream) {
        hash.update(chunk.subarray())
        bytes += chunk.byteLength
        if (bytes >= data.length) break
      }
      received.resolve({ bytes, sha: hash.digest('hex') })
      await stream.close()
    })
    const stream = await y.dialProtocol(x.getMultiaddrs()[0]!, '/test/noise-decrypt/1.0.0')
    for (const node of [x, y]) {
      const peer = node === x ? y : x
      const encrypted = (node.getConnections(peer.peerId)[0] as unknown as { muxer: { maConn: NoiseMessageStream } }).muxer.maConn
      expect(encrypted.decrypt, 'the connection under yamux is no longer Noise\'s message stream, or decryptWithoutCopy no longer applies').toBe(decrypt)
    }
    // uneven sends, so messages and socket reads fall apart anywhere
    for (let at = 0; at < data.length;) {
      const piece = data.subarray(at, at + 1000 + Math.floor(Math.random() * 300_000))
      at += piece.length
      if (!stream.send(piece)) await stream.onDrain()
    }
    const got = await received.promise
    await stream.close()
    expect(got).toEqual({ bytes: data.length, sha: createHash('sha256').update(data).digest('hex') })
  })

  it('hands the cipher a view of a message in one piece, and nothing to copy for one in two', () => {
    const ciphertext = randomBytes(65_535)
    const { stream, dsts } = recorder()
    const whole = stream.decrypt(new Uint8ArrayList(ciphertext))
    const split = stream.decrypt(new Uint8ArrayList(ciphertext.subarray(0, 40_000), ciphertext.subarray(40_000)))
    expect(Buffer.compare(whole.subarray(), ciphertext.subarray(0, 65_519))).toBe(0)
    expect(Buffer.compare(split.subarray(), ciphertext.subarray(0, 65_519))).toBe(0)
    expect(dsts[0]?.buffer).toBe(ciphertext.buffer)
    expect(dsts[0]?.byteLength).toBe(65_519)
    expect(dsts[1]).toBeUndefined()
    // a chunk of several messages, and one too short for a tag
    const { stream: many, dsts: manyDsts } = recorder()
    expect(many.decrypt(randomBytes(65_535 * 2 + 100)).byteLength).toBe(65_519 * 2 + 84)
    expect(manyDsts).toHaveLength(3)
    expect(() => many.decrypt(randomBytes(10))).toThrow('Invalid chunk')
  })

  it('Noise\'s own decrypt still copies a message in two pieces (if not, src/peer/noise-decrypt.ts is no longer needed)', () => {
    const encrypted = (x.getConnections(y.peerId)[0] as unknown as { muxer: { maConn: object } }).muxer.maConn
    const own = (Object.getPrototypeOf(encrypted) as NoiseMessageStream).decrypt
    const ciphertext = randomBytes(65_535)
    const { stream, dsts } = recorder()
    own.call(stream, new Uint8ArrayList(ciphertext.subarray(0, 40_000), ciphertext.subarray(40_000)))
    expect(dsts[0], 'Noise no longer hands the cipher a copy: the replacement can go').toBeDefined()
    expect(dsts[0]!.buffer).not.toBe(ciphertext.buffer)
  })
})
