import { describe, it, expect, beforeAll } from 'vitest'
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { NODE } from '../helpers/testnet.ts'

/**
 * A daemon loads what it runs and nothing it does not use until asked
 * (docs/design.md, "What a daemon costs to start and to hold"). Guarded here,
 * in a Node that loads what `kith start` loads and lists it
 * (test/helpers/module-log.ts): the HTTP engine of downloads and the proxy
 * (undici) loads with the first /proxy request or http download, and Node's
 * own undici not at all (an ES import of node:http loads it: 90 ms and 5 MB);
 * and each package once (docs/design.md: one copy of each shared helper).
 */
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const MODULE_LOG = join(ROOT, 'test', 'helpers', 'module-log.ts')
const DAEMON_MODULES = ['src/services/cli/start.ts', 'src/services/daemon.ts', 'src/services/api/server.ts', 'src/services/api/routes.ts']

/** The modules a start loads (from the hook) and Node's own modules whose name has undici in it. */
async function loadedAtStart (): Promise<{ modules: string[], nodeUndici: string[] }> {
  const dir = await mkdtemp(join(tmpdir(), 'kith-daemon-modules-'))
  try {
    const log = join(dir, 'modules.log')
    const imports = DAEMON_MODULES.map(m => `await import(${JSON.stringify(join(ROOT, m))});`).join(' ')
    // Node's own modules are not hooked: the process lists those it compiled
    const script = `${imports} console.log(JSON.stringify(process.moduleLoadList.filter(m => m.includes('undici'))))`
    const out = await new Promise<string>((resolve, reject) => {
      execFile(NODE, ['--import', MODULE_LOG, '--input-type=module', '-e', script], { env: { ...process.env, KITH_MODULE_LOG: log }, timeout: 60_000 }, (err, stdout, stderr) => {
        if (err != null) reject(new Error(`${err.message}: ${stderr}`))
        else resolve(stdout)
      })
    })
    return { modules: (await readFile(log, 'utf8')).split('\n').filter(Boolean), nodeUndici: JSON.parse(out) }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

describe('what a daemon loads at its start', () => {
  let loaded: { modules: string[], nodeUndici: string[] }
  beforeAll(async () => { loaded = await loadedAtStart() })

  it('neither undici nor Node\'s own undici', () => {
    const { modules, nodeUndici } = loaded
    // the daemon's own modules did load: the list is of a real start's imports
    expect(modules.some(m => m.endsWith('/src/services/daemon.ts'))).toBe(true)
    expect(modules.some(m => m.includes('/node_modules/libp2p/'))).toBe(true)
    // the HTTP engine (its constants are shared with the proxy's settings)
    const httpEngine = (m: string): boolean => m.includes('/node_modules/undici/') || (m.includes('/downloads/http/') && !m.endsWith('/constants.ts')) || m.endsWith('/proxy/serve.ts')
    expect(modules.filter(httpEngine)).toEqual([])
    expect(nodeUndici).toEqual([])
  })

  it('one copy of each package, but the older ones Noise and yamux ask for', () => {
    // package.json lists uint8arrays, protons-runtime and the like for this (docs/design.md): without them
    // npm nested a copy under every libp2p package, and a start loaded 1,005 modules instead of ~810
    const folders = new Map<string, Set<string>>()
    for (const m of loaded.modules) {
      const found = /^(.*\/node_modules\/((?:@[^/]+\/)?[^/]+))\//.exec(m)
      if (found == null || /\/node_modules\/@chainsafe\/libp2p-(noise|yamux)\/node_modules\//.test(m)) continue
      const [, folder, name] = found as unknown as [string, string, string]
      folders.set(name, (folders.get(name) ?? new Set()).add(folder))
    }
    expect(folders.size).toBeGreaterThan(50)
    expect([...folders].filter(([, where]) => where.size > 1).map(([name, where]) => `${name}: ${[...where].join(', ')}`)).toEqual([])
  })
})
