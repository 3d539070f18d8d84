import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { createCipheriv } from 'node:crypto'
import { mkdir, readdir, readFile, readlink, stat, symlink, truncate, writeFile, open } from 'node:fs/promises'
import { join } from 'node:path'
import { ApiClient } from '../../src/services/api/client.ts'
import { loadIdentity } from '../../src/peer/identity.ts'
import { deriveBackupKey } from '../../src/services/backup/keys.ts'
import { openRecovery } from '../../src/services/backup/recovery.ts'
import { befriend, createTestnet, runCli, waitFor, TestNode, type Testnet } from '../helpers/testnet.ts'

/**
 * Looking after backups between real daemons: an owner and two friends who
 * granted it backup, h1 and h2, hold a snapshot. On disk, h1 loses a blob and
 * h2's copy of another is corrupted: `kith backup audit` finds both, its
 * trail (`kith backup audits`) keeps what each host lost, health
 * shows them failing and the snapshot short with no other host to repair
 * onto. A third friend, h3, grants backup: the next audit passes h1 and h2
 * on what they still hold, and repair copies the two damaged blobs onto h3;
 * the snapshot restores whole. Then the owner's machine is gone: from the
 * phrase and h1's address alone a new home gets the identity, the friends
 * and the snapshot list back, though h1 hands back an old recovery record (h2
 * has the newest), and restores the tree; a run with --to h3 lands on h3
 * alone, and once h3 is at its quota, a run there fails and h3 takes nothing. A phrase nobody hosts for is a clear error.
 * (h3 starts late: four daemons starting at once on a loaded machine take
 * longer than the helper waits.)
 */

function bytes (length: number, seed: number): Buffer {
  return createCipheriv('aes-256-ctr', Buffer.alloc(32, seed), Buffer.alloc(16)).update(Buffer.alloc(length))
}

/** The pack files a host keeps the owner's sealed blobs in, in the order they were made. */
async function packFiles (host: TestNode, owner: TestNode): Promise<string[]> {
  const dir = join(host.home, 'backup-host', 'packs', owner.peerId)
  const names = (await readdir(dir)).filter(name => name.endsWith('.pack'))
  return names.sort((a, b) => parseInt(a) - parseInt(b)).map(name => join(dir, name))
}

/** The last line of stderr as JSON (Node may print warnings above it). */
function lastJson (text: string): any {
  return JSON.parse(text.trim().split('\n').at(-1)!)
}

