import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdir, open, writeFile, readFile, readdir, rm, stat } from 'node:fs/promises'
import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { dirname, join } from 'node:path'
import { createTestnet, waitFor, befriend, seesOnline, transferOf, transferDone, TestNode, type Testnet } from '../helpers/testnet.ts'
import { fetchDetached, fetched } from '../helpers/api.ts'
import { needsRoot, requireOrSkip } from '../helpers/needs.ts'

/**
 * Faults a fetch meets between real daemons: a friend revoked mid-transfer
 * (cut off, the fetch goes on from others), a full disk (paused with
 * DISK_FULL, state intact, going on by itself once there is room), and a
 * database that can't be written mid-fetch (the fetch ends with an error, the
 * daemon stays up). The files are 12-20 MiB (each MiB between the daemons is
 * CPU on both sides), with caps that keep each fetch running for seconds
 * after its fault lands (the revoked source's: 20 MiB at 4 MB/s from each of
 * two sources, as 40 MiB at 8 did; the one whose database fills: 12 MiB at
 * 1 MB/s, 12 s where the fault lands within 2 s).
 */
function sha (bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex')
}

/** Writes `path` until its disk has no byte left (ENOSPC), in ever smaller pieces. */
async function fillDisk (path: string): Promise<void> {
  const file = await open(path, 'w')
  try {
    for (let piece = 1024 * 1024; piece >= 512; piece /= 2) {
      const bytes = Buffer.alloc(piece, 1)
      while (true) {
        try {
          await file.write(bytes)
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err
          break
        }
      }
    }
  } finally {
    await file.close()
  }
}

describe('fetch faults', () => {
  let net: Testnet
  let owner: TestNode, holder: TestNode, fetcher: TestNode
  let source: string

  beforeAll(async () => {
    net = await createTestnet(['owner', 'holder', 'fetcher'])
    ;[owner, holder, fetcher] = net.nodes as [TestNode, TestNode, TestNode]
    await befriend(owner, holder)
    await befriend(owner, fetcher)
    await befriend(holder, fetcher)
    source = join(owner.home, 'data.bin')
    await writeFile(source, randomBytes(20 * 1024 * 1024))
    await owner.call('POST', '/v1/shares', { path: source, with: ['holder', 'fetcher'] })
    // the holder fetches it first, so it holds every chunk
    await fetched(holder, 'owner:data.bin', join(holder.home, 'data.bin'))
    // slow the holder down so the fetcher is still under way when the holder is revoked
    await holder.call('PUT', '/v1/limits', { upload: '4MB/s' })
  })

  afterAll(async () => {
    await net?.stop()
  })

  it('cuts off a source revoked mid-transfer and finishes from the others', async () => {
    // the owner throttles too, so both sources are busy when the revocation lands
    await owner.call('PUT', '/v1/limits', { upload: '4MB/s' })
    await waitFor(async () => (await fetcher.get('/v1/friends')).friends.every((f: { link: { online: boolean } }) => f.link.online), 'fetcher sees both')
    const dest = join(fetcher.home, 'data.bin')
    const t = await fetchDetached(fetcher, 'owner:data.bin', dest)
    await waitFor(async () => (await transferOf(fetcher, t.id))?.sources.find((s: { label: string }) => s.label === 'holder')?.bytes > 0, 'the holder serving', 30_000)
    await holder.json('friend', 'revoke', 'fetcher')
    await waitFor(async () => !await seesOnline(fetcher, 'holder'), 'the fetcher cut off', 5_000, 50)
    const done = await transferDone(fetcher, t.id, 'the fetch to finish from the owner')
    expect(done.sources.find((s: { label: string }) => s.label === 'owner').bytes).toBeGreaterThan(0)
    expect(sha(await readFile(dest))).toBe(sha(await readFile(source)))
  })

  it('pauses with DISK_FULL when the destination fills up, and goes on by itself once there is room', async (ctx) => {
    requireOrSkip(ctx, needsRoot('mounting a small tmpfs'))
    const small = join(fetcher.home, 'small-disk')
    await mkdir(small, { recursive: true })
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', small])
    try {
      const dest = join(small, 'data.bin')
      const result = await fetcher.cli('fetch', 'owner:data.bin', '-o', dest)
      expect(result.code).toBe(1)
      expect(result.stderr).toContain('DISK_FULL')
      const t = (await fetcher.json<{ transfers: any[] }>('transfers')).transfers.find(x => x.dest === dest)
      expect(t.state).toBe('paused')
      expect(t.error.code).toBe('DISK_FULL')
      // nothing half-written is where the file should be; only the hidden partial, which the resume takes over
      await expect(stat(dest)).rejects.toThrow()
      const left = await readdir(small)
      expect(left).toHaveLength(1)
      expect(left[0]).toMatch(/^\.kith-[0-9a-f]{16}\.kith-partial$/)
      // room again: no `kith resume` needed
      execFileSync('mount', ['-o', 'remount,size=64m', small])
      await waitFor(async () => (await transferOf(fetcher, t.id))?.state === 'done', 'the fetch to go on by itself', 60_000)
      expect(sha(await readFile(dest))).toBe(sha(await readFile(source)))
      expect(await readdir(small)).toEqual(['data.bin'])
    } finally {
      execFileSync('umount', ['-l', small])
    }
  })

  it('a fetch whose database writes fail ends with an error event; the daemon stays up, answers, and goes on once there is room', async (ctx) => {
    requireOrSkip(ctx, needsRoot('mounting a small tmpfs'))
    // a node whose home (its LevelDB) is on a small disk of its own; what it fetches goes elsewhere
    const disk = join(dirname(fetcher.home), 'victim-disk')
    await mkdir(disk, { recursive: true })
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', disk])
    const victim = new TestNode('victim', join(disk, 'home'))
    try {
      await victim.start()
      await befriend(owner, victim)
      const file = join(owner.home, 'db-fault.bin')
      await writeFile(file, randomBytes(12 * 1024 * 1024))
      await owner.call('POST', '/v1/shares', { path: file, with: ['victim'] })
      await owner.call('PUT', '/v1/limits', { upload: '1MB/s' })
      const dest = join(dirname(fetcher.home), 'db-fault.bin')
      const t = await fetchDetached(victim, 'owner:db-fault.bin', dest)
      await waitFor(async () => (await transferOf(victim, t.id))?.doneBytes > 0, 'the fetch under way', 30_000)
      // every chunk it stores is recorded in LevelDB: from now on those writes fail
      const filler = join(disk, 'filler')
      await fillDisk(filler)
      const ended = await waitFor(async () => {
        const now = await transferOf(victim, t.id)
        return now?.error != null ? now : undefined
      }, 'the fetch to end with an error', 30_000)
      expect(ended.error.code).toBe('DISK_FULL')
      expect(ended.state).toBe('paused')
      expect(victim.exited).toBeNull()
      expect((await victim.json('status')).peerId).toBe(victim.peerId)
      // nothing reached the last resort: the failure was the fetch's, handled
      expect(victim.output).not.toContain('BUG')
      // room again: the fetch goes on by itself and finishes
      await owner.call('PUT', '/v1/limits', { upload: null })
      await rm(filler)
      await transferDone(victim, t.id, 'the fetch to go on once the disk has room')
      expect(sha(await readFile(dest))).toBe(sha(await readFile(file)))
      expect(victim.exited).toBeNull()
    } finally {
      await owner.call('PUT', '/v1/limits', { upload: null }).catch(() => {})
      await victim.kill9()
      execFileSync('umount', ['-l', disk])
    }
  })
})
