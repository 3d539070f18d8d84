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
  // The daemon's memory is tuned (src/services/daemon-heap.ts): heap sizes and
  // malloc's settings can't change once the process runs, so `kith start`
  // replaces itself (same pid) with them.
  const { DAEMON_ENV, DAEMON_STARTUP_FLAGS, tuneDaemonHeap } = await import('../src/services/daemon-heap.ts')
  const args = process.argv.slice(2)
  if (args.includes('start')) {
    // a flag already given (by the user, or by the first pass) is left as it is
    const missing = DAEMON_STARTUP_FLAGS.filter(flag => !process.execArgv.some(a => a.split('=')[0] === flag.split('=')[0]))
    if (missing.length > 0 && typeof process.execve === 'function') {
      // the environment must be passed on: execve's default is an empty one
      process.execve(process.execPath, [process.execPath, ...process.execArgv, ...missing, fileURLToPath(import.meta.url), ...args], { ...DAEMON_ENV, ...process.env })
    }
    tuneDaemonHeap()
  }
  const { main } = await import('../src/services/cli/main.ts')
  process.exitCode = await main(process.argv.slice(2))
}
