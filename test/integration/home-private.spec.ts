import { describe, it, expect, beforeAll, afterAll, beforeEach, afterEach } from 'vitest'
import { mkdir, readFile, writeFile, readdir, rename, chmod, chown, lstat } from 'node:fs/promises'
import { join } from 'node:path'
import { type CliResult, type TestNode } from '../helpers/testnet.ts'
import { freshHome, startFailing, type FreshHome } from '../helpers/home.ts'
import { needsRoot, requireOrSkip } from '../helpers/needs.ts'

/** Every path under `root` (itself included) with its permission bits; links are not followed. */
async function modes (root: string): Promise<Map<string, number>> {
  const found = new Map<string, number>()
  async function walk (path: string): Promise<void> {
    const info = await lstat(path)
    if (info.isSymbolicLink()) return
    found.set(path, info.mode & 0o7777)
    if (info.isDirectory()) for (const name of await readdir(path)) await walk(join(path, name))
  }
  await walk(root)
  return found
}

/**
 * The home folder's database and modes: a damaged or missing database stops
 * the node with an error naming it (and `kith repair` salvages the rest), and
 * the home is made private on every start. Apart from home.spec.ts so the two
 * run side by side.
 */
describe('the home folder: its database and its privacy', () => {
  let home: FreshHome
  let node: TestNode

  const startFails = async (...extra: string[]): Promise<CliResult> => await startFailing(node, ...extra)

  /**
   * These tests take one home in turn, each from where the one before left
   * it: a used home, its daemon running (a daemon start is about two seconds
   * of CPU). Each starts it if it is not running, so each also runs alone.
   */
  describe('one used home', () => {
    beforeAll(async () => {
      home = await freshHome()
      node = home.node
    })

    afterAll(async () => {
      await home.remove()
    })

    const running = async (): Promise<void> => {
      if (node.pid == null) await node.start()
    }

    it('refuses to start on a damaged database, naming it', async () => {
      await running()
      await node.stop()
      const db = join(node.home, 'db')
      const manifest = (await readdir(db)).find(f => f.startsWith('MANIFEST-'))!
      await writeFile(join(db, 'CURRENT'), 'MANIFEST-999999\n')
      const result = await startFails()
      expect(result.code).toBe(1)
      expect(result.stderr).toContain('DATABASE_CORRUPT')
      expect(result.stderr).toContain(db)
      await writeFile(join(db, 'CURRENT'), `${manifest}\n`)
      await node.start()
    })

    it('makes everything in the home private on every start, and LevelDB\'s new files are born private', async () => {
      await running()
      await node.stop()
      const tokenFile = join(node.home, 'api.token')
      const oldToken = await readFile(tokenFile, 'utf8')
      // as a umask of 022 and a careless copy would leave them
      for (const [path] of await modes(node.home)) await chmod(path, (await lstat(path)).isDirectory() ? 0o755 : 0o644)
      expect([...(await modes(join(node.home, 'db'))).values()]).toContain(0o644)
      await node.start()
      const after = await modes(node.home)
      // the db/ files LevelDB made while opening (a new log and manifest, LOG) came after the walk
      expect([...after.keys()].filter(p => p.startsWith(join(node.home, 'db'))).length).toBeGreaterThan(4)
      for (const [path, mode] of after) {
        const dir = (await lstat(path)).isDirectory()
        expect({ path, mode: mode.toString(8) }).toEqual({ path, mode: dir ? '700' : '600' })
      }
      // the token other users could read is replaced, and the CLI uses the new one
      expect(await readFile(tokenFile, 'utf8')).not.toBe(oldToken)
      expect((await node.json('status')).peerId).toBe(node.peerId)
    })

    it('refuses a missing or damaged database instead of starting empty or dropping records; `kith repair` salvages the rest', async () => {
      await running()
      const first = node.peerId
      const kept = (await node.json('invite', 'create', '--name', 'kept')).invite.id as string
      const damaged = (await node.json('invite', 'create', '--name', 'damaged')).invite.id as string
      // a daemon that holds the database is never repaired under it
      const busy = await node.cli('repair')
      expect(busy.code).toBe(1)
      expect(busy.stderr).toContain('HOME_LOCKED')
      await node.stop()

      // db/ gone: no empty node with the old identity
      const db = join(node.home, 'db')
      await rename(db, `${db}.away`)
      const missing = await startFails()
      expect(missing.code).toBe(1)
      expect(missing.stderr).toContain('DATABASE_MISSING')
      expect(missing.stderr).toContain(db)
      await expect(readdir(db)).rejects.toThrow()
      await rename(`${db}.away`, db)

      // a byte flipped inside the record that holds the second invite
      const log = join(db, (await readdir(db)).find(n => n.endsWith('.log'))!)
      const bytes = await readFile(log)
      const at = bytes.lastIndexOf(Buffer.from(damaged))
      expect(at).toBeGreaterThan(0)
      bytes[at]! ^= 0x55
      await writeFile(log, bytes)
      const result = await startFails()
      expect(result.code).toBe(1)
      expect(result.stderr).toContain('DATABASE_CORRUPT')
      expect(result.stderr).toContain(db)
      expect(result.stderr).toContain('kith repair')

      const repair = await node.cli('repair')
      expect(repair.code).toBe(0)
      expect(repair.stdout).toMatch(/dropped +\d+\.log: the record at \d+/)
      expect(repair.stdout).toMatch(/records +.*invites 1\b/)
      expect((await node.start()).peerId).toBe(first)
      const ids = (await node.json('invite', 'list')).invites.map((i: { id: string }) => i.id)
      expect(ids).toEqual([kept])
    }) // nine kith processes, one after another
  })

  describe('a fresh home', () => {
    beforeEach(async () => {
      home = await freshHome()
      node = home.node
    })

    afterEach(async () => {
      await home.remove()
    })

    it('refuses a home where something belongs to another user', async (ctx) => {
      requireOrSkip(ctx, needsRoot('giving a file to another user'))
      await mkdir(node.home, { mode: 0o700 })
      const config = join(node.home, 'config.json')
      await writeFile(config, '{}\n', { mode: 0o600 })
      await chown(config, 65534, 65534)
      const result = await startFails()
      expect(result.code).toBe(1)
      expect(result.stderr).toContain('HOME_NOT_PRIVATE')
      expect(result.stderr).toContain(config)
      // refused before anything was made
      expect(await readdir(node.home)).toEqual(['config.json'])
    })
  })
})
