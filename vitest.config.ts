import { accessSync, constants, statfsSync } from 'node:fs'
import { defineConfig } from 'vitest/config'
import { SlowestFirst } from './test/sequencer.ts'

/**
 * Specs that start processes (kith daemons through test/helpers/testnet.ts, the
 * peer processes of test/helpers/chunks.ts, Node processes with a daemon's flags,
 * the servers and clients the download add-ons and the proxy are tested against)
 * or need root: the slow part of the suite. A spec under test/integration/ is one
 * by its folder (put new ones there); the few elsewhere are named here.
 * `npm run test:unit` runs every other spec (the "unit" project); `npm test` runs
 * both projects.
 *
 * test/package/ packs and installs kith as a user would (npm pack, npm install
 * -g, a build, a Node binary): a minute of npm's work that the inner loop and
 * `npm test` do without. `npm run test:package` runs it, and so does CI.
 */
const daemonSpecs = [
  'test/integration/**',
  'test/fuzz/api.spec.ts', // fuzzes a real daemon's local API
  'test/services/api.spec.ts',
  'test/services/cli-*.spec.ts', // runs bin/kith.js
  'test/trust/gate.spec.ts',
  'test/transfer/fetcher.spec.ts', // misbehaving sources, each a process of its own
  'test/transfer/fetcher-discover.spec.ts',
  // nginx, sshd, vsftpd; curl as the player; Node with a daemon's flags: ~11 s of the unit project's
  // CPU (its workers' and these processes'), of ~55, and its longest waits (2026-12-07, load 12-19)
  'test/services/downloads/{http,hls,webdav,sftp,ftp}.spec.ts',
  'test/services/proxy/proxy.spec.ts',
  'test/services/{daemon-heap,daemon-modules,last-resort}.spec.ts'
]

/**
 * The unit specs' temp folders (os.tmpdir(): their LevelDB homes, chunk stores, shares and downloads) go
 * on a RAM file system when there is one with room and TMPDIR is not set. The product flushes as it must
 * (fsync, fdatasync) and, on this machine's ext4 (without a journal), each flush waits on the disk and
 * costs the kernel its writeback; creating files costs it a scan past inodes freed in the last minute
 * (docs/transfer.md, "This machine's disk"). Two interleaved pairs of `npm run test:unit` at load 23-31 (2026-12-07): 60.7 and 60.2 s
 * of CPU with /tmp, 57.9 and 56.9 with /dev/shm; the workers' event loops waited 109 and 105 s in all,
 * 67 and 73. Every spec passes on either. A kill -9 loses nothing written on either (the page cache is
 * the kernel's), and no unit spec cuts the power.
 */
function ramTmpdir (): string | undefined {
  if (process.env.TMPDIR != null && process.env.TMPDIR !== '') return undefined
  try {
    accessSync('/dev/shm', constants.W_OK)
    const { bavail, bsize } = statfsSync('/dev/shm')
    return bavail * bsize >= 2 ** 30 ? '/dev/shm' : undefined
  } catch {
    return undefined
  }
}
const unitTmpdir = ramTmpdir()

export default defineConfig({
  test: {
    pool: 'forks',
    // Integration tests start several node processes each, and wait on them. On a quiet 2-core machine
    // (2026-12-06, 100 files): 2 files at a time took 341 s, 3 took 304 s (the cores are then busy:
    // load average 5); more would only slow each test towards its deadlines.
    maxWorkers: 3,
    // the slowest files first, also on a fresh clone (test/sequencer.ts)
    sequence: { sequencer: SlowestFirst },
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // byte arrays compare at native speed in toEqual (vitest walks them key by key: 0.4 s a MiB)
    setupFiles: ['test/helpers/byte-equality.ts'],
    projects: [
      // the unit specs share their worker's module cache (no fresh import of libp2p and level per file):
      // 40% less CPU; each file still sets up and tears down its own nodes and stores. They load through
      // Node's own import, its type stripping as a checkout runs (no Vite transform, no module runner):
      // 6-15 s less CPU a run, of 65-80 (A/B pairs at load 20-25); no spec uses vi.mock
      {
        extends: true,
        test: {
          name: 'unit',
          include: ['test/**/*.spec.ts'],
          exclude: [...daemonSpecs, 'test/package/**'],
          isolate: false,
          experimental: { viteModuleRunner: false, nodeLoader: false },
          ...(unitTmpdir != null ? { env: { TMPDIR: unitTmpdir } } : {})
        }
      },
      // the daemons and CLI processes these specs start run the bundle a package ships, built once per run.
      // Their timeouts detect a hang, not a slow machine: every wait inside has its own deadline. Under load
      // 12-34 (2026-12-07, helpers' benches beside two loops of this project) 4-5 of 263 tests ran past 60 s
      // (a daemon restarted, a fetch resumed: 30-47 s each run alone at that load, up to 62 s in the loop)
      {
        extends: true,
        test: {
          name: 'daemon',
          include: daemonSpecs.map(glob => glob.endsWith('/**') ? `${glob}/*.spec.ts` : glob),
          globalSetup: ['test/helpers/bundle-setup.ts'],
          testTimeout: 300_000,
          hookTimeout: 300_000
        }
      },
      { extends: true, test: { name: 'package', include: ['test/package/*.spec.ts'], testTimeout: 300_000, hookTimeout: 300_000 } }
    ]
  }
})
