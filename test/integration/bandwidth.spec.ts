import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { writeFile, readFile } from 'node:fs/promises'
import { createHash, randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { createTestnet, waitFor, type Testnet, type TestNode } from '../helpers/testnet.ts'

/**
 * The bandwidth scheduler between real daemons: `kith start --max-download`
 * caps what a node fetches (`--max-upload` is exercised by fetch.spec.ts).
 */
const MB = 1_000_000
const SIZE = 12 * 1024 * 1024

describe('bandwidth caps between real daemons', () => {
  let net: Testnet
  let alice: TestNode, bob: TestNode
  let source: string

  beforeAll(async () => {
    net = await createTestnet(['alice', 'bob'])
    ;[alice, bob] = net.nodes as [TestNode, TestNode]
    const file = join(alice.home, 'for-bob.invite')
    await alice.json('invite', 'create', '--name', 'bob', '-o', file)
    await bob.json('invite', 'accept', file)
    source = join(alice.home, 'capped.bin')
    await writeFile(source, randomBytes(SIZE))
    await alice.json('share', source, '--with', 'bob')
  })

  afterAll(async () => {
    await net?.stop()
  })

  it('holds a --max-download cap', async () => {
    await bob.stop()
    await bob.start(['--max-download', '4MB/s'])
    await waitFor(async () => (await bob.json('friends')).friends.find((f: { label: string, link: { online: boolean } }) => f.label === 'alice')?.link.online, 'bob sees alice')
    const dest = join(bob.home, 'capped.bin')
    const { transfer: started } = await bob.json('fetch', 'alice:capped.bin', '-o', dest, '--detach')
    const t0 = Date.now()
    let sawEta = false
    const done = await waitFor(async () => {
      const t = (await bob.json<{ transfers: any[] }>('transfers')).transfers.find(x => x.id === started.id)
      if (t?.state === 'running' && typeof t.eta === 'number' && t.eta > 0) sawEta = true
      if (t?.state === 'failed') throw new Error(`fetch failed: ${JSON.stringify(t.error)}`)
      return t?.state === 'done' ? t : undefined
    }, 'the capped fetch to finish', 60_000, 200)
    const seconds = (Date.now() - t0) / 1000
    if (process.env.KITH_DEBUG != null) console.log(`capped fetch: ${(SIZE / seconds / MB).toFixed(2)} MB/s over ${seconds} s`)
    // at most the cap (plus its 0.1 s burst and some slack for timing), and not absurdly below it
    expect(SIZE / seconds).toBeLessThan(4 * MB * 1.1)
    expect(SIZE / seconds).toBeGreaterThan(1 * MB)
    expect(sawEta).toBe(true)
    expect(done.doneBytes).toBe(SIZE)
    expect(createHash('sha256').update(await readFile(dest)).digest('hex')).toBe(createHash('sha256').update(await readFile(source)).digest('hex'))
  })

  it('refuses a --max-download that is not a rate', async () => {
    const bad = await bob.cli('start', '--max-download', 'fast')
    expect(bad.code).not.toBe(0)
    expect(bad.stderr).toContain('--max-download')
  })
})
