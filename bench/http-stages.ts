import { open as openFile } from 'node:fs/promises'
import { Agent } from 'undici'
import { tuneDaemonHeap } from '../src/services/daemon-heap.ts'
import { HashCursor } from '../src/services/downloads/http/hash-cursor.ts'
import { Response } from '../src/services/downloads/http/response.ts'
import { bodyReceived } from '../src/services/downloads/http/scavenge.ts'
import { WriteCache } from '../src/services/downloads/http/write-cache.ts'
import { BandwidthScheduler } from '../src/transfer/scheduler/index.ts'
import { cpuMs, ownPeakRss } from './lib.ts'

/**
 * The HTTP engine's stages one by one, for bench/downloads.ts: each mode adds
 * one stage to the one before, in a process of its own started like the
 * daemon (its heap flags and malloc setting), on CONNECTIONS connections
 * that each fetch an equal range of the SIZE-byte file at URL:
 *
 *   drain  one undici request per connection, its body read as the engine
 *          reads it (src/services/downloads/http/response.ts) and dropped
 *          (with the engine's scavenges, src/services/downloads/http/scavenge.ts)
 *   take   + every chunk asked of a bandwidth scheduler flow (class public, no cap)
 *   write  + the engine's write-back cache: blocks written to OUT with
 *          positioned writes, its SHA-256 not computed
 *
 * What the engine adds beyond `write` (pieces in file order, the SHA-256, the
 * control file) is the "engine alone" row, and the daemon's queue (progress
 * records and events) the "kith get" row. Prints one JSON line: bytes, ms,
 * peak RSS, CPU ms.
 *
 *   node bench/http-stages.ts drain|take|write URL SIZE CONNECTIONS OUT
 */
const [mode, href, sizeText, connectionsText, out] = process.argv.slice(2)
if ((mode !== 'drain' && mode !== 'take' && mode !== 'write') || href == null || out == null) {
  throw new Error('usage: node bench/http-stages.ts drain|take|write URL SIZE CONNECTIONS OUT')
}
const url = new URL(href)
const size = Number(sizeText)
const connections = Number(connectionsText)
tuneDaemonHeap()
const dispatcher = new Agent()
const bandwidth = new BandwidthScheduler()
const flow = bandwidth.flow({ direction: 'down', class: 'public' })
const fh = mode === 'write' ? await openFile(out, 'w') : null
/** the write stage leaves the SHA-256 to the engine row */
class NoHash extends HashCursor {
  override offer (): boolean { return false }
  override follow (): void {}
}
const cache = fh != null ? new WriteCache(fh, connections, new NoHash()) : null
const cpu = process.cpuUsage()
const started = performance.now()
let bytes = 0
await Promise.all(Array.from({ length: connections }, async (_, i) => {
  const start = Math.floor(size * i / connections)
  const end = Math.floor(size * (i + 1) / connections)
  const res = new Response(new AbortController().signal)
  dispatcher.dispatch({ origin: url.origin, path: url.pathname, method: 'GET', headers: { range: `bytes=${start}-${end - 1}` } }, res)
  await res.head
  const gather = cache?.gatherer()
  let at = start
  await res.read(async chunk => {
    bodyReceived(chunk.length)
    if (mode !== 'drain') await flow.take(chunk.length)
    if (gather != null) await gather.push(at, chunk)
    at += chunk.length
    return false
  })
  await gather?.flush()
  bytes += at - start
}))
const ms = performance.now() - started
await fh?.close()
await dispatcher.close()
flow.close()
bandwidth.close()
console.log(JSON.stringify({ bytes, ms, peakRss: ownPeakRss(), cpuMs: cpuMs(cpu) }))
