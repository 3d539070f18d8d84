import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdir, writeFile, readFile, readdir, stat } from 'node:fs/promises'
import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { createTestnet, waitFor, befriend, transferOf, transferDone, type Testnet, type TestNode } from '../helpers/testnet.ts'

/**
 * Faults a fetch meets between real daemons: a friend revoked mid-transfer
 * (cut off, the fetch goes on from others) and a full disk (paused with
 * DISK_FULL, state intact, resumable once there is room).
 */
function sha (bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex')
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
    await writeFile(source, randomBytes(40 * 1024 * 1024))
    await owner.json('share', source, '--with', 'holder', 'fetcher')
    // the holder fetches it first, so it holds every chunk
    const fetched = await holder.cli('fetch', 'owner:data.bin', '-o', join(holder.home, 'data.bin'))
    expect(fetched.code, fetched.stderr).toBe(0)
    // slow the holder down so the fetcher is still under way when the holder is revoked
    await holder.stop()
    await holder.start(['--max-upload', '8MB/s'])
  })

  afterAll(async () => {
    await net?.stop()
  })

  it('cuts off a source revoked mid-transfer and finishes from the others', async () => {
    // the owner throttles too, so both sources are busy when the revocation lands
    await owner.stop()
    await owner.start(['--max-upload', '8MB/s'])
    await waitFor(async () => (await fetcher.json('friends')).friends.every((f: { link: { online: boolean } }) => f.link.online), 'fetcher sees both')
    const dest = join(fetcher.home, 'data.bin')
    const { transfer: t } = await fetcher.json('fetch', 'owner:data.bin', '-o', dest, '--detach')
    await waitFor(async () => (await transferOf(fetcher, t.id))?.sources.find((s: { label: string }) => s.label === 'holder')?.bytes > 0, 'the holder serving', 30_000)
    await holder.json('friend', 'revoke', 'fetcher')
    await waitFor(async () => (await fetcher.json('friends')).friends.find((f: { label: string }) => f.label === 'holder')?.link.online === false, 'the fetcher cut off', 5_000, 50)
    const done = await transferDone(fetcher, t.id, 'the fetch to finish from the owner')
    expect(done.sources.find((s: { label: string }) => s.label === 'owner').bytes).toBeGreaterThan(0)
    expect(sha(await readFile(dest))).toBe(sha(await readFile(source)))
  })

  it('pauses with DISK_FULL when the destination fills up, and resumes once there is room', async () => {
    // never passes without running: it mounts a small tmpfs, which needs root
    if (process.getuid?.() !== 0) throw new Error('this test mounts a small tmpfs and needs root: run the tests as root (`sudo npm test`)')
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
      execFileSync('mount', ['-o', 'remount,size=64m', small])
      await fetcher.json('resume', t.id)
      await waitFor(async () => (await transferOf(fetcher, t.id))?.state === 'done', 'the resumed fetch', 60_000)
      expect(sha(await readFile(dest))).toBe(sha(await readFile(source)))
      expect(await readdir(small)).toEqual(['data.bin'])
    } finally {
      execFileSync('umount', ['-l', small])
    }
  })
})
