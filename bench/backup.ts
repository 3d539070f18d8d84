import { randomFillSync } from 'node:crypto'
import { mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { loadavg } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { befriend, createTestnet, waitFor, KITH, NODE, type TestNode } from '../test/helpers/testnet.ts'
import { ApiClient } from '../src/services/api/client.ts'
import { cpuSeconds, fmt, MB, median, MiB, mbps, peakRss, perfDuring, run, table, threadCpuSeconds, threadSchedMs } from './lib.ts'

/**
 * The backup section of `npm run bench` (`--section backup`): kith's backup
 * to two friends against restic (Debian's `restic`) backing up the same tree
 * to a local repository, in the same run, on the same machine:
 *
 *   first backup   a BENCH_SIZE_MIB (1024) MiB mixed tree (many small files,
 *                  medium ones, a few large ones; random bytes and text);
 *                  MB/s of plaintext read, and kith's ratio to restic's.
 *                  Target: >= 0.5 while kith sends every byte to two hosts.
 *   second backup  after 1% of the bytes changed (64 KiB patches in the large
 *                  and medium files, a few new small files): bytes kith sent
 *                  for one copy (sentBytes / 2) over bytes changed, beside
 *                  restic's added repository size over bytes changed.
 *                  Target: kith within 10% of restic.
 *   restore        the latest snapshot to a new folder, MB/s; ratio to restic.
 *                  Target: >= 0.5.
 *   memory         peak RSS (VmHWM) of the owner's and each host's daemon.
 *                  Target: <= 250 MB each.
 *
 *   CPU            CPU ms per MB of the tree for the first backup and the
 *                  restore: the owner's daemon, each host's, and restic's
 *                  (user + system, from bash's `times`). On a shared, loaded
 *                  machine this is the steady figure; MB/s moves with the load.
 *
 * BENCH_SEED=N fixes the tree's shape (sizes, which files are text, the
 * changes), for A/B pairs over one tree; the section logs the seed it used
 * and how much of the tree is text (restic compresses it, so its share moves
 * restic's side).
 *
 * BENCH_RESTORES=N restores N times (restic, then kith, each into a new
 * folder, all removed at the end), prints each round and reports the
 * medians: a loop on the restore alone, after one pair of backups. The
 * rounds' folders are kept until the end, so that no round creates its
 * files just after the last round's were removed (this machine's ext4,
 * without a journal, skips inodes freed in the last minute or so when it
 * makes a file; restic, first after the removal, would pay more of it:
 * measured alone at 421 files, within the noise). restic does not fsync its
 * restore; kith fsyncs each file before placing it. Each round prints how
 * long the `sync` after restic's restore took (its output written back), and
 * the table a second restore row with restic timed together with it.
 *
 * BENCH_CPU_PROF=DIR writes a V8 CPU profile of each daemon into DIR (the
 * daemons are stopped with SIGTERM at the end so they write it; read it with
 * bench/cpu-summary.ts, `--from`/`--to` the restore's µs this logs). Run it as `node_modules/.bin/node bench/run.ts
 * --section backup`: npm's Node may refuse --cpu-prof in NODE_OPTIONS.
 *
 * BENCH_PERF=DIR records the three daemons with Linux `perf record -g`
 * during the first backup and each restore (DIR/<phase>.data) and prints
 * where their CPU went, by stage (bench/perf-stages.ts: on-CPU time of
 * every thread, the kernel's included; a V8 profile samples wall time of
 * the main thread only). Needs `perf` (Debian's linux-perf) and
 * BENCH_SOURCES=1, so that JS frames name their files; each daemon's map of
 * JS names (/tmp/perf-PID.map) is moved into DIR at the end.
 *
 * restic runs with RESTIC_PASSWORD set and its cache in the work folder; its
 * repository is on the same disk as kith's homes. kith's hosts run on the same
 * machine, so every byte is encrypted once and stored twice here, against
 * restic's once.
 */
const TARGET_FIRST = 0.5
const TARGET_RESTORE = 0.5
const TARGET_RSS = 250 * MB

type Log = (message: string) => void

/**
 * The tree's shape (file sizes, which files are text, what changes) from
 * BENCH_SEED when set, so that the two sides of an A/B back up the same
 * tree: how much of it is text (3 to 27% of the bytes at 128 MiB) moves
 * restic's work, which compresses, from run to run. Random otherwise.
 * mulberry32.
 */
const SEED = process.env.BENCH_SEED != null && process.env.BENCH_SEED !== '' ? Number(process.env.BENCH_SEED) >>> 0 : Math.floor(Math.random() * 2 ** 32)
let state = SEED
function random (): number {
  state = (state + 0x6D2B79F5) >>> 0
  let t = state
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

/** Random bytes; `text` makes a compressible file of words. */
function content (size: number, text: boolean): Buffer {
  if (!text) return randomFillSync(Buffer.allocUnsafe(size))
  const words = ['kith', 'backup', 'friend', 'chunk', 'seal', 'audit', 'restore', 'host', 'quota', 'phrase']
  let s = ''
  while (s.length < size) s += words[Math.floor(random() * words.length)]! + (random() < 0.1 ? '\n' : ' ')
  return Buffer.from(s.slice(0, size))
}

/** A mixed tree of about `total` bytes: 10% small files, 40% medium, 50% large; a tenth of them text. */
async function makeTree (root: string, total: number): Promise<{ files: string[], bytes: number, textBytes: number }> {
  const files: string[] = []
  let bytes = 0
  let textBytes = 0
  const add = async (dir: string, name: string, size: number): Promise<void> => {
    await mkdir(join(root, dir), { recursive: true })
    const path = join(root, dir, name)
    const text = files.length % 10 === 0
    await writeFile(path, content(size, text))
    files.push(path)
    bytes += size
    if (text) textBytes += size
  }
  for (let i = 0; bytes < total * 0.1; i++) await add(`small/${i % 20}`, `s${i}.dat`, 4096 + Math.floor(random() * 60_000))
  for (let i = 0; bytes < total * 0.5; i++) await add(`medium/${i % 5}`, `m${i}.dat`, 256 * 1024 + Math.floor(random() * 4 * MiB))
  for (let i = 0; bytes < total; i++) await add('large', `l${i}.dat`, Math.min(total - bytes, 32 * MiB + Math.floor(random() * 32 * MiB)))
  return { files, bytes, textBytes }
}

/** Changes about 1% of the tree's bytes: 64 KiB patches in files of 1 MiB or more, and a few new small files. */
async function changeTree (root: string, files: string[], total: number): Promise<number> {
  const PATCH = 64 * 1024
  let changed = 0
  const big = []
  for (const f of files) if ((await stat(f)).size >= MiB) big.push(f)
  while (changed < total * 0.009) {
    const f = big[Math.floor(random() * big.length)]!
    const size = (await stat(f)).size
    const fh = await open(f, 'r+')
    await fh.write(randomFillSync(Buffer.allocUnsafe(PATCH)), 0, PATCH, Math.floor(random() * (size - PATCH)))
    await fh.close()
    changed += PATCH
  }
  await mkdir(join(root, 'new'), { recursive: true })
  for (let i = 0; changed < total * 0.01; i++) {
    const size = 16 * 1024 + Math.floor(random() * 48 * 1024)
    await writeFile(join(root, 'new', `n${i}.dat`), content(size, false))
    changed += size
  }
  return changed
}

async function duBytes (dir: string): Promise<number> {
  let n = 0
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    n += e.isDirectory() ? await duBytes(p) : (await stat(p)).size
  }
  return n
}

/** A restic command, timed, with the CPU seconds (user + system) it and its children used, from bash's `times`. */
async function restic (args: string[]): Promise<{ code: number, stdout: string, stderr: string, ms: number, cpuS: number }> {
  const r = await run('bash', ['-c', 'restic "$@"; s=$?; times >&2; exit $s', 'restic', ...args])
  // `times` prints the shell's user and system times, then its children's: "0m1.234s 0m0.056s"
  const line = r.stderr.trim().split('\n').at(-1) ?? ''
  const cpuS = [...line.matchAll(/(\d+)m([\d.]+)s/g)].reduce((sum, m) => sum + Number(m[1]) * 60 + Number(m[2]), 0)
  return { ...r, cpuS }
}

/** A process's minor page faults so far (/proc/PID/stat): fresh memory touched, which costs CPU on its own. */
async function minorFaults (pid: number | undefined): Promise<number> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[7])
  } catch {
    return NaN
  }
}

