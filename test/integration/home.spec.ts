import { describe, it, expect, beforeAll, afterAll, beforeEach, afterEach } from 'vitest'
import { readFile, writeFile, truncate, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { runCli, TestNode, type CliResult } from '../helpers/testnet.ts'
import { freshHome, startFailing, type FreshHome } from '../helpers/home.ts'

/**
 * The home folder as a user meets it: first start makes an identity, restarts
 * keep it, and damaged or missing state stops the node with an error naming
 * the file instead of silently starting over.
 */
describe('the home folder', () => {
  let home: FreshHome
  let node: TestNode

  const startFails = async (...extra: string[]): Promise<CliResult> => await startFailing(node, ...extra)

  /**
   * The first four tests take one home in turn, each from where the one
   * before left it: a used home, its daemon running (a daemon start is about
   * two seconds of CPU). Each starts it if it is not running, so each also
   * runs alone.
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

    it('keeps one identity across restarts and prints it with `kith id`, also offline', async () => {
      const first = await node.start()
      expect((await node.json('id')).peerId).toBe(first.peerId)
      await node.stop()
      expect((await node.json('id')).peerId).toBe(first.peerId)
      expect((await node.start()).peerId).toBe(first.peerId)
    })

    it('refuses a second daemon on the same home', async () => {
      await running()
      const second = await startFails()
      expect(second.code).toBe(1)
      expect(second.stderr).toContain('HOME_LOCKED')
    })

    it('refuses to start on a truncated key file, naming it, and keeps the file', async () => {
      await running()
      await node.stop()
      const keyFile = join(node.home, 'identity.key')
      const original = await readFile(keyFile)
      await truncate(keyFile, 20)
      const result = await startFails()
      expect(result.code).toBe(1)
      expect(result.stderr).toContain('IDENTITY_CORRUPT')
      expect(result.stderr).toContain(keyFile)
      expect((await readFile(keyFile)).length).toBe(20)
      await writeFile(keyFile, original)
      await node.start()
    })

    it('refuses to make a new identity when the key file of a used home is missing', async () => {
      await running()
      await node.stop()
      await unlink(join(node.home, 'identity.key'))
      const result = await startFails()
      expect(result.code).toBe(1)
      expect(result.stderr).toContain('IDENTITY_MISSING')
      await expect(readFile(join(node.home, 'identity.key'))).rejects.toThrow()
    })
  })

  describe('a fresh home each', () => {
    beforeEach(async () => {
      home = await freshHome()
      node = home.node
    })

    afterEach(async () => {
      await home.remove()
    })

    it('seals the key under a passphrase and will not start without it', async () => {
      const passFile = join(home.base, 'pass')
      await writeFile(passFile, 'correct horse battery staple\n')
      const first = await node.start(['--passphrase-file', passFile])
      await node.stop()
      expect(await readFile(join(node.home, 'identity.key'), 'utf8')).toContain('scrypt')
      const without = await startFails()
      expect(without.code).toBe(1)
      expect(without.stderr).toContain('IDENTITY_LOCKED')
      await writeFile(passFile, 'wrong\n')
      const wrong = await startFails('--passphrase-file', passFile)
      expect(wrong.stderr).toContain('IDENTITY_LOCKED')
      await writeFile(passFile, 'correct horse battery staple\n')
      expect((await node.start(['--passphrase-file', passFile])).peerId).toBe(first.peerId)
    })

    it('takes KITH_PASSPHRASE and KITH_HOME from the environment (the daemon re-execs itself and keeps it)', async () => {
      const envHome = join(home.base, 'from-env')
      const env = { KITH_HOME: envHome, KITH_PASSPHRASE: 'correct horse battery staple' }
      const sealed = new TestNode('env', envHome, [], { env, reexec: true })
      const first = await sealed.start()
      await sealed.stop()
      expect(await readFile(join(envHome, 'identity.key'), 'utf8')).toContain('scrypt')
      // no --home anywhere: the daemon found its home and its passphrase in the environment
      const args = ['start', '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '127.0.0.1:0']
      const wrong = await runCli(args, { ...env, KITH_PASSPHRASE: 'wrong' })
      expect(wrong.code).toBe(1)
      expect(wrong.stderr).toContain('IDENTITY_LOCKED')
      expect((await runCli(['id', '--json'], env)).stdout).toContain(first.peerId)
      expect((await sealed.start()).peerId).toBe(first.peerId)
      // the re-exec'd daemon (same pid) runs with its memory settings (src/services/daemon-heap.ts)
      const environ = (await readFile(`/proc/${sealed.pid}/environ`, 'utf8')).split('\0')
      expect(environ).toContain('MALLOC_MMAP_THRESHOLD_=131072')
      expect(environ).toContain(`KITH_HOME=${envHome}`)
      const cmdline = (await readFile(`/proc/${sealed.pid}/cmdline`, 'utf8')).split('\0')
      expect(cmdline).toContain('--max-semi-space-size=4')
      expect(cmdline).toContain('--expose-gc')
      await sealed.stop()
    })

    it('explains bad arguments with a code and exit status 2 or 1', async () => {
      const unknown = await runCli(['--home', node.home, 'frobnicate'])
      expect(unknown.code).toBe(2)
      expect(unknown.stderr).toContain('USAGE')
      const badApi = await startFails('--api', '8.8.8.8:80')
      expect(badApi.code).toBe(1)
      expect(badApi.stderr).toContain('BAD_REQUEST')
      const badListen = await startFails('--listen', 'not-a-multiaddr')
      expect(badListen.code).toBe(1)
      expect(badListen.stderr).toMatch(/can't listen/)
      const noDaemon = await runCli(['--home', node.home, 'friends'])
      expect(noDaemon.code).toBe(1)
      expect(noDaemon.stderr).toContain('DAEMON_NOT_RUNNING')
    })
  })
})
