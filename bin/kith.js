#!/usr/bin/env node
// Entry point of the `kith` command. kith runs on the Node.js 24 that npm
// installs beside it (node_modules/.bin/node); if another Node runs this file,
// hand over to that one.
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'

const [major, minor] = process.versions.node.split('.').map(Number)
if (major < 22 || (major === 22 && minor < 18)) {
  const root = dirname(dirname(fileURLToPath(import.meta.url)))
  const node = join(root, 'node_modules', '.bin', 'node')
  const child = spawn(node, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], { stdio: 'inherit' })
  child.on('error', () => {
    console.error(`kith: needs Node.js 22.18 or newer (this is ${process.versions.node}); run \`npm install\` in ${root} first`)
    process.exit(1)
  })
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => child.kill(signal))
  child.on('exit', (code, signal) => process.exit(code ?? (signal != null ? 1 : 0)))
} else {
  // The daemon runs with a small V8 young generation (4 MiB semi-spaces, not
  // 16): measured on a 512 MiB fetch, peak RSS 300 -> 250 MB fetching and
  // 255 -> 200 MB serving, idle 173 -> 154 MB, for ~7% more CPU per MB. A
  // long-running personal daemon should be light. Heap sizes can't change
  // once V8 runs, so `kith start` replaces itself (same pid) with the flag.
  const DAEMON_FLAG = '--max-semi-space-size=4'
  const args = process.argv.slice(2)
  if (args.includes('start') && !process.execArgv.some(a => a.startsWith('--max-semi-space-size')) && typeof process.execve === 'function') {
    // the environment must be passed on: execve's default is an empty one
    process.execve(process.execPath, [process.execPath, ...process.execArgv, DAEMON_FLAG, fileURLToPath(import.meta.url), ...args], process.env)
  }
  // ArrayBuffers count against V8's global heap limit instead of its
  // external-memory soft limit. A fetch makes a few MiB of short-lived buffers
  // per 1 MiB chunk (noise output, frames, plaintext); counted the default way
  // they start a full mark-compact of the whole heap every ~25 MB, and that
  // marking cost as much CPU as the fetch itself. Measured on a 256 MiB fetch:
  // CPU (owner + fetcher) 20-24 -> 18 ms/MB, 68-81 -> 86-93 MB/s, for about
  // 20 MB more peak RSS in the fetcher (garbage waits a little longer). The
  // flag is V8's, so it is set only on the Node major kith ships with (an
  // unknown flag would be ignored with a warning).
  if (args.includes('start') && major === 24) {
    const { setFlagsFromString } = await import('node:v8')
    setFlagsFromString('--external-memory-accounted-in-global-limit')
  }
  const { main } = await import('../src/services/cli/main.ts')
  process.exitCode = await main(process.argv.slice(2))
}
