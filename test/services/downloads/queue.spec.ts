import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { randomBytes, createHash } from 'node:crypto'
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Level } from 'level'
import type { Sublevel } from '../../../src/peer/database.ts'
import { BandwidthScheduler } from '../../../src/transfer/scheduler/index.ts'
import { DOWNLOAD_RECORD_VERSION, DownloadBook, type Download } from '../../../src/services/downloads/download-book.ts'
import { DownloadQueue, type PlacedDownload } from '../../../src/services/downloads/queue.ts'
import { addonFor } from '../../../src/services/downloads/registry.ts'
import { downloadPartial } from '../../../src/services/downloads/place.ts'
import { queueSettings, type QueueSettings } from '../../../src/services/downloads/settings.ts'
import { until } from '../../helpers/chunks.ts'
import { rangeServer, type RangeServer } from '../../helpers/range-server.ts'

/**
 * The download queue on real parts: a LevelDB book in a temp folder, the
 * real bandwidth scheduler, the real HTTP add-on (loaded by the registry)
 * against a real node:http server with Range.
 */
const FILE = randomBytes(256 * 1024)
const SHA = createHash('sha256').update(FILE).digest('hex')

describe('the download queue', () => {
  let server: RangeServer
  let slow: RangeServer
  let root: string
  let db: Level<string, unknown>

  beforeAll(async () => {
    server = await rangeServer({ '/a.bin': FILE })
    // 256 KiB at 512 KiB/s: half a second, time to pause, reprioritise and cancel it
    slow = await rangeServer({ '/slow.bin': FILE }, { bytesPerSecond: 512 * 1024 })
    root = await mkdtemp(join(tmpdir(), 'kith-queue-'))
    db = new Level<string, unknown>(join(root, 'db'), { valueEncoding: 'json' })
    await db.open()
  })

  afterAll(async () => {
    await server?.close()
    await slow?.close()
    await db?.close()
    await rm(root, { recursive: true, force: true })
  })

  let n = 0
  /** a queue over its own sublevel and folder; `settings` may be changed by the test while it runs */
  async function queue (settings: QueueSettings = queueSettings({ minFreeBytes: 0 }, 'config.json'), name = `q${n++}`, onPlaced?: (file: PlacedDownload) => void): Promise<{ q: DownloadQueue, book: DownloadBook, dir: string, settings: QueueSettings }> {
    const book = new DownloadBook(db.sublevel<string, Download>(name, { valueEncoding: 'json' }) as unknown as Sublevel<Download>)
    await book.load()
    const dir = join(root, name)
    const q = new DownloadQueue({ book, bandwidth: new BandwidthScheduler(), settings, stateRoot: join(root, name + '-state'), addonFor, diskRecheckMs: 100, ...(onPlaced != null ? { onPlaced } : {}) })
    q.start()
    return { q, book, dir, settings }
  }

  function record (id: string, url: string, dir: string, extra: Partial<Download> = {}): Download {
    return { v: DOWNLOAD_RECORD_VERSION, id, url, dir, name: null, state: 'queued', priority: 'normal', limit: null, connections: 2, checksum: null, options: {}, totalBytes: null, doneBytes: 0, rate: 0, eta: null, sha256: null, kind: null, error: null, created: Date.now(), updated: Date.now(), ...extra }
  }

  const state = (q: DownloadQueue, id: string): string => q.get(id).state

  it('downloads into place under the origin\'s name, verifies the checksum asked, and keeps the record across a reopen', async () => {
    const { q, dir } = await queue(undefined, 'done')
    await q.add(record('aaaaaaaaaaa1', server.url('/a.bin'), dir, { checksum: `sha256:${SHA}` }))
    await until(() => state(q, 'aaaaaaaaaaa1') === 'done', 'the download to finish')
    expect((await readFile(join(dir, 'a.bin'))).equals(FILE)).toBe(true)
    expect(await readdir(dir)).toEqual(['a.bin']) // no partial left
    const done = q.get('aaaaaaaaaaa1')
    expect(done).toMatchObject({ name: 'a.bin', sha256: SHA, doneBytes: FILE.length, totalBytes: FILE.length, kind: 'file', error: null })
    await q.stop()
    const again = new DownloadBook(db.sublevel<string, Download>('done', { valueEncoding: 'json' }) as unknown as Sublevel<Download>)
    await again.load()
    expect(again.get('aaaa')).toMatchObject({ state: 'done', name: 'a.bin' })
  })

  it('a name from the origin steps aside from a file already there, as browsers do', async () => {
    const { q, dir } = await queue()
    await mkdir(dir, { recursive: true })
    await writeFile(join(dir, 'a.bin'), 'already here')
    await q.add(record('hhhhhhhhhhh1', server.url('/a.bin'), dir))
    await until(() => state(q, 'hhhhhhhhhhh1') === 'done', 'the download to finish')
    expect(q.get('hhhhhhhhhhh1').name).toBe('a (1).bin')
    expect(await readFile(join(dir, 'a.bin'), 'utf8')).toBe('already here')
    expect((await readFile(join(dir, 'a (1).bin'))).equals(FILE)).toBe(true)
    await q.stop()
  })

  it('hashes a file only when a checksum is to be verified, and tells who offers it of each file placed', async () => {
    const placed: PlacedDownload[] = []
    const { q, dir } = await queue(undefined, undefined, file => placed.push(file))
    await q.add(record('iiiiiiiiiii1', server.url('/a.bin'), dir, { name: 'plain.bin' }))
    await q.add(record('iiiiiiiiiii2', server.url('/a.bin'), dir, { name: 'checked.bin', checksum: `sha256:${SHA.toUpperCase()}` }))
    await until(() => state(q, 'iiiiiiiiiii1') === 'done' && state(q, 'iiiiiiiiiii2') === 'done' && placed.length === 2, 'both downloads to finish and be told of')
    expect((await readFile(join(dir, 'plain.bin'))).equals(FILE)).toBe(true)
    // no checksum: nothing computed, nothing claimed
    expect(q.get('iiiiiiiiiii1').sha256).toBeNull()
    expect(q.get('iiiiiiiiiii2').sha256).toBe(SHA)
    expect(placed.map(f => [f.path, f.size, f.sha256, f.validators.etag]).sort()).toEqual([
      [join(dir, 'checked.bin'), FILE.length, SHA, `"${FILE.length}"`],
      [join(dir, 'plain.bin'), FILE.length, null, `"${FILE.length}"`]
    ])
    await q.stop()
  })

  it('tells of placed files only once no download runs (offering one reads and hashes it on the main thread)', async () => {
    // held after its first byte until the fast one has been placed (no race with the machine's speed)
    let open = (): void => {}
    const slower = await rangeServer({ '/slower.bin': FILE }, { gate: new Promise<void>(resolve => { open = resolve }) })
    try {
      const placed: PlacedDownload[] = []
      const { q, dir } = await queue(undefined, undefined, file => placed.push(file))
      await q.add(record('jjjjjjjjjjj1', slower.url('/slower.bin'), dir, { name: 'slow.bin' }))
      await q.add(record('jjjjjjjjjjj2', server.url('/a.bin'), dir, { name: 'fast.bin' }))
      await until(() => state(q, 'jjjjjjjjjjj2') === 'done', 'the fast one to finish')
      expect(state(q, 'jjjjjjjjjjj1')).toBe('running')
      expect(placed).toEqual([])
      open()
      await until(() => placed.length === 2, 'both to be told of once neither runs')
      expect(state(q, 'jjjjjjjjjjj1')).toBe('done')
      expect(placed.map(f => f.path).sort()).toEqual([join(dir, 'fast.bin'), join(dir, 'slow.bin')])
      await q.stop()
    } finally {
      await slower.close()
    }
  })

  it('a checksum mismatch keeps nothing and says so', async () => {
    const { q, dir } = await queue()
    await q.add(record('bbbbbbbbbbb1', server.url('/a.bin'), dir, { checksum: `sha256:${'0'.repeat(64)}` }))
    await until(() => state(q, 'bbbbbbbbbbb1') === 'failed', 'the download to fail')
    expect(q.get('bbbbbbbbbbb1').error?.code).toBe('CHECKSUM_MISMATCH')
    expect(q.get('bbbbbbbbbbb1').error?.message).toMatch(/nothing was kept/)
    expect(await readdir(dir)).toEqual([])
    await q.stop()
  })

  it('an origin error fails it with the add-on\'s code; resume tries again', async () => {
    const { q, dir } = await queue()
    await q.add(record('ccccccccccc1', server.url('/missing.bin'), dir))
    await until(() => state(q, 'ccccccccccc1') === 'failed', 'the download to fail')
    expect(q.get('ccccccccccc1').error?.code).toMatch(/^HTTP_/)
    await q.resume('ccccccccccc1')
    await until(() => state(q, 'ccccccccccc1') === 'failed', 'the download to fail again')
    await q.stop()
  })

  it('pauses, changes priority, resumes from what it has, and cancels leaving nothing', async () => {
    const { q, dir } = await queue()
    await q.add(record('ddddddddddd1', slow.url('/slow.bin'), dir, { name: 'slow.bin' }))
    await until(() => q.get('ddddddddddd1').doneBytes > 0, 'some bytes')
    expect((await q.setPriority('ddddddddddd1', 'urgent')).priority).toBe('urgent')
    expect((await q.setLimit('ddddddddddd1', 10 * 1024 * 1024)).limit).toBe(10 * 1024 * 1024)
    expect((await q.setLimit('ddddddddddd1', null)).limit).toBe(null)
    await expect(q.setLimit('ddddddddddd1', 0)).rejects.toMatchObject({ code: 'BAD_REQUEST' })
    expect((await q.pause('ddddddddddd1')).state).toBe('paused')
    const before = slow.hits.get('/slow.bin') ?? 0
    await expect(q.pause('ddddddddddd1')).resolves.toMatchObject({ state: 'paused' })
    await q.resume('ddddddddddd1')
    await until(() => state(q, 'ddddddddddd1') === 'done', 'the resumed download to finish')
    expect((slow.hits.get('/slow.bin') ?? 0)).toBeGreaterThan(before)
    expect((await readFile(join(dir, 'slow.bin'))).equals(FILE)).toBe(true)
    await expect(q.cancel('ddddddddddd1')).rejects.toMatchObject({ code: 'DOWNLOAD_STATE' })

    await q.add(record('ddddddddddd2', slow.url('/slow.bin'), dir, { name: 'slow2.bin' }))
    await until(() => q.get('ddddddddddd2').doneBytes > 0, 'some bytes')
    expect((await q.cancel('ddddddddddd2')).state).toBe('cancelled')
    expect(await readdir(dir)).toEqual(['slow.bin'])
    await expect(q.resume('ddddddddddd2')).rejects.toMatchObject({ code: 'DOWNLOAD_STATE' })
    await q.stop()
  })

  it('runs no more at once than maxActive; the rest wait their turn, and count in the queue\'s outlook', async () => {
    const { q, dir } = await queue(queueSettings({ minFreeBytes: 0, maxActive: 1 }, 'config.json'))
    await q.add(record('iiiiiiiiiii1', slow.url('/slow.bin'), dir, { name: 'i1.bin' }))
    await q.add(record('iiiiiiiiiii2', slow.url('/slow.bin'), dir, { name: 'i2.bin' }))
    await until(() => q.get('iiiiiiiiiii1').doneBytes > 0, 'some bytes of the first')
    expect(state(q, 'iiiiiiiiiii2')).toBe('queued')
    const outlook = q.outlook()
    expect(outlook.left).toBeGreaterThan(0)
    // the second has not started: its size is not known yet
    expect(outlook.unknown).toBe(1)
    await until(() => state(q, 'iiiiiiiiiii2') === 'running', 'the second to start once the first is done')
    expect(state(q, 'iiiiiiiiiii1')).toBe('done')
    await q.cancel('iiiiiiiiiii2')
    await q.stop()
  })

  it('goes on after a restart from the same book and partial', async () => {
    const first = await queue(undefined, 'restart')
    await first.q.add(record('eeeeeeeeeee1', slow.url('/slow.bin'), first.dir, { name: 'r.bin' }))
    await until(() => first.q.get('eeeeeeeeeee1').doneBytes > 64 * 1024, 'some bytes')
    await first.q.stop()
    expect((await readdir(first.dir)).some(f => f.endsWith('.kith-partial'))).toBe(true)
    const second = await queue(undefined, 'restart')
    expect(['queued', 'running']).toContain(state(second.q, 'eeeeeeeeeee1'))
    await until(() => state(second.q, 'eeeeeeeeeee1') === 'done', 'the download to finish after the restart')
    expect((await readFile(join(second.dir, 'r.bin'))).equals(FILE)).toBe(true)
    await second.q.stop()
  })

  it('waits while the disk is low, says why, and goes on by itself once there is room', async () => {
    const settings = queueSettings({ minFreeBytes: Number.MAX_SAFE_INTEGER }, 'config.json')
    const { q, dir } = await queue(settings)
    await q.add(record('fffffffffff1', server.url('/a.bin'), dir))
    await until(() => q.get('fffffffffff1').error?.code === 'DISK_LOW', 'the low-disk pause')
    expect(q.get('fffffffffff1').state).toBe('paused')
    expect(q.get('fffffffffff1').error?.message).toMatch(/minFreeBytes/)
    // room returns: here by lowering the threshold the queue reads at each look
    settings.minFreeBytes = 0
    await until(() => state(q, 'fffffffffff1') === 'done', 'the download to go on by itself', 15_000)
    await q.stop()
  })

  it('never writes through a link planted at its partial, and places nothing', async () => {
    const { q, dir } = await queue()
    await mkdir(dir, { recursive: true })
    const outside = join(root, 'outside.txt')
    await writeFile(outside, 'not yours')
    await symlink(outside, downloadPartial(dir, 'ggggggggggg1'))
    await q.add(record('ggggggggggg1', server.url('/a.bin'), dir, { name: 'g.bin' }))
    await until(() => state(q, 'ggggggggggg1') === 'failed', 'the download to fail')
    expect(q.get('ggggggggggg1').error?.code).toBe('DESTINATION_LINK')
    expect(await readFile(outside, 'utf8')).toBe('not yours')
    expect(await readdir(dir)).not.toContain('g.bin')
    await q.stop()
  })

  it('refuses a stored record of a version it does not know', async () => {
    const level = db.sublevel<string, unknown>('future', { valueEncoding: 'json' })
    await level.put('abcdefabcdef', { v: 99, id: 'abcdefabcdef' })
    await expect(new DownloadBook(level as unknown as Sublevel<Download>).load()).rejects.toMatchObject({ code: 'DATABASE_CORRUPT' })
  })
})
