import { describe, expect, it } from 'vitest'
import { runCli } from '../helpers/testnet.ts'

/** The commands and subcommands listed under "Commands:" in a help text, with their description ('' for none). */
function listed (help: string): Array<[string, string]> {
  const section = help.split(/^Commands:$/m)[1] ?? ''
  // a command's line starts two spaces in; a description wrapped onto more lines goes on far further in
  return [...section.matchAll(/^ {2}(\S.*?)(?: {2,}(\S.*))?$/gm)].map(m => [m[1]!, m[2] ?? ''])
}

describe('kith --help', () => {
  it('says what every command and every subcommand does', async () => {
    const groups = ['invite', 'friend', 'key', 'backup', 'limits']
    const [commands, ...subs] = await Promise.all([
      listed((await runCli(['--help'])).stdout),
      ...groups.map(async g => listed((await runCli([g, '--help'])).stdout).map(([term, text]) => [`${g} ${term}`, text] as [string, string]))
    ])
    expect(commands!.length).toBeGreaterThan(30)
    for (const [g, list] of groups.map((g, i) => [g, subs[i]!] as const)) expect(list.length, `${g}'s subcommands`).toBeGreaterThan(1)
    expect([...commands!, ...subs.flat()].filter(([, text]) => text === '').map(([term]) => term)).toEqual([])
  })
})
