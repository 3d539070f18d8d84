import { readFile } from 'node:fs/promises'
import { describe, expect, it } from 'vitest'

/**
 * The dashboard's colours against its background, in the light and the dark
 * scheme, by WCAG 2's contrast ratio: text (the legend, labels, links) needs
 * 4.5:1, --line (the plots' and inputs' borders) 3:1. Read from style.css's
 * custom properties, so a colour changed later can't fall below silently.
 */

const css = await readFile(new URL('../../web/dashboard/style.css', import.meta.url), 'utf8')

/** The custom properties in a `:root { ... }` block of `text`. */
function properties (text: string): Map<string, string> {
  const block = /:root\s*\{([^}]*)\}/.exec(text)?.[1]
  if (block === undefined) throw new Error('no :root block')
  return new Map([...block.matchAll(/(--[\w-]+)\s*:\s*([^;]+?)\s*(?:;|$)/g)].map(m => [m[1]!, m[2]!]))
}

const dark = /@media\s*\(prefers-color-scheme:\s*dark\)\s*\{([\s\S]*?\})\s*\}/.exec(css)?.[1]
const light = properties(css)
const schemes = { light, dark: new Map([...light, ...properties(dark ?? '')]) }

/** WCAG 2 relative luminance of a #rgb or #rrggbb colour. */
function luminance (hex: string): number {
  const m = /^#([0-9a-f]{3}|[0-9a-f]{6})$/i.exec(hex)
  if (m === null) throw new Error(`${hex} is not a #rgb or #rrggbb colour`)
  const digits = m[1]!.length === 3 ? [...m[1]!].map(c => c + c).join('') : m[1]!
  const [r, g, b] = [0, 2, 4].map(i => parseInt(digits.slice(i, i + 2), 16) / 255)
    .map(c => c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4)
  return 0.2126 * r! + 0.7152 * g! + 0.0722 * b!
}

function contrast (a: string, b: string): number {
  const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x)
  return (hi! + 0.05) / (lo! + 0.05)
}

const TEXT = ['--fg', '--muted', '--accent', '--bad', '--ok', '--c-friend', '--c-foaf', '--c-public', '--c-backup', '--c-service']

describe('dashboard colours (WCAG AA)', () => {
  it('computes the contrast ratio as WCAG defines it', () => {
    expect(contrast('#000', '#fff')).toBeCloseTo(21, 6)
    expect(contrast('#777', '#fff')).toBeCloseTo(4.48, 2)
  })

  it('has a dark scheme that sets every colour the light one does', () => {
    expect(dark).toBeDefined()
    expect([...properties(dark!).keys()].sort()).toEqual([...light.keys()].sort())
  })

  for (const [scheme, colours] of Object.entries(schemes)) {
    it(`gives text 4.5:1 and lines 3:1 against the background, ${scheme}`, () => {
      const bg = colours.get('--bg')!
      const low = TEXT.map(name => ({ name, ratio: contrast(colours.get(name)!, bg) })).filter(c => c.ratio < 4.5)
      expect(low).toEqual([])
      expect(contrast(colours.get('--line')!, bg)).toBeGreaterThanOrEqual(3)
    })
  }

  it('draws every plot series and legend entry in a checked colour', () => {
    const rules = [...css.matchAll(/\.c-([\w-]+)\s*\{([^}]*)\}/g)]
    expect(rules.map(r => r[1])).toEqual(['total', 'friend', 'foaf', 'public', 'backup', 'service'])
    for (const [, , body] of rules) {
      const values = [...body!.matchAll(/(?:^|;)\s*(?:stroke|color)\s*:\s*([^;]+)/g)].map(m => m[1]!.trim())
      expect(values).toHaveLength(2)
      for (const value of values) expect(TEXT).toContain(/^var\((--[\w-]+)\)$/.exec(value)?.[1])
    }
  })
})
