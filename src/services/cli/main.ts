import { readFile, stat, writeFile } from 'node:fs/promises'
import { Command, CommanderError, Help, Option } from 'commander'
import { KithError, asKithError } from '../../errors.ts'
import { resolveHome, homePaths } from '../../peer/home.ts'
import { SERVICES, parseGrants, serviceGrant } from '../../trust/grants.ts'
import { checkServiceName } from '../expose/names.ts'
import { MAX_INVITE_TEXT } from '../../trust/invite-constants.ts'
import type { InviteSummary } from '../../trust/invite.ts'
import type { InviteListing } from '../../trust/invite-book.ts'
import { ApiClient } from '../api/client.ts'
import type { FriendView, Status } from '../daemon.ts'
import type { StoreStatus } from '../engine/index.ts'
import type { ServicesSummary } from '../expose/index.ts'
import type { ProxyInfo } from '../proxy/index.ts'
import { table, ago, shortId, parseDuration, bytes, terminalJson, terminalText } from './format.ts'
import { parseRate } from '../engine/rate-text.ts'
import { COMMAND_MODULES, commandWord } from './command-index.ts'

/**
 * The `kith` command line: a thin client of the local API (see docs/api.md),
 * except `start`, which runs the daemon, `repair`, which must run without
 * one, and `invite show` and `id`, which work without one.
 *
 * A thin client loads like one: this file and what it imports at the top
 * (format.ts, the API client, command-index.ts) stay clear of libp2p,
 * LevelDB, zod and the daemon, which the four commands above import inside
 * their actions, only when they run; and the commands kept in modules of
 * their own (files.ts, downloads.ts, backup.ts...) load only when one of
 * theirs runs (command-index.ts), as each module's compile costs on a cold
 * start. test/services/cli-thin.spec.ts guards what loads,
 * `npm run bench -- --section cli` measures the time.
 */

interface Globals {
  home?: string
  json?: boolean
  passphraseFile?: string
}

const program = new Command()
  .name('kith')
  .description('A personal peer-to-peer node for a network of friends.')
  .version('0.1.0')
  .option('--home <dir>', 'home folder of the node (default: $KITH_HOME or ~/.kith)')
  .option('--passphrase-file <file>', 'file holding the passphrase that protects the key (or set KITH_PASSPHRASE)')
  .showHelpAfterError('(run with --help for usage)')
  .exitOverride()
  .configureOutput({ outputError: (text, write) => write(`kith: ${text.replace(/^error: /, '').trimEnd()} [USAGE]\n`) })

function globals (cmd: Command): Globals & { home: string } {
  const opts = cmd.optsWithGlobals<Globals>()
  return { ...opts, home: resolveHome(opts.home) }
}

async function client (cmd: Command): Promise<ApiClient> {
  return await ApiClient.forHome(globals(cmd).home)
}

/** how long `kith stop` waits for the daemon to close its stores and end */
const STOP_DEADLINE_MS = 60_000

