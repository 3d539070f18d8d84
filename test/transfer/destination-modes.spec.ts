import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { makeProcessPrivate } from '../../src/peer/home.ts'
import { makeRoot, openNoFollow, prepareUnder } from '../../src/transfer/destination.ts'

/**
 * The daemon runs with umask 077 so its home stays private; the files it
 * fetches for the user still get the user's own umask (here 022), as any
 * other file of theirs would.
 */
const modeOf = async (path: string): Promise<number> => (await stat(path)).mode & 0o777

describe('fetched files and folders get the user umask, not the daemon private one', () => {
  let base: string
  let restoreUmask: () => void
  let restorePrivate: () => void
  beforeAll(async () => {
    const before = process.umask(0o022)
    restoreUmask = () => { process.umask(before) }
    restorePrivate = makeProcessPrivate()
    base = await mkdtemp(join(tmpdir(), 'kith-modes-'))
  })
  afterAll(async () => {
    // the unit project shares worker processes between files: leave the process as it was
    restorePrivate()
    restoreUmask()
    await rm(base, { recursive: true, force: true })
  })

  it('keeps what the daemon itself writes private', async () => {
    await writeFile(join(base, 'private'), 'x')
    expect(await modeOf(join(base, 'private'))).toBe(0o600)
  })

  it('makes the destination root and the folders above it with the user mode', async () => {
    const root = join(base, 'new', 'dest')
    await makeRoot(root)
    expect(await modeOf(join(base, 'new'))).toBe(0o755)
    expect(await modeOf(root)).toBe(0o755)
  })

  it('makes folders under the root and new files with the user mode', async () => {
    const root = join(base, 'root')
    await makeRoot(root)
    const file = await prepareUnder(root, ['a', 'b', 'photo.jpg'])
    expect(await modeOf(join(root, 'a'))).toBe(0o755)
    expect(await modeOf(join(root, 'a', 'b'))).toBe(0o755)
    const handle = await openNoFollow(file, 'create', 0o644)
    await handle.close()
    expect(await modeOf(file)).toBe(0o644)
    const tool = join(root, 'a', 'run.sh')
    await (await openNoFollow(tool, 'create', 0o755)).close()
    expect(await modeOf(tool)).toBe(0o755)
  })
})
