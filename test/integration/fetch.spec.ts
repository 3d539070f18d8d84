import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdir, writeFile, readFile, readdir, rename, rm } from 'node:fs/promises'
import { createHash, randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { PACKED_FILE_MAX, SEAL_OVERHEAD } from '../../src/transfer/constants.ts'
import { sharePartialPath } from '../../src/transfer/assemble.ts'
import { threeFriends, waitFor, seesOnline, transferOf, transferDone, transferFailed, type Testnet, type TestNode } from '../helpers/testnet.ts'
import { exists, tree } from '../helpers/files.ts'
import { share, fetchDetached, fetched } from '../helpers/api.ts'

/**
 * Friend-to-friend fetch between real daemons, through the CLI: share, list,
 * fetch a whole share and a part of it, refuse bad fetches; and what a holder
 * serves from files that changed, set up through the daemons' APIs as the CLI
 * sends it (test/helpers/api.ts), with the CLI where its output is tested. Resuming, cancelling and destinations are
 * in fetch-resume.spec.ts; kills in fetch-kill.spec.ts; pausing and floors in
 * fetch-control.spec.ts.
 */

describe('fetching friends\' files', () => {
  let net: Testnet
  let alice: TestNode, bob: TestNode, carol: TestNode
  let photos: string

  beforeAll(async () => {
    ;({ net, alice, bob, carol } = await threeFriends())
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

  it('never serves a fetched file its user changed: those chunks are dropped, and the fetch gets them elsewhere', async () => {
    const source = join(alice.home, 'edited.bin')
    await writeFile(source, randomBytes(8 * 1024 * 1024))
    await share(alice, source, 'bob', 'carol')
    const bobs = join(bob.home, 'edited.bin')
    await fetched(bob, 'alice:edited.bin', bobs)
    const held = (await bob.get('/v1/status')).store.inFiles
    // bob edits his copy in place: same size, other bytes
    await writeFile(bobs, randomBytes(8 * 1024 * 1024))
    await alice.call('PUT', '/v1/limits', { upload: '1MB/s' })
    const dest = join(carol.home, 'edited.bin')
    let t: { id: string }
    try {
      t = await fetchDetached(carol, 'alice:edited.bin', dest)
      await waitFor(async () => (await transferOf(carol, t.id))?.doneBytes > 0, 'carol under way', 30_000)
      await alice.kill9()
      // bob's file was written to since he fetched it, so he checks each chunk before he claims or sends it: none goes out, and the fetch runs dry
      const failed = await transferFailed(carol, t.id, 'the fetch to fail without alice')
      expect(failed.error.code).toBe('FETCH_NO_SOURCE')
      expect(failed.sources.find((s: { label: string }) => s.label === 'bob')?.bytes ?? 0).toBe(0)
      expect((await bob.get('/v1/status')).store.inFiles).toBeLessThan(held)
    } finally {
      await alice.start(['--max-upload', '16MB/s'])
      await alice.call('PUT', '/v1/limits', { upload: null })
    }
    await waitFor(async () => await seesOnline(carol, 'alice'), 'carol sees alice')
    await carol.call('POST', `/v1/transfers/${t.id}/resume`)
    await transferDone(carol, t.id, 'the resumed fetch to finish from alice')
    expect(createHash('sha256').update(await readFile(dest)).digest('hex')).toBe(createHash('sha256').update(await readFile(source)).digest('hex'))
  })

  it('serves shared files from the files themselves: one changed since it was shared is refused until it is shared again', async () => {
    const MiB = 1024 * 1024
    const source = join(alice.home, 'live.bin')
    const first = randomBytes(4 * MiB)
    await writeFile(source, first)
    const before = (await alice.get('/v1/status')).store
    const { share: made } = await share(alice, source, 'bob')
    // no sealed copy: the store records where each chunk lies in the file
    expect((await alice.get('/v1/status')).store).toMatchObject({ bytes: before.bytes, inFiles: before.inFiles + made.chunks })
    // alice edits the file after sharing it: same size, 100 other bytes in its third chunk
    const edited = Buffer.from(first).fill(7, 2 * MiB, 2 * MiB + 100)
    await writeFile(source, edited)
    const dest = join(bob.home, 'live.bin')
    const t = await fetchDetached(bob, 'alice:live.bin', dest)
    const failed = await transferFailed(bob, t.id, 'the fetch of the changed file to fail')
    expect(failed.error.code).toBe('FETCH_NO_SOURCE')
    expect(failed.error.message).toMatch(/share it again/)
    // the three unchanged chunks came; the changed one was refused, and alice's store forgot it
    expect(failed.doneBytes).toBe(3 * (MiB + SEAL_OVERHEAD))
    expect((await alice.get('/v1/status')).store.inFiles).toBe(before.inFiles + made.chunks - 1)
    expect(await exists(dest)).toBe(false)
    // alice is told which file changed, and what to do
    const mine = await waitFor(async () => (await alice.get('/v1/shares')).shares.find((s: any) => s.id === made.id && s.changed !== null), 'alice to see the share changed')
    expect(mine.changed.paths).toEqual([source])
    expect((await alice.cli('shares')).stdout).toContain(`${source} changed since version ${made.version} was shared, so friends can't fetch what changed; run \`kith share ${source}\``)
    // a failed fetch keeps its partial for a resume; cancelling it removes it
    expect(await exists(sharePartialPath(dest, t.id, 0))).toBe(true)
    await bob.call('POST', `/v1/transfers/${t.id}/cancel`)
    expect(await exists(sharePartialPath(dest, t.id, 0))).toBe(false)
    // shared again: a new version, fetched whole, and the file was never touched by kith
    const again = await share(alice, source)
    expect(again.share.version).toBe(made.version + 1)
    expect(again.share.changed).toBeNull()
    await fetched(bob, 'alice:live.bin', dest)
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
    await share(alice, logs, 'bob')
    // the log rotates (app.log -> app.log.1, a fresh app.log) and one of two identical files goes
    await rename(join(logs, 'app.log'), join(logs, 'app.log.1'))
    await writeFile(join(logs, 'app.log'), randomBytes(MiB))
    await rm(join(logs, 'b.bin'))
    await share(alice, logs)
    const dest = join(bob.home, 'logs')
    await fetched(bob, 'alice:logs', dest)
    expect(await tree(dest)).toEqual(await tree(logs))
  })

  it('an owner who edited many files of a shared folder still serves the rest, and is not blamed for the edited ones', async () => {
    const batch = join(alice.home, 'batch')
    await mkdir(batch)
    const names = Array.from({ length: 24 }, (_, i) => `p${String(i).padStart(2, '0')}.jpg`)
    // too big to be packed: each is served from its own file (a pack is kept sealed, so edits don't reach it)
    const size = PACKED_FILE_MAX + 1000
    for (const name of names) await writeFile(join(batch, name), randomBytes(size))
    await share(alice, batch, 'bob')
    // a batch edit of the first 20 (same sizes, other bytes)
    for (const name of names.slice(0, 20)) await writeFile(join(batch, name), randomBytes(size))
    const dest = join(bob.home, 'batch')
    const t = await fetchDetached(bob, 'alice:batch', dest)
    const failed = await transferFailed(bob, t.id, 'the fetch to end')
    expect(failed.error.code).toBe('FETCH_NO_SOURCE')
    // alice said she no longer holds the edited ones, so she was never dropped: the 4 others all came
    expect(failed.error.message, failed.error.message).not.toContain('Dropped sources')
    expect(failed.doneBytes, JSON.stringify(failed)).toBe(4 * (size + SEAL_OVERHEAD))
    expect((await readdir(dest)).filter(n => !n.endsWith('.kith-partial')).sort()).toEqual(names.slice(20))
  })

  it('a friend removed from a share gets none of its next version, sealed under a new key; the friend who stays fetches it', async () => {
    const source = join(alice.home, 'keyed.bin')
    await writeFile(source, randomBytes(2 * 1024 * 1024 + 9))
    await share(alice, source, 'bob', 'carol')
    await fetched(carol, 'alice:keyed.bin', join(carol.home, 'keyed-1.bin'))
    const v2 = await share(alice, source, 'carol')
    expect(v2.share.version).toBe(2)
    expect((await bob.get('/v1/friends/alice/shares')).shares.map((s: { name: string }) => s.name)).not.toContain('keyed.bin')
    const dest = join(carol.home, 'keyed-2.bin')
    const t = await fetchDetached(carol, 'alice:keyed.bin', dest)
    const done = await transferDone(carol, t.id, 'the second version to arrive')
    // the same bytes under a new key are new chunks: nothing of version 1 carol holds could stand in, all of it came (sealed)
    expect(done.sources.reduce((sum: number, s: { bytes: number }) => sum + s.bytes, 0)).toBeGreaterThanOrEqual(done.totalBytes)
    expect(createHash('sha256').update(await readFile(dest)).digest('hex')).toBe(createHash('sha256').update(await readFile(source)).digest('hex'))
  })
})