/** Resolves once the process is gone; polled, as nothing tells another process's end. */
async function processEnded (pid: number, deadlineMs: number): Promise<void> {
  const start = performance.now()
  for (;;) {
    try {
      process.kill(pid, 0)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ESRCH') return
    }
    if (performance.now() - start > deadlineMs) {
      throw new KithError('DAEMON_STILL_RUNNING', `the daemon (process ${pid}) was asked to stop and is still running after ${deadlineMs / 1000} s; see what it printed, or end it with \`kill ${pid}\``)
    }
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

async function passphrase (opts: Globals): Promise<string | undefined> {
  if (opts.passphraseFile != null) {
    try {
      return (await readFile(opts.passphraseFile, 'utf8')).replace(/\r?\n$/, '')
    } catch (err) {
      throw new KithError('BAD_REQUEST', `can't read the passphrase file ${opts.passphraseFile}: ${(err as Error).message}`)
    }
  }
  return process.env.KITH_PASSPHRASE
}

/** Everything a command prints goes through here, escaped (format.ts): names and messages may come from friends. */
function print (json: boolean | undefined, value: unknown, text: () => string): void {
  if (json === true) console.log(terminalJson(value, 2))
  else {
    const out = text()
    if (out !== '') console.log(terminalText(out))
  }
}

function grantsOption (values: string[] | undefined): ReturnType<typeof parseGrants> | undefined {
  if (values == null) return undefined
  return parseGrants(values.flatMap(v => v.split(',')).filter(v => v !== ''))
}

async function readInviteFile (file: string): Promise<string> {
  try {
    const info = await stat(file)
    if (info.size > MAX_INVITE_TEXT) {
      throw new KithError('INVITE_TOO_LARGE', `${file} is ${info.size} bytes, larger than any invite can be; check you chose the right file`)
    }
    return await readFile(file, 'utf8')
  } catch (err) {
    if (err instanceof KithError) throw err
    throw new KithError('BAD_REQUEST', `can't read ${file}: ${(err as Error).message}`)
  }
}

function describeInvite (invite: InviteSummary, extra = ''): string {
  return [
    `invite   ${invite.id}${extra}`,
    `from     ${invite.name} (${invite.issuer})`,
    `grants   ${invite.grants.join(', ') || '(none)'}`,
    `valid    ${invite.notBefore} to ${invite.expires}`,
    `uses     ${invite.uses}`,
    ...invite.addrs.map(a => `address  ${a}`)
  ].join('\n')
}

function friendRows (friends: FriendView[]): string {
  return table(
    ['NAME', 'PEER', 'STATE', 'LINK', 'I GRANT', 'THEY GRANT', 'LAST SEEN'],
    friends.map(f => [
      f.label,
      shortId(f.peerId),
      f.state,
      f.link.online ? (f.link.direct === true ? 'direct' : 'relayed') : 'offline',
      [...f.grantsToThem, ...(f.services ?? []).map(s => `service:${s}`)].join(',') || '-',
      f.grantsFromThem.join(',') || '-',
      f.link.online ? 'now' : ago(f.lastSeen)
    ])
  ) || 'no friends yet: make an invite with `kith invite create` and send it to a friend'
}

/** `kith status`: public, behind NAT or unknown; relays I use and serve */
function reachabilityLines (status: Status): string[] {
  const r = status.reachability
  const state = r.state === 'public' ? 'public' : r.state === 'nat' ? 'behind NAT' : 'unknown'
  const how = r.state === 'public'
    ? ` (friends reached me at ${r.publicAddrs.join(', ')})`
    : r.state === 'nat' ? ' (friends could not dial me back)' : ' (no friend has dialed me back at a public IP yet)'
  return [
    `reach    ${state}${how}${r.checkedAt != null ? `, checked ${ago(r.checkedAt)}` : ''}`,
    ...status.relays.using.map(u => `relay    using ${u.label} (${u.addrs.length} relayed address${u.addrs.length === 1 ? '' : 'es'})`),
    ...(status.relays.offering ? [`relay    offering to friends with the relay grant; ${status.relays.serving.length} reserved${status.relays.serving.length > 0 ? `: ${status.relays.serving.map(s => s.label).join(', ')}` : ''}`] : [])
  ]
}

/** `kith status`: the chunk store's size and its last clean-up */
function storeLines (store: StoreStatus | undefined): string[] {
  if (store == null) return []
  const last = store.gc.last
  const gc = store.gc.error != null
    ? `last clean-up failed: ${store.gc.error.message} [${store.gc.error.code}]`
    : store.gc.running ? 'cleaning up now' : last != null ? `last clean-up ${ago(last.at)} freed ${last.freed.chunks} (${bytes(last.freed.bytes)})` : 'not cleaned up yet'
  const total = store.gc.total.chunks > 0 ? `; ${store.gc.total.chunks} (${bytes(store.gc.total.bytes)}) freed since start` : ''
  const inFiles = store.inFiles > 0 ? `, ${store.inFiles} of them in fetched files` : ''
  return [`chunks   ${store.chunks} (${bytes(store.bytes)}${inFiles}); ${gc}${total}`]
}

/**
 * "hole-punched since 2m ago via /ip4/..."; "relayed through carol since ...",
 * and under a relayed link, lines saying how hole punching went and whether
 * files can move through that relay (not when its budget limits the connection)
 */
function linkText (f: FriendView, friends: FriendView[]): string {
  const kind = f.link.kind ?? (f.link.direct === true ? 'direct' : 'relayed')
  const relayLabel = f.link.relay != null ? friends.find(x => x.peerId === f.link.relay)?.label ?? shortId(f.link.relay) : null
  const lines = [`${kind}${relayLabel != null ? ` through ${relayLabel}` : ''} since ${ago(f.link.kindSince ?? f.link.since)} via ${f.link.remoteAddr ?? '?'}`]
  const punch = f.link.punch
  if (kind === 'relayed' && punch != null && punch.failures > 0 && punch.lastError != null) {
    const next = punch.running ? 'punching again now' : punch.nextAt != null ? `trying again in ${Math.max(1, Math.round((punch.nextAt - Date.now()) / 1000))}s` : `${f.label} starts the next try`
    lines.push(`hole punch failed ${punch.failures} time${punch.failures === 1 ? '' : 's'} in a row, last ${ago(punch.lastAt)}: ${punch.lastError.message} [${punch.lastError.code}]; ${next}`)
  }
  if (kind === 'relayed' && f.link.limited === true) lines.push(`${relayLabel ?? 'the relay'} limits relayed connections (a relay budget): files can't move until a direct connection opens`)
  else if (kind === 'relayed' && f.link.limited === false) lines.push(`files move through ${relayLabel ?? 'the relay'} (no relay budget)`)
  return lines.join(`\n${' '.repeat(23)}`)
}

// start ----------------------------------------------------------------------

program.command('start')
  .description('run the node in the foreground (Ctrl-C stops it)')
  .option('--listen <multiaddr...>', 'libp2p listen addresses (default: /ip4/0.0.0.0/tcp/0, reusing the last port)')
  .option('--api <host:port>', 'local API address on loopback (default: 127.0.0.1:0)')
  .option('--name <name>', 'the name friends see in your invites (remembered)')
  .option('--max-upload <rate>', 'cap what this node serves to friends, like 10MB/s (default: no cap)')
  .option('--max-download <rate>', 'cap what this node fetches, like 10MB/s (default: no cap)')
  .option('--relay-max-duration <duration>', 'as a relay, end each relayed connection of a friend after this long, like 12h (default: no limit; any limit keeps file transfers off that relay)')
  .option('--relay-max-data <size>', 'as a relay, end each relayed connection of a friend after this many bytes, like 50GiB (default: no limit)')
  .option('--json', 'print the start-up summary as JSON')
  .action(async (opts: { listen?: string[], api?: string, name?: string, maxUpload?: string, maxDownload?: string, relayMaxDuration?: string, relayMaxData?: string, json?: boolean }, cmd: Command) => {
    const g = globals(cmd)
    const pass = await passphrase(g)
    const maxUpload = opts.maxUpload != null ? parseRate(opts.maxUpload) : undefined
    if (opts.maxUpload != null && maxUpload == null) throw new KithError('USAGE', `--max-upload wants a rate like 10MB/s or 512KiB/s; got ${JSON.stringify(opts.maxUpload)}`)
    const maxDownload = opts.maxDownload != null ? parseRate(opts.maxDownload) : undefined
    if (opts.maxDownload != null && maxDownload == null) throw new KithError('USAGE', `--max-download wants a rate like 10MB/s or 512KiB/s; got ${JSON.stringify(opts.maxDownload)}`)
    const relayMaxDuration = opts.relayMaxDuration != null ? parseDuration(opts.relayMaxDuration) : undefined
    if (opts.relayMaxDuration != null && relayMaxDuration == null) throw new KithError('USAGE', `--relay-max-duration wants a duration like 12h or 7d; got ${JSON.stringify(opts.relayMaxDuration)}`)
    const relayMaxData = opts.relayMaxData != null ? parseRate(opts.relayMaxData) : undefined
    if (opts.relayMaxData != null && relayMaxData == null) throw new KithError('USAGE', `--relay-max-data wants a size like 50GiB; got ${JSON.stringify(opts.relayMaxData)}`)
    const { runStart } = await import('./start.ts')
    await runStart({
      ...(relayMaxDuration != null || relayMaxData != null ? { relay: { ...(relayMaxDuration != null ? { maxDurationMs: relayMaxDuration * 1000 } : {}), ...(relayMaxData != null ? { maxDataBytes: relayMaxData } : {}) } } : {}),
      home: g.home,
      ...(opts.listen != null ? { listen: opts.listen } : {}),
      ...(opts.api != null ? { api: opts.api } : {}),
      ...(opts.name != null ? { name: opts.name } : {}),
      ...(pass != null ? { passphrase: pass } : {}),
      ...(maxUpload != null ? { maxUpload } : {}),
      ...(maxDownload != null ? { maxDownload } : {}),
      json: opts.json === true
    })
  })

// id, status -------------------------------------------------------------------

program.command('id')
  .description('print this node\'s peer id (works without a running daemon)')
  .option('--json', 'print as JSON')
  .action(async (opts: { json?: boolean }, cmd: Command) => {
    const g = globals(cmd)
    let peerId: string
    try {
      peerId = (await (await client(cmd)).get<Status>('/v1/status')).peerId
    } catch (err) {
      if ((err as KithError).code !== 'DAEMON_NOT_RUNNING') throw err
      const pass = await passphrase(g)
      const { loadIdentity } = await import('../../peer/identity.ts')
      try {
        peerId = (await loadIdentity(homePaths(g.home).identity, pass)).peerId.toString()
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new KithError('IDENTITY_MISSING', `${g.home} has no identity yet; run \`kith start\` once to make one`)
        throw e
      }
    }
    print(opts.json, { peerId }, () => peerId)
  })

const key = program.command('key').description('this node\'s secret key')

key.command('phrase')
  .description('print the 24-word recovery phrase of this node\'s key (works without a running daemon)')
  .option('--json', 'print as JSON')
  .action(async (opts: { json?: boolean }, cmd: Command) => {
    const g = globals(cmd)
    const { loadIdentity } = await import('../../peer/identity.ts')
    const { seedToPhrase } = await import('../../peer/phrase.ts')
    let words: string[]
    try {
      words = seedToPhrase((await loadIdentity(homePaths(g.home).identity, await passphrase(g))).secretKey.subarray(0, 32))
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new KithError('IDENTITY_MISSING', `${g.home} has no identity yet; run \`kith start\` once to make one`)
      throw e
    }
    const warning = 'Write these 24 words down and keep them offline. They ARE this node: whoever reads them can open your backups and ' +
      'speak to your friends as you. With them and one friend\'s address, `kith restore --phrase-file FILE --via ADDRESS` brings this node back.'
    if (opts.json !== true) console.error(terminalText(warning))
    print(opts.json, { words, warning }, () => Array.from({ length: 6 }, (_, row) =>
      [0, 6, 12, 18].map(col => `${String(row + col + 1).padStart(2)}. ${words[row + col]!.padEnd(9)}`).join(' ').trimEnd()).join('\n'))
  })

program.command('restore')
  .description('bring this node back in a new, empty home from its recovery phrase and one friend who hosts backups for it')
  .requiredOption('--phrase-file <file>', 'file holding the 24 words `kith key phrase` printed')
  .requiredOption('--via <multiaddr>', 'a friend\'s address ending in /p2p/PEERID (any friend who hosts a backup for you)')
  .option('--listen <multiaddr...>', 'libp2p listen addresses while restoring (default: as kith start)')
  .option('--json', 'print the result as JSON')
  .action(async (opts: { phraseFile: string, via: string, listen?: string[], json?: boolean }, cmd: Command) => {
    const g = globals(cmd)
    const { MAX_PHRASE_TEXT } = await import('../../peer/phrase.ts')
    let phrase: string
    try {
      if ((await stat(opts.phraseFile)).size > MAX_PHRASE_TEXT) throw new KithError('PHRASE_MALFORMED', `${opts.phraseFile} is far larger than 24 words; check you chose the right file`)
      phrase = await readFile(opts.phraseFile, 'utf8')
    } catch (err) {
      if (err instanceof KithError) throw err
      throw new KithError('BAD_REQUEST', `can't read the phrase file ${opts.phraseFile}: ${(err as Error).message}`)
    }
    const pass = await passphrase(g)
    const { recoverHome } = await import('../backup/recover-home.ts')
    const result = await recoverHome({
      home: g.home,
      phrase,
      via: opts.via,
      ...(pass != null ? { passphrase: pass } : {}),
      ...(opts.listen != null ? { listen: opts.listen } : {}),
      onStep: text => { if (opts.json !== true) console.error(terminalText(text)) }
    })
    print(opts.json, result, () => [
      `restored ${result.peerId} (${result.name}) in ${g.home}`,
      `record   ${result.record.seq}, made ${ago(result.record.created)}, from ${shortId(result.record.from)}`,
      `friends  ${result.friends}`,
      `backups  ${result.snapshots} snapshot${result.snapshots === 1 ? '' : 's'}, ${result.blobs} blobs`,
      'start the node with `kith start`; then `kith backup list` and `kith backup restore SNAPSHOT -o DIR`'
    ].join('\n'))
  })

program.command('status')
  .description('identity, addresses and friends online')
  .option('--json', 'print as JSON')
  .action(async (opts: { json?: boolean }, cmd: Command) => {
    const api = await client(cmd)
    const status = await api.get<Status & { store?: StoreStatus, services?: ServicesSummary, proxy?: ProxyInfo | null }>('/v1/status')
    const { friends } = await api.get<{ friends: FriendView[] }>('/v1/friends')
    const { bandwidthLines } = await import('./limits.ts')
    const active = friends.filter(f => f.state === 'active')
    print(opts.json, { ...status, friendLinks: active.map(f => ({ label: f.label, peerId: f.peerId, ...f.link })) }, () => [
      `peer     ${status.peerId}`,
      `name     ${status.name}`,
      `home     ${status.home}`,
      ...status.addrs.map(a => `listen   ${a}`),
      `friends  ${status.friends.online} of ${status.friends.total} online`,
      ...reachabilityLines(status),
      ...storeLines(status.store),
      ...(status.services != null && (status.services.exposed > 0 || status.services.connected > 0)
        ? [`services ${status.services.exposed} exposed (${status.services.serving} connections from friends), ${status.services.connected} connected (${status.services.carrying} connections to friends); see \`kith expose --list\`, \`kith connections\``]
        : []),
      ...(status.proxy != null ? [`proxy    ${status.proxy.url}/proxy?url=ENCODED_URL (${status.proxy.cache.entries} cached, ${bytes(status.proxy.cache.bytes)}${status.proxy.swarm != null ? `; ${status.proxy.swarm.held} offered to friends, ${bytes(status.proxy.swarm.fromFriends)} taken from friends` : ''}; docs/proxy.md)`] : []),
      ...active.map(f => `  ${f.label.padEnd(20)} ${f.link.online ? linkText(f, active) : `offline, last seen ${ago(f.lastSeen)}`}`),
      'bandwidth (see `kith limits`)',
      ...bandwidthLines(status.bandwidth).map(l => `  ${l}`)
    ].join('\n'))
  })

program.command('stop')
  .description('stop the running daemon cleanly (as Ctrl-C in its terminal would), and wait until it has')
  .option('--json', 'print as JSON')
  .action(async (opts: { json?: boolean }, cmd: Command) => {
    const { pid } = await (await client(cmd)).call<{ pid: number }>('POST', '/v1/stop')
    await processEnded(pid, STOP_DEADLINE_MS)
    print(opts.json, { stopped: true, pid }, () => `stopped the daemon (process ${pid})`)
  })

program.command('repair')
  .description('salvage what can be read of a damaged database (the daemon must be stopped)')
  .option('--json', 'print what was done as JSON')
  .action(async (opts: { json?: boolean }, cmd: Command) => {
    // loaded only here: it brings LevelDB
    const { repairDatabase } = await import('../../peer/database.ts')
    const report = await repairDatabase(homePaths(globals(cmd).home).db)
    print(opts.json, report, () => [
      `repaired ${report.db}`,
      ...(report.problems.length === 0 ? ['found    nothing damaged; the database was rebuilt all the same'] : report.problems.map(p => `found    ${p}`)),
      ...report.logs.flatMap(l => l.dropped.map(d => `dropped  ${l.log}: the ${d.what} at ${d.at}`)),
      ...report.salvaged.map(t => `dropped  ${t.table}: ${t.blocks} damaged block${t.blocks === 1 ? '' : 's'}, kept the rest`),
      ...report.lost.map(t => `dropped  ${t.table}: unreadable (${t.why}); moved to lost/`),
      ...report.leveldb.map(line => `leveldb  ${line}`),
      `records  ${Object.entries(report.records).map(([name, n]) => `${name} ${n}`).join(', ') || 'none'}`
    ].join('\n'))
  })

// invites ----------------------------------------------------------------------

const invite = program.command('invite').description('make, inspect, accept and manage invite files')

invite.command('create')
  .description('write a signed invite file to give a friend')
  .option('--name <label>', 'what to call the friend who accepts it')
  .option('--expires <duration>', 'how long it stays valid: 30m, 12h, 7d, 2w', '7d')
  .option('--uses <n>', 'how many friends may accept it', '1')
  .addOption(new Option('--grant <service...>', `services to grant (${SERVICES.join(', ')}); default files, locate, relay`))
  .option('-o, --output <file>', 'write the invite to FILE instead of standard output')
  .option('--json', 'print the invite details and text as JSON')
  .action(async (opts: { name?: string, expires: string, uses: string, grant?: string[], output?: string, json?: boolean }, cmd: Command) => {
    const expiresIn = parseDuration(opts.expires)
    if (expiresIn == null) throw new KithError('BAD_REQUEST', `--expires wants a duration like 30m, 12h or 7d; got ${JSON.stringify(opts.expires)}`)
    if (!/^\d{1,4}$/.test(opts.uses)) throw new KithError('BAD_REQUEST', `--uses wants a whole number; got ${JSON.stringify(opts.uses)}`)
    const grants = grantsOption(opts.grant)
    const result = await (await client(cmd)).call<{ invite: InviteSummary, text: string }>('POST', '/v1/invites', {
      ...(opts.name != null ? { label: opts.name } : {}),
      expiresIn,
      uses: Number(opts.uses),
      ...(grants != null ? { grants } : {})
    })
    if (opts.output != null) {
      await writeFile(opts.output, result.text, { mode: 0o600 })
      print(opts.json, result, () => `${describeInvite(result.invite)}\nwritten to ${opts.output!}; your friend accepts it with: kith invite accept ${opts.output!}`)
    } else {
      print(opts.json, result, () => result.text.trimEnd())
    }
  })

invite.command('show')
  .description('verify an invite file and show what it holds (no daemon needed)')
  .argument('<file>', 'the invite file')
  .option('--json', 'print as JSON')
  .action(async (file: string, opts: { json?: boolean }) => {
    const { parseInvite, summarise, checkValidity } = await import('../../trust/invite.ts')
    const parsed = parseInvite(await readInviteFile(file))
    let validity: { valid: boolean, reason?: string, message?: string } = { valid: true }
    try {
      checkValidity(parsed)
    } catch (err) {
      validity = { valid: false, reason: (err as KithError).code, message: (err as KithError).message }
    }
    const summary = summarise(parsed)
    print(opts.json, { invite: summary, ...validity }, () =>
      describeInvite(summary, validity.valid ? '  (signature good, valid now)' : `  (signature good, but ${validity.message ?? ''})`))
  })

invite.command('accept')
  .description('accept an invite: contacts the issuer and makes you friends')
  .argument('<file>', 'the invite file')
  .option('--name <label>', 'what to call this friend (default: the name in the invite)')
  .addOption(new Option('--grant <service...>', 'services to grant them in return (default: what the invite grants you)'))
  .option('--json', 'print as JSON')
  .action(async (file: string, opts: { name?: string, grant?: string[], json?: boolean }, cmd: Command) => {
    // the daemon checks the invite: parsing it here would load its crypto
    const text = await readInviteFile(file)
    const grants = grantsOption(opts.grant)
    const { friend } = await (await client(cmd)).call<{ friend: FriendView }>('POST', '/v1/invites/accept', {
      text,
      ...(opts.name != null ? { label: opts.name } : {}),
      ...(grants != null ? { grants } : {})
    })
    print(opts.json, { friend }, () => `you and ${friend.label} are now friends (${friend.peerId})\nyou grant ${friend.grantsToThem.join(', ') || 'nothing'}; they grant ${friend.grantsFromThem.join(', ') || 'nothing'}`)
  })

invite.command('list')
  .description('invites you made, and what became of them')
  .option('--json', 'print as JSON')
  .action(async (opts: { json?: boolean }, cmd: Command) => {
    const { invites } = await (await client(cmd)).get<{ invites: InviteListing[] }>('/v1/invites')
    print(opts.json, { invites }, () => table(['ID', 'FOR', 'STATUS', 'USED', 'EXPIRES', 'GRANTS'],
      invites.map(i => [i.id, i.label ?? '-', i.status, `${i.used}/${i.uses}`, i.expires, i.grants.join(',')])) || 'no invites yet')
  })

invite.command('revoke')
  .description('withdraw an invite so nobody can accept it any more')
  .argument('<id>', 'the invite id from `kith invite list`')
  .option('--json', 'print as JSON')
  .action(async (id: string, opts: { json?: boolean }, cmd: Command) => {
    const result = await (await client(cmd)).call<{ invite: InviteListing }>('DELETE', `/v1/invites/${encodeURIComponent(id)}`)
    print(opts.json, result, () => `invite ${id} revoked`)
  })

// friends ----------------------------------------------------------------------

program.command('friends')
  .description('list your friends')
  .option('--json', 'print as JSON')
  .action(async (opts: { json?: boolean }, cmd: Command) => {
    const { friends } = await (await client(cmd)).get<{ friends: FriendView[] }>('/v1/friends')
    print(opts.json, { friends }, () => friendRows(friends))
  })

const friend = program.command('friend').description('rename, grant to, or revoke a friend')

friend.command('rename')
  .description('call a friend by another name (on this node)')
  .argument('<name>', 'current name or peer id')
  .argument('<new-name>', 'new name')
  .option('--json', 'print as JSON')
  .action(async (name: string, newName: string, opts: { json?: boolean }, cmd: Command) => {
    const result = await (await client(cmd)).call<{ friend: FriendView }>('PATCH', `/v1/friends/${encodeURIComponent(name)}`, { label: newName })
    print(opts.json, result, () => `${name} is now called ${result.friend.label}`)
  })

friend.command('grant')
  .description('let a friend use a service of yours: your shares (files), room for their backups, relaying, locating you, or a service you expose')
  .argument('<name>', 'friend name or peer id')
  .argument('<service>', `${SERVICES.join(' | ')} | service:NAME (a service you expose)`)
  .option('--json', 'print as JSON')
  .action(async (name: string, service: string, opts: { json?: boolean }, cmd: Command) => {
    checkGrant(service)
    const result = await (await client(cmd)).call<{ friend: FriendView }>('PUT', `/v1/friends/${encodeURIComponent(name)}/grants/${service}`)
    print(opts.json, result, () => `${result.friend.label} may now use: ${grantList(result.friend)}`)
  })

friend.command('ungrant')
  .description('take back a service you granted a friend')
  .argument('<name>', 'friend name or peer id')
  .argument('<service>', `${SERVICES.join(' | ')} | service:NAME (cuts their open connections to it)`)
  .option('--json', 'print as JSON')
  .action(async (name: string, service: string, opts: { json?: boolean }, cmd: Command) => {
    checkGrant(service)
    const result = await (await client(cmd)).call<{ friend: FriendView }>('DELETE', `/v1/friends/${encodeURIComponent(name)}/grants/${service}`)
    print(opts.json, result, () => `${result.friend.label} may now use: ${grantList(result.friend)}`)
  })

/** one of SERVICES, or `service:NAME` (a per-service grant of friend services, grants.ts) */
function checkGrant (grant: string): void {
  const service = serviceGrant(grant)
  if (service != null) checkServiceName(service)
  else parseGrants([grant])
}

function grantList (f: FriendView): string {
  return [...f.grantsToThem, ...(f.services ?? []).map(s => `service:${s}`)].join(', ') || 'nothing'
}

friend.command('revoke')
  .description('end a friendship: cuts their connections now and refuses them from then on')
  .argument('<name>', 'friend name or peer id')
  .option('--json', 'print as JSON')
  .action(async (name: string, opts: { json?: boolean }, cmd: Command) => {
    const result = await (await client(cmd)).call<{ friend: FriendView }>('POST', `/v1/friends/${encodeURIComponent(name)}/revoke`)
    print(opts.json, result, () => `${result.friend.label} is no longer your friend`)
  })

// events -----------------------------------------------------------------------

const events = new Command('events')
  .description('follow friend and status events as they happen (one JSON object a line)')
  .action(async (_opts: unknown, cmd: Command) => {
    for await (const evt of await (await client(cmd)).events()) console.log(terminalJson(evt))
  })

// run ----------------------------------------------------------------------------

/**
 * The commands of other modules (command-index.ts): the module of the command
 * that runs (and of one asked for help) is loaded; the others stand in
 * `kith --help` as their help lines only.
 */
async function addCommandModules (argv: string[]): Promise<void> {
  const word = commandWord(program, argv)
  for (const mod of COMMAND_MODULES) {
    if (word != null && (word in mod.makes || mod.extends?.includes(word) === true)) await mod.register(program, client, print)
    else {
      for (const [name, [term, description]] of Object.entries(mod.makes)) helpLines.set(program.command(name).description(description), term)
    }
  }
  program.addCommand(events)
}

/** commands not loaded -> their help term ("get [options] <url...>") */
const helpLines = new Map<Command, string>()
const help = new Help()
program.configureHelp({ subcommandTerm: cmd => helpLines.get(cmd) ?? help.subcommandTerm(cmd) })

export async function main (argv: string[]): Promise<number> {
  const json = argv.includes('--json')
  try {
    await addCommandModules(argv)
    await program.parseAsync(argv, { from: 'user' })
    return 0
  } catch (err) {
    if (err instanceof CommanderError) {
      // help and version end here too, with exit code 0
      return err.exitCode === 0 ? 0 : 2
    }
    const error = asKithError(err)
    if (json) console.error(terminalJson({ error: error.toJSON() }))
    else console.error(terminalText(`kith: ${error.message} [${error.code}]`))
    return error.code === 'USAGE' ? 2 : 1
  }
}
