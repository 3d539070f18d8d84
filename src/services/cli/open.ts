import type { Command } from 'commander'
import type { ApiClient } from '../api/client.ts'

/**
 * `kith open`: a one-time link that logs a browser into the web dashboard
 * (POST /v1/dashboard/login, docs/dashboard.md), printed, and opened where a
 * desktop browser is at hand. The link is the only way in: the browser never
 * sees the API token.
 */
type Print = (json: boolean | undefined, value: unknown, text: () => string) => void
type Client = (cmd: Command) => Promise<ApiClient>

/** the desktop's "open this URL" command, or null where there is no desktop */
function opener (): string[] | null {
  if (process.platform === 'darwin') return ['open']
  if (process.platform === 'win32') return ['cmd', '/c', 'start', '""']
  return process.env.DISPLAY != null || process.env.WAYLAND_DISPLAY != null ? ['xdg-open'] : null
}

export function openCommand (program: Command, client: Client, print: Print): void {
  program.command('open')
    .description('log a browser into the web dashboard: prints a one-time link, and opens it where a desktop browser is')
    .option('--no-browser', 'only print the link')
    .option('--json', 'print as JSON')
    .action(async (opts: { browser: boolean, json?: boolean }, cmd: Command) => {
      const link = await (await client(cmd)).call<{ url: string, expiresIn: number }>('POST', '/v1/dashboard/login')
      print(opts.json, link, () => `${link.url}\nthe link works once, within ${link.expiresIn / 60} minutes (\`kith open\` makes another)`)
      const command = opts.browser ? opener() : null
      if (command != null) {
        const { spawn } = await import('node:child_process')
        // a browser that can't start leaves the printed link to be opened by hand
        const child = spawn(command[0]!, [...command.slice(1), link.url], { stdio: 'ignore', detached: true })
        child.on('error', () => {})
        child.unref()
      }
    })
}
