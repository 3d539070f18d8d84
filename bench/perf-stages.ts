import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'

/**
 * Where kith's daemons spend CPU, by stage, from Linux `perf record -g`
 * samples (Debian's linux-perf): on-CPU time only, every thread of each
 * process, kernel included.
 *
 * A V8 CPU profile (BENCH_CPU_PROF, bench/cpu-summary.ts) samples the main
 * thread on a wall-clock timer: on a loaded machine a thread that is
 * descheduled is charged to whatever it was running, so a busy neighbour
 * inflates whichever stage happens to be on the stack, and the work done by
 * libuv's pool (file system calls, LevelDB), V8's GC threads and the kernel
 * (loopback TCP, page faults, inode creation) is not in it at all. Here each
 * sample is a slice of CPU a thread actually used, charged to the stage its
 * stack names (the leaf's library where that says enough, such as SHA-256 or
 * ChaCha20; otherwise the nearest caller the rules below know).
 *
 *   NODE_OPTIONS='--perf-basic-prof-only-functions --interpreted-frames-native-stack'   (when the daemons start: JS names)
 *   perf record -F 499 -g -p PID,PID,... -o FILE                                        (while the phase runs; then SIGINT)
 *   node bench/perf-stages.ts FILE --mb MB [--name PID=owner ...] [--top N] [--thread REGEX]
 *
 * MB is the phase's plaintext (10^6 bytes): figures are CPU ms per MB, as
 * the bench prints them. --top N adds each process's N busiest leaf frames;
 * --thread REGEX counts only the threads so named (MainThread: what bounds a
 * side that runs one core flat out). Each process's total is split by thread
 * kind too (main, V8 workers, libuv pool).
 * Run the daemons from the sources (BENCH_SOURCES=1, or KITH_DIST empty):
 * the rules know kith's code and libp2p's by their files, which the bundle
 * merges into chunks; with the bundle, only the native stages (crypto,
 * kernel, GC, LevelDB) are told apart.
 */

/** A stage named by the first frame, leaf to root, that one of these matches. */
const FRAME_STAGES: Array<[string, RegExp]> = [
  // V8's worker threads compile as well as collect: most of their time in a first backup is Maglev and TurboFan
  ['V8 compiling (JIT)', /compiler::|maglev::|Maglev|TurboFan|OptimizedCompilationJob|Compiler::|BytecodeGenerator|BaselineBatchCompiler|baseline::|Parser::|PreParser/],
  ['gc', /Heap::|Scavenger|MarkCompact|Sweeper|ConcurrentMarking|MinorMarkSweep|GCTracer|MemoryAllocator|Evacuat|IncrementalMarking/],
  ['kernel: page faults', /^(asm_exc_page_fault|exc_page_fault|do_user_addr_fault|handle_mm_fault)$/],
  ['kernel: loopback tcp', /^(tcp_|__tcp|sock_|inet_|ip_|__ip|__dev_queue_xmit|net_rx_action|__netif|skb_|__skb|do_writev|do_readv)/],
  ['kernel: fsync', /^(do_fsync|__x64_sys_fsync|__x64_sys_fdatasync|vfs_fsync_range)/],
  ['kernel: file write', /^(vfs_write|ksys_write|ksys_pwrite64|__x64_sys_write|__x64_sys_pwrite64)/],
  ['kernel: file read', /^(vfs_read|ksys_read|ksys_pread64|__x64_sys_read|__x64_sys_pread64)/],
  ['kernel: file create (openat)', /^(__x64_sys_openat|do_sys_openat2)/],
  ['kernel: mkdir', /^(__x64_sys_mkdir|__x64_sys_mkdirat|do_mkdirat)/],
  ['kernel: rename/close/stat/unlink', /^(__x64_sys_rename|do_renameat2|__x64_sys_close|__fput|__x64_sys_statx|__x64_sys_newfstatat|__x64_sys_newlstat|__x64_sys_unlink|do_unlinkat)/],
  ['kernel: futex/epoll', /^(__x64_sys_futex|__x64_sys_epoll|do_epoll)/],
  ['leveldb', /leveldb::|classic-level|abstract-level|level-transcoder/],
  ['keyed chunker (cdc)', /transfer\/cdc\.ts/],
  ['sha256', /sha256_block/],
  ['chacha20-poly1305', /ChaCha20|poly1305/],
  ['aes-gcm', /aesni|gcm_|ghash/],
  ['memcpy', /__memmove|__memcpy/],
  ['malloc/free', /_int_malloc|_int_free|malloc_consolidate|unlink_chunk|^malloc$|^cfree|__libc_free/]
]

