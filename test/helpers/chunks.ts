import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { Level } from 'level'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import type { PeerId } from '@libp2p/interface'
import { createNode, type KithLibp2p } from '../../src/peer/node.ts'
import { openChunkStore, type ChunkStore } from '../../src/transfer/chunk-store.ts'
import { chunkHandler, CHUNK_PROTOCOL, type ChunkHandlerInit } from '../../src/transfer/chunk-protocol.ts'
import { chunkId, SEAL_FORMAT } from '../../src/transfer/seal.ts'

/**
 * Helpers for chunk protocol and fetch tests: sealed-like chunks (random
 * bytes; the store only checks that sha256 matches the id), chunk stores in
 * temp folders, in-process libp2p nodes serving a store, and chunk holders in
 * separate processes (test/helpers/bad-source.ts) with a chosen fault.
 */
const HERE = dirname(fileURLToPath(import.meta.url))
export const BAD_SOURCE = join(HERE, 'bad-source.ts')

export interface Chunk {
  id: string
  sealed: Buffer
}

/** Random chunks shaped like a share's sealed chunks: their first byte is the seal format, which the chunk protocol serves. */
export function makeChunks (count: number, size: number): Chunk[] {
  return Array.from({ length: count }, () => {
    const sealed = randomBytes(size)
    sealed[0] = SEAL_FORMAT
    return { id: chunkId(sealed), sealed }
  })
}

export interface TempStore {
  dir: string
  store: ChunkStore
  db: Level<string, any>
  close: () => Promise<void>
}

/** A chunk store in `dir` (db + chunks), holding `chunks`. */
export async function openStore (dir: string, chunks: Chunk[] = [], sync = false): Promise<TempStore> {
  const db = new Level<string, any>(join(dir, 'db'))
  const store = await openChunkStore({ dir: join(dir, 'chunks'), db, sync })
  for (const c of chunks) await store.put(c.id, c.sealed)
  return { dir, store, db, close: async () => { await db.close() } }
}

export async function tempDir (prefix = 'kith-chunks-'): Promise<{ dir: string, cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  return { dir, cleanup: async () => { await rm(dir, { recursive: true, force: true }) } }
}

export async function startNode (): Promise<KithLibp2p> {
  return await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
}

/** Tells `node` where `peer` listens, so dialling the peer id works. */
export async function learn (node: KithLibp2p, peer: PeerId, addrs: Multiaddr[]): Promise<void> {
  await node.peerStore.merge(peer, { multiaddrs: addrs })
}

export interface InProcessSource {
  node: KithLibp2p
  peerId: PeerId
  addrs: Multiaddr[]
  stop: () => Promise<void>
}

/** An in-process node serving `store` on the chunk protocol. */
export async function serve (store: ChunkHandlerInit['store'], init: Omit<ChunkHandlerInit, 'store'> = {}): Promise<InProcessSource> {
  const node = await startNode()
  await node.handle(CHUNK_PROTOCOL, chunkHandler({ store, ...init }), { maxInboundStreams: 64 })
  return { node, peerId: node.peerId, addrs: node.getMultiaddrs(), stop: async () => { await node.stop() } }
}

export type FaultMode = 'good' | 'corrupt' | 'claims' | 'stall' | 'trickle' | 'mute'

/** How long a source process may take to print its address line. */
const START_DEADLINE_MS = 45_000

/** A chunk holder in its own process (test/helpers/bad-source.ts). */
export class SourceProcess {
  readonly mode: FaultMode
  readonly proc: ChildProcess
  peerId!: PeerId
  addrs: Multiaddr[] = []
  stderr = ''
  /** chunks it has been asked for so far (its `get` lines) */
  asked = 0

  private constructor (mode: FaultMode, proc: ChildProcess) {
    this.mode = mode
    this.proc = proc
  }

  /** Spawns a holder over the store folder `dir` (its db must be closed here). */
  static async spawn (mode: FaultMode, dir: string): Promise<SourceProcess> {
    const proc = spawn(process.execPath, [BAD_SOURCE, mode, dir], { stdio: ['pipe', 'pipe', 'pipe'] })
    const source = new SourceProcess(mode, proc)
    proc.stderr!.on('data', (d: Buffer) => { source.stderr += d.toString() })
    const line = await new Promise<string>((resolve, reject) => {
      // six of them start at once in fetcher.spec: at a load of 20 a start took over 20 s; the hook allows 60
      const timer = setTimeout(() => {
        proc.kill('SIGKILL')
        reject(new Error(`${mode} source did not start in ${START_DEADLINE_MS / 1000} s: ${source.stderr}`))
      }, START_DEADLINE_MS)
      const lines = createInterface({ input: proc.stdout! })
      lines.once('line', l => {
        clearTimeout(timer)
        resolve(l)
        lines.on('line', next => { if (next === 'get') source.asked++ })
      })
      proc.once('exit', code => { clearTimeout(timer); reject(new Error(`${mode} source exited with ${code}: ${source.stderr}`)) })
    })
    const info = JSON.parse(line) as { peerId: string, addrs: string[] }
    source.peerId = peerIdFromString(info.peerId)
    source.addrs = info.addrs.map(a => multiaddr(a))
    return source
  }

  get running (): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null
  }

  async stop (): Promise<void> {
    if (!this.running) return
    const exited = new Promise(resolve => this.proc.once('exit', resolve))
    this.proc.kill('SIGKILL')
    await exited
  }
}

/** Polls `check` until it is truthy or the deadline passes. */
export async function until (check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 10))
  }
}
