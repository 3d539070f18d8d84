// Measures multi-source fetch: N chunks of 1 MiB from 1..3 holders into a
// fresh chunk store, over real TCP on loopback.
//
//   node bench/chunk-fetch.ts [--mib 128] [--sources 1] [--inprocess] [--sync] [--runs 3]
//       [--chunks-per-request 4] [--requests-per-source 2]
//
// Holders run as separate processes (test/helpers/bad-source.ts, mode good)
// unless --inprocess. The fetcher's store fsyncs each chunk only with --sync.
import { parseArgs } from 'node:util'
import { cp } from 'node:fs/promises'
import { join } from 'node:path'
import { fetchChunks } from '../src/transfer/fetcher.ts'
import { learn, makeChunks, openStore, serve, SourceProcess, startNode, tempDir } from '../test/helpers/chunks.ts'
import { cpuMs, cpuSeconds, fmt, mbps, median, ownPeakRss } from './lib.ts'

const { values } = parseArgs({
  options: {
    mib: { type: 'string', default: '128' },
    sources: { type: 'string', default: '1' },
    inprocess: { type: 'boolean', default: false },
    sync: { type: 'boolean', default: false },
    runs: { type: 'string', default: '3' },
    'chunks-per-request': { type: 'string' },
    'requests-per-source': { type: 'string' }
  }
})
const mib = Number(values.mib)
const count = Number(values.sources)
const tmp = await tempDir('kith-bench-fetch-')
try {
  // made one at a time, so the bench's own memory stays small and peak RSS speaks for the fetcher
  const chunks: Array<{ id: string }> = []
  const first = await openStore(join(tmp.dir, 'src0'))
  for (let i = 0; i < mib; i++) {
    const [chunk] = makeChunks(1, 1024 * 1024)
    await first.store.put(chunk!.id, chunk!.sealed)
    chunks.push({ id: chunk!.id })
  }
  await first.close()
  for (let i = 1; i < count; i++) await cp(join(tmp.dir, 'src0'), join(tmp.dir, `src${i}`), { recursive: true })
  const holders: Array<{ peerId: any, addrs: any[], stop: () => Promise<void>, proc?: { pid?: number } }> = []
  for (let i = 0; i < count; i++) {
    if (values.inprocess) {
      const s = await openStore(join(tmp.dir, `src${i}`))
      const h = await serve(s.store)
      holders.push({ ...h, stop: async () => { await h.stop(); await s.close() } })
    } else {
      holders.push(await SourceProcess.spawn('good', join(tmp.dir, `src${i}`)))
    }
  }
  const results: number[] = []
  for (let run = 0; run < Number(values.runs); run++) {
    const client = await startNode()
    for (const h of holders) await learn(client, h.peerId, h.addrs)
    const local = await openStore(join(tmp.dir, `dst${run}`), [], values.sync)
    const holderCpu0 = await Promise.all(holders.map(async h => await cpuSeconds(h.proc?.pid)))
    const cpu0 = process.cpuUsage()
    const started = performance.now()
    const report = await fetchChunks({
      libp2p: client,
      store: local.store,
      ids: chunks.map(c => c.id),
      sources: holders.map(h => h.peerId),
      chunksPerRequest: values['chunks-per-request'] != null ? Number(values['chunks-per-request']) : undefined,
      requestsPerSource: values['requests-per-source'] != null ? Number(values['requests-per-source']) : undefined
    })
    const ms = performance.now() - started
    const mb = report.fetchedBytes / 1e6
    const fetcherCpu = cpuMs(cpu0) / mb
    const holderCpu = (await Promise.all(holders.map(async (h, i) => await cpuSeconds(h.proc?.pid) - holderCpu0[i]!))).map(s => s * 1000 / mb)
    results.push(mbps(report.fetchedBytes, ms))
    console.log(`run ${run}: ${fmt(mbps(report.fetchedBytes, ms))} MB/s in ${fmt(ms)} ms; per source ${report.sources.map(s => `${s.chunks} chunks (${s.duplicates} dup, ${s.requests} req, ${s.penalties.length} pen)`).join(', ')}; wasted ${report.wastedBytes} B; have ${report.haveMs} ms; ` +
      `CPU ms/MB fetcher ${fmt(fetcherCpu, 1)}${values.inprocess ? ' (holders included)' : `, holders ${holderCpu.map(c => fmt(c, 1)).join('/')}`}`)
    await client.stop()
    await local.close()
  }
  console.log(`${mib} MiB from ${count} ${values.inprocess ? 'in-process' : 'process'} holder(s), fsync ${values.sync ? 'on' : 'off'}: median ${fmt(median(results))} MB/s; fetcher peak RSS ${fmt(ownPeakRss() / 2 ** 20)} MiB`)
  for (const h of holders) await h.stop()
} finally {
  await tmp.cleanup()
}
