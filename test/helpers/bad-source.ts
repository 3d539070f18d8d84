// Chunk holders in a process of their own, each a libp2p node serving
// /kith/chunks/1.0.0 from a chunk store folder with a chosen fault. Prints one
// JSON line per holder, { peerId, addrs }, in the order given, once all
// listen; then a line `get <n>` each time a GET asks holder n (from 0) for a
// chunk (before the fault: a test can wait until a bad source was asked);
// exits when its stdin closes (or on a signal).
//
//   node test/helpers/bad-source.ts <mode> <store folder> [<mode> <store folder> ...]
//
// Holders share the process because a start is mostly loading libp2p's
// modules: ~1.9 s of CPU a process, so six started apart took ~11 s of CPU
// and at a load of 40 more than their 45 s (fetcher.spec, 2026-12-07).
//
// modes:
//   good     serves what it holds
//   corrupt  serves its chunks with the last byte flipped
//   claims   says HAVE to everything, answers every GET with MISSING
//   stall    answers HAVE, then sends the first 64 KiB of a GET and nothing more
//   trickle  answers HAVE, then sends GET answers at 1 byte a second
//   mute     takes every request and never answers
//
// Each store folder holds `db` (LevelDB) and `chunks`, as made by
// test/helpers/chunks.ts; its database must not be open elsewhere.
import { join } from 'node:path'
import { Level } from 'level'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { KithError } from '../../src/errors.ts'
import { createNode } from '../../src/peer/node.ts'
import { openChunkStore, type ChunkStore } from '../../src/transfer/chunk-store.ts'
import { chunkHandler, CHUNK_PROTOCOL, type ChunkHandlerInit } from '../../src/transfer/chunk-protocol.ts'

const args = process.argv.slice(2)
if (args.length === 0 || args.length % 2 !== 0) {
  process.stderr.write('usage: bad-source.ts <good|corrupt|claims|stall|trickle|mute> <store folder> [<mode> <folder> ...]\n')
  process.exit(2)
}

/** Bytes each stream may send at full speed before the fault starts. */
const allowance = new WeakMap<AbortSignal, number>()
function spend (signal: AbortSignal, bytes: number, free: number): boolean {
  const used = allowance.get(signal) ?? 0
  allowance.set(signal, used + bytes)
  return used + bytes <= free
}

async function sleep (ms: number, signal: AbortSignal): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { signal.removeEventListener('abort', onAbort); resolve() }, ms)
    const onAbort = (): void => { clearTimeout(timer); reject(signal.reason) }
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

/** What a holder in `mode` serves from `store`, and how it misbehaves. */
function faulty (mode: string, store: ChunkStore): ChunkHandlerInit {
  switch (mode) {
    case 'good':
      return { store }
    case 'corrupt':
      return {
        store: {
          has: async id => await store.has(id),
          getParts: async id => {
            const bytes = Buffer.from(await store.get(id))
            bytes[bytes.length - 1]! ^= 1
            return [bytes]
          }
        }
      }
    case 'claims':
      return {
        store: {
          has: async () => true,
          getParts: async id => { throw new KithError('CHUNK_NOT_FOUND', `no ${id}`) }
        }
      }
    case 'stall':
      return {
        store,
        beforeSend: async (bytes, _peer, signal) => {
          if (!spend(signal, bytes, 64 * 1024)) await sleep(2 ** 31 - 1, signal)
        }
      }
    case 'trickle':
      return {
        store,
        sendSlice: 1,
        beforeSend: async (bytes, _peer, signal) => {
          // a HAVE answer fits the free allowance; chunk data then drips at 1 B/s
          if (!spend(signal, bytes, 1024)) await sleep(1000, signal)
        }
      }
    case 'mute':
      return {
        store: {
          has: async () => await new Promise<boolean>(() => {}),
          getParts: async () => await new Promise<Uint8Array[]>(() => {})
        }
      }
    default:
      process.stderr.write(`unknown mode ${mode}\n`)
      process.exit(2)
  }
}

const holders = await Promise.all(Array.from({ length: args.length / 2 }, async (_, n) => {
  const [mode, dir] = [args[2 * n]!, args[2 * n + 1]!]
  const db = new Level(join(dir, 'db'))
  const store = await openChunkStore({ dir: join(dir, 'chunks'), db, sync: false })
  const handler = faulty(mode, store)
  // every GET reads its chunks through getParts, whatever the mode: say so
  const served = handler.store
  const counted = { ...handler, store: { has: async (id: string) => await served.has(id), getParts: async (id: string) => { process.stdout.write(`get ${n}\n`); return await served.getParts(id) } } }
  const node = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
  await node.handle(CHUNK_PROTOCOL, chunkHandler(counted), { maxInboundStreams: 64 })
  return { node, db }
}))
for (const { node } of holders) process.stdout.write(JSON.stringify({ peerId: node.peerId.toString(), addrs: node.getMultiaddrs().map(a => a.toString()) }) + '\n')

let stopping = false
async function stop (): Promise<void> {
  if (stopping) return
  stopping = true
  try {
    await Promise.all(holders.map(async ({ node, db }) => { await node.stop(); await db.close() }))
  } catch {}
  process.exit(0)
}
process.stdin.on('end', () => { void stop() })
process.stdin.on('close', () => { void stop() })
process.stdin.resume()
process.on('SIGTERM', () => { void stop() })