/** daemon.ts's `afterStartMs` for releaseMemoryWhenQuiet, plus its 5 s reading interval */
const LAST_RESORT_AFTER_START_MS = 65_000
/** releaseMemoryWhenQuiet's collection after a burst comes 10-15 s after the traffic stops (its quietMs, read every 5 s), and the rate it reads lags */
const QUIET_FOR_MS = 16_000
/** CPU the three daemons use in a second, at most, to count as idle (presence and the DHT use some; a last-resort collection 100-200 ms) */
const IDLE_CPU_S = 0.05

/**
 * Waits until `notBefore` (performance.now()) has passed, then until the
 * processes have used less than IDLE_CPU_S of CPU in each second for
 * QUIET_FOR_MS (at most two minutes more). Returns how long it waited, ms.
 */
async function untilIdle (pids: Array<number | undefined>, notBefore: number): Promise<number> {
  const started = performance.now()
  const total = async (): Promise<number> => (await Promise.all(pids.map(async pid => await cpuSeconds(pid)))).reduce((a, b) => a + b, 0)
  if (started < notBefore) await sleep(notBefore - started)
  const deadline = performance.now() + 120_000
  let before = await total()
  let quietSince = performance.now()
  while (performance.now() - quietSince < QUIET_FOR_MS && performance.now() < deadline) {
    await sleep(1000)
    const now = await total()
    if (now - before >= IDLE_CPU_S) quietSince = performance.now()
    before = now
  }
  return performance.now() - started
}

