import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdir, writeFile, readFile, readdir } from 'node:fs/promises'
import { createHash, randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { threeFriends, waitFor, seesOnline, transferOf, transferDone, type Testnet, type TestNode } from '../helpers/testnet.ts'
import { fetchDetached } from '../helpers/api.ts'
import { exists, tree } from '../helpers/files.ts'

/**
 * Friend-to-friend fetch between real daemons when one of them is killed
 * with -9: the fetcher resumes by itself and never leaves a partial
 * destination, even killed at random points of a folder fetch; a fetch goes
 * on from a friend holding the chunks when the owner vanishes. The rest of
 * fetching is in fetch.spec.ts, pausing and floors in fetch-control.spec.ts.
 */

const MiB = 1024 * 1024
/** the file of the first two tests */
const SIZE = 12 * MiB

describe('a friend\'s fetch when a daemon is killed', () => {
  let net: Testnet
  let alice: TestNode, bob: TestNode, carol: TestNode

  beforeAll(async () => {
    ;({ net, alice, bob, carol } = await threeFriends())
  })

  afterAll(async () => {
    await net?.stop()
  })

  it('resumes by itself after the fetcher is killed with -9, and never leaves a partial destination', async () => {
    const big = join(alice.home, 'big.bin')
    await writeFile(big, randomBytes(SIZE))
    // slow alice's uploads so the kill lands mid-transfer (kept in her database, across restarts): ~3 s
    // for the file, as 48 MiB at 16 MB/s took, for a quarter of the bytes (each MiB between daemons is
    // CPU on both sides). Her shares and caps go to her API, as `kith share` and `kith limits` send
    // them (their CLI is tested in fetch.spec and bandwidth.spec), without a CLI process each
    await alice.call('PUT', '/v1/limits', { upload: '4MB/s' })
    await alice.call('POST', '/v1/shares', { path: big, with: ['bob'] })
    await waitFor(async () => await seesOnline(bob, 'alice'), 'bob sees alice')
    const dest = join(bob.home, 'big.bin')
    const started = await fetchDetached(bob, 'alice:big.bin', dest)
    const before = await waitFor(async () => {
      const t = await transferOf(bob, started.id)
      return t?.doneBytes > 2 * MiB ? t : undefined
    }, 'some progress', 30_000)
    await bob.kill9()
    expect(await exists(dest)).toBe(false)
    await bob.start()
    const after = await transferOf(bob, started.id)
    expect(['queued', 'running', 'done']).toContain(after.state)
    const done = await waitFor(async () => {
      const t = await transferOf(bob, started.id)
      return t?.state === 'done' ? t : undefined
    }, 'the resumed fetch to finish', 60_000)
    expect(done.doneBytes).toBe(SIZE)
    expect(before.doneBytes).toBeGreaterThan(0)
    // the partial the killed run was writing beside the destination was replaced, not left behind
    expect((await readdir(bob.home)).filter(name => name.endsWith('.kith-partial'))).toEqual([])
    expect(createHash('sha256').update(await readFile(dest)).digest('hex')).toBe(createHash('sha256').update(await readFile(big)).digest('hex'))
  })

  it('goes on from a friend who holds the chunks when the owner vanishes mid-fetch', async () => {
    // bob fetched big.bin above and holds its chunks in that file (resealed when served); alice is
    // throttled, and so is bob, so the file takes carol over a second even from both: alice is killed
    // mid-fetch, not after it
    await alice.call('POST', '/v1/shares', { path: join(alice.home, 'big.bin'), with: ['bob', 'carol'] })
    await bob.call('PUT', '/v1/limits', { upload: '4MB/s' })
    const dest = join(carol.home, 'big.bin')
    const started = await fetchDetached(carol, 'alice:big.bin', dest)
    await waitFor(async () => (await transferOf(carol, started.id))?.doneBytes > 0, 'carol under way', 30_000)
    await alice.kill9()
    try {
      const done = await transferDone(carol, started.id, 'the fetch to finish from bob')
      expect(done.sources.find((s: { label: string }) => s.label === 'bob')?.bytes).toBeGreaterThan(0)
      expect(createHash('sha256').update(await readFile(dest)).digest('hex')).toBe(createHash('sha256').update(await readFile(join(alice.home, 'big.bin'))).digest('hex'))
    } finally {
      await bob.call('PUT', '/v1/limits', { upload: null })
      await alice.start()
    }
  })

  it('survives kill -9 at random points of a folder fetch: every file is absent or complete, never partial', async () => {
    const folder = join(alice.home, 'album')
    await mkdir(join(folder, 'inner'), { recursive: true })
    const sizes: Record<string, number> = { 'a.bin': 3 * 1024 * 1024, 'b.bin': 5 * 1024 * 1024 + 1, 'one.txt': 1, 'empty': 0, 'inner/c.bin': 9 * 1024 * 1024 }
    // small files, packed into shared chunks (two packs): each placed from its pack, absent or whole across the kills
    await mkdir(join(folder, 'small'))
    for (let i = 0; i < 400; i++) sizes[`small/${String(i).padStart(3, '0')}.txt`] = 3000 + i
    for (const [name, size] of Object.entries(sizes)) await writeFile(join(folder, name), randomBytes(size))
    await alice.call('POST', '/v1/shares', { path: folder, with: ['bob'] })
    await alice.call('PUT', '/v1/limits', { upload: '4MB/s' }) // ~4.5 s for the whole album: room for kills
    const want = await tree(folder)
    const dest = join(bob.home, 'album-copy')
    /** Files at the destination, leaving out partials: each must be whole and verified */
    const check = async (): Promise<string[]> => {
      if (!await exists(dest)) return []
      const got = await tree(dest)
      const placed = Object.keys(got).filter(name => !name.split('/').at(-1)!.endsWith('.kith-partial'))
      for (const name of placed) expect(got[name], `${name} at the destination`).toBe(want[name])
      return placed
    }
    try {
      const t = await fetchDetached(bob, 'alice:album', dest)
      const delays: number[] = []
      for (let kill = 0; kill < 3; kill++) {
        const before = (await transferOf(bob, t.id))?.doneBytes ?? 0
        const now = await waitFor(async () => {
          const r = await transferOf(bob, t.id)
          return r?.state === 'done' || r?.doneBytes > before ? r : undefined
        }, 'progress before the kill', 30_000)
        if (now.state === 'done') break // it finished before this kill: nothing left to interrupt
        const delay = Math.floor(Math.random() * 700)
        delays.push(delay)
        await new Promise(resolve => setTimeout(resolve, delay)) // a random point, not a wait for a condition
        await bob.kill9()
        await check()
        await bob.start()
      }
      const done = await transferDone(bob, t.id, `the fetch to finish after kills at ${delays.join(', ')} ms`)
      expect(done.doneBytes).toBe(Object.values(sizes).reduce((a, b) => a + b, 0))
      expect(await tree(dest)).toEqual(want) // every file, and nothing else: no partial left behind
    } finally {
      await alice.call('PUT', '/v1/limits', { upload: null })
    }
  })

})
