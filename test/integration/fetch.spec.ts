import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdir, writeFile, readFile, readdir, rename, rm } from 'node:fs/promises'
import { createHash, randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { SEAL_OVERHEAD } from '../../src/transfer/constants.ts'
import { sharePartialPath } from '../../src/transfer/assemble.ts'
import { createTestnet, waitFor, befriend, transferOf, transferDone, transferFailed, type Testnet, type TestNode } from '../helpers/testnet.ts'
import { exists, tree } from '../helpers/files.ts'

/**
 * Friend-to-friend fetch between real daemons, through the CLI: share, list,
 * fetch a whole share and a part of it, fetch from a friend who holds the
 * chunks while the owner is away, pause and resume, resume after the fetcher
 * is killed with -9, and what a holder serves from files that changed.
 * Resuming, cancelling and destinations are in fetch-resume.spec.ts.
 */

describe('fetching friends\' files', () => {
  let net: Testnet
  let alice: TestNode, bob: TestNode, carol: TestNode
  let photos: string

  beforeAll(async () => {
    net = await createTestnet(['alice', 'bob', 'carol'])
    ;[alice, bob, carol] = net.nodes as [TestNode, TestNode, TestNode]
    await befriend(alice, bob)
    await befriend(alice, carol)
    await befriend(bob, carol)
    photos = join(alice.home, 'photos')
    await mkdir(join(photos, 'sub', 'deep'), { recursive: true })
    await writeFile(join(photos, 'a.bin'), randomBytes(3 * 1024 * 1024 + 17))
    await writeFile(join(photos, 'empty.txt'), '')
    await writeFile(join(photos, 'sub', 'b.txt'), 'hello from alice\n')
    await writeFile(join(photos, 'sub', 'deep', 'c.bin'), randomBytes(1024 * 1024))
  })

  afterAll(async () => {
    await net?.stop()
  })

  it('shares a folder and a friend lists it', async () => {
    const shared = await alice.json('share', photos, '--with', 'bob', 'carol')
    expect(shared.share).toMatchObject({ name: 'photos', version: 1, files: 4, size: 4 * 1024 * 1024 + 17 + 17 })
    expect(shared.share.with.map((w: { label: string }) => w.label).sort()).toEqual(['bob', 'carol'])
    expect((await alice.json('shares')).shares.map((s: { name: string }) => s.name)).toEqual(['photos'])
    const listed = await bob.json('ls', 'alice')
    expect(listed.shares.map((s: { name: string, files: number }) => [s.name, s.files])).toEqual([['photos', 4]])
  })

  it('fetches a whole share, verified, identical to the source', async () => {
    const dest = join(bob.home, 'got-photos')
    const result = await bob.cli('fetch', 'alice:photos', '-o', dest, '--json')
    expect(result.code, result.stderr).toBe(0)
    const lines = result.stdout.trim().split('\n').map(l => JSON.parse(l))
    expect(lines.at(-1)).toMatchObject({ state: 'done', doneBytes: 4 * 1024 * 1024 + 34 })
    expect(await tree(dest)).toEqual(await tree(photos))
  })

  it('fetches one folder of a share', async () => {
    const dest = join(carol.home, 'just-sub')
    const result = await carol.cli('fetch', 'alice:photos/sub', '-o', dest)
    expect(result.code, result.stderr).toBe(0)
    expect(await tree(dest)).toEqual({ 'b.txt': (await tree(photos))['sub/b.txt'], 'deep/c.bin': (await tree(photos))['sub/deep/c.bin'] })
  })

  it('refuses bad fetches with clear codes and writes nothing', async () => {
    const missing = await bob.cli('fetch', 'alice:nothing-here', '-o', join(bob.home, 'x'))
    expect(missing.code).toBe(1)
    expect(missing.stderr).toContain('SHARE_UNKNOWN')
    const stranger = await bob.cli('fetch', 'mallory:photos')
    expect(stranger.stderr).toContain('FRIEND_UNKNOWN')
    const syntax = await bob.cli('fetch', 'no-colon-here')
    expect(syntax.code).toBe(2)
    expect(syntax.stderr).toContain('USAGE')
    const taken = await bob.cli('fetch', 'alice:photos', '-o', join(bob.home, 'got-photos'))
    expect(taken.stderr).toContain('DESTINATION_EXISTS')
    const notInShare = await bob.cli('fetch', 'alice:photos/../../etc', '-o', join(bob.home, 'y'))
    expect(notInShare.code).toBe(1)
    expect(await exists(join(bob.home, 'x'))).toBe(false)
    expect(await exists(join(bob.home, 'y'))).toBe(false)
  })

  it('resumes by itself after the fetcher is killed with -9, and never leaves a partial destination', async () => {
    const big = join(alice.home, 'big.bin')
    await writeFile(big, randomBytes(48 * 1024 * 1024))
    // slow alice's uploads so the kill lands mid-transfer
    await alice.stop()
    await alice.start(['--max-upload', '16MB/s'])
    await alice.json('share', big, '--with', 'bob')
    await waitFor(async () => (await bob.json('friends')).friends.find((f: { label: string, link: { online: boolean } }) => f.label === 'alice')?.link.online, 'bob sees alice')
    const dest = join(bob.home, 'big.bin')
    const { transfer: started } = await bob.json('fetch', 'alice:big.bin', '-o', dest, '--detach')
    const before = await waitFor(async () => {
      const t = await transferOf(bob, started.id)
      return t?.doneBytes > 8 * 1024 * 1024 ? t : undefined
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
    expect(done.doneBytes).toBe(48 * 1024 * 1024)
    expect(before.doneBytes).toBeGreaterThan(0)
    // the partial the killed run was writing beside the destination was replaced, not left behind
    expect((await readdir(bob.home)).filter(name => name.endsWith('.kith-partial'))).toEqual([])
    expect(createHash('sha256').update(await readFile(dest)).digest('hex')).toBe(createHash('sha256').update(await readFile(big)).digest('hex'))
  })

  it('goes on from a friend who holds the chunks when the owner vanishes mid-fetch', async () => {
    // bob fetched big.bin above and holds its chunks in that file (resealed when served); alice is throttled
    await alice.json('share', join(alice.home, 'big.bin'), '--with', 'bob', 'carol')
    const dest = join(carol.home, 'big.bin')
    const { transfer: started } = await carol.json('fetch', 'alice:big.bin', '-o', dest, '--detach')
    await waitFor(async () => (await transferOf(carol, started.id))?.doneBytes > 0, 'carol under way', 30_000)
    await alice.kill9()
    try {
      const done = await transferDone(carol, started.id, 'the fetch to finish from bob')
      expect(done.sources.find((s: { label: string }) => s.label === 'bob')?.bytes).toBeGreaterThan(0)
      expect(createHash('sha256').update(await readFile(dest)).digest('hex')).toBe(createHash('sha256').update(await readFile(join(alice.home, 'big.bin'))).digest('hex'))
    } finally {
      await alice.start(['--max-upload', '16MB/s'])
    }
  })

  it('pauses and resumes a fetch', async () => {
    const source = join(alice.home, 'big2.bin')
    await writeFile(source, randomBytes(48 * 1024 * 1024))
    await alice.json('share', source, '--with', 'carol')
    const dest = join(carol.home, 'big2.bin')
    // slow enough that the fetch can't end before the pause lands, however loaded the machine
    await alice.json('limits', 'set', '--up', '2MB/s')
    const { transfer: t } = await carol.json('fetch', 'alice:big2.bin', '-o', dest, '--detach')
    const paused = await carol.json('pause', t.id)
    await alice.json('limits', 'clear', '--up')
    expect(paused.transfer.state).toBe('paused')
    expect((await transferOf(carol, t.id)).state).toBe('paused')
    expect(await exists(dest)).toBe(false)
    const resumed = await carol.json('resume', t.id)
    expect(['queued', 'running']).toContain(resumed.transfer.state)
    await waitFor(async () => (await transferOf(carol, t.id))?.state === 'done', 'the resumed fetch to finish', 60_000)
    expect(createHash('sha256').update(await readFile(dest)).digest('hex')).toBe(createHash('sha256').update(await readFile(source)).digest('hex'))
    const late = await carol.cli('cancel', t.id)
    expect(late.code).toBe(1)
    expect(late.stderr).toContain('TRANSFER_STATE')
    const unknown = await carol.cli('pause', 'abcdef')
    expect(unknown.stderr).toContain('TRANSFER_UNKNOWN')
  })

  it('takes on a friend who comes online mid-fetch when its floor falls short', async () => {
    // carol fetched big2.bin above and holds its chunks; bob starts fetching it from alice while carol is away
    const source = join(alice.home, 'big2.bin')
    await alice.json('share', source, '--with', 'bob', 'carol')
    await alice.json('limits', 'set', '--up', '4MB/s')
    await carol.stop()
    let carolUp = false
    try {
      const dest = join(bob.home, 'big2.bin')
      const { transfer: t } = await bob.json('fetch', 'alice:big2.bin', '-o', dest, '--detach', '--min-rate', '20MB/s')
      await waitFor(async () => (await transferOf(bob, t.id))?.doneBytes > 0, 'bob under way', 30_000)
      await carol.start()
      carolUp = true
      const done = await transferDone(bob, t.id, 'the fetch to finish')
      // at 4 MB/s alice alone needs 12 s for 48 MiB: carol joined and carried part of it
      expect(done.sources.find((s: { label: string }) => s.label === 'carol')?.bytes).toBeGreaterThan(0)
      expect(createHash('sha256').update(await readFile(dest)).digest('hex')).toBe(createHash('sha256').update(await readFile(source)).digest('hex'))
    } finally {
      await alice.json('limits', 'clear', '--up')
      if (!carolUp) await carol.start()
    }
  })

  it('survives kill -9 at random points of a folder fetch: every file is absent or complete, never partial', async () => {
    const folder = join(alice.home, 'album')
    await mkdir(join(folder, 'inner'), { recursive: true })
    const sizes: Record<string, number> = { 'a.bin': 3 * 1024 * 1024, 'b.bin': 5 * 1024 * 1024 + 1, 'one.txt': 1, 'empty': 0, 'inner/c.bin': 9 * 1024 * 1024 }
    for (const [name, size] of Object.entries(sizes)) await writeFile(join(folder, name), randomBytes(size))
    await alice.json('share', folder, '--with', 'bob')
    await alice.json('limits', 'set', '--up', '4MB/s') // ~4.5 s for the whole album: room for kills
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
      const { transfer: t } = await bob.json('fetch', 'alice:album', '-o', dest, '--detach')
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
      await alice.json('limits', 'clear', '--up')
    }
  })

  it('never serves a fetched file its user changed: those chunks are dropped, and the fetch gets them elsewhere', async () => {
    const source = join(alice.home, 'edited.bin')
    await writeFile(source, randomBytes(8 * 1024 * 1024))
    await alice.json('share', source, '--with', 'bob', 'carol')
    const bobs = join(bob.home, 'edited.bin')
    const got = await bob.cli('fetch', 'alice:edited.bin', '-o', bobs)
    expect(got.code, got.stderr).toBe(0)
    const held = (await bob.json('status')).store.inFiles
    // bob edits his copy in place: same size, other bytes
    await writeFile(bobs, randomBytes(8 * 1024 * 1024))
    await alice.json('limits', 'set', '--up', '1MB/s')
    const dest = join(carol.home, 'edited.bin')
    let t: { id: string }
    try {
      ({ transfer: t } = await carol.json('fetch', 'alice:edited.bin', '-o', dest, '--detach'))
      await waitFor(async () => (await transferOf(carol, t.id))?.doneBytes > 0, 'carol under way', 30_000)
      await alice.kill9()
      // bob's file was written to since he fetched it, so he checks each chunk before he claims or sends it: none goes out, and the fetch runs dry
      const failed = await transferFailed(carol, t.id, 'the fetch to fail without alice')
      expect(failed.error.code).toBe('FETCH_NO_SOURCE')
      expect(failed.sources.find((s: { label: string }) => s.label === 'bob')?.bytes ?? 0).toBe(0)
      expect((await bob.json('status')).store.inFiles).toBeLessThan(held)
    } finally {
      await alice.start(['--max-upload', '16MB/s'])
      await alice.json('limits', 'clear', '--up')
    }
    await waitFor(async () => (await carol.json('friends')).friends.find((f: any) => f.label === 'alice')?.link.online, 'carol sees alice')
    await carol.json('resume', t.id)
    await transferDone(carol, t.id, 'the resumed fetch to finish from alice')
    expect(createHash('sha256').update(await readFile(dest)).digest('hex')).toBe(createHash('sha256').update(await readFile(source)).digest('hex'))
  })

  it('serves shared files from the files themselves: one changed since it was shared is refused until it is shared again', async () => {
    const MiB = 1024 * 1024
    const source = join(alice.home, 'live.bin')
    const first = randomBytes(4 * MiB)
    await writeFile(source, first)
    const before = (await alice.json('status')).store
    const { share } = await alice.json('share', source, '--with', 'bob')
    // no sealed copy: the store records where each chunk lies in the file
    expect((await alice.json('status')).store).toMatchObject({ bytes: before.bytes, inFiles: before.inFiles + share.chunks })
    // alice edits the file after sharing it: same size, 100 other bytes in its third chunk
    const edited = Buffer.from(first).fill(7, 2 * MiB, 2 * MiB + 100)
    await writeFile(source, edited)
    const dest = join(bob.home, 'live.bin')
    const { transfer: t } = await bob.json('fetch', 'alice:live.bin', '-o', dest, '--detach')
    const failed = await transferFailed(bob, t.id, 'the fetch of the changed file to fail')
    expect(failed.error.code).toBe('FETCH_NO_SOURCE')
    expect(failed.error.message).toMatch(/share it again/)
    // the three unchanged chunks came; the changed one was refused, and alice's store forgot it
    expect(failed.doneBytes).toBe(3 * (MiB + SEAL_OVERHEAD))
    expect((await alice.json('status')).store.inFiles).toBe(before.inFiles + share.chunks - 1)
    expect(await exists(dest)).toBe(false)
    // alice is told which file changed, and what to do
    const mine = await waitFor(async () => (await alice.json('shares')).shares.find((s: any) => s.id === share.id && s.changed !== null), 'alice to see the share changed')
    expect(mine.changed.paths).toEqual([source])
    expect((await alice.cli('shares')).stdout).toContain(`${source} changed since version ${share.version} was shared, so friends can't fetch what changed; run \`kith share ${source}\``)
    // a failed fetch keeps its partial for a resume; cancelling it removes it
    expect(await exists(sharePartialPath(dest, t.id, 0))).toBe(true)
    await bob.json('cancel', t.id)
    expect(await exists(sharePartialPath(dest, t.id, 0))).toBe(false)
    // shared again: a new version, fetched whole, and the file was never touched by kith
    const again = await alice.json('share', source)
    expect(again.share.version).toBe(share.version + 1)
    expect(again.share.changed).toBeNull()
    const got = await bob.cli('fetch', 'alice:live.bin', '-o', dest)
    expect(got.code, got.stderr).toBe(0)
    expect(createHash('sha256').update(await readFile(dest)).digest('hex')).toBe(createHash('sha256').update(edited).digest('hex'))
    expect((await readFile(source)).equals(edited)).toBe(true)
  })

  it('serves a folder shared again after a file in it was renamed and a duplicate removed', async () => {
    const MiB = 1024 * 1024
    const logs = join(alice.home, 'logs')
    await mkdir(logs)
    const day1 = randomBytes(2 * MiB + 5)
    const twin = randomBytes(MiB + 3)
    await writeFile(join(logs, 'app.log'), day1)
    await writeFile(join(logs, 'a.bin'), twin)
    await writeFile(join(logs, 'b.bin'), twin)
    await alice.json('share', logs, '--with', 'bob')
    // the log rotates (app.log -> app.log.1, a fresh app.log) and one of two identical files goes
    await rename(join(logs, 'app.log'), join(logs, 'app.log.1'))
    await writeFile(join(logs, 'app.log'), randomBytes(MiB))
    await rm(join(logs, 'b.bin'))
    await alice.json('share', logs)
    const dest = join(bob.home, 'logs')
    const got = await bob.cli('fetch', 'alice:logs', '-o', dest)
    expect(got.code, got.stderr).toBe(0)
    expect(await tree(dest)).toEqual(await tree(logs))
  })

  it('an owner who edited many files of a shared folder still serves the rest, and is not blamed for the edited ones', async () => {
    const batch = join(alice.home, 'batch')
    await mkdir(batch)
    const names = Array.from({ length: 24 }, (_, i) => `p${String(i).padStart(2, '0')}.jpg`)
    for (const name of names) await writeFile(join(batch, name), randomBytes(10_000))
    await alice.json('share', batch, '--with', 'bob')
    // a batch edit of the first 20 (same sizes, other bytes)
    for (const name of names.slice(0, 20)) await writeFile(join(batch, name), randomBytes(10_000))
    const dest = join(bob.home, 'batch')
    const { transfer: t } = await bob.json('fetch', 'alice:batch', '-o', dest, '--detach')
    const failed = await transferFailed(bob, t.id, 'the fetch to end')
    expect(failed.error.code).toBe('FETCH_NO_SOURCE')
    // alice said she no longer holds the edited ones, so she was never dropped: the 4 others all came
    expect(failed.error.message, failed.error.message).not.toContain('Dropped sources')
    expect(failed.doneBytes, JSON.stringify(failed)).toBe(4 * (10_000 + SEAL_OVERHEAD))
    expect((await readdir(dest)).filter(n => !n.endsWith('.kith-partial')).sort()).toEqual(names.slice(20))
  })

  it('a friend removed from a share gets none of its next version, sealed under a new key; the friend who stays fetches it', async () => {
    const source = join(alice.home, 'keyed.bin')
    await writeFile(source, randomBytes(2 * 1024 * 1024 + 9))
    await alice.json('share', source, '--with', 'bob', 'carol')
    const first = await carol.cli('fetch', 'alice:keyed.bin', '-o', join(carol.home, 'keyed-1.bin'))
    expect(first.code, first.stderr).toBe(0)
    const v2 = await alice.json('share', source, '--with', 'carol')
    expect(v2.share.version).toBe(2)
    expect((await bob.json('ls', 'alice')).shares.map((s: { name: string }) => s.name)).not.toContain('keyed.bin')
    const dest = join(carol.home, 'keyed-2.bin')
    const { transfer: t } = await carol.json('fetch', 'alice:keyed.bin', '-o', dest, '--detach')
    const done = await transferDone(carol, t.id, 'the second version to arrive')
    // the same bytes under a new key are new chunks: nothing of version 1 carol holds could stand in, all of it came (sealed)
    expect(done.sources.reduce((sum: number, s: { bytes: number }) => sum + s.bytes, 0)).toBeGreaterThanOrEqual(done.totalBytes)
    expect(createHash('sha256').update(await readFile(dest)).digest('hex')).toBe(createHash('sha256').update(await readFile(source)).digest('hex'))
  })
})
