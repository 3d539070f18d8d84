import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createHash, randomBytes } from 'node:crypto'
import { Socket } from 'node:net'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { ConnectionEncrypter } from '@libp2p/interface'
import { Uint8ArrayList } from 'uint8arraylist'
import { createNode, type KithLibp2p } from '../../src/peer/node.ts'
import { decrypt, decryptWithoutCopy, type NoiseMessageStream } from '../../src/peer/noise-decrypt.ts'
import { uint16Length } from '../../src/peer/length-decoders.ts'

/**
 * src/peer/noise-decrypt.ts: a kith node's Noise connections decrypt with the
 * replacement, free socket reads once decrypted, and bytes still arrive
 * whole; only reads wholly used are freed, only on TCP, never one that was
 * waiting before; Noise's own method still copies a message that lies in two
 * pieces into one, only to hand it to a cipher that does not use it (if that
 * test fails, Noise stopped copying and the replacement can go).
 */

const TAG = 16

/** A stand-in for Noise's message stream: its cipher copies out, and records the `dst` it was handed. */
function fakeStream (waiting: Uint8Array[] = []): NoiseMessageStream & { dsts: Array<Uint8Array | undefined> } {
  const dsts: Array<Uint8Array | undefined> = []
  return {
    dsts,
    decrypt: () => new Uint8ArrayList(),
    handshake: {
      decrypt: (ciphertext: Uint8Array | Uint8ArrayList, dst?: Uint8Array) => {
        dsts.push(dst)
        return Buffer.from(ciphertext.subarray(0, ciphertext.byteLength - TAG))
      }
    },
    decoder: { buffer: new Uint8ArrayList(...waiting) },
    stream: { readBuffer: new Uint8ArrayList() }
  }
}

/** `stream` as decryptWithoutCopy leaves it, secured over `raw` */
async function secure (stream: NoiseMessageStream, raw: unknown): Promise<NoiseMessageStream> {
  const encrypter = { secureInbound: async () => ({ connection: stream }), secureOutbound: async () => ({ connection: stream }) } as unknown as ConnectionEncrypter
  const secured = await decryptWithoutCopy(encrypter).secureInbound(raw as never)
  return secured.connection as unknown as NoiseMessageStream
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

  it('a node\'s connections use the replacement, free most socket reads, and 8 MiB arrive whole', async () => {
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
      expect(encrypted.decoder?.lengthDecoder, 'Noise\'s decoder no longer reads lengths through lengthDecoder, or it is no longer replaced').toBe(uint16Length)
    }
    // ArrayBuffer.transfer is what frees a read (freeNow)
    const transfer = Object.getOwnPropertyDescriptor(ArrayBuffer.prototype, 'transfer')!
    let freed = 0
    Object.defineProperty(ArrayBuffer.prototype, 'transfer', { ...transfer, value: function (this: ArrayBuffer, length?: number) { freed++; return transfer.value.call(this, length) } })
    try {
      // uneven sends, so messages and socket reads fall apart anywhere
      for (let at = 0; at < data.length;) {
        const piece = data.subarray(at, at + 1000 + Math.floor(Math.random() * 300_000))
        at += piece.length
        if (!stream.send(piece)) await stream.onDrain()
      }
      const got = await received.promise
      expect(got).toEqual({ bytes: data.length, sha: createHash('sha256').update(data).digest('hex') })
    } finally {
      Object.defineProperty(ArrayBuffer.prototype, 'transfer', transfer)
    }
    await stream.close()
    // 8 MiB come in about 128 reads of 64 KiB; most hold the end of a message
    expect(freed, 'socket reads are no longer freed once decrypted').toBeGreaterThan(32)
  })

  it('hands the cipher no copy, and frees only reads it used to their end, on TCP, that were not waiting before', async () => {
    const before = randomBytes(65_536)
    const stream = await secure(fakeStream([before.subarray(60_000)]), { socket: new Socket() })
    const first = randomBytes(65_536)
    const second = randomBytes(65_536)
    // a message from the end of one read into the next, then one ending in the middle of a read
    const expected = Buffer.concat([first.subarray(30_000), second.subarray(0, 20_000 - TAG)])
    const out = stream.decrypt(new Uint8ArrayList(first.subarray(30_000), second.subarray(0, 20_000)))
    expect(Buffer.compare(out.subarray(), expected)).toBe(0)
    expect((stream as ReturnType<typeof fakeStream>).dsts).toEqual([undefined])
    expect(first.buffer.detached).toBe(true)
    expect(second.buffer.detached).toBe(false)
    expect(second[20_000]).toBeTypeOf('number')
    // the rest of a read that was waiting when the method was replaced
    stream.decrypt(new Uint8ArrayList(before.subarray(60_000)))
    expect(before.buffer.detached).toBe(false)
    // several messages in one chunk, and one too short for a tag
    expect(stream.decrypt(randomBytes(65_535 * 2 + 100)).byteLength).toBe(65_519 * 2 + 84)
    expect(() => stream.decrypt(randomBytes(10))).toThrow('Invalid chunk')

    // not TCP (a relayed connection: its reads are views of another connection's plaintext): nothing freed
    const relayed = await secure(fakeStream(), { })
    const read = randomBytes(65_535)
    relayed.decrypt(new Uint8ArrayList(read))
    expect(read.buffer.detached).toBe(false)
  })

  it('Noise\'s own decrypt still copies a message in two pieces (if not, src/peer/noise-decrypt.ts is no longer needed)', () => {
    const encrypted = (x.getConnections(y.peerId)[0] as unknown as { muxer: { maConn: object } }).muxer.maConn
    const own = (Object.getPrototypeOf(encrypted) as NoiseMessageStream).decrypt
    const ciphertext = randomBytes(65_535)
    const stream = fakeStream()
    own.call(stream, new Uint8ArrayList(ciphertext.subarray(0, 40_000), ciphertext.subarray(40_000)))
    expect(stream.dsts[0], 'Noise no longer hands the cipher a copy: the replacement can go').toBeDefined()
    expect(stream.dsts[0]!.buffer).not.toBe(ciphertext.buffer)
  })
})
