import { randomFillSync } from 'node:crypto'
import { mkdir, rm, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { befriend, createTestnet, waitFor, KITH, NODE, type TestNode } from '../test/helpers/testnet.ts'
import { cpuSeconds, fmt, MB, peakRss, resetPeakRss, run, table } from './lib.ts'
import { memorySplit, watchMemory, type MemorySplit } from './smaps.ts'
import { stallLog, stallsBetween, type Stall } from './stall-probe.ts'

/**
 * The small-files section of `npm run bench` (`--section smallfiles`): a
 * share of BENCH_SMALL_FILES (100,000) files of 4 KiB, in folders of 1,000,
 * shared by one daemon and fetched whole by a friend on 127.0.0.1, against a
 * local `tar -cf - | tar -xf -` copy of the same tree (the ceiling: no
 * network, no crypto, no verification):
 *
 *   share          files per second hashed, sealed and indexed (`kith share`)
 *   fetch          files per second fetched, verified and placed (the
 *                  transfer record's created -> done); target >= 3,000
 *   tar | tar      files per second, and the fetch's ratio to it
 *   memory         peak RSS (VmHWM) of each daemon while sharing and while
 *                  fetching; target <= 200 MB, whatever the number of files;
 *                  the fetcher's before the fetch and at its sampled peak,
 *                  split by kind (bench/smaps.ts)
 *   CPU            CPU ms per file, owner and fetcher
 *   stalls         the longest time each daemon's event loop stopped
 *                  answering during the fetch (its API, timers, libp2p's
 *                  keep-alives), with its main thread's CPU meanwhile
 *                  (bench/stall-probe.ts), and how many stops of 100 ms or more
 */
const HERE = dirname(fileURLToPath(import.meta.url))
const TARGET_FILES_PER_S = 3000
const TARGET_RSS = 200 * MB
const FILE_SIZE = 4096
const PER_FOLDER = 1000

type Log = (message: string) => void

async function makeTree (root: string, count: number): Promise<void> {
  const bytes = Buffer.allocUnsafe(FILE_SIZE)
  for (let i = 0; i < count; i++) {
    const dir = join(root, `d${String(Math.floor(i / PER_FOLDER)).padStart(4, '0')}`)
    if (i % PER_FOLDER === 0) await mkdir(dir, { recursive: true })
    await writeFile(join(dir, `f${String(i).padStart(6, '0')}.dat`), randomFillSync(bytes))
  }
}

/** A memory split (bench/smaps.ts) as a note. */
function describe (m: MemorySplit): string {
  return `mapped files ${fmt(m.files / MB)}, glibc heap ${fmt(m.heap / MB)}, thread arenas ${fmt(m.arenas / MB)}, other anonymous (V8 heap, buffers of 128 KiB+) ${fmt(m.anon / MB)}`
}

/** The longest of `stalls` (longest first), wall ms. */
function longest (stalls: Stall[]): string {
  return fmt(stalls[0]?.wallMs ?? 0)
}

/**
 * The longest stall's main-thread CPU and when it began, the stall in which
 * the main thread itself ran longest (on a loaded machine a stall may be a
 * wait for a core; this one is the daemon's own work), and how many stalls
 * of 100 ms or more there were.
 */
function stallNote (stalls: Stall[], from: number): string {
  const top = stalls[0]
  if (top === undefined) return 'none of 50 ms or more'
  const busiest = stalls.reduce((a, b) => b.cpuMs > a.cpuMs ? b : a)
  const long = stalls.filter(s => s.wallMs >= 100)
  const when = (s: Stall): string => `${fmt((s.at - from) / 1000, 1)} s into the fetch`
  return `${fmt(top.cpuMs)} CPU ms in it, ${when(top)}; most CPU in one: ${fmt(busiest.cpuMs)} ms (${fmt(busiest.wallMs)} wall), ${when(busiest)}; ` +
    `${long.length} of 100 ms or more, ${fmt(long.reduce((sum, s) => sum + s.wallMs, 0) / 1000, 1)} s together`
}

async function waitOnline (node: TestNode, label: string): Promise<void> {
  await waitFor(async () => {
    const { friends } = await node.json<{ friends: Array<{ label: string, link: { online: boolean } }> }>('friends')
    return friends.find(f => f.label === label)?.link.online === true
  }, `${node.name} to see ${label} online`, 60_000, 250)
}

/** With `profiles` (BENCH_CPU_PROF), a V8 CPU profile of each daemon is written there. */
export async function smallFilesBench (log: Log, work: string, count: number, profiles?: string): Promise<void> {
  const root = join(work, 'smallfiles-bench')
  const tree = join(root, 'tree')
  log(`smallfiles: writing ${count} files of ${FILE_SIZE} bytes`)
  await makeTree(tree, count)
  const slow = 120_000 + count * 10 // 100 files a second at worst, plus two minutes

  log('smallfiles: tar | tar')
  await mkdir(join(root, 'tar-out'))
  const tar = await run('sh', ['-c', `tar -C '${tree}' -cf - . | tar -C '${join(root, 'tar-out')}' -xf -`], slow)
  if (tar.code !== 0) throw new Error(`tar | tar failed: ${tar.stderr}`)
  await rm(join(root, 'tar-out'), { recursive: true, force: true })

  // the daemons (and only they) log their event loop's stalls
  const stalls = join(root, 'stalls')
  await mkdir(stalls)
  const probe = `--import=${join(HERE, 'stall-probe.ts')}`
  const withProbe = async <T>(options: string, start: () => Promise<T>): Promise<T> => {
    const saved = process.env.NODE_OPTIONS
    process.env.NODE_OPTIONS = `${saved ?? ''} ${probe} ${options}`.trim()
    process.env.KITH_STALL_DIR = stalls
    try {
      return await start()
    } finally {
      if (saved == null) delete process.env.NODE_OPTIONS
      else process.env.NODE_OPTIONS = saved
      delete process.env.KITH_STALL_DIR
    }
  }
  const net = await withProbe('', async () => await createTestnet(['owner', 'friend']))
  const [owner, friend] = net.nodes as [TestNode, TestNode]
  try {
    if (profiles !== undefined) {
      // restarted with the profiler on; stopped cleanly at the end, so the profiles are written
      await withProbe(`--cpu-prof --cpu-prof-dir=${profiles}`, async () => {
        for (const n of [owner, friend]) { await n.stop(); await n.start() }
      })
      log(`smallfiles: CPU profiles of owner (pid ${owner.pid}) and friend (pid ${friend.pid}) go to ${profiles}`)
    }
    await befriend(owner, friend)
    await waitOnline(friend, 'owner')
    const must = (r: { code: number, stderr: string }, what: string): void => { if (r.code !== 0) throw new Error(`${what} failed: ${r.stderr.slice(-2000)}`) }

    log('smallfiles: kith share')
    await resetPeakRss(owner.pid)
    const shareCpu = await cpuSeconds(owner.pid)
    const shared = await run(NODE, [KITH, '--home', owner.home, 'share', tree, '--with', 'friend', '--json'], slow)
    must(shared, 'kith share')
    const shareCpuS = await cpuSeconds(owner.pid) - shareCpu
    const sharePeak = await peakRss(owner.pid)
    const name = (JSON.parse(shared.stdout) as { share: { name: string } }).share.name

    log('smallfiles: kith fetch')
    for (const n of [owner, friend]) await resetPeakRss(n.pid)
    const before = await memorySplit(friend.pid!)
    const memory = watchMemory(friend.pid!)
    const cpu = await Promise.all([owner, friend].map(async n => await cpuSeconds(n.pid)))
    // progress lines come while chunks arrive (files are placed meanwhile); none while the last files are placed
    let lastProgressAt = NaN
    let doneAt = NaN
    const fetchFrom = Date.now()
    const fetched = await run(NODE, [KITH, '--home', friend.home, 'fetch', `owner:${name}`, '-o', join(root, 'fetched'), '--json'], slow, (line, at) => {
      const t = JSON.parse(line) as { state: string }
      if (t.state === 'running') lastProgressAt = at
      if (t.state === 'done') doneAt = at
    })
    must(fetched, 'kith fetch')
    const fetchCpu = await Promise.all([owner, friend].map(async (n, i) => await cpuSeconds(n.pid) - cpu[i]!))
    const peaks = await Promise.all([owner, friend].map(async n => await peakRss(n.pid)))
    const atPeak = await memory.stop()
    const last = JSON.parse(fetched.stdout.trim().split('\n').at(-1)!) as { id: string, state: string }
    if (last.state !== 'done') throw new Error(`kith fetch ended ${JSON.stringify(last)}`)
    const { transfers } = await friend.json<{ transfers: Array<{ id: string, created: number, updated: number }> }>('transfers')
    const record = transfers.find(t => t.id === last.id)!
    const fetchMs = record.updated - record.created
    const [ownerStalls, fetcherStalls] = await Promise.all([owner, friend].map(async n => await stallsBetween(stallLog(stalls, n.pid!), fetchFrom, Date.now()))) as [Stall[], Stall[]]

    const perS = (ms: number): number => count / (ms / 1000)
    const tarRate = perS(tar.ms)
    const rows = [
      ['tar | tar (files/s)', fmt(tarRate), '', '', '', `${fmt(tar.ms / 1000, 1)} s`],
      ['kith share (files/s)', fmt(perS(shared.ms)), fmt(perS(shared.ms) / tarRate, 3), '', '', `${fmt(shared.ms / 1000, 1)} s; owner ${fmt(shareCpuS * 1000 / count, 2)} CPU ms/file`],
      ['kith fetch (files/s)', fmt(perS(fetchMs)), fmt(perS(fetchMs) / tarRate, 3), `>= ${TARGET_FILES_PER_S}`, perS(fetchMs) >= TARGET_FILES_PER_S ? 'yes' : 'NO',
        `${fmt(fetchMs / 1000, 1)} s (command ${fmt(fetched.ms / 1000, 1)} s; the last ${fmt((doneAt - lastProgressAt) / 1000, 1)} s placing); CPU ms/file owner ${fmt(fetchCpu[0]! * 1000 / count, 2)}, fetcher ${fmt(fetchCpu[1]! * 1000 / count, 2)}`],
      ['peak RSS owner, sharing (MB)', fmt(sharePeak / MB), '', `<= ${TARGET_RSS / MB}`, sharePeak <= TARGET_RSS ? 'yes' : 'NO', ''],
      ['peak RSS owner, serving (MB)', fmt(peaks[0]! / MB), '', `<= ${TARGET_RSS / MB}`, peaks[0]! <= TARGET_RSS ? 'yes' : 'NO', ''],
      ['peak RSS fetcher (MB)', fmt(peaks[1]! / MB), '', `<= ${TARGET_RSS / MB}`, peaks[1]! <= TARGET_RSS ? 'yes' : 'NO',
        before === undefined ? '' : `${fmt((peaks[1]! - before.total) / MB)} above its ${fmt(before.total / MB)} before the fetch`],
      ['  fetcher before the fetch (MB)', before === undefined ? '' : fmt(before.total / MB), '', '', '', before === undefined ? '' : describe(before)],
      ['longest event-loop stall, owner (ms)', longest(ownerStalls), '', '', '', stallNote(ownerStalls, fetchFrom)],
      ['longest event-loop stall, fetcher (ms)', longest(fetcherStalls), '', '', '', stallNote(fetcherStalls, fetchFrom)],
      ['  fetcher at its sampled peak (MB)', atPeak === undefined ? '' : fmt(atPeak.total / MB), '', '', '', atPeak === undefined ? '' : `${describe(atPeak)} (smaps every 250 ms)`]
    ]
    console.log(`\nkith small-files benchmark: ${count} files of ${FILE_SIZE} bytes in folders of ${PER_FOLDER}, two daemons on 127.0.0.1`)
    console.log(table(['figure', 'value', 'of tar', 'target', 'met', 'note'], rows))
  } finally {
    if (profiles !== undefined) for (const n of [owner, friend]) await n.stop().catch(() => {})
    await net.stop()
    await rm(root, { recursive: true, force: true })
  }
}
