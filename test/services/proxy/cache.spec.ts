import { describe, it, expect, beforeAll, afterAll, vi } from 'vitest'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, open, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Level } from 'level'
import { sublevel } from '../../../src/peer/database.ts'
import { ProxyCache, type CacheEntry } from '../../../src/services/proxy/cache.ts'
import { CACHE_SYNC_EVERY } from '../../../src/services/proxy/constants.ts'
import { SWARM_CHUNK_SIZE } from '../../../src/services/proxy/swarm/constants.ts'

/**
 * The cache's writer on a real LevelDB and real files: the bytes are
 * written behind the caller in batches, so what lands on disk, what is
 * hashed and what is kept are checked here against the bytes given.
 */
const sha = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest()

describe('the proxy cache\'s writer', () => {
  let root: string
  let db: Level<string, unknown>
  let cache: ProxyCache
  const kept: Array<{ entry: CacheEntry, chunks: Uint8Array }> = []

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'kith-proxy-cache-'))
    db = new Level<string, unknown>(join(root, 'db'), { valueEncoding: 'json' })
    await db.open()
    cache = await ProxyCache.open({ level: sublevel<CacheEntry>(db, 'proxy-cache'), dir: join(root, 'cache'), maxBytes: 64 * 1024 * 1024, onKept: async (entry, _path, chunks) => { kept.push({ entry, chunks }) } })
  })

  afterAll(async () => {
    await db?.close()
    await rm(root, { recursive: true, force: true })
  })

  it('keeps bytes given in uneven pieces, faster than the disk takes them, whole: file, SHA-256 and chunk hashes', async () => {
    // past the batch and the backlog bound, ending mid-chunk
    const bytes = randomBytes(12 * SWARM_CHUNK_SIZE + 4321)
    const writer = (await cache.writer([new URL('http://origin.test/a.bin')], { etag: '"a"', lastModified: null }, bytes.length, null))!
    let seed = 7
    for (let at = 0; at < bytes.length;) {
      seed = (seed * 48271) % 2147483647
      const take = Math.min(bytes.length - at, 1 + seed % (300 * 1024))
      await writer.write(bytes.subarray(at, at + take))
      at += take
    }
    expect(writer.complete).toBe(true)
    await writer.commit()
    const entry = cache.find([new URL('http://origin.test/a.bin')])!
    expect(entry.sha256).toBe(sha(bytes).toString('hex'))
    expect((await readFile(cache.path(entry))).equals(bytes)).toBe(true)
    const chunks = Array.from({ length: 13 }, (_, i) => sha(bytes.subarray(i * SWARM_CHUNK_SIZE, (i + 1) * SWARM_CHUNK_SIZE)))
    expect(Buffer.from(kept.at(-1)!.chunks).equals(Buffer.concat(chunks))).toBe(true)
  })

  it('flushes a long fetch to the disk while it goes on (fdatasync beside the writes), not only before the last byte', async () => {
    const bytes = Buffer.alloc(CACHE_SYNC_EVERY + 8 * SWARM_CHUNK_SIZE)
    for (let at = 0; at < bytes.length; at += SWARM_CHUNK_SIZE) bytes.fill(at / SWARM_CHUNK_SIZE, at, at + SWARM_CHUNK_SIZE)
    // the real FileHandle's datasync, counted
    const probe = await open(join(root, 'probe'), 'w')
    const datasync = vi.spyOn(Object.getPrototypeOf(probe), 'datasync')
    await probe.close()
    try {
      const writer = (await cache.writer([new URL('http://origin.test/long-fetch.bin')], { etag: '"f"', lastModified: null }, bytes.length, null))!
      for (let at = 0; at < bytes.length; at += SWARM_CHUNK_SIZE) await writer.write(bytes.subarray(at, at + SWARM_CHUNK_SIZE))
      // at most MAX_CACHE_UNWRITTEN (8 MiB) wait for the disk: CACHE_SYNC_EVERY were written, and their flush began
      expect(datasync).toHaveBeenCalledTimes(1)
      await writer.commit()
      const entry = cache.find([new URL('http://origin.test/long-fetch.bin')])!
      expect((await readFile(cache.path(entry))).equals(bytes)).toBe(true)
    } finally {
      datasync.mockRestore()
    }
  })

  it('keeps nothing of a fetch cut short, aborted with writes under way, or longer than announced', async () => {
    const before = cache.count
    const bytes = randomBytes(3 * SWARM_CHUNK_SIZE)
    const short = (await cache.writer([new URL('http://origin.test/short.bin')], { etag: '"s"', lastModified: null }, bytes.length + 1, null))!
    await short.write(bytes)
    await short.commit()
    const aborted = (await cache.writer([new URL('http://origin.test/aborted.bin')], { etag: '"b"', lastModified: null }, bytes.length, null))!
    await aborted.write(bytes.subarray(0, 2 * SWARM_CHUNK_SIZE))
    await aborted.abort()
    const long = (await cache.writer([new URL('http://origin.test/long.bin')], { etag: '"l"', lastModified: null }, bytes.length - 1, null))!
    await long.write(bytes)
    expect(long.complete).toBe(false)
    await long.commit()
    expect(cache.count).toBe(before)
    expect((await readdir(join(root, 'cache'))).filter(name => name.endsWith('.partial'))).toEqual([])
  })
})
