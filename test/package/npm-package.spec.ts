import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, readlink, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { delimiter, dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { waitFor } from '../helpers/testnet.ts'

/**
 * kith as a user installs it (issue 17): `npm pack` builds the JavaScript
 * (prepack: the bundle of bundle.ts, and tsconfig.build.json's type
 * declarations) and packs what users need; `npm install -g`
 * of the tarball into a fresh prefix; then the installed `kith` starts a node,
 * answers `kith status` and stops it with `kith stop`. Node strips types only
 * outside node_modules, so this fails on a package that ships TypeScript.
 *
 * The user's environment is this one without node_modules/.bin on the PATH:
 * npm and `node` are the system's (Node 20 on the machine it was written on),
 * and the installed kith must run on the Node 24 that its `node` dependency
 * brings. `--prefer-offline` draws on npm's cache, which `npm ci` filled.
 */
const ROOT = dirname(dirname(dirname(fileURLToPath(import.meta.url))))
const userPath = (process.env.PATH ?? '').split(delimiter).filter(dir => !dir.includes(join('node_modules', '.bin'))).join(delimiter)
// and without the test run's own bundle (test/helpers/bundle-setup.ts): the installed kith runs its dist/
const { KITH_DIST: _testBundle, ...ownEnv } = process.env
const userEnv = { ...ownEnv, PATH: userPath }

async function run (cmd: string, args: string[], options: { cwd?: string } = {}): Promise<{ code: number, stdout: string, stderr: string }> {
  return await new Promise(resolve => {
    execFile(cmd, args, { env: userEnv, timeout: 240_000, maxBuffer: 16 * 1024 * 1024, ...options }, (err, stdout, stderr) => {
      resolve({ code: err == null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr })
    })
  })
}

describe('the npm package', () => {
  let dir: string
  let prefix: string
  let kith: string
  let packed: { filename: string, files: Array<{ path: string }> }
  let daemon: ChildProcess | undefined

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kith-package-'))
    prefix = join(dir, 'prefix')
    kith = join(prefix, 'bin', 'kith')
    const pack = await run('npm', ['pack', '--json', '--pack-destination', dir], { cwd: ROOT })
    expect(pack.stderr.match(/error.*/gi) ?? [], pack.stderr).toEqual([])
    expect(pack.code).toBe(0)
    packed = JSON.parse(pack.stdout.slice(pack.stdout.indexOf('[')))[0]
    const install = await run('npm', ['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', join(dir, packed.filename)])
    expect(install.code, install.stderr).toBe(0)
  }, 300_000)

  afterAll(async () => {
    daemon?.kill('SIGKILL')
    await rm(dir, { recursive: true, force: true })
  })

  it('carries the bundled JavaScript, its source maps and type declarations, the dashboard\'s pages, and no sources, tests, benchmarks or CI', () => {
    const files = packed.files.map(f => f.path)
    expect(files).toContain('bin/kith.js')
    expect(files).toEqual(expect.arrayContaining(['dist/services/cli/main.mjs', 'dist/services/cli/main.mjs.map', 'dist/services/cli/main.d.ts', 'dist/services/daemon-heap.mjs', 'dist/services/daemon.d.ts', 'web/dashboard/index.html', 'web/dashboard/app.js']))
    // the bundle (bundle.ts): the daemon's code is in chunks, not one file per module, with the bundled packages' licences
    expect(files.filter(f => /^dist\/chunks\/.+\.mjs$/.test(f)).length).toBeGreaterThan(0)
    expect(files).toContain('dist/THIRD-PARTY-LICENSES.txt')
    expect(files.filter(f => /^dist\/.+(?<!\.d\.ts|\.map)$/.test(f) && !f.startsWith('dist/chunks/') && !['dist/services/cli/main.mjs', 'dist/services/daemon-heap.mjs', 'dist/THIRD-PARTY-LICENSES.txt'].includes(f))).toEqual([])
    expect(files.filter(f => /^(src|test|bench|\.ci|scratch|node_modules)\//.test(f) || f.endsWith('.ts') && !f.endsWith('.d.ts'))).toEqual([])
  })

  it('installs a kith that starts a node on the Node 24 it brings, answers status, serves the dashboard, and stops with kith stop', async () => {
    const home = join(dir, 'home')
    daemon = spawn(kith, ['--home', home, 'start', '--listen', '/ip4/127.0.0.1/tcp/0', '--json'], { env: userEnv, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    daemon.stdout!.on('data', (c: Buffer) => { out += c.toString() })
    daemon.stderr!.on('data', (c: Buffer) => { err += c.toString() })
    const exited = new Promise<number | null>(resolve => daemon!.on('exit', code => resolve(code)))
    const started = await waitFor(() => out.includes('\n') ? JSON.parse(out.slice(0, out.indexOf('\n'))) as { peerId: string } : undefined, `the installed kith to start (it printed: ${out}${err})`, 60_000)

    // what is bundled is not installed again: only Node, LevelDB's native part, ssh2 and the dashboard's QR library
    const installed = join(prefix, 'lib', 'node_modules', 'kith', 'node_modules')
    await expect(stat(join(installed, 'classic-level', 'package.json'))).resolves.toBeTruthy()
    await expect(stat(join(installed, 'libp2p'))).rejects.toThrow(/ENOENT/)

    // the daemon runs on the package's Node 24, not on the Node first on the user's PATH
    if (process.platform === 'linux') {
      expect(await readlink(`/proc/${daemon.pid!}/exe`)).toContain(join(prefix, 'lib', 'node_modules', 'kith', 'node_modules', 'node'))
    }

    const status = await run(kith, ['--home', home, 'status', '--json'])
    expect(status.stderr).toBe('')
    expect(JSON.parse(status.stdout).peerId).toBe(started.peerId)

    // the dashboard's pages and its QR library come from the package too
    const link = JSON.parse((await run(kith, ['--home', home, 'open', '--no-browser', '--json'])).stdout) as { url: string }
    const login = await fetch(link.url, { redirect: 'manual' })
    expect(login.status).toBe(303)
    const cookie = login.headers.get('set-cookie')!.split(';')[0]!
    for (const page of ['/', '/ui/app.js', '/ui/vendor/lean-qr.mjs']) {
      expect((await fetch(new URL(page, link.url), { headers: { cookie } })).status).toBe(200)
    }

    const stop = await run(kith, ['--home', home, 'stop', '--json'])
    expect(stop.stderr).toBe('')
    expect(JSON.parse(stop.stdout)).toEqual({ stopped: true, pid: daemon.pid })
    expect(await exited).toBe(0)
    daemon = undefined
    // the home is whole: the installed kith reads the same identity from it
    const again = await run(kith, ['--home', home, 'id', '--json'])
    expect(JSON.parse(again.stdout).peerId).toBe(started.peerId)
  }, 120_000)
})
