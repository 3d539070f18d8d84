import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { lstat, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openDatabase, type Database } from '../../../src/peer/database.ts'
import { FileCache } from '../../../src/services/backup/file-cache.ts'

/**
 * The run's file cache (src/services/backup/file-cache.ts) in a real
 * LevelDB: it holds only files some live snapshot's run saw.
 */
describe('the backup file cache', () => {
  let dir: string
  let db: Database

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kith-file-cache-'))
    db = await openDatabase(join(dir, 'db'))
  })
  afterAll(async () => {
    await db.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('drops rows of files a run no longer saw under its paths, and rows of runs forgotten', async () => {
    const file = join(dir, 'f')
    await writeFile(file, 'x')
    const info = await lstat(file, { bigint: true })
    const cache = new FileCache(db)
    const chunks = ['a'.repeat(64)]
    const first = cache.forRun(1)
    for (const path of ['/t/a', '/t/gone', '/t/sub/b', '/t-2/c', '/other/d']) await first.remember(path, info, chunks)
    expect(await first.prune(['/t', '/t-2', '/other'])).toBe(0)

    // the second run of /t sees a and sub/b (read again, or trusted unread) but not gone
    const second = cache.forRun(2)
    await second.remember('/t/a', info, chunks)
    await second.remember('/t/sub/b', info, chunks)
    expect(await second.prune(['/t'])).toBe(1)
    expect(await cache.chunks('/t/gone', info)).toBeUndefined()
    for (const kept of ['/t/a', '/t/sub/b', '/t-2/c', '/other/d']) expect(await cache.chunks(kept, info), kept).toEqual(chunks)

    // forget keeps snapshot 2 only: rows last stamped by run 1 go
    expect(await cache.pruneRuns(new Set([2]))).toBe(2)
    expect(await cache.chunks('/t-2/c', info)).toBeUndefined()
    expect(await cache.chunks('/other/d', info)).toBeUndefined()
    expect(await cache.chunks('/t/a', info)).toEqual(chunks)
  })
})