describe('backup care: audits, repair, health, recovery from the phrase', () => {
  let net: Testnet
  let owner: TestNode
  let h1: TestNode, h2: TestNode
  let h3: TestNode | undefined
  let src: string
  let reborn: TestNode | undefined
  /** h1's recovery record from before h3 and the repair */
  let firstRecord: Buffer
  const recordFile = (host: TestNode): string => join(host.home, 'backup-host', 'records', owner.peerId)

  const backupFriendsOnline = async (n: number): Promise<void> => {
    const api = await ApiClient.forHome(owner.home)
    await waitFor(async () => {
      const { friends } = await api.get<{ friends: Array<{ grantsFromThem: string[], link: { online: boolean } }> }>('/v1/friends')
      return friends.filter(f => f.grantsFromThem.includes('backup') && f.link.online).length === n
    }, `the owner to see ${n} hosts online with a backup grant`)
  }

  beforeAll(async () => {
    net = await createTestnet(['owner', 'h1', 'h2'])
    ;[owner, h1, h2] = net.nodes as [TestNode, TestNode, TestNode]
    await Promise.all([h1, h2].map(async host => await befriend(host, owner, '--grant', 'backup')))
    await backupFriendsOnline(2)
    src = join(owner.home, '..', 'tree')
    await mkdir(src, { recursive: true })
    for (let i = 0; i < 4; i++) await writeFile(join(src, `f${i}.bin`), bytes(700_000, i + 1))
    await mkdir(join(src, 'empty'))
    await symlink('f0.bin', join(src, 'link'))
    const run = await owner.cli('backup', 'run', src, '--json')
    expect(run.code, run.stderr).toBe(0)
    firstRecord = await waitFor(async () => await readFile(recordFile(h1)).catch(() => null), 'h1 to hold the owner\'s first recovery record')
  })

  afterAll(async () => {
    await reborn?.kill9()
    await h3?.kill9()
    await net?.stop()
  })

  it('finds a dropped and a corrupted blob, shows the hosts failing, repairs onto a third host', async () => {
    const before = await owner.json('backup', 'health')
    expect(before.snapshots).toMatchObject([{ met: true, fewest: 2, wanted: 2 }])
    const placed = before.hosts.find((h: any) => h.name === 'h1').blobs
    expect(placed).toBeGreaterThanOrEqual(6) // 4 files, a tree and a snapshot at least
    expect(before.hosts.find((h: any) => h.name === 'h1')).toMatchObject({ state: 'unaudited' })

    // h1's last blob (the snapshot's, placed after all it names) is cut off its pack; h2's first (a file's data) gets 3 bytes changed
    const last = (await packFiles(h1, owner)).at(-1)!
    await truncate(last, (await stat(last)).size - 1)
    const fd = await open((await packFiles(h2, owner))[0]!, 'r+')
    await fd.write(Buffer.from([0xff, 0x00, 0xff]), 0, 3, 100)
    await fd.close()

    const audit = await owner.cli('backup', 'audit', '--json')
    expect(lastJson(audit.stderr).error.code).toBe('BACKUP_AUDIT_FAILED')
    const report = JSON.parse(audit.stdout)
    const of = (host: TestNode): any => report.audits.find((a: any) => a.host === host.peerId)
    const [dropped, corrupted] = [of(h1).failures[0]?.sealedId, of(h2).failures[0]?.sealedId]
    expect([of(h1).failures.length, of(h2).failures.length]).toEqual([1, 1])
    expect(corrupted).not.toBe(dropped)
    expect(of(h1)).toMatchObject({ ok: false, error: null })
    expect(of(h2)).toMatchObject({ ok: false, error: null })
    // h2 found its copy's bytes wrong and says so; h1 just has no bytes there
    expect(of(h1).failures.find((f: any) => f.sealedId === dropped).why).toBe('missing')
    expect(of(h2).failures.find((f: any) => f.sealedId === corrupted).why).toBe('damaged')
    // both hosts failing and nobody else: nothing can move yet
    expect(report.repair).toMatchObject({ short: placed, placed: 0, lost: 0, reasons: { noOtherHost: placed } })
    // the trail keeps that audit, newest first, as asked for, with the blob each host lost
    const { audits: trail } = await owner.json('backup', 'audits')
    const trailOf = (host: TestNode): any => trail.find((a: any) => a.host === host.peerId)
    expect(trailOf(h1)).toMatchObject({ name: 'h1', ok: false, by: 'request', at: of(h1).at, challenges: of(h1).challenges, error: null })
    expect(trailOf(h1).tookMs).toBeGreaterThanOrEqual(0)
    expect(trailOf(h1).failures.map((f: any) => f.sealedId)).toContain(dropped)
    expect(trailOf(h2).failures.map((f: any) => f.sealedId)).toContain(corrupted)
    const api = await ApiClient.forHome(owner.home)
    await expect(api.get('/v1/backup/audits?limit=-1')).rejects.toMatchObject({ code: 'BAD_REQUEST' })
    await expect(api.get('/v1/backup/audits?host=nobody')).rejects.toMatchObject({ code: 'FRIEND_UNKNOWN' })

    const health = await owner.json('backup', 'health')
    const host = (h: any, name: string): any => h.hosts.find((x: any) => x.name === name)
    expect(host(health, 'h1')).toMatchObject({ state: 'failing' })
    expect(host(health, 'h2')).toMatchObject({ state: 'failing' })
    expect(health.snapshots).toMatchObject([{ met: false, fewest: 0, wanted: 2 }])
    expect(health.snapshots[0].why).toMatch(/^no other host/)
    const healthText = (await owner.cli('backup', 'health')).stdout
    expect(healthText).toMatch(/h1\s+failing/)
    expect(healthText).toContain("h1's last audit failed: `kith backup audits h1` shows its trail")

    // a third friend grants backup: the next audit passes h1 and h2 on what they still hold, repair copies the rest to h3
    h3 = new TestNode('h3', join(owner.home, '..', 'h3'))
    await h3.start()
    await befriend(h3, owner, '--grant', 'backup')
    await backupFriendsOnline(3)
    const again = await owner.json('backup', 'audit')
    expect(again.audits.map((a: any) => a.ok)).toEqual([true, true, true])
    expect(again.repair).toMatchObject({ short: 2, placed: 2, unmet: 0, lost: 0 })
    const healed = await owner.json('backup', 'health')
    expect(host(healed, 'h3')).toMatchObject({ state: 'ok', blobs: 2 })
    expect(healed.snapshots).toMatchObject([{ met: true, fewest: 2 }])
    // one host alone, by name
    expect((await owner.json('backup', 'audit', 'h3')).audits).toMatchObject([{ host: h3.peerId, ok: true, blobs: 2 }])
    const lastOfH3 = await owner.cli('backup', 'audits', 'h3', '--limit', '1')
    expect(lastOfH3.stdout.trimEnd().split('\n')).toHaveLength(2) // the header and one audit
    expect(lastOfH3.stdout).toMatch(/ago\)\s+h3\s+you\s+\d+\.\ds\s+passed 2 challenges on 2 blobs/)
    const ledger = await owner.json('backup', 'ledger')
    // each granted the other backup; h3 keeps the two copies for the owner
    expect(ledger.friends.find((f: any) => f.name === 'h3')).toMatchObject({ forThem: { used: 0, blobs: 0 }, forMe: { blobs: 2, state: 'ok' } })

    const out = join(owner.home, '..', 'restored')
    const restore = await owner.cli('backup', 'restore', 'latest', '-o', out, '--json')
    expect(restore.code, restore.stderr).toBe(0)
    for (let i = 0; i < 4; i++) expect((await readFile(join(out, 'tree', `f${i}.bin`))).equals(bytes(700_000, i + 1))).toBe(true)
  })

  it('brings the node back in a new home from the phrase and one friend\'s address', async () => {
    const { words } = await owner.json<{ words: string[] }>('key', 'phrase')
    expect(words).toHaveLength(24)
    const snapshots = (await owner.json('backup', 'list')).snapshots
    const phraseFile = join(owner.home, '..', 'phrase.txt')
    await writeFile(phraseFile, words.join(' ') + '\n')
    // h3 got the recovery record the repair pushed, and so did h2: one that knows h3
    await waitFor(async () => (await h3!.get('/v1/backup/hosted')).hosted.find((h: any) => h.peerId === owner.peerId)?.record != null, 'h3 to hold the owner\'s recovery record')
    const key = deriveBackupKey((await loadIdentity(join(owner.home, 'identity.key'))).secretKey.subarray(0, 32), 'recovery')
    const newest = await waitFor(async () => {
      const opened = openRecovery(await readFile(recordFile(h2)), { owner: owner.peerId, key })
      return opened.content.friends.length === 3 ? opened : null
    }, 'h2 to hold a recovery record that knows h3')
    // h1 hands back the record it had before h3 came: the restore must take h2's newer one
    await writeFile(recordFile(h1), firstRecord)
    expect(openRecovery(firstRecord, { owner: owner.peerId, key }).content.friends).toHaveLength(2)
    const via = h1.info!.addrs.find(a => a.startsWith('/ip4/127.0.0.1/'))!
    const ownerId = owner.peerId
    await owner.stop() // the old machine is gone

    const home = join(owner.home, '..', 'reborn')
    const restored = await runCli(['--home', home, 'restore', '--phrase-file', phraseFile, '--via', via, '--listen', '/ip4/127.0.0.1/tcp/0', '--json'])
    expect(restored.code, restored.stderr).toBe(0)
    expect(JSON.parse(restored.stdout)).toMatchObject({ peerId: ownerId, name: 'owner', friends: 3, snapshots: 1, record: { seq: newest.seq, from: h2.peerId } })
    // the new machine's config.json (read at start) sets the unreachable threshold
    await writeFile(join(home, 'config.json'), JSON.stringify({ backup: { unreachableAfterMs: 3 * 24 * 3600_000 } }))
    // never over a home that has a node (checked while that node starts: the check comes before anything else)
    reborn = new TestNode('owner', home)
    const [twice] = await Promise.all([runCli(['--home', home, 'restore', '--phrase-file', phraseFile, '--via', via, '--json']), reborn.start()])
    expect(lastJson(twice.stderr).error.code).toBe('HOME_NOT_EMPTY')
    expect(reborn.peerId).toBe(ownerId)
    expect((await reborn.json('backup', 'health')).unreachableAfterMs).toBe(3 * 24 * 3600_000)
    expect((await reborn.json('backup', 'list')).snapshots).toEqual(snapshots)
    expect((await reborn.json('friends')).friends.map((f: any) => f.label).sort()).toEqual(['h1', 'h2', 'h3'])
    // and with nothing else, the snapshot restores: contents, modes, mtimes, the link as a link, the empty folder
    await waitFor(async () => (await reborn!.get('/v1/friends')).friends.filter((f: any) => f.link.online).length === 3, 'the restored node to reach its hosts')
    const out = join(home, '..', 'reborn-restored')
    const restore = await reborn.cli('backup', 'restore', 'latest', '-o', out, '--json')
    expect(restore.code, restore.stderr).toBe(0)
    for (let i = 0; i < 4; i++) {
      const [was, now] = await Promise.all([stat(join(src, `f${i}.bin`)), stat(join(out, 'tree', `f${i}.bin`))])
      expect((await readFile(join(out, 'tree', `f${i}.bin`))).equals(bytes(700_000, i + 1))).toBe(true)
      expect(now.mode).toBe(was.mode)
      expect(Math.abs(now.mtimeMs - was.mtimeMs)).toBeLessThan(0.003) // within 3 µs, as backup.spec explains
    }
    expect(await readlink(join(out, 'tree', 'link'))).toBe('f0.bin')
    expect(await readdir(join(out, 'tree', 'empty'))).toEqual([])
  })

  it('places a run with --to on the friends named, and nowhere else; a host at its quota takes no more', async () => {
    const dir = join(owner.home, '..', 'for-h3')
    await mkdir(dir)
    await writeFile(join(dir, 'x.bin'), bytes(300_000, 42))
    const usedOn = async (host: TestNode): Promise<number> => (await host.get('/v1/backup/hosted')).hosted.find((h: any) => h.peerId === owner.peerId)?.used ?? 0
    const before = await Promise.all([h1, h2, h3!].map(usedOn))
    const run = await reborn!.cli('backup', 'run', dir, '--to', 'h3', '--json')
    expect(run.code, run.stderr).toBe(0)
    const { result } = JSON.parse(run.stdout.trim().split('\n').at(-1)!)
    expect(result.sentBytes).toBeGreaterThan(300_000)
    const after = await Promise.all([h1, h2, h3!].map(usedOn))
    expect(after.map((used, i) => used - before[i]!)).toEqual([0, 0, result.sentBytes])

    // h3 at its quota (set to what it holds): the next run there fails, says why, and h3 keeps not a byte more
    await h3!.json('friend', 'quota', owner.peerId, String(after[2]))
    await writeFile(join(dir, 'y.bin'), bytes(300_000, 43))
    const full = await reborn!.cli('backup', 'run', dir, '--to', 'h3', '--json')
    expect(full.code).toBe(1)
    expect(lastJson(full.stderr).error).toMatchObject({ code: 'BACKUP_PLACEMENT_FAILED', message: expect.stringMatching(/QUOTA_EXCEEDED/) })
    expect(await usedOn(h3!)).toBe(after[2])
  })

  it('says so when nobody hosts for a phrase, and names a mistyped word', async () => {
    const via = h3!.info!.addrs.find(a => a.startsWith('/ip4/127.0.0.1/'))!
    const { seedToPhrase } = await import('../../src/peer/phrase.ts')
    const phraseFile = join(h1.home, '..', 'stranger-phrase.txt')
    const words = seedToPhrase(bytes(32, 99))
    await writeFile(phraseFile, words.join(' '))
    const typoFile = join(h1.home, '..', 'typo-phrase.txt')
    await writeFile(typoFile, ['abandn', ...words.slice(1)].join(' '))
    const [stranger, typo] = await Promise.all([
      runCli(['--home', join(h1.home, '..', 'stranger'), 'restore', '--phrase-file', phraseFile, '--via', via, '--listen', '/ip4/127.0.0.1/tcp/0', '--json']),
      runCli(['--home', join(h1.home, '..', 'typo'), 'restore', '--phrase-file', typoFile, '--via', via])
    ])
    expect(stranger.code).toBe(1)
    expect(lastJson(stranger.stderr).error.code).toBe('RECOVERY_NOT_FOUND')
    expect(typo.stderr).toMatch(/word 1, "abandn".*did you mean abandon.*\[PHRASE_UNKNOWN_WORD\]/)
  })
})