/** What a primitive (or unknown native code) is charged to: the nearest JS caller these match. */
const CALLER_STAGES: Array<[string, RegExp]> = [
  ['audit root', /audit-tree\.ts|merkle\.ts/],
  ['sealed id (chunkId)', /JS:\S*chunkId |verifySealed/],
  ['keyed id (blobId)', /JS:\S*blobId /],
  ['seal (sealBlob)', /sealBlob/],
  ['open (openBlob)', /openBlob/],
  ['seal chunk (sealChunkParts, resealChunk)', /sealChunkParts|resealChunk/],
  ['open chunk (openChunk, openPack)', /JS:\S*openChunk |openPack/],
  ['noise', /libp2p-noise|as-chacha/],
  ['yamux', /libp2p-yamux/],
  ['bandwidth scheduler', /transfer\/scheduler|token-bucket/],
  ['framing (lp, uint8arraylist, readBody/writeBody)', /uint8arraylist|length-prefixed|stream-utils|uint8-varint|JS:\S*readBody |JS:\S*writeBody /],
  ['libp2p streams and the rest of libp2p', /@libp2p|libp2p\/dist|multiformats|p-event|race-signal|it-[a-z-]+\/|corked-writes|progress-events|main-event-loop/],
  ['headers (cborg, zod)', /cborg|zod|canonical\.ts|backup\/wire\.ts/],
  ['chunk store', /chunk-store\.ts/],
  ['chunk protocol (chunk-protocol.ts: FrameReader, sendFrame, GET)', /transfer\/chunk-protocol\.ts/],
  ['fetcher (fetcher.ts)', /transfer\/fetcher\.ts/],
  ['assembly (assemble.ts, destination.ts: writes, whole-file hash)', /transfer\/(assemble|destination|fd)\.ts/],
  ['files service (transfers, file-service, live-chunks)', /services\/files\//],
  ['daemon API and events', /services\/api\//],
  ['(c) chunk path bench', /chunk-path-peer\.ts/],
  ['backup host book', /host-book\.ts/],
  ['backup owner index, file cache', /owner-index\.ts|file-cache\.ts/],
  ['backup run', /backup\/run\.ts/],
  ['backup restore', /backup\/(restore|getter)\.ts/],
  ['backup protocol', /backup\/protocol\.ts/],
  ['downloads: hash', /downloads\/http\/hash-cursor\.ts/],
  ['downloads: write-back cache', /downloads\/http\/write-cache\.ts/],
  ['downloads: response reader', /downloads\/http\/response\.ts/],
  ['downloads: engine', /downloads\/http\/|bench\/http-stages\.ts/],
  ['downloads: queue', /services\/downloads\//],
  ['undici', /node_modules\/undici\/|wasm-function/],
  ['node fs (JS)', /node:internal\/fs|node:fs/],
  ['node net and streams (JS)', /node:net|node:internal\/streams|stream_base/],
  ['kith, other', /\/src\//]
]

/** Stages whose own frame says too little: charged to their caller too ("sha256 <- sealed id"). */
const REFINED = new Set(['gc', 'sha256', 'chacha20-poly1305', 'aes-gcm', 'memcpy', 'malloc/free', 'kernel: futex/epoll'])

function stageOf (thread: string, frames: string[]): string {
  let stage: string | undefined
  for (const frame of frames) {
    stage = FRAME_STAGES.find(([, re]) => re.test(frame))?.[0]
    if (stage != null) break
  }
  if (/^V8Worker|^V8 DefaultWorke/.test(thread)) return `${stage ?? 'other'} (V8 worker threads)`
  const where = /^libuv-worker/.test(thread) ? ' [libuv pool]' : ''
  if (stage == null || REFINED.has(stage)) {
    for (const frame of frames) {
      const caller = CALLER_STAGES.find(([, re]) => re.test(frame))?.[0]
      if (caller != null) return (stage == null ? caller : `${stage} <- ${caller}`) + where
    }
    return (stage ?? 'native, V8 runtime') + where
  }
  return stage + where
}

const args = process.argv.slice(2)
let file: string | undefined
let mb = NaN
let top = 0
let only: RegExp | undefined
const names = new Map<string, string>()
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--mb') mb = Number(args[++i])
  else if (args[i] === '--top') top = Number(args[++i])
  else if (args[i] === '--thread') only = new RegExp(args[++i] ?? '')
  else if (args[i] === '--name') {
    const [pid, name] = (args[++i] ?? '').split('=')
    names.set(pid!, name ?? pid!)
  } else file = args[i]
}
if (file == null || !(mb > 0)) {
  console.error('usage: node bench/perf-stages.ts PERF.DATA --mb MB [--name PID=owner ...] [--top N]')
  process.exit(2)
}

/** per pid: ns per stage, per leaf frame, and per kind of thread */
const stages = new Map<string, Map<string, number>>()
const leaves = new Map<string, Map<string, number>>()
const threads = new Map<string, Map<string, number>>()
const add = (into: Map<string, Map<string, number>>, pid: string, key: string, ns: number): void => {
  let row = into.get(pid)
  if (row == null) into.set(pid, row = new Map())
  row.set(key, (row.get(key) ?? 0) + ns)
}

const perf = spawn('perf', ['script', '-i', file, '-F', 'comm,pid,tid,period,ip,sym'], { stdio: ['ignore', 'pipe', 'inherit'] })
let head: { thread: string, pid: string, ns: number } | null = null
let frames: string[] = []
const flush = (): void => {
  if (head != null && frames.length > 0 && (only === undefined || only.test(head.thread))) {
    add(stages, head.pid, stageOf(head.thread, frames), head.ns)
    add(leaves, head.pid, frames[0]!.slice(0, 120), head.ns)
    add(threads, head.pid, head.thread.replace(/[-_ ]*\d+$/, ''), head.ns)
  }
  head = null
  frames = []
}
for await (const line of createInterface({ input: perf.stdout })) {
  if (line.trim() === '') { flush(); continue }
  const sample = /^(\S.*?)\s+(\d+)\/\d+\s+(\d+)\s*$/.exec(line)
  if (sample != null) {
    flush()
    head = { thread: sample[1]!, pid: sample[2]!, ns: Number(sample[3]) }
  } else if (head != null) {
    frames.push(line.trim().replace(/^[0-9a-f]+ /, ''))
  }
}
flush()

const perMb = (ns: number): string => (ns / 1e6 / mb).toFixed(2).padStart(6)
const order = [...stages.keys()].sort((a, b) => [...names.keys()].indexOf(a) - [...names.keys()].indexOf(b))
let all = 0
for (const pid of order) {
  const row = stages.get(pid)!
  const total = [...row.values()].reduce((a, b) => a + b, 0)
  all += total
  const kinds = [...threads.get(pid)!].sort((a, b) => b[1] - a[1]).map(([thread, ns]) => `${thread} ${perMb(ns).trim()}`).join(', ')
  console.log(`\n${names.get(pid) ?? 'pid'} ${pid}: ${perMb(total).trim()} CPU ms/MB sampled (${kinds})`)
  for (const [stage, ns] of [...row].sort((a, b) => b[1] - a[1])) if (ns / 1e6 / mb >= 0.05) console.log(`  ${perMb(ns)}  ${stage}`)
  if (top > 0) {
    console.log('  busiest leaf frames')
    for (const [leaf, ns] of [...leaves.get(pid)!].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${perMb(ns)}  ${leaf}`)
  }
}
console.log(`\nall processes: ${perMb(all).trim()} CPU ms/MB sampled`)