/** The job a `kith backup run|restore --json` ends with (its last line). */
function lastJob (stdout: string): any {
  return JSON.parse(stdout.trim().split('\n').at(-1)!)
}

export async function backupBench (log: Log, work: string, size: number): Promise<void> {
  const version = await run('restic', ['version']).catch(() => ({ code: 127, stdout: '', stderr: '', ms: 0 }))
  if (version.code !== 0) throw new Error('the backup section needs restic (Debian: apt-get install restic) as its reference')
  const root = join(work, 'backup-bench')
  const tree = join(root, 'tree')
  const repo = join(root, 'restic-repo')
  process.env.RESTIC_PASSWORD = 'bench'
  process.env.RESTIC_CACHE_DIR = join(root, 'restic-cache')
  log(`backup: writing a ${fmt(size / MiB)} MiB mixed tree`)
  const made = await makeTree(tree, size)
  log(`backup: ${made.files.length} files, ${fmt(made.bytes / MiB)} MiB, ${fmt(100 * made.textBytes / made.bytes, 1)}% of it in text files (BENCH_SEED=${SEED}); ${version.stdout.trim()}`)

  const profiles = process.env.BENCH_CPU_PROF
  const saved = process.env.NODE_OPTIONS
  // the daemons inherit NODE_OPTIONS when they start; the CLI commands run later don't
  if (profiles != null) process.env.NODE_OPTIONS = `${saved ?? ''} --cpu-prof --cpu-prof-dir=${profiles}`.trim()
  const perfDir = process.env.BENCH_PERF
  // JS frames named in /tmp/perf-PID.map, which perf reads
  if (perfDir != null) process.env.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ''} --perf-basic-prof-only-functions --interpreted-frames-native-stack`.trim()
  const net = await createTestnet(['owner', 'h1', 'h2']).finally(() => {
    if (saved == null) delete process.env.NODE_OPTIONS
    else process.env.NODE_OPTIONS = saved
  })
  const [owner, h1, h2] = net.nodes as [TestNode, TestNode, TestNode]
  const daemons = [owner, h1, h2]
  const startedAt = performance.now()
  /** the daemons' pids, which a stopped TestNode no longer names */
  const pids = daemons.map(n => n.pid)
  if (profiles != null) for (const n of daemons) log(`backup: ${n.name} is pid ${n.pid}: its profile is ${profiles}/CPU.*.${n.pid}.*.cpuprofile`)
  /** CPU seconds each daemon used while `work` ran, the minor page faults it took, and the owner's main thread's CPU seconds */
  const cpuDuring = async <T>(work: () => Promise<T>): Promise<[T, number[], number[], number]> => {
    const read = async (): Promise<Array<[number, number]>> => await Promise.all(daemons.map(async n => [await cpuSeconds(n.pid), await minorFaults(n.pid)] as [number, number]))
    const before = await read()
    const mainBefore = await threadCpuSeconds(owner.pid)
    const result = await work()
    const mainAfter = await threadCpuSeconds(owner.pid)
    const after = await read()
    return [result, after.map(([s], i) => s - before[i]![0]), after.map(([, f], i) => f - before[i]![1]), mainAfter - mainBefore]
  }
  /** With BENCH_PERF, `perf record` of the three daemons while `work` runs, then where their CPU went per MB of `bytes` */
  const perfWhile = async <T>(phase: string, bytes: number, work: () => Promise<T>): Promise<T> => {
    if (perfDir == null) return await work()
    const file = join(perfDir, `${phase}.data`)
    return await perfDuring(file, daemons.map(n => [n.pid!, n.name]), bytes / MB, work, stages => { log(`backup: where the daemons' CPU went, ${phase} (CPU ms/MB, perf samples in ${file}):\n${stages}`) })
  }

  try {
    await Promise.all([h1, h2].map(async h => await befriend(h, owner, '--grant', 'backup')))
    await Promise.all([h1, h2].map(async h => await h.json('friend', 'quota', 'owner', `${Math.ceil(size * 3 / MB)}MB`)))
    const api = await ApiClient.forHome(owner.home)
    await waitFor(async () => {
      const { friends } = await api.get<{ friends: Array<{ grantsFromThem: string[], link: { online: boolean } }> }>('/v1/friends')
      return friends.filter(f => f.grantsFromThem.includes('backup') && f.link.online).length === 2
    }, 'the owner to see both hosts with a backup grant', 60_000)

    const must = (r: { code: number, stderr: string }, what: string): void => { if (r.code !== 0) throw new Error(`${what} failed: ${r.stderr.slice(-2000)}`) }
    // timed like restic: the whole command, from its process start to its exit
    const kith = async (...args: string[]): Promise<{ code: number, stdout: string, stderr: string, ms: number }> => await run(NODE, [KITH, '--home', owner.home, ...args, '--json'])
    must(await restic(['init', '--repo', repo]), 'restic init')
    log('backup: restic, first backup')
    const r1 = await restic(['backup', '--repo', repo, '--quiet', tree]); must(r1, 'restic backup')
    const repo1 = await duBytes(repo)
    log('backup: kith, first backup to two friends')
    const [k1, cpu1, faults1, main1] = await cpuDuring(async () => await perfWhile('first-backup', made.bytes, async () => await kith('backup', 'run', tree))); must(k1, 'kith backup run')
    const first = lastJob(k1.stdout).result as { sentBytes: number, readBytes: number }
    const rssFirst = await Promise.all(daemons.map(async n => await peakRss(n.pid)))

    const changed = await changeTree(tree, made.files, made.bytes)
    log(`backup: changed ${fmt(changed / MiB, 1)} MiB; second backups`)
    const r2 = await restic(['backup', '--repo', repo, '--quiet', tree]); must(r2, 'restic backup (second)')
    const resticAdded = await duBytes(repo) - repo1
    const k2 = await kith('backup', 'run', tree); must(k2, 'kith backup run (second)')
    const second = lastJob(k2.stdout).result as { sentBytes: number }

    log('backup: restores')
    const total2 = made.bytes + changed
    const rounds: Array<{ kithMs: number, resticMs: number, resticSyncMs: number, resticS: number, cpu: number[], faults: number[], main: number }> = []
    const restores = Math.max(1, Number(process.env.BENCH_RESTORES ?? 1))
    for (let i = 0; i < restores; i++) {
      // Each daemon runs V8's last-resort collection once, at its first quiet moment a minute after its
      // start, and a full collection when traffic has stopped for 10 s (daemon-heap.ts): 100-200 ms of
      // CPU each, landing in either side's restore (370 ms of the daemons' CPU during restic's second
      // round, at 28 MB/s against 47-52 in its other three). Each round starts with the daemons idle.
      const waited = await untilIdle(daemons.map(n => n.pid), startedAt + LAST_RESORT_AFTER_START_MS)
      log(`backup: restore ${i + 1}: waited ${fmt(waited / 1000, 1)} s for the daemons to be idle`)
      // each restore starts with nothing waiting to be written back: restic does not fsync, and the disk
      // writing its output back (or the backups') would slow the fsyncs of whichever restore came next
      must(await run('sync', []), 'sync')
      // the daemons' own background work (collections when traffic stops, LevelDB compactions) while restic runs
      const idleBefore = await Promise.all(daemons.map(async n => await cpuSeconds(n.pid)))
      const rr = await restic(['restore', 'latest', '--repo', repo, '--target', join(root, `restic-out-${i + 1}`)]); must(rr, 'restic restore')
      const idleCpu = (await Promise.all(daemons.map(async n => await cpuSeconds(n.pid)))).reduce((sum, s, d) => sum + s - idleBefore[d]!, 0)
      // restic does not fsync: what its restore left to write back, which kith's restore writes and fsyncs inside its time
      const resticSync = await run('sync', []); must(resticSync, 'sync')
      const from = process.hrtime.bigint() / 1000n
      // when its first and last bytes were written: before, the command's start, the snapshot and the trees; after, the last files' fsyncs
      let firstAt = NaN
      let lastAt = NaN
      let lastDone = 0
      const started = performance.now()
      const onLine = (line: string, at: number): void => {
        if (Number.isNaN(firstAt) && /"doneBytes":[1-9]/.test(line)) firstAt = at - started
        const done = Number(/"doneBytes":(\d+)/.exec(line)?.[1] ?? 0)
        if (done > lastDone) { lastDone = done; lastAt = at - started }
      }
      const schedBefore = await threadSchedMs(owner.pid)
      const [kr, cpu, faults, main] = await cpuDuring(async () => await perfWhile(`restore-${i + 1}`, total2, async () => await run(NODE, [KITH, '--home', owner.home, 'backup', 'restore', 'latest', '-o', join(root, `kith-out-${i + 1}`), '--json'], 600_000, onLine))); must(kr, 'kith backup restore')
      const schedAfter = await threadSchedMs(owner.pid)
      const to = process.hrtime.bigint() / 1000n
      rounds.push({ kithMs: kr.ms, resticMs: rr.ms, resticSyncMs: resticSync.ms, resticS: rr.cpuS, cpu, faults, main })
      const perMb = (s: number): string => fmt(s * 1000 / (total2 / MB), 1)
      log(`backup: restore ${i + 1}: kith ${fmt(mbps(total2, kr.ms), 1)} MB/s (first bytes written after ${fmt(firstAt)} ms, last at ${fmt(lastAt)}, exit at ${fmt(kr.ms)}), restic ${fmt(mbps(total2, rr.ms), 1)} (${fmt(rr.ms / kr.ms, 2)}; its writeback after it, sync, ${fmt(resticSync.ms)} ms; kith's daemons meanwhile ${fmt(idleCpu * 1000)} CPU ms); ` +
        `CPU ms/MB owner ${perMb(cpu[0]!)} (main thread ${perMb(main)}, which waited ${fmt(schedAfter.wait - schedBefore.wait)} ms for a core and ran ${fmt(schedAfter.run - schedBefore.run)}), hosts ${perMb(cpu[1]!)} ${perMb(cpu[2]!)}, restic ${perMb(rr.cpuS)}; ` +
        `owner page faults/MB ${fmt(faults[0]! / (total2 / MB))}; load ${fmt(loadavg()[0]!, 1)}` +
        (profiles != null ? `; profile window --from ${from} --to ${to}` : ''))
    }
    const mid = (f: (r: typeof rounds[number]) => number): number => median(rounds.map(f))
    const cpuR = [0, 1, 2].map(i => mid(r => r.cpu[i]!))
    const faultsR = [0, 1, 2].map(i => mid(r => r.faults[i]!))
    const mainR = mid(r => r.main)

    const firstMs = k1.ms
    const rss = await Promise.all(daemons.map(async n => await peakRss(n.pid)))
    const kFirst = mbps(made.bytes, firstMs)
    const rFirst = mbps(made.bytes, r1.ms)
    const kRestore = mbps(total2, mid(r => r.kithMs))
    const rRestore = mbps(total2, mid(r => r.resticMs))
    const rSynced = mbps(total2, mid(r => r.resticMs + r.resticSyncMs))
    const kithPerChanged = second.sentBytes / 2 / changed
    const resticPerChanged = resticAdded / changed
    const rows = [
      ['first backup (MB/s)', fmt(kFirst, 1), fmt(rFirst, 1), fmt(kFirst / rFirst, 2), `>= ${TARGET_FIRST}`, kFirst / rFirst >= TARGET_FIRST ? 'yes' : 'NO'],
      ['second: sent / changed', fmt(kithPerChanged, 2), fmt(resticPerChanged, 2), fmt(kithPerChanged / resticPerChanged, 2), '<= 1.10', kithPerChanged / resticPerChanged <= 1.1 ? 'yes' : 'NO'],
      ['restore (MB/s)', fmt(kRestore, 1), fmt(rRestore, 1), fmt(kRestore / rRestore, 2), `>= ${TARGET_RESTORE}`, kRestore / rRestore >= TARGET_RESTORE ? 'yes' : 'NO'],
      // kith's restore fsyncs every file before placing it; restic's leaves its output to be written back later
      ['restore, restic with its sync', fmt(kRestore, 1), fmt(rSynced, 1), fmt(kRestore / rSynced, 2), '-', '-'],
      ...(['owner', 'h1', 'h2'] as const).map((n, i) => [`peak RSS ${n} (MB)`, fmt(rss[i]! / MB), '-', '-', `<= ${TARGET_RSS / MB}`, rss[i]! <= TARGET_RSS ? 'yes' : 'NO'])
    ]
    const perMb = (s: number, bytes: number): number => s * 1000 / (bytes / MB)
    const phases = [
      ['first backup', cpu1, faults1, main1, r1.cpuS, made.bytes, firstMs, r1.ms],
      ['restore', cpuR, faultsR, mainR, mid(r => r.resticS), total2, mid(r => r.kithMs), mid(r => r.resticMs)]
    ] as const
    const cpuRows = phases.flatMap(([what, cpu, faults, main, resticS, bytes, kithMs, resticMs]) => {
      const sum = cpu.reduce((a, b) => a + b, 0)
      /** CPU seconds over the phase's seconds: on a quiet machine, all three well under 2 (this machine's cores) means waiting, not CPU, bounds the rate */
      const cores = (s: number, ms: number): string => fmt(s / (ms / 1000), 2)
      return [
        [`${what}: CPU ms/MB`, fmt(perMb(cpu[0]!, bytes), 1), fmt(perMb(cpu[1]!, bytes), 1), fmt(perMb(cpu[2]!, bytes), 1), fmt(perMb(sum, bytes), 1), fmt(perMb(resticS, bytes), 1), fmt(sum / resticS, 1)],
        [`${what}: owner's main thread`, fmt(perMb(main, bytes), 1), '-', '-', '-', '-', '-'],
        [`${what}: cores busy`, ...cpu.map(s => cores(s, kithMs)), cores(sum, kithMs), cores(resticS, resticMs), '-'],
        [`${what}: owner's main thread busy`, cores(main, kithMs), '-', '-', '-', '-', '-'],
        [`${what}: page faults/MB`, ...faults.map(f => fmt(f / (bytes / MB))), fmt(faults.reduce((a, b) => a + b, 0) / (bytes / MB)), '-', '-']
      ]
    })
    console.log(`\nkith backup benchmark: ${fmt(made.bytes / MiB)} MiB in ${made.files.length} files, ${fmt(changed / MiB, 1)} MiB changed; ` +
      `kith sent ${fmt(first.sentBytes / MiB)} MiB (two copies) the first time, ${fmt(second.sentBytes / MiB, 1)} MiB the second; restic's repository grew ${fmt(repo1 / MiB)} then ${fmt(resticAdded / MiB, 1)} MiB`)
    console.log(table(['figure', 'kith', 'restic', 'ratio', 'target', 'met'], rows))
    console.log(`peak RSS (MB) after the first backup / at the end: ${daemons.map((n, i) => `${n.name} ${fmt(rssFirst[i]! / MB)}/${fmt(rss[i]! / MB)}`).join(', ')}`)
    console.log(table(['phase', 'owner', 'h1', 'h2', 'kith, all three', 'restic', 'kith / restic'], cpuRows))
  } finally {
    // a profiled daemon writes its profile only when it exits by itself
    if (profiles != null) await Promise.all(daemons.map(async n => await n.stop()))
    await net.stop()
    // V8 writes the JS names' map to /tmp whatever TMPDIR says, and perf reads it from there: kept
    // beside the samples (put it back in /tmp to read a .data file again)
    if (perfDir != null) await Promise.all(pids.map(async pid => { await rename(`/tmp/perf-${pid}.map`, join(perfDir, `perf-${pid}.map`)).catch(() => {}) }))
    await rm(root, { recursive: true, force: true })
  }
}
