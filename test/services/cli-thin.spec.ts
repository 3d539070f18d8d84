import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { execFile } from 'node:child_process'
import { chmod, mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createTestnet, KITH, NODE, type Testnet, type TestNode } from '../helpers/testnet.ts'
import { loadedModules } from '../helpers/loaded-modules.ts'

/**
 * The CLI is a thin client of the local API and loads like one
 * (src/services/cli/main.ts): a command that only asks the daemon loads
 * neither libp2p, LevelDB, zod nor the daemon, which took over a second
 * before any command did anything. Each command runs as a user runs it,
 * against a real daemon, in a Node that lists every module it loaded
 * (test/helpers/module-log.ts). Run from a shell, it starts on
 * node_modules' Node 24 at once, with no other Node starting first to hand
 * over; and what it compiles is kept for the next run, where only this user
 * can write (bin/kith.js).
 */
const MODULE_LOG = join(dirname(fileURLToPath(import.meta.url)), '..', 'helpers', 'module-log.ts')
/** what only `start`, `id` without a daemon, `invite show` and `repair` may load */
const HEAVY = /\/node_modules\/(?:libp2p|@libp2p|@chainsafe|@multiformats|level|classic-level|zod)\/|\/src\/services\/daemon\.ts$|\/src\/peer\/(?:node|database|identity)\.ts$|\/src\/trust\/invite\.ts$/

interface Run { code: number, stdout: string, stderr: string, modules: string[] }

/** runs the sources (a checkout's `kith`), or with `bundled` the bundle the test run built (test/helpers/bundle-setup.ts) */
async function kithListingModules (node: TestNode, args: string[], bundled = false): Promise<Run> {
  const log = join(node.home, 'modules.log')
  const env: NodeJS.ProcessEnv = { ...process.env, KITH_MODULE_LOG: log }
  if (!bundled) delete env.KITH_DIST
  const run = await new Promise<Omit<Run, 'modules'>>(resolve => {
    execFile(NODE, ['--import', MODULE_LOG, KITH, '--home', node.home, ...args], { env, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err == null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr })
    })
  })
  return { ...run, modules: await loadedModules(log, bundled ? process.env.KITH_DIST : undefined) }
}

describe('the CLI loads only what its command needs', () => {
  let net: Testnet
  let node: TestNode
  let invite: string

  beforeAll(async () => {
    net = await createTestnet(['thin'])
    node = net.nodes[0]!
    invite = join(node.home, 'an.invite')
    await node.json('invite', 'create', '-o', invite)
  })

  afterAll(async () => {
    await net?.stop()
  })

  // and beside main.ts, format.ts and command-index.ts, only the command modules it runs (command-index.ts)
  const thin: Array<[string[], string[]]> = [
    [['--help'], []], [['status'], ['limits.ts']], [['friends'], []], [['transfers'], ['files.ts']], [['downloads'], ['downloads.ts']],
    [['limits'], ['limits.ts']], [['id'], []], [['invite', 'create', '--json'], []]
  ]
  // from the sources, as a checkout runs; and from the bundle a package ships (bundle.ts), whose chunks stand for the modules in them
  const cases = thin.flatMap(([args, own]) => [false, true].map(bundled => ({ command: args.join(' '), args, own, bundled, from: bundled ? 'the bundle' : 'the sources' })))
  it.each(cases)('kith $command, run from $from, loads neither libp2p, LevelDB, zod, the daemon nor other commands\' modules', async ({ args, own, bundled }) => {
    if (bundled) expect(process.env.KITH_DIST, 'the test run builds the bundle (vitest.config.ts)').toBeTruthy()
    const run = await kithListingModules(node, args, bundled)
    expect(run.stderr).toBe('')
    expect(run.code).toBe(0)
    // the list is the real one: the CLI and commander are in it
    expect(run.modules.some(m => m.endsWith('/src/services/cli/main.ts'))).toBe(true)
    expect(run.modules.some(m => m.includes('/node_modules/commander/'))).toBe(true)
    expect(run.modules.filter(m => HEAVY.test(m))).toEqual([])
    const cli = run.modules.filter(m => m.includes('/src/services/cli/')).map(m => m.slice(m.lastIndexOf('/') + 1))
    expect(cli.sort()).toEqual(['command-index.ts', 'format.ts', 'main.ts', ...own].sort())
  })

  it('kith invite accept leaves the invite to the daemon to check, and loads nothing heavy', async () => {
    // accepting one's own invite: the daemon parses it and says no
    const run = await kithListingModules(node, ['invite', 'accept', invite])
    expect(run.code).toBe(1)
    expect(run.stderr).toMatch(/\[[A-Z_]+\]\n$/)
    expect(run.modules.filter(m => HEAVY.test(m))).toEqual([])
  })

  it('kith invite show, which works without a daemon, loads the invite parser and its crypto when it runs', async () => {
    const run = await kithListingModules(node, ['invite', 'show', invite, '--json'])
    expect(run.code).toBe(0)
    expect(JSON.parse(run.stdout).valid).toBe(true)
    expect(run.modules.filter(m => HEAVY.test(m))).toContainEqual(expect.stringMatching(/\/src\/trust\/invite\.ts$/))
  })
})

