import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { createCipheriv } from 'node:crypto'
import { chmod, lstat, mkdir, readdir, readFile, readlink, symlink, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { ApiClient } from '../../src/services/api/client.ts'
import { loadIdentity } from '../../src/peer/identity.ts'
import { deriveBackupKey } from '../../src/services/backup/keys.ts'
import { openRecovery } from '../../src/services/backup/recovery.ts'
import { befriend, createTestnet, waitFor, type Testnet, type TestNode } from '../helpers/testnet.ts'

/**
 * Backups between real daemons: an owner and two friends who granted it
 * backup. One run of a tree with every kind of entry, listed, browsed and
 * restored identical; a second run of the tree slightly changed sends only
 * the new pieces; forget removes what only the first snapshot needed,
 * frees the hosts' quota and pushes them a recovery record without the
 * forgotten snapshot; a run killed with kill -9 resumes without offering
 * again what a host confirmed; a restore killed with kill -9 resumes.
 */

/** Deterministic pseudo-random bytes. */
function bytes (length: number, seed: number): Buffer {
  return createCipheriv('aes-256-ctr', Buffer.alloc(32, seed), Buffer.alloc(16)).update(Buffer.alloc(length))
}

interface Seen { type: string, mode: number, mtimeUs: bigint, size: number, content?: string, target?: string }

/** Everything under `root` that a restore must reproduce, by relative path. */
async function describeTree (root: string, prefix = ''): Promise<Record<string, Seen>> {
  const out: Record<string, Seen> = {}
  // a name that is not UTF-8 (read as U+FFFD) is left out of backups
  for (const name of (await readdir(join(root, prefix))).sort().filter(n => !n.includes('\uFFFD'))) {
    const rel = join(prefix, name)
    const info = await lstat(join(root, rel), { bigint: true })
    const seen: Seen = { type: info.isDirectory() ? 'dir' : info.isSymbolicLink() ? 'link' : 'file', mode: Number(info.mode & 0o7777n), mtimeUs: info.mtimeNs / 1000n, size: Number(info.size) }
    if (info.isSymbolicLink()) { seen.target = await readlink(join(root, rel)); delete (seen as Partial<Seen>).mode; delete (seen as Partial<Seen>).size }
    if (info.isFile()) seen.content = (await readFile(join(root, rel))).toString('base64').slice(0, 64) + (await readFile(join(root, rel))).length
    out[rel] = seen
    if (info.isDirectory()) Object.assign(out, await describeTree(root, rel))
  }
  return out
}

/** Trees alike: the same entries, each the same, mtimes to the microsecond (kith keeps microseconds). */
function expectSameTree (restored: Record<string, Seen>, source: Record<string, Seen>): void {
  expect(Object.keys(restored)).toEqual(Object.keys(source))
  for (const [path, seen] of Object.entries(source)) expect({ path, ...restored[path]! }).toEqual({ path, ...seen })
}

/** The last line of a --json run or restore: its result. */
function result (stdout: string): any {
  return JSON.parse(stdout.trim().split('\n').at(-1)!).result
}

async function used (host: TestNode, owner: TestNode): Promise<number> {
  const { hosted } = await (await ApiClient.forHome(host.home)).get<{ hosted: Array<{ peerId: string, used: number }> }>('/v1/backup/hosted')
  return hosted.find(h => h.peerId === owner.peerId)?.used ?? 0
}

describe('backup: run, list, ls, restore and forget between real daemons', () => {
  let net: Testnet
  let owner: TestNode
  let hosts: TestNode[]
  let src: string
  let firstSent = 0

  beforeAll(async () => {
    net = await createTestnet(['owner', 'h1', 'h2'])
    const [o, h1, h2] = net.nodes as [TestNode, TestNode, TestNode]
    owner = o
    hosts = [h1, h2]
    await Promise.all(hosts.map(async host => await befriend(host, owner, '--grant', 'backup')))
    const api = await ApiClient.forHome(owner.home)
    await waitFor(async () => {
      const { friends } = await api.get<{ friends: Array<{ grantsFromThem: string[], link: { online: boolean } }> }>('/v1/friends')
      return friends.filter(f => f.grantsFromThem.includes('backup') && f.link.online).length === 2
    }, 'the owner to see both hosts online with a backup grant')

    src = join(owner.home, '..', 'tree')
    await mkdir(join(src, 'docs', 'deep'), { recursive: true })
    await mkdir(join(src, 'empty'))
    await writeFile(join(src, 'big.bin'), bytes(6 * 1024 * 1024, 1))
    await writeFile(join(src, 'docs', 'a.txt'), 'hello\n')
    await writeFile(join(src, 'docs', 'deep', 'b.bin'), bytes(300_000, 2))
    await writeFile(join(src, 'docs', 'copy.bin'), bytes(300_000, 2)) // the same content twice: stored once
    await writeFile(join(src, 'zero'), '')
    await writeFile(join(src, 'run.sh'), '#!/bin/sh\necho hi\n')
    await chmod(join(src, 'run.sh'), 0o750)
    await chmod(join(src, 'docs', 'a.txt'), 0o600)
    await symlink('docs/a.txt', join(src, 'link'))
    await symlink('/nowhere/at/all', join(src, 'dangling'))
    await writeFile(Buffer.concat([Buffer.from(join(src, 'latin1-')), Buffer.of(0xe9)]), 'caf\xe9')
    await chmod(join(src, 'docs', 'deep'), 0o700)
    for (const [i, rel] of ['big.bin', 'docs/a.txt', 'docs/deep/b.bin', 'zero', 'docs/deep', 'empty', 'docs'].entries()) {
      const t = new Date(Date.UTC(2020, 0, 1 + i, 12, 0, 0, 250))
      await utimes(join(src, rel), t, t)
    }
  })

  afterAll(async () => {
    await net?.stop()
  })

  it('run -> list -> ls -> restore gives an identical tree: contents, modes, mtimes, links, empty folders', async () => {
    const run = await owner.cli('backup', 'run', src, '--name', 'first', '--json')
    expect(run.stderr).toBe('')
    expect(run.code).toBe(0)
    const first = result(run.stdout)
    expect(first.snapshot.seq).toBe(1)
    expect(first.snapshot.stats.files).toBe(6)
    expect(first.skipped).toEqual([{ path: join(src, 'latin1-\uFFFD'), reason: 'its name is not UTF-8 text' }])
    // every blob on both hosts; the duplicate file added nothing
    expect(first.newBlobs).toBe(first.blobs)
    firstSent = first.sentBytes
    expect(firstSent).toBeGreaterThan(2 * (6 * 1024 * 1024 + 300_000))
    expect(firstSent).toBeLessThan(2 * (6 * 1024 * 1024 + 2 * 300_000))

    const { snapshots } = await owner.json<{ snapshots: any[] }>('backup', 'list')
    expect(snapshots.map(s => [s.seq, s.label, s.paths])).toEqual([[1, 'first', [src]]])

    const ls = await owner.json<{ entries: Array<{ name: string, type: string }> }>('backup', 'ls', '1', 'tree/docs')
    expect(ls.entries.map(e => `${e.name}:${e.type}`)).toEqual(['a.txt:file', 'copy.bin:file', 'deep:dir'])

    const out = join(owner.home, '..', 'restored')
    const restore = await owner.cli('backup', 'restore', 'latest', '-o', out, '--json')
    expect(restore.code).toBe(0)
    expect(result(restore.stdout)).toMatchObject({ files: 6, links: 2 })
    expectSameTree(await describeTree(join(out, 'tree')), await describeTree(src))
  })

  it('a second run of a slightly changed tree sends only the new pieces, and restores the new tree', async () => {
    const big = await readFile(join(src, 'big.bin'))
    await writeFile(join(src, 'big.bin'), Buffer.concat([big.subarray(0, 3_000_000), Buffer.from('a few new bytes'), big.subarray(3_000_000)]))
    await writeFile(join(src, 'docs', 'new.txt'), 'new\n')
    const second = result((await owner.cli('backup', 'run', src, '--json')).stdout)
    expect(second.snapshot.seq).toBe(2)
    // the changed chunk or two of big.bin (4 MiB at most each), new.txt, the trees on the way, the snapshot: on two hosts
    expect(second.newBlobs).toBeLessThanOrEqual(8)
    expect(second.sentBytes).toBeLessThan(firstSent / 2)
    // only the two changed files were read again
    expect(second.readBytes).toBe(6 * 1024 * 1024 + 'a few new bytes'.length + 'new\n'.length)

    const out = join(owner.home, '..', 'restored-2')
    const restore = await owner.cli('backup', 'restore', '2', '--path', 'tree/docs', '-o', out, '--json')
    expect(restore.code).toBe(0)
    expectSameTree(await describeTree(join(out, 'docs')), await describeTree(join(src, 'docs')))
  })

  it('forget drops the first snapshot, frees on each host what only it needed, and pushes each host a recovery record without it', async () => {
    const before = await Promise.all(hosts.map(async h => await used(h, owner)))
    const forget = await owner.json<any>('backup', 'forget', '--keep-last', '1')
    expect(forget.forgotten.map((s: any) => s.seq)).toEqual([1])
    expect(forget.failed).toEqual([])
    expect(forget.removedBlobs).toBeGreaterThan(0)
    for (const [i, host] of hosts.entries()) {
      const freed = forget.freed[host.peerId] as number
      expect(freed).toBeGreaterThan(0)
      expect(await used(host, owner)).toBe(before[i]! - freed)
    }
    const { snapshots } = await owner.json<{ snapshots: any[] }>('backup', 'list')
    expect(snapshots.map(s => s.seq)).toEqual([2])
    // the record each host keeps (the one a restore from the phrase starts from) no longer names snapshot 1:
    // read as the owner would, from the host's file, with the owner's recovery key
    const identity = await loadIdentity(join(owner.home, 'identity.key'))
    const key = deriveBackupKey(identity.secretKey.subarray(0, 32), 'recovery')
    for (const host of hosts) {
      await waitFor(async () => {
        const record = await readFile(join(host.home, 'backup-host', 'records', owner.peerId)).catch(() => null)
        if (record == null) return false
        const { content } = openRecovery(record, { owner: owner.peerId, key })
        return content.snapshots.map(s => s.record.seq).join() === '2'
      }, `${host.name} to hold a recovery record without the forgotten snapshot`, 10_000)
    }
    // what snapshot 2 needs is still there
    const out = join(owner.home, '..', 'restored-3')
    expect((await owner.cli('backup', 'restore', '2', '-o', out)).code).toBe(0)
    expectSameTree(await describeTree(join(out, 'tree')), await describeTree(src))
  })

  it('a run killed with kill -9 resumes: what the hosts confirmed before is not offered again, and the tree restores whole', async () => {
    const dir = join(owner.home, '..', 'tree-2')
    await mkdir(dir)
    await writeFile(join(dir, 'data.bin'), bytes(12 * 1024 * 1024, 3))
    // slow enough to be caught halfway: 12 MiB to two hosts at 2 MB/s, in put-many of up to 4 MiB
    // (PUT_BATCH_BYTES) that count as sent when answered: about 5 s to the first 3 MiB, 12 s in all
    await owner.json('limits', 'set', '--up', '2MB/s')
    const api = await ApiClient.forHome(owner.home)
    const { job } = await api.call<{ job: { id: string } }>('POST', '/v1/backup/runs', { paths: [dir] })
    // more than the first blob's worth sent to each host: its confirmations are long in the index
    await waitFor(async () => (await api.get<{ job: { sentBytes: number } }>(`/v1/backup/jobs/${job.id}`)).job.sentBytes > 3 * 1024 * 1024, 'the run to be under way', 60_000)
    // one snapshot at a time: a second run while this one goes is refused
    await expect(api.call('POST', '/v1/backup/runs', { paths: [src] })).rejects.toMatchObject({ code: 'BACKUP_BUSY' })
    // and it is caught halfway, not after its end
    expect((await api.get<{ job: { state: string } }>(`/v1/backup/jobs/${job.id}`)).job.state).toBe('running')
    await owner.kill9()
    await owner.start()
    await owner.json('limits', 'set', '--up', 'unlimited')
    await waitFor(async () => {
      const { friends } = await (await ApiClient.forHome(owner.home)).get<{ friends: Array<{ link: { online: boolean } }> }>('/v1/friends')
      return friends.filter(f => f.link.online).length === 2
    }, 'the owner to be back with both hosts')
    const usedBefore = await Promise.all(hosts.map(async h => await used(h, owner)))
    const resumed = result((await owner.cli('backup', 'run', dir, '--json')).stdout)
    // some of data.bin's chunks (about 12) were placed before the kill and not offered again
    const chunks = resumed.snapshot.stats.blobs - 3 // the blobs but the two trees and the snapshot
    expect(resumed.newBlobs - 3).toBeLessThan(chunks)
    // nothing twice: the hosts grew by exactly what this run sent
    const usedAfter = await Promise.all(hosts.map(async h => await used(h, owner)))
    expect(usedAfter[0]! - usedBefore[0]! + usedAfter[1]! - usedBefore[1]!).toBe(resumed.sentBytes)
    const out = join(owner.home, '..', 'restored-4')
    expect((await owner.cli('backup', 'restore', String(resumed.snapshot.seq), '-o', out)).code).toBe(0)
    expectSameTree(await describeTree(join(out, 'tree-2')), await describeTree(dir))
  })
  /** Backs up a tree of ten 200 kB files (a0-a9.bin) and a 6 MiB z.bin after them, its bytes from `seed` on: the tree and its snapshot */
  async function backUpSmallThenBig (name: string, seed: number): Promise<{ dir: string, seq: number }> {
    const dir = join(owner.home, '..', name)
    await mkdir(dir)
    for (let i = 0; i < 10; i++) await writeFile(join(dir, `a${i}.bin`), bytes(200_000, seed + i))
    await writeFile(join(dir, 'z.bin'), bytes(6 * 1024 * 1024, seed + 20))
    const run = await owner.cli('backup', 'run', dir, '--json')
    expect(run.code, run.stderr).toBe(0)
    return { dir, seq: result(run.stdout).snapshot.seq as number }
  }

  it('a restore killed with kill -9 resumes: each file is absent or whole at the kill, the files it finished are kept', async () => {
    const api = await ApiClient.forHome(owner.home)
    // a restore writes the files in the tree's order, each blob where it goes as it comes:
    // ten small files, then a big one, so that some are whole while the big one is still coming
    const { dir, seq } = await backUpSmallThenBig('tree-3', 10)
    const out = join(owner.home, '..', 'restored-5')
    // slow enough to be caught halfway: 8.3 MB at 1 MB/s. Which small files are done by then depends
    // on how the two hosts' requests shared the blobs, so the test asks no order of them
    await owner.json('limits', 'set', '--down', '1MB/s')
    const { job } = await api.call<{ job: { id: string } }>('POST', '/v1/backup/restores', { snapshot: String(seq), out })
    await waitFor(async () => {
      const { job: now } = await api.get<{ job: { files: number, doneBytes: number } }>(`/v1/backup/jobs/${job.id}`)
      return now.files >= 3 && now.doneBytes > 1024 * 1024
    }, 'the restore to be under way', 60_000)
    expect((await api.get<{ job: { state: string } }>(`/v1/backup/jobs/${job.id}`)).job.state).toBe('running')
    await owner.kill9()
    // a destination file is absent or whole: every file under its own name is the source's (a partial has a .kith- name)
    const source = await describeTree(dir)
    const whole = Object.entries(await describeTree(join(out, 'tree-3'))).filter(([path, seen]) => seen.type === 'file' && !path.includes('.kith-'))
    for (const [path, seen] of whole) expect({ path, size: seen.size, content: seen.content }).toEqual({ path, size: source[path]?.size, content: source[path]?.content })
    expect(whole.length).toBeGreaterThanOrEqual(3)
    await owner.start()
    await owner.json('limits', 'set', '--down', 'unlimited')
    await waitFor(async () => {
      const { friends } = await (await ApiClient.forHome(owner.home)).get<{ friends: Array<{ link: { online: boolean } }> }>('/v1/friends')
      return friends.filter(f => f.link.online).length === 2
    }, 'the owner to be back with both hosts')
    const resumed = await owner.cli('backup', 'restore', String(seq), '-o', out, '--json')
    expect(resumed.code, resumed.stderr).toBe(0)
    // the files finished before the kill were found in place, not fetched again
    expect(result(resumed.stdout).skipped).toBeGreaterThanOrEqual(whole.length)
    expectSameTree(await describeTree(join(out, 'tree-3')), await describeTree(dir))
    // no partial left behind
    const names = async (dir: string): Promise<string[]> => (await readdir(dir, { recursive: true })).map(String)
    expect((await names(out)).filter(n => n.includes('.kith-'))).toEqual([])
  })

  it('a file that cannot be placed fails the restore: the file in its way is left alone, the files finished are whole, no other partial is left', async () => {
    const api = await ApiClient.forHome(owner.home)
    // files written whole wait in a queue for their fsync and placing while the next ones come: the
    // failure of one ends the restore once those being finished have ended, and nothing hangs on it
    const { dir, seq } = await backUpSmallThenBig('tree-4', 40)
    const out = join(owner.home, '..', 'restored-6')
    // 8.3 MB at 1 MB/s: z.bin is still coming when the first small files are placed (its place was prepared
    // before any blob was fetched, so only placing it can meet what is put there now)
    await owner.json('limits', 'set', '--down', '1MB/s')
    try {
      const { job } = await api.call<{ job: { id: string } }>('POST', '/v1/backup/restores', { snapshot: String(seq), out })
      await waitFor(async () => {
        const { job: now } = await api.get<{ job: { files: number } }>(`/v1/backup/jobs/${job.id}`)
        return now.files >= 3
      }, 'the restore to place its first files', 60_000)
      await writeFile(join(out, 'tree-4', 'z.bin'), 'mine')
      let end: { state: string, error?: { code: string, message: string } } = { state: 'running' }
      await waitFor(async () => {
        end = (await api.get<{ job: typeof end }>(`/v1/backup/jobs/${job.id}`)).job
        return end.state !== 'running'
      }, 'the restore to end', 120_000)
      expect(end.state).toBe('failed')
      expect(end.error?.code, end.error?.message).toBe('DESTINATION_EXISTS')
    } finally {
      await owner.json('limits', 'set', '--down', 'unlimited')
    }
    expect(await readFile(join(out, 'tree-4', 'z.bin'), 'utf8')).toBe('mine')
    const source = await describeTree(dir)
    const restored = await describeTree(join(out, 'tree-4'))
    const placed = Object.entries(restored).filter(([path]) => !path.includes('.kith-') && path !== 'z.bin')
    for (const [path, seen] of placed) expect({ path, size: seen.size, content: seen.content }).toEqual({ path, size: source[path]?.size, content: source[path]?.content })
    // z.bin's bytes wait, whole and verified, in its partial (the error names it); no other partial is left
    const partials = Object.entries(restored).filter(([path]) => path.includes('.kith-'))
    expect(partials.map(([, seen]) => ({ size: seen.size, content: seen.content }))).toEqual([{ size: source['z.bin']!.size, content: source['z.bin']!.content }])
  })
})
