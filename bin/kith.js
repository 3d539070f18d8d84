#!/bin/sh
':' /*
# The `kith` command. A shell runs these lines, Node reads the file as
# JavaScript (to it, the line above is a string and these lines a comment).
# kith runs on the Node.js 24 that npm installs beside it (the `node`
# package: node_modules/.bin/node in a checkout or a global install, one
# folder up where npm hoisted it, as npx does): exec that one at once,
# whatever Node comes first on
# PATH: a Node started only to hand over (under `#!/usr/bin/env node`) cost
# two thirds of what the whole command takes (npm run bench -- --section cli).
# Folders are cut with ${x%/*}, not dirname: each program started costs.
# These lines must never hold a star followed by a slash: it ends the comment.
self=$0
case $self in *[/]*) ;; *) self=./$self ;; esac
while [ -h "$self" ]; do
  link=$(readlink "$self")
  case $link in
    /*) self=$link ;;
    *) self=${self%/*}/$link ;;
  esac
done
node=${self%/*}/../node_modules/.bin/node
[ -x "$node" ] || node=${self%/*}/../../.bin/node
[ -x "$node" ] || node=node
exec "$node" "$self" "$@"
*/
import { existsSync, lstatSync, mkdirSync } from 'node:fs'
import module from 'node:module'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

/**
 * Node keeps V8's compiled code, and the TypeScript stripped of its types,
 * between runs: a command then starts in half the time. The cache is a folder
 * of the OS temp folder that only this user can write (or $NODE_COMPILE_CACHE;
 * NODE_DISABLE_COMPILE_CACHE=1 turns it off): Node's default folder there is
 * shared by all users, and code another user planted in it would run as this
 * one. Without such a folder, kith runs without the cache.
 */
function enableCompileCache () {
  const uid = process.getuid?.()
  if (process.env.NODE_COMPILE_CACHE != null || process.env.NODE_DISABLE_COMPILE_CACHE != null || uid == null) {
    module.enableCompileCache()
    return
  }
  const dir = join(tmpdir(), `kith-compile-cache-${uid}`)
  try {
    mkdirSync(dir, { mode: 0o700 })
  } catch (err) {
    if (err.code !== 'EEXIST') return
  }
  const info = lstatSync(dir, { throwIfNoEntry: false })
  if (info?.isDirectory() === true && info.uid === uid && (info.mode & 0o022) === 0) module.enableCompileCache(dir)
}

/**
 * A checkout runs its TypeScript as it is; an installed package runs the
 * bundle `npm pack` built (dist/: bundle.ts), since Node strips types only
 * outside node_modules, and a bundle starts in half the CPU time. The package
 * ships no src/. KITH_DIST=FOLDER runs a bundle built into that folder from a
 * checkout instead (the test suite's daemons run so: test/helpers/bundle-setup.ts).
 */
const dist = process.env.KITH_DIST
const fromSource = !dist && existsSync(new URL('../src/services/cli/main.ts', import.meta.url))
const program = (path) => fromSource ? `../src/${path}.ts` : dist ? pathToFileURL(join(resolve(dist), `${path}.mjs`)).href : `../dist/${path}.mjs`

const [major, minor] = process.versions.node.split('.').map(Number)
if (major < 22 || (major === 22 && minor < 18)) {
  // run by an older Node (`node bin/kith.js`, or where no shell reads the
  // lines above): hand over to the `node` package's Node 24, wherever npm put it
  const { spawn } = await import('node:child_process')
  const { createRequire } = await import('node:module')
  const { dirname } = await import('node:path')
  const root = dirname(dirname(fileURLToPath(import.meta.url)))
  const needs = () => {
    console.error(`kith: needs Node.js 22.18 or newer (this is ${process.versions.node}); run \`npm install\` in ${root}, which brings Node 24`)
    process.exit(1)
  }
  let node
  try {
    node = createRequire(import.meta.url).resolve('node/bin/node')
  } catch {
    needs()
  }
  const child = spawn(node, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], { stdio: 'inherit' })
  child.on('error', needs)
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => child.kill(signal))
  child.on('exit', (code, signal) => process.exit(code ?? (signal != null ? 1 : 0)))
} else {
  enableCompileCache()
  const args = process.argv.slice(2)
  if (args.includes('start')) {
    // The daemon's memory is tuned (src/services/daemon-heap.ts): heap sizes and
    // malloc's settings can't change once the process runs, so `kith start`
    // replaces itself (same pid) with them.
    const { DAEMON_ENV, DAEMON_STARTUP_FLAGS, tuneDaemonHeap, holdDuringStart } = await import(program('services/daemon-heap'))
      // a flag already given (by the user, or by the first pass) is left as it is
    const missing = DAEMON_STARTUP_FLAGS.filter(flag => !process.execArgv.some(a => a.split('=')[0] === flag.split('=')[0]))
    if (missing.length > 0 && typeof process.execve === 'function') {
      // the environment must be passed on: execve's default is an empty one
      process.execve(process.execPath, [process.execPath, ...process.execArgv, ...missing, fileURLToPath(import.meta.url), ...args], { ...DAEMON_ENV, ...process.env })
    }
    tuneDaemonHeap()
    // until the start-up line (src/services/cli/start.ts)
    holdDuringStart()
  }
  const { main } = await import(program('services/cli/main'))
  process.exitCode = await main(args)
}
