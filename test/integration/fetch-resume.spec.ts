import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdir, writeFile, readFile, readdir, rm, symlink } from 'node:fs/promises'
import { createHash, randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { openDatabase, sublevel } from '../../src/peer/database.ts'
import { SEAL_OVERHEAD } from '../../src/transfer/constants.ts'
import { sharePartialPath } from '../../src/transfer/assemble.ts'
import { createTestnet, waitFor, befriend, transferOf, transferDone, transferFailed, type Testnet, type TestNode } from '../helpers/testnet.ts'
import { exists, sha, tree } from '../helpers/files.ts'

/**
 * Friend-to-friend fetch between real daemons, through the CLI: what a fetch
 * paused, cancelled or killed leaves behind and takes up again (its kept
 * partials, damaged held chunks, a file found at its destination), and links
 * planted in a destination. Apart from fetch.spec.ts so the two run side by
 * side. alice's shares and upload caps, and carol's fetches, pauses, resumes
 * and cancels, go to their APIs (what `kith share`, `kith limits`, `kith
 * fetch --detach`, `kith pause`... send; their CLI is tested in fetch.spec,
 * fetch-control.spec and bandwidth.spec) rather than through a CLI process
 * each, a Node start. The files are a few MiB (each MiB between the daemons is CPU on
 * both sides): enough that a paused fetch holds some chunks and still has
 * seconds to go at its capped rate when the pause lands.
 */

describe('fetching friends\' files: resuming, cancelling, destinations', () => {
  let net: Testnet
  let alice: TestNode, carol: TestNode

  beforeAll(async () => {
    net = await createTestnet(['alice', 'carol'])
    ;[alice, carol] = net.nodes as [TestNode, TestNode]
    await befriend(alice, carol)
  })

  afterAll(async () => {
    await net?.stop()
  })

  /** carol's fetch of alice's share `name` to `dest`, queued: what `kith fetch alice:NAME -o DEST --detach` sends */
  async function fetchDetached (name: string, dest: string): Promise<{ id: string }> {
    return (await carol.call<{ transfer: { id: string } }>('POST', '/v1/transfers', { friend: 'alice', share: name, priority: 'normal', dest })).transfer
  }

  /** `kith pause|resume|cancel ID` on carol: the transfer as it is after */
  async function control (id: string, action: 'pause' | 'resume' | 'cancel'): Promise<{ state: string, doneBytes: number }> {
    return (await carol.call('POST', `/v1/transfers/${id}/${action}`)).transfer
  }

  /**
   * alice shares a new file of `mib` MiB of random bytes with carol; carol
   * fetches it to `dest` while alice's upload is capped at `up`, and pauses
   * it once `held` bytes are in. Returns the paused transfer and its doneBytes.
   */
  async function pausedFetch (name: string, mib: number, dest: string, held: number, up = '2MB/s'): Promise<{ t: { id: string }, source: string, held: number }> {
    const source = join(alice.home, name)
    await writeFile(source, randomBytes(mib * 1024 * 1024))
    return await pausedFetchOf(name, dest, held, up)
  }

  /** As pausedFetch, of what alice already has at `name` in her home (a file or a folder). */
  async function pausedFetchOf (name: string, dest: string, held: number, up = '2MB/s'): Promise<{ t: { id: string }, source: string, held: number }> {
    const source = join(alice.home, name)
    await alice.call('POST', '/v1/shares', { path: source, with: ['carol'] })
    await alice.call('PUT', '/v1/limits', { upload: up })
    try {
      const t = await fetchDetached(name, dest)
      await waitFor(async () => (await transferOf(carol, t.id))?.doneBytes >= held, `${held} bytes held`, 30_000)
      return { t, source, held: (await control(t.id, 'pause')).doneBytes }
    } finally {
      await alice.call('PUT', '/v1/limits', { upload: null })
    }
  }

  it('a resumed fetch does not fetch again what it held: the chunks in its kept partial are read back', async () => {
    const dest = join(carol.home, 'resumed.bin')
    const { t, source, held } = await pausedFetch('resumed.bin', 12, dest, 4 * 1024 * 1024)
    await control(t.id, 'resume')
    const done = await transferDone(carol, t.id, 'the resumed fetch to finish')
    // the resumed run's sources sent only what was not held at the pause (both counted as sealed bytes)
    const sent = done.sources.reduce((sum: number, s: { bytes: number }) => sum + s.bytes, 0)
    expect(held).toBeGreaterThanOrEqual(4 * 1024 * 1024)
    expect(sent + held).toBeLessThanOrEqual(12 * (1024 * 1024 + SEAL_OVERHEAD))
    expect(createHash('sha256').update(await readFile(dest)).digest('hex')).toBe(createHash('sha256').update(await readFile(source)).digest('hex'))
  })

  it('a resumed fetch takes a file at its destination as done only if it is the very file; another is left alone', async () => {
    const dest = join(carol.home, 'planted.bin')
    const { t, source } = await pausedFetch('planted.bin', 8, dest, 1024 * 1024, '1MB/s')
    await writeFile(dest, 'not the file being fetched')
    await control(t.id, 'resume')
    const failed = await transferFailed(carol, t.id, 'the resumed fetch to stop at the file in its way')
    expect(failed.error.code).toBe('DESTINATION_EXISTS')
    expect(await readFile(dest, 'utf8')).toBe('not the file being fetched')
    // moved away, the next resume places the fetched file
    await rm(dest)
    await control(t.id, 'resume')
    await transferDone(carol, t.id, 'the fetch resumed again')
    expect(await sha(dest)).toBe(await sha(source))
  })

  it('never writes through a link planted at a partial', async () => {
    const victim = join(carol.home, 'victim.txt')
    await writeFile(victim, 'precious')
    // a folder of its own, so the planted link is no other test's partial
    const folder = join(carol.home, 'linked')
    await mkdir(folder)
    const file = join(folder, 'linked.bin')
    const { t } = await pausedFetch('linked.bin', 8, file, 1024 * 1024, '1MB/s')
    // a link where the paused fetch's partial was, pointing at a file outside the destination
    const partial = sharePartialPath(file, t.id, 0)
    await rm(partial)
    await symlink(victim, partial)
    await control(t.id, 'resume')
    expect((await transferFailed(carol, t.id, 'the fetch to refuse the linked partial')).error.code).toBe('DESTINATION_LINK')
    expect(await readFile(victim, 'utf8')).toBe('precious')
    // a cancel removes the link as it would the partial, and never what it points at
    await control(t.id, 'cancel')
    expect(await readdir(folder)).toEqual([])
    expect(await readFile(victim, 'utf8')).toBe('precious')
  })

  it('never writes through a link planted at a folder in the destination, or at the destination itself', async () => {
    const outside = join(carol.home, 'outside')
    await mkdir(outside)
    const shared = join(alice.home, 'tree')
    await mkdir(join(shared, 'sub'), { recursive: true })
    await writeFile(join(shared, 'a.bin'), randomBytes(8 * 1024 * 1024))
    await writeFile(join(shared, 'sub', 'b.bin'), randomBytes(1024 * 1024))
    const dest = join(carol.home, 'tree')
    const { t } = await pausedFetchOf('tree', dest, 1024 * 1024, '1MB/s')
    // a folder in it swapped for a link to a folder outside
    await rm(join(dest, 'sub'), { recursive: true })
    await symlink(outside, join(dest, 'sub'))
    await control(t.id, 'resume')
    expect((await transferFailed(carol, t.id, 'the fetch to refuse the linked folder')).error.code).toBe('DESTINATION_LINK')
    // the destination itself swapped for a link to a folder outside
    await rm(dest, { recursive: true })
    await symlink(outside, dest)
    await control(t.id, 'resume')
    expect((await transferFailed(carol, t.id, 'the fetch to refuse the linked destination')).error.code).toBe('DESTINATION_LINK')
    expect(await readdir(outside)).toEqual([])
    // with the link gone, it finishes
    await rm(dest)
    await control(t.id, 'resume')
    await transferDone(carol, t.id, 'the fetch resumed without the links')
    expect(await tree(dest)).toEqual(await tree(shared))
  })

  it('cancels a fetch and leaves no destination', async () => {
    const source = join(alice.home, 'big3.bin')
    await writeFile(source, randomBytes(12 * 1024 * 1024))
    await alice.call('POST', '/v1/shares', { path: source, with: ['carol'] })
    // slow enough (~25 s) that the fetch can't end before the cancel lands, however loaded the machine
    await alice.call('PUT', '/v1/limits', { upload: '500KB/s' })
    try {
      const dest = join(carol.home, 'big3.bin')
      const t = await fetchDetached('big3.bin', dest)
      const cancelled = await control(t.id, 'cancel')
      expect(cancelled.state).toBe('cancelled')
      expect(await exists(dest)).toBe(false)
      await waitFor(async () => (await readdir(carol.home)).every(name => !name.endsWith('.kith-partial')), 'the partial removed', 10_000)
      const again = await carol.cli('resume', t.id)
      expect(again.code).toBe(1)
      expect(again.stderr).toContain('TRANSFER_STATE')
      // a paused fetch keeps its partial (its chunks are held there); cancelling it then removes it
      const folder = join(carol.home, 'cancel-paused')
      await mkdir(folder)
      const p = await fetchDetached('big3.bin', join(folder, 'big3.bin'))
      await waitFor(async () => (await transferOf(carol, p.id))?.doneBytes > 0, 'the second fetch under way', 30_000)
      await control(p.id, 'pause')
      expect((await readdir(folder)).filter(name => name.endsWith('.kith-partial'))).toHaveLength(1)
      await control(p.id, 'cancel')
      expect(await readdir(folder)).toEqual([])
    } finally {
      await alice.call('PUT', '/v1/limits', { upload: null })
    }
  })

  it('a start removes the partials of a fetch cancelled just before a kill', async () => {
    const folder = join(carol.home, 'cancel-killed')
    await mkdir(folder)
    const { t } = await pausedFetch('big5.bin', 8, join(folder, 'big5.bin'), 1)
    expect((await readdir(folder)).filter(name => name.endsWith('.kith-partial'))).toHaveLength(1)
    await carol.stop()
    // the cancel was saved, and the daemon died before it removed the partial
    const db = await openDatabase(join(carol.home, 'db'))
    const transfers = sublevel<Record<string, unknown>>(db, 'transfers')
    const saved = await transfers.get(t.id)
    await transfers.put(t.id, { ...saved, state: 'cancelled', updated: Date.now() })
    await db.close()
    await carol.start()
    await waitFor(async () => (await readdir(folder)).length === 0, 'the partial removed at start', 10_000)
  })

  it('heals a resumed fetch whose held chunks were damaged on disk meanwhile', async () => {
    const dest = join(carol.home, 'big4.bin')
    const { t, source } = await pausedFetch('big4.bin', 14, dest, 6 * 1024 * 1024, '2MB/s')
    // carol holds the chunks she fetched in the partial file, not as sealed copies
    const { store } = await carol.get('/v1/status')
    expect(store).toMatchObject({ bytes: 0 })
    expect(store.inFiles).toBeGreaterThan(0)
    // flip a byte in every chunk of the partial: verify-on-read (resealed, hashed) must catch each one
    const partials = (await readdir(carol.home)).filter(name => name.endsWith('.kith-partial'))
    expect(partials).toHaveLength(1)
    const path = join(carol.home, partials[0]!)
    const bytes = await readFile(path)
    let damaged = 0
    for (let at = 100; at < bytes.length; at += 1024 * 1024) {
      bytes[at] = bytes[at]! ^ 0xff
      damaged++
    }
    await writeFile(path, bytes)
    expect(damaged).toBeGreaterThanOrEqual(6)
    await control(t.id, 'resume')
    const done = await transferDone(carol, t.id, 'the resumed fetch to finish')
    expect(done.doneBytes).toBe(14 * 1024 * 1024)
    expect(createHash('sha256').update(await readFile(dest)).digest('hex')).toBe(createHash('sha256').update(await readFile(source)).digest('hex'))
  })

})
