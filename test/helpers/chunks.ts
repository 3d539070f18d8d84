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
import { cpuSeconds } from '../../bench/lib.ts'

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

/**
 * A holders' process starts within this much of its own CPU time: ~2 s is
 * loading libp2p's modules (2026-12-07), and however loaded the machine, the
 * process gets there in that time once it runs. The wall time a start takes
 * follows the load (a holder alone took 18 s at load 22, six started apart
 * over 45 s at load 40), so it is not what is bounded, but for a process
 * that neither starts nor runs: START_WALL_MS.
 */
const START_CPU_MS = 20_000
const START_WALL_MS = 240_000

/** A hook that starts holders' processes may take this long (fetcher.spec and fetcher-discover.spec's beforeAll). */
export const SOURCES_START_TIMEOUT_MS = START_WALL_MS + 10_000

/**
 * A chunk holder served from another process (test/helpers/bad-source.ts),
 * with a chosen fault. Holders spawned together share one process: its start
 * is mostly module loading, paid once.
 */
export class SourceProcess {
  readonly mode: FaultMode
  readonly proc: ChildProcess
  peerId!: PeerId
  addrs: Multiaddr[] = []
  /** chunks it has been asked for so far (its `get` lines) */
  asked = 0

  private constructor (mode: FaultMode, proc: ChildProcess) {
    this.mode = mode
    this.proc = proc
  }

  /** Spawns one holder over the store folder `dir` (its db must be closed here), in a process of its own. */
  static async spawn (mode: FaultMode, dir: string): Promise<SourceProcess> {
    return (await SourceProcess.spawnAll([{ mode, dir }]))[0]!
  }

  /** Spawns `holders` in one process, each over its own store folder (closed here); stopping one stops them all. */
  static async spawnAll (holders: Array<{ mode: FaultMode, dir: string }>): Promise<SourceProcess[]> {
    const proc = spawn(process.execPath, [BAD_SOURCE, ...holders.flatMap(h => [h.mode, h.dir])], { stdio: ['pipe', 'pipe', 'pipe'] })
    let stderr = ''
    proc.stderr!.on('data', (d: Buffer) => { stderr += d.toString() })
    const sources = holders.map(h => new SourceProcess(h.mode, proc))
    const what = holders.map(h => h.mode).join(', ')
    const infos: string[] = []
    const started = Date.now()
    await new Promise<void>((resolve, reject) => {
      const fail = (why: string): void => {
        if (infos.length === holders.length) return
        clearInterval(watch)
        proc.kill('SIGKILL')
        reject(new Error(`the ${what} source process ${why}: ${stderr}`))
      }
      const watch = setInterval(() => {
        void cpuSeconds(proc.pid).then(cpu => {
          if (cpu * 1000 > START_CPU_MS) fail(`did not start in ${START_CPU_MS / 1000} s of its CPU time`)
          else if (Date.now() - started > START_WALL_MS) fail(`did not start in ${START_WALL_MS / 1000} s, with ${cpu} s of CPU time`)
        })
      }, 250)
      createInterface({ input: proc.stdout! }).on('line', line => {
        if (infos.length < holders.length) {
          infos.push(line)
          if (infos.length === holders.length) { clearInterval(watch); resolve() }
          return
        }
        const asked = /^get (\d+)$/.exec(line)
        if (asked != null) sources[Number(asked[1])]!.asked++
      })
      proc.once('exit', code => { fail(`exited with ${code}`) })
    })
    infos.forEach((line, n) => {
      const info = JSON.parse(line) as { peerId: string, addrs: string[] }
      sources[n]!.peerId = peerIdFromString(info.peerId)
      sources[n]!.addrs = info.addrs.map(a => multiaddr(a))
    })
    return sources
  }

  get running (): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null
  }

  /** Stops its process, and so every holder spawned with it. */
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
