import { readFile } from 'node:fs/promises'
import { basename } from 'node:path'

/**
 * Summarises V8 CPU profiles (from `node --cpu-prof`, or BENCH_CPU_PROF=DIR
 * with `npm run bench`): where the self time went, by function and by
 * package, so a reader can see what limits throughput without a GUI.
 *
 *   node bench/cpu-summary.ts FILE.cpuprofile [...] [--top 25] [--from US --to US]
 *
 * `--from`/`--to` keep only the samples taken in that window, in µs of the
 * profile's own clock (CLOCK_MONOTONIC, as `process.hrtime.bigint() / 1000n`
 * in any process on the machine): one phase of a longer run.
 */
interface Node {
  id: number
  callFrame: { functionName: string, url: string, lineNumber: number }
  hitCount?: number
  children?: number[]
}
interface Profile { nodes: Node[], startTime: number, endTime: number, samples?: number[], timeDeltas?: number[] }

function where (url: string): string {
  if (url === '') return '(native/vm)'
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (nm != null) return nm[1]!
  if (url.startsWith('node:')) return url
  const src = /\/((?:src|bench|test|bin)\/.*)$/.exec(url)
  return src != null ? src[1]! : basename(url)
}

const args = process.argv.slice(2)
let top = 25
let from = -Infinity
let to = Infinity
const files: string[] = []
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--top') top = Number(args[++i])
  else if (args[i] === '--from') from = Number(args[++i])
  else if (args[i] === '--to') to = Number(args[++i])
  else files.push(args[i]!)
}
if (files.length === 0) {
  console.error('usage: node bench/cpu-summary.ts FILE.cpuprofile [...] [--top N]')
  process.exit(2)
}

for (const file of files) {
  const profile = JSON.parse(await readFile(file, 'utf8')) as Profile
  // self time per node from samples and time deltas (more precise than hitCount x interval)
  const self = new Map<number, number>()
  const samples = profile.samples ?? []
  const deltas = profile.timeDeltas ?? []
  let at = profile.startTime
  for (let i = 0; i < samples.length; i++) {
    at += deltas[i] ?? 0
    if (at >= from && at <= to) self.set(samples[i]!, (self.get(samples[i]!) ?? 0) + (deltas[i + 1] ?? 0))
  }
  const total = [...self.values()].reduce((a, b) => a + b, 0)
  const byFunction = new Map<string, number>()
  const byPackage = new Map<string, number>()
  let idle = 0
  for (const node of profile.nodes) {
    const us = self.get(node.id) ?? 0
    const { functionName, url, lineNumber } = node.callFrame
    if (functionName === '(idle)') { idle += us; continue }
    const key = `${functionName || '(anonymous)'}  ${where(url)}${url !== '' ? `:${lineNumber + 1}` : ''}`
    byFunction.set(key, (byFunction.get(key) ?? 0) + us)
    const pkg = functionName === '(garbage collector)' ? '(garbage collector)' : where(url)
    byPackage.set(pkg, (byPackage.get(pkg) ?? 0) + us)
  }
  // inclusive time of kith's own functions (src/): self plus everything they called
  const parent = new Map<number, number>()
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id)
  const byId = new Map(profile.nodes.map(n => [n.id, n]))
  const inclusive = new Map<string, number>()
  for (const [id, us] of self) {
    const seen = new Set<string>()
    for (let at: number | undefined = id; at != null; at = parent.get(at)) {
      const { functionName, url, lineNumber } = byId.get(at)!.callFrame
      if (url.includes('/node_modules/') || !/\/src\//.test(url)) continue
      const key = `${functionName || '(anonymous)'}  ${where(url)}:${lineNumber + 1}`
      if (seen.has(key)) continue // recursion counts once
      seen.add(key)
      inclusive.set(key, (inclusive.get(key) ?? 0) + us)
    }
  }
  const busy = total - idle
  const pct = (us: number): string => `${(us / total * 100).toFixed(1).padStart(5)}%`
  console.log(`\n${file}: ${(total / 1e6).toFixed(1)} s sampled, ${pct(busy)} busy`)
  console.log('  by package (self time)')
  for (const [k, us] of [...byPackage].sort((a, b) => b[1] - a[1]).slice(0, 12)) console.log(`  ${pct(us)}  ${k}`)
  console.log('  by function (self time)')
  for (const [k, us] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${pct(us)}  ${k}`)
  if (inclusive.size > 0) {
    console.log('  kith functions (inclusive: with what they call, synchronous parts only)')
    for (const [k, us] of [...inclusive].sort((a, b) => b[1] - a[1]).slice(0, 15)) console.log(`  ${pct(us)}  ${k}`)
  }
}
