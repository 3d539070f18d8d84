import { accessSync, constants, statSync } from 'node:fs'
import { delimiter, join } from 'node:path'
import { describe, it, type TestContext } from 'vitest'

/**
 * Tests that need something of the machine (root, iproute2, iptables): where it
 * is missing they skip, printing why, so `npm test` is green on a fresh clone;
 * under CI (the CI variable set, as .ci/run does) they fail instead, since a
 * machine that can't run them must not look as if they passed there.
 *
 * Each `needs*` function returns what is missing, in words, or null.
 */

export const underCi = process.env.CI != null && !['', '0', 'false'].includes(process.env.CI)

/** Missing unless this process runs as root; `what` says what root is for. */
export function needsRoot (what: string): string | null {
  if (process.platform !== 'linux') return `${what} needs Linux (this is ${process.platform})`
  return process.getuid?.() === 0 ? null : `${what} needs root (run the tests as root: \`sudo npm test\`; CI runs as root)`
}

/** The Debian package that brings each command the tests run (the rest: a package of the command's own name). */
const PACKAGE_OF: Readonly<Record<string, string>> = { ip: 'iproute2', sshd: 'openssh-server', 'ssh-keygen': 'openssh-client', aria2c: 'aria2' }

/**
 * Whether an executable file of that name is in a PATH folder, as `command -v`
 * finds it. Looked up here rather than by running a shell: a spawn forks the
 * test worker, and at its 300-800 MB a fork costs the worker 30-60 ms of CPU.
 */
function onPath (command: string): boolean {
  return (process.env.PATH ?? '').split(delimiter).some(dir => {
    if (dir === '') return false
    const file = join(dir, command)
    try {
      accessSync(file, constants.X_OK)
      return statSync(file).isFile()
    } catch {
      return false
    }
  })
}

/** Missing unless every command is on the PATH; the reason names the packages to install. */
export function needsCommands (commands: string[]): string | null {
  const absent = commands.filter(cmd => !onPath(cmd))
  const packages = [...new Set(absent.map(cmd => PACKAGE_OF[cmd] ?? cmd))]
  return absent.length === 0 ? null : `${absent.join(' and ')} missing (apt-get install -y ${packages.join(' ')}; .ci/run installs them)`
}

/** The first thing missing, or null. */
function first (missing: Array<string | null>): string | null {
  return missing.find(m => m != null) ?? null
}

/**
 * In a test: returns when nothing is missing; otherwise skips the test,
 * printing the reason, or under CI fails with it.
 */
export function requireOrSkip (ctx: TestContext, ...missing: Array<string | null>): void {
  const reason = first(missing)
  if (reason == null) return
  if (underCi) throw new Error(`can't run here under CI: ${reason}`)
  console.warn(`skipped "${ctx.task.name}": ${reason}`)
  ctx.skip(reason)
}

/**
 * A suite: `describe(title, body)` when nothing is missing; otherwise the suite
 * is skipped with the reason printed, or under CI it holds one test that fails
 * with it.
 */
export function describeNeeding (title: string, missing: Array<string | null>, body: () => void): void {
  const reason = first(missing)
  if (reason == null) {
    describe(title, body)
  } else if (underCi) {
    describe(title, () => {
      it('can run here', () => { throw new Error(`can't run here under CI: ${reason}`) })
    })
  } else {
    console.warn(`skipped "${title}": ${reason}`)
    describe.skip(`${title} (skipped: ${reason})`, body)
  }
}
