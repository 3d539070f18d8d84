import { describe, expect, it } from 'vitest'
import { isSafeText } from '../../src/peer/text.ts'
import { table, terminalJson, terminalText } from '../../src/services/cli/format.ts'
import { runCli } from '../helpers/testnet.ts'

/**
 * What the CLI prints is escaped (src/services/cli/format.ts): text from
 * outside that got past a parser still can't move the cursor, clear the
 * screen or turn a line around.
 */
const EVIL = 'ev\u001b[2Jil\u202eexe.txt\u009b31m'

describe('CLI output', () => {
  it('escapes names in text, keeping the CLI\'s own newlines', () => {
    expect(terminalText(`shared ${EVIL}\nwith bob`)).toBe('shared ev\\x1b[2Jil\\u202eexe.txt\\x9b31m\nwith bob')
  })

  it('escapes table cells before lining them up', () => {
    const out = table(['NAME', 'STATE'], [[EVIL, 'active'], ['bob', 'active']])
    const lines = out.split('\n')
    expect(lines.every(isSafeText)).toBe(true)
    expect(lines[1]!.indexOf('active')).toBe(lines[2]!.indexOf('active'))
  })

  it('escapes JSON to the same value', () => {
    const value = { label: EVIL, tags: ['\u{e0041}', '\u2028'], n: 1 }
    const out = terminalJson(value, 2)
    expect(out.split('\n').every(isSafeText)).toBe(true)
    expect(JSON.parse(out)).toEqual(value)
  })

  it('a real CLI prints a name with an escape in it escaped, in text and in JSON', async () => {
    const text = await runCli(['fetch', EVIL])
    expect(text.code).toBe(2)
    expect(text.stderr).toContain('ev\\u001b[2Jil\\u202eexe.txt\\x9b31m')
    expect(text.stderr.trimEnd().split('\n').every(isSafeText)).toBe(true)
    const json = await runCli(['fetch', EVIL, '--json'])
    expect(json.stderr.trimEnd().split('\n').every(isSafeText)).toBe(true)
    expect(JSON.parse(json.stderr).error.message).toContain(JSON.stringify(EVIL))
  })
})
