import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { writeFile, readFile } from 'node:fs/promises'
import { createHash, randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { threeFriends, waitFor, transferOf, transferDone, type Testnet, type TestNode } from '../helpers/testnet.ts'
import { exists } from '../helpers/files.ts'

/**
 * Friend-to-friend fetch between real daemons, controlled while it runs:
 * pause and resume, and a friend who comes online mid-fetch taken on when
 * the fetch's floor (--min-rate) falls short. The file is 12 MiB (each MiB
 * between the daemons is CPU on both sides), with caps that leave each step
 * at least as many seconds as 48 MiB at four times the rates did.
 */

describe('pausing a friend\'s fetch, and its floor', () => {
  let net: Testnet
  let alice: TestNode, bob: TestNode, carol: TestNode

  beforeAll(async () => {
    ;({ net, alice, bob, carol } = await threeFriends())
  })

  afterAll(async () => {
    await net?.stop()
  })

  it('pauses and resumes a fetch', async () => {
    const source = join(alice.home, 'big2.bin')
    await writeFile(source, randomBytes(12 * 1024 * 1024))
    await alice.call('POST', '/v1/shares', { path: source, with: ['carol'] })
    const dest = join(carol.home, 'big2.bin')
    // slow enough that the fetch can't end before the pause lands, however loaded the machine
    await alice.call('PUT', '/v1/limits', { upload: '500KB/s' })
    const { transfer: t } = await carol.json('fetch', 'alice:big2.bin', '-o', dest, '--detach')
    const paused = await carol.json('pause', t.id)
    await alice.call('PUT', '/v1/limits', { upload: null })
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
    await alice.call('POST', '/v1/shares', { path: source, with: ['bob', 'carol'] })
    await alice.call('PUT', '/v1/limits', { upload: '500KB/s' })
    await carol.stop()
    let carolUp = false
    try {
      const dest = join(bob.home, 'big2.bin')
      const { transfer: t } = await bob.json('fetch', 'alice:big2.bin', '-o', dest, '--detach', '--min-rate', '20MB/s')
      await waitFor(async () => (await transferOf(bob, t.id))?.doneBytes > 0, 'bob under way', 30_000)
      await carol.start()
      carolUp = true
      const done = await transferDone(bob, t.id, 'the fetch to finish')
      // at 500 KB/s alice alone needs 25 s for 12 MiB (however loaded the machine, while carol starts):
      // carol joined and carried part of it
      expect(done.sources.find((s: { label: string }) => s.label === 'carol')?.bytes).toBeGreaterThan(0)
      expect(createHash('sha256').update(await readFile(dest)).digest('hex')).toBe(createHash('sha256').update(await readFile(source)).digest('hex'))
    } finally {
      await alice.call('PUT', '/v1/limits', { upload: null })
      if (!carolUp) await carol.start()
    }
  })

})
