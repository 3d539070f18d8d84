import type { Command } from 'commander'
import type { ApiClient } from '../api/client.ts'

/**
 * The commands of `kith` that live in modules of their own, and what
 * `kith --help` says of them, so that main.ts loads a module only when one of
 * its commands runs (or is asked for help): each module costs its compile
 * time on every cold start, the first run after an install or a cleaned temp
 * folder (`npm run bench -- --section cli`). The help lines here are the
 * modules' own, as commander prints them; test/services/cli-index.spec.ts
 * fails when one drifts from its module.
 */
export type Print = (json: boolean | undefined, value: unknown, text: () => string) => void
export type Client = (cmd: Command) => Promise<ApiClient>

export interface CommandModule {
  /** the top-level commands it makes: name -> [help term, description] */
  makes: Record<string, readonly [term: string, description: string]>
  /** commands of main.ts it adds to (subcommands, options) */
  extends?: readonly string[]
  /** loads the module and adds its commands to the program */
  register: (program: Command, client: Client, print: Print) => Promise<void>
}

/** in the order `kith --help` lists them */
export const COMMAND_MODULES: readonly CommandModule[] = [
  {
    makes: {
      share: ['share [options] <path>', 'share a file or folder with friends (sharing it again publishes its changes)'],
      shares: ['shares [options]', 'what you share'],
      unshare: ['unshare [options] <id>', 'stop sharing something'],
      ls: ['ls [options] <friend>', 'what a friend shares with you'],
      fetch: ['fetch [options] <target>', 'fetch a friend\'s share, or a file or folder in it, and wait for it (Ctrl-C leaves it running)'],
      transfers: ['transfers [options]', 'fetches, with progress, speed and time left'],
      gc: ['gc [options]', 'free the chunks nothing needs any more: unshared shares, old versions, cancelled fetches']
    },
    register: async (...args) => { (await import('./files.ts')).fileCommands(...args) }
  },
  {
    makes: {
      expose: ['expose [options] [name]', 'offer a program on this machine (a TCP port) to chosen friends, or list what you offer'],
      unexpose: ['unexpose [options] <name>', 'stop offering a service: friends\' open connections to it are cut'],
      services: ['services [options] <friend>', 'what a friend offers you (ask them; they must be online)'],
      connect: ['connect [options] <friend:service>', 'make a friend\'s service reachable on a port of this machine (127.0.0.1), kept until `kith disconnect`'],
      disconnect: ['disconnect [options] <friend:service>', 'close the local port of a friend\'s service, and the connections through it'],
      connections: ['connections [options]', 'friends\' services reachable here, their local ports and traffic']
    },
    register: async (...args) => { (await import('./expose.ts')).exposeCommands(...args) }
  },
  {
    makes: {
      get: ['get [options] <url...>', 'download URLs through the daemon\'s queue and wait for them (Ctrl-C leaves them queued); kith://FRIEND/SHARE/path fetches a friend\'s share'],
      downloads: ['downloads [options]', 'the queue: downloads and friend fetches, with progress, speed, time left and the whole queue\'s time left'],
      pause: ['pause [options] <id>', 'pause a download or a friend fetch'],
      resume: ['resume [options] <id>', 'resume a download or a friend fetch'],
      cancel: ['cancel [options] <id>', 'cancel a download or a friend fetch'],
      priority: ['priority [options] <id> <level>', 'change a download\'s or friend fetch\'s priority while it runs: urgent, normal or background'],
      limit: ['limit [options] <id> <rate>', 'change one download\'s own speed limit while it runs (the node\'s caps are `kith limits`)']
    },
    register: async (...args) => { (await import('./downloads.ts')).downloadCommands(...args) }
  },
  {
    makes: {
      locate: ['locate [options] <name>', 'find a friend who moved: last known addresses, then common friends, then the DHT; shows each step']
    },
    register: async (...args) => { (await import('./locate.ts')).locateCommand(...args) }
  },
  {
    makes: {
      open: ['open [options]', 'log a browser into the web dashboard: prints a one-time link, and opens it where a desktop browser is']
    },
    register: async (...args) => { (await import('./open.ts')).openCommand(...args) }
  },
  {
    makes: {
      limits: ['limits [options]', 'bandwidth limits in force, and rates now per class and per peer; `limits set` and `limits clear` change them while transfers run']
    },
    register: async (...args) => { (await import('./limits.ts')).limitsCommand(...args) }
  },
  {
    // one module for the user's side and one for care (audits, health,
    // schedules), both under `kith backup`; the host's side adds to `friend` too
    makes: {
      backup: ['backup', 'encrypted backups on friends who granted you backup (docs/backup.md)']
    },
    extends: ['friend'],
    register: async (program, client, print) => {
      const [{ backupCommand }, { backupCareCommands }, { backupHostCommands }] = await Promise.all([import('./backup.ts'), import('./backup-care.ts'), import('./backup-host.ts')])
      backupCareCommands(backupCommand(program, client, print), client, print)
      backupHostCommands(program, client, print)
    }
  }
]

/**
 * The command a command line runs, as commander finds it: the first word that
 * is not an option, past the values of the program's own options that take
 * one (`--home DIR`); for `help CMD`, CMD.
 */
export function commandWord (program: Command, argv: readonly string[]): string | undefined {
  const takesValue = new Set(program.options.filter(o => o.required || o.optional).flatMap(o => [o.long, o.short]).filter(f => f != null))
  const words: string[] = []
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === '--') {
      words.push(...argv.slice(i + 1))
      break
    }
    if (!arg.startsWith('-') || arg === '-') words.push(arg)
    else if (takesValue.has(arg)) i++
  }
  return words[0] === 'help' ? words[1] : words[0]
}
