#!/bin/sh
':' /*
# The `kith` command. A shell runs these lines, Node reads the file as
# JavaScript (to it, the line above is a string and these lines a comment).
# kith runs on the Node.js 24 that npm installs beside it
# (node_modules/.bin/node): exec that one at once, whatever Node comes first on
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
[ -x "$node" ] || node=node
exec "$node" "$self" "$@"
*/
import { lstatSync, mkdirSync } from 'node:fs'
import module from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

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

const [major, minor] = process.versions.node.split('.').map(Number)
if (major < 22 || (major === 22 && minor < 18)) {
  // run by an older Node (`node bin/kith.js`, or where no shell reads the
  // lines above): hand over to node_modules' Node 24
  const { spawn } = await import('node:child_process')
  const { fileURLToPath } = await import('node:url')
  const { dirname, join } = await import('node:path')
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
  enableCompileCache()
  const args = process.argv.slice(2)
  if (args.includes('start')) {
    // The daemon's memory is tuned (src/services/daemon-heap.ts): heap sizes and
    // malloc's settings can't change once the process runs, so `kith start`
    // replaces itself (same pid) with them.
    const { DAEMON_ENV, DAEMON_STARTUP_FLAGS, tuneDaemonHeap } = await import('../src/services/daemon-heap.ts')
    const { fileURLToPath } = await import('node:url')
    // a flag already given (by the user, or by the first pass) is left as it is
    const missing = DAEMON_STARTUP_FLAGS.filter(flag => !process.execArgv.some(a => a.split('=')[0] === flag.split('=')[0]))
    if (missing.length > 0 && typeof process.execve === 'function') {
      // the environment must be passed on: execve's default is an empty one
      process.execve(process.execPath, [process.execPath, ...process.execArgv, ...missing, fileURLToPath(import.meta.url), ...args], { ...DAEMON_ENV, ...process.env })
    }
    tuneDaemonHeap()
  }
  const { main } = await import('../src/services/cli/main.ts')
  process.exitCode = await main(args)
}
