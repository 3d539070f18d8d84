import { describe, it, expect } from 'vitest'
import { Command, Help } from 'commander'
import { COMMAND_MODULES, commandWord } from '../../../src/services/cli/command-index.ts'

/**
 * main.ts loads a command module only when one of its commands runs, and
 * lists the others in `kith --help` from command-index.ts: these lines must
 * be what the modules themselves would print.
 */
describe('the command index', () => {
  const noClient = async (): Promise<never> => { throw new Error('no daemon in this test') }
  const noPrint = (): void => {}

  it('holds each module\'s own help lines, in their order, and every top-level command the modules make', async () => {
    const program = new Command()
    // the commands of main.ts the modules add to
    program.command('friend').command('grant')
    for (const mod of COMMAND_MODULES) await mod.register(program, noClient, noPrint)
    const help = new Help()
    const made = program.commands.filter(c => c.name() !== 'friend').map(c => [c.name(), [help.subcommandTerm(c), c.description()]])
    expect(made).toEqual(COMMAND_MODULES.flatMap(mod => Object.entries(mod.makes)))
    // and what they add to main.ts's commands is declared
    expect(program.commands.find(c => c.name() === 'friend')!.commands.map(c => c.name())).toEqual(['grant', 'quota'])
    expect(COMMAND_MODULES.filter(mod => mod.extends?.includes('friend') === true)).toHaveLength(1)
  })

  it('finds the command a command line runs past the program\'s own options and their values', () => {
    const program = new Command().option('--home <dir>').option('--passphrase-file <file>').option('-q')
    expect(commandWord(program, [])).toBeUndefined()
    expect(commandWord(program, ['--help'])).toBeUndefined()
    expect(commandWord(program, ['status'])).toBe('status')
    expect(commandWord(program, ['--home', 'get', 'downloads', '--json'])).toBe('downloads')
    expect(commandWord(program, ['--home=/h', '-q', '--passphrase-file', 'pf', 'get', 'http://x/'])).toBe('get')
    expect(commandWord(program, ['get', '--home', 'h', 'x'])).toBe('get')
    expect(commandWord(program, ['help', 'backup'])).toBe('backup')
    expect(commandWord(program, ['--home', 'h', 'help'])).toBeUndefined()
    expect(commandWord(program, ['--', 'share', 'x'])).toBe('share')
  })
})
