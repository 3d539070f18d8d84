import { describe, expect, it } from 'vitest'
import { SAFE_TEXT_RULE, cleanText, escapeForTerminal, isSafeText } from '../../src/peer/text.ts'
import { safeText } from '../../src/peer/safe-text.ts'

/** Every code point from `from` to `to`, as one-character strings. */
function range (from: number, to: number): string[] {
  return Array.from({ length: to - from + 1 }, (_, i) => String.fromCodePoint(from + i))
}

/** Each class of character that acts on a terminal instead of showing, and what it is. */
const UNSAFE: Array<[string, string[]]> = [
  ['C0 controls (NUL, BEL, BS, TAB, LF, CR, ESC...)', range(0x00, 0x1f)],
  ['DEL', ['\u007f']],
  ['C1 controls (NEL, CSI, OSC...)', range(0x80, 0x9f)],
  ['bidi embeddings and overrides', range(0x202a, 0x202e)],
  ['bidi isolates', range(0x2066, 0x2069)],
  ['bidi marks (LRM, RLM, ALM)', ['\u200e', '\u200f', '\u061c']],
  ['zero-width space, word joiner, BOM, soft hyphen', ['\u200b', '\u2060', '\ufeff', '\u00ad']],
  ['tag characters', ['\u{e0001}', ...range(0xe0020, 0xe007f)]],
  ['interlinear annotation', range(0xfff9, 0xfffb)],
  ['line and paragraph separators', ['\u2028', '\u2029']],
  ['lone surrogates', ['\ud800', '\udfff']]
]

const SAFE = ['alice', 'Zoë', 'José Müller', '日本語の名前', 'שלום', 'مرحبا', 'می‌خواهم (with ZWNJ)', '👨‍👩‍👧 (with ZWJ)', 'tab\\t as text', 'C:\\path', '']

describe('safe text (src/peer/text.ts)', () => {
  for (const [what, chars] of UNSAFE) {
    it(`refuses ${what}, alone or inside a word`, () => {
      for (const c of chars) {
        expect(isSafeText(c), JSON.stringify(c)).toBe(false)
        expect(isSafeText(`ab${c}cd`), JSON.stringify(c)).toBe(false)
        const parsed = safeText(64).safeParse(`ab${c}cd`)
        expect(parsed.success).toBe(false)
        expect(parsed.error?.issues[0]?.message).toBe(SAFE_TEXT_RULE)
      }
    })

    it(`escapes ${what} visibly, leaving nothing that acts`, () => {
      for (const c of chars) {
        const shown = escapeForTerminal(`ab${c}cd`)
        expect(isSafeText(shown), JSON.stringify(shown)).toBe(true)
        expect(shown).toMatch(/^ab\\(x[0-9a-f]{2}|u[0-9a-f]{4}|u\{[0-9a-f]{5,6}\})cd$/)
      }
    })
  }

  it('accepts ordinary text of any script, with ZWNJ and ZWJ', () => {
    for (const s of SAFE) {
      expect(isSafeText(s), s).toBe(true)
      expect(escapeForTerminal(s)).toBe(s)
      expect(cleanText(s, 1024)).toBe(s)
    }
  })

  it('escapes as \\x.., \\u.... and \\u{.....} by code point', () => {
    expect(escapeForTerminal('\u001b[31mred\u001b[0m')).toBe('\\x1b[31mred\\x1b[0m')
    expect(escapeForTerminal('evil\u202eexe.txt')).toBe('evil\\u202eexe.txt')
    expect(escapeForTerminal('csi\u009b2J')).toBe('csi\\x9b2J')
    expect(escapeForTerminal('tag\u{e0041}')).toBe('tag\\u{e0041}')
    expect(escapeForTerminal('lone\ud800')).toBe('lone\\ud800')
    expect(escapeForTerminal('two\r\nlines')).toBe('two\\x0d\\x0alines')
  })

  it('cleans what kith sends: unsafe characters become spaces, cut to whole characters', () => {
    expect(cleanText('busy\u0000now\u202e!', 100)).toBe('busy now !')
    expect(cleanText('é'.repeat(10), 5)).toBe('éé')
    expect(isSafeText(cleanText(UNSAFE.flatMap(([, chars]) => chars).join(''), 10_000))).toBe(true)
  })

  it('checks lengths as zod does', () => {
    expect(safeText(3, 1).safeParse('').success).toBe(false)
    expect(safeText(3, 1).safeParse('abcd').success).toBe(false)
    expect(safeText(3, 1).safeParse('abc').data).toBe('abc')
    expect(safeText(3).safeParse(42).success).toBe(false)
  })
})
