import type { Command } from 'commander'
import { KithError } from '../../errors.ts'
import type { ApiClient } from '../api/client.ts'
import type { HostedFriend } from '../backup/host.ts'
import { ago, bytes, shortId, table } from './format.ts'

/**
 * The host's side of backup on the command line: `kith friend quota NAME SIZE`
 * and `kith backup hosted` (the `--quota` of `kith friend grant` is in main.ts).
 */
type Print = (json: boolean | undefined, value: unknown, text: () => string) => void
type Client = (cmd: Command) => Promise<ApiClient>

/** Sets a friend's backup quota through the API; resolves to what the host book says now. */
async function setQuota (api: ApiClient, name: string, size: string): Promise<HostedFriend> {
  const { hosted } = await api.call<{ hosted: HostedFriend }>('PUT', `/v1/friends/${encodeURIComponent(name)}/quota`, { quota: size })
  return hosted
}

function quotaLine (h: HostedFriend): string {
  return `${h.name ?? shortId(h.peerId)} may keep up to ${bytes(h.quota)} of backups here (${bytes(h.used)} used)${h.quota === 0 ? '; no new writes' : ''}`
}

/**
 * Adds the host's commands to `kith friend` and `kith backup`: `friend quota`,
 * `--quota` on `friend grant` (set before the grant, so the friend never
 * writes under the default), and `backup hosted`. Call it after the `friend`
 * and `backup` commands are made (it makes `backup` if nothing has).
 */
export function backupHostCommands (program: Command, client: Client, print: Print): void {
  const friend = program.commands.find(c => c.name() === 'friend')!
  const grant = friend.commands.find(c => c.name() === 'grant')!
  grant.option('--quota <size>', 'with backup: how much of your disk their backups may take, like 20GB (default 10GiB)')
  grant.hook('preAction', async (_hooked, command) => {
    const { quota } = command.opts<{ quota?: string }>()
    if (quota == null) return
    if (command.args[1] !== 'backup') throw new KithError('USAGE', '--quota goes with the backup grant: kith friend grant NAME backup --quota 20GB')
    await setQuota(await client(command), command.args[0]!, quota)
  })

  friend.command('quota')
    .description('set how much of your disk a friend\'s backups may take (0: no new writes; what is stored stays)')
    .argument('<name>', 'friend name or peer id')
    .argument('<size>', 'like 20GB, 500MiB or 0')
    .option('--json', 'print as JSON')
    .action(async (name: string, size: string, opts: { json?: boolean }, cmd: Command) => {
      const hosted = await setQuota(await client(cmd), name, size)
      print(opts.json, { hosted }, () => quotaLine(hosted))
    })

  const backup = program.commands.find(c => c.name() === 'backup') ?? program.command('backup').description('encrypted backups on friends\' disks')
  backup.command('hosted')
    .description('what you keep for friends: per friend, bytes held, quota, last write, last audit answered')
    .option('--json', 'print as JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const result = await (await client(cmd)).get<{ hosted: HostedFriend[] }>('/v1/backup/hosted')
      print(opts.json, result, () => result.hosted.length === 0
        ? 'you keep no backups for anyone; `kith friend grant NAME backup --quota 20GB` offers a friend space'
        : table(['friend', 'held', 'quota', 'blobs', 'last write', 'last audit', 'note'], result.hosted.map(h => [
          h.name ?? shortId(h.peerId),
          bytes(h.used),
          bytes(h.quota),
          String(h.blobs),
          h.lastWrite != null ? ago(h.lastWrite) : 'never',
          h.lastAudit != null ? ago(h.lastAudit) : 'never',
          h.deleteAt != null ? `no longer granted: deleted after ${new Date(h.deleteAt).toISOString().slice(0, 10)}` : h.quota === 0 ? 'no new writes' : ''
        ])))
    })
}
