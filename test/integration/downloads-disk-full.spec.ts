import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Level } from 'level'
import type { Sublevel } from '../../src/peer/database.ts'
import { BandwidthScheduler } from '../../src/transfer/scheduler/index.ts'
import { DOWNLOAD_RECORD_VERSION, DownloadBook, type Download } from '../../src/services/downloads/download-book.ts'
import { DownloadQueue } from '../../src/services/downloads/queue.ts'
import { addonFor } from '../../src/services/downloads/registry.ts'
import { queueSettings } from '../../src/services/downloads/settings.ts'
import { until } from '../helpers/chunks.ts'
import { startFaultServer, type FaultServer } from '../helpers/fault-server.ts'
import { needsRoot, requireOrSkip } from '../helpers/needs.ts'

/**
 * A download whose disk fills up (issue 14's "a full disk"): the queue on real
 * parts (a LevelDB book, the scheduler, the HTTP add-on, a node:http origin)
 * writing into a small tmpfs (root, as fetch-faults.spec's full disk). The
 * origin sends no size, so nothing tells the queue beforehand that the file
 * won't fit (with a size, the low-disk check pauses it first: queue.spec).
 */
const FILE = randomBytes(640 * 1024)

describe('a download on a full disk', () => {
  let server: FaultServer
  let root: string
  let db: Level<string, unknown>

  beforeAll(async () => {
    server = await startFaultServer(() => ({ kind: 'chunked' }))
    server.files.set('/big.bin', FILE)
    root = await mkdtemp(join(tmpdir(), 'kith-disk-full-'))
    db = new Level<string, unknown>(join(root, 'db'), { valueEncoding: 'json' })
    await db.open()
  })

  afterAll(async () => {
    await server?.stop()
    await db?.close()
    await rm(root, { recursive: true, force: true })
  })

  it('pauses with DISK_FULL, keeps nothing under the file\'s name, and goes on by itself once there is room', async (ctx) => {
    requireOrSkip(ctx, needsRoot('mounting a small tmpfs'))
    const small = join(root, 'small')
    await mkdir(small)
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', small])
    const book = new DownloadBook(db.sublevel<string, Download>('q', { valueEncoding: 'json' }) as unknown as Sublevel<Download>)
    await book.load()
    const q = new DownloadQueue({ book, bandwidth: new BandwidthScheduler(), settings: queueSettings({ minFreeBytes: 0 }, 'config.json'), stateRoot: join(root, 'state'), addonFor, diskRecheckMs: 100 })
    q.start()
    try {
      const now = Date.now()
      await q.add({ v: DOWNLOAD_RECORD_VERSION, id: 'dddddddddd01', url: `${server.url}/big.bin`, dir: small, name: null, state: 'queued', priority: 'normal', limit: null, connections: 2, checksum: null, options: {}, totalBytes: null, doneBytes: 0, rate: 0, eta: null, sha256: null, kind: null, error: null, created: now, updated: now })
      await until(() => q.get('dddddddddd01').error?.code === 'DISK_FULL', 'the full-disk pause')
      expect(q.get('dddddddddd01').state).toBe('paused')
      expect(q.get('dddddddddd01').error?.message).toMatch(/no space left.*goes on by itself/)
      // only the hidden partial: nothing half-written under the file's name
      expect((await readdir(small)).filter(name => !name.startsWith('.kith-'))).toEqual([])
      execFileSync('mount', ['-o', 'remount,size=4m', small])
      await until(() => q.get('dddddddddd01').state === 'done', 'the download to go on by itself', 20_000)
      expect((await readFile(join(small, 'big.bin'))).equals(FILE)).toBe(true)
      expect(await readdir(small)).toEqual(['big.bin'])
    } finally {
      await q.stop()
      execFileSync('umount', ['-l', small])
    }
  })
})
