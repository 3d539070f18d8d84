import { escapeForTerminal, replaceUnsafe } from '../../peer/text.ts'

/** Plain-text rendering for the CLI: aligned tables, ages, durations, and escaping. */

/**
 * Text the CLI prints, with every character that would act on the terminal
 * (src/peer/text.ts) shown as an escape, except the newlines the CLI itself
 * puts between lines. Names, labels and messages come from friends: parsers
 * refuse unsafe ones, and this catches whatever got past.
 */
export function terminalText (text: string): string {
  return text.split('\n').map(escapeForTerminal).join('\n')
}

/**
 * JSON the CLI prints: JSON.stringify escapes C0 controls but leaves DEL, C1,
 * bidi and other format characters raw; each becomes a \uXXXX escape (per
 * UTF-16 unit), which is the same JSON value.
 */
export function terminalJson (value: unknown, indent?: number): string {
  const escape = (c: string): string => c.split('').map(unit => `\\u${unit.charCodeAt(0).toString(16).padStart(4, '0')}`).join('')
  // the only raw newlines are the indentation's: JSON.stringify escapes those in strings
  return JSON.stringify(value, null, indent).split('\n').map(line => replaceUnsafe(line, escape)).join('\n')
}

/** Columns padded to line up; cells escaped first (terminalText), so the padding counts what shows. */
export function table (headers: string[], rows: string[][]): string {
  if (rows.length === 0) return ''
  rows = rows.map(r => r.map(escapeForTerminal))
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map(r => (r[i] ?? '').length)))
  const line = (cells: string[]): string => cells.map((c, i) => i === cells.length - 1 ? c : c.padEnd(widths[i]!)).join('  ').trimEnd()
  return [line(headers), ...rows.map(line)].join('\n')
}

export function ago (ms: number | null, now = Date.now()): string {
  if (ms == null) return 'never'
  const s = Math.max(0, Math.round((now - ms) / 1000))
  if (s < 60) return `${s}s ago`
  if (s < 3600) return `${Math.floor(s / 60)}m ago`
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`
  return `${Math.floor(s / 86400)}d ago`
}

export function shortId (peerId: string): string {
  return peerId.length > 16 ? `${peerId.slice(0, 8)}…${peerId.slice(-6)}` : peerId
}

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400, w: 7 * 86400 }

/** Parses "90s", "30m", "12h", "7d", "2w" into seconds; undefined if malformed. */
export function parseDuration (text: string): number | undefined {
  const match = /^(\d{1,6})([smhdw])$/.exec(text.trim())
  if (match == null) return undefined
  return Number(match[1]) * UNITS[match[2]!]!
}

/** 1536 -> "1.5 KiB" */
export function bytes (n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let value = n
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  return unit === 0 ? `${Math.round(value)} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]!}`
}

/** 3725 -> "1h02m" */
export function duration (seconds: number): string {
  const s = Math.max(0, Math.round(seconds))
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`
  return `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, '0')}m`
}

/** `arg` as one word for a POSIX shell, for commands printed as advice. */
export function shellArg (arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", "'\\''")}'`
}