describe.skipIf(process.getuid == null)('the CLI\'s compile cache', () => {
  const uid = process.getuid?.() ?? 0
  let base: string

  beforeAll(async () => {
    base = await mkdtemp(join(tmpdir(), 'kith-compile-cache-test-'))
  })

  afterAll(async () => {
    await rm(base, { recursive: true, force: true })
  })

  /** `kith --help` with the temp folder at `tmp`, and no compile cache chosen in the environment */
  async function helpWithTmp (tmp: string): Promise<number> {
    const env: NodeJS.ProcessEnv = { ...process.env, TMPDIR: tmp }
    delete env.NODE_COMPILE_CACHE
    delete env.NODE_DISABLE_COMPILE_CACHE
    return await new Promise(resolve => {
      execFile(NODE, [KITH, '--help'], { env, timeout: 60_000 }, err => resolve(err == null ? 0 : typeof err.code === 'number' ? err.code : 1))
    })
  }

  it('is kept in a folder of the temp folder that only the user can open', async () => {
    const tmp = join(base, 'fresh')
    await mkdir(tmp)
    expect(await helpWithTmp(tmp)).toBe(0)
    const cache = join(tmp, `kith-compile-cache-${uid}`)
    expect((await stat(cache)).mode & 0o777).toBe(0o700)
    expect((await readdir(cache, { recursive: true })).length).toBeGreaterThan(0)
  })

  it('is not used in a folder of that name that other users can write', async () => {
    const tmp = join(base, 'planted')
    const cache = join(tmp, `kith-compile-cache-${uid}`)
    await mkdir(cache, { recursive: true })
    await chmod(cache, 0o777)
    expect(await helpWithTmp(tmp)).toBe(0)
    expect(await readdir(cache)).toEqual([])
  })

  it('is done without where it can\'t be a folder, and kith works all the same', async () => {
    const tmp = join(base, 'a-file')
    await mkdir(tmp)
    await writeFile(join(tmp, `kith-compile-cache-${uid}`), '')
    expect(await helpWithTmp(tmp)).toBe(0)
  })
})

describe.skipIf(process.platform === 'win32')('the kith command, run from a shell', () => {
  it('starts node_modules\' Node 24 itself, never the `node` first on PATH', async () => {
    // a `node` that only leaves a mark, first on PATH: an older Node here used to start only to hand over
    const dir = await mkdtemp(join(tmpdir(), 'kith-path-'))
    try {
      const mark = join(dir, 'ran')
      await writeFile(join(dir, 'node'), `#!/bin/sh\necho "$@" > '${mark}'\nexit 9\n`, { mode: 0o755 })
      const run = await new Promise<{ code: number, stdout: string }>(resolve => {
        execFile(KITH, ['--version'], { env: { ...process.env, PATH: `${dir}:${process.env.PATH ?? ''}` }, timeout: 60_000 }, (err, stdout) => {
          resolve({ code: err == null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout })
        })
      })
      expect(run).toEqual({ code: 0, stdout: '0.1.0\n' })
      await expect(stat(mark)).rejects.toThrow(/ENOENT/)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
