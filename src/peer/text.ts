/**
 * Text from outside (friends' display names, share names and paths, the
 * messages in their error answers, addresses) ends up on terminals and in
 * logs, where some characters act instead of showing: an ESC or a C1 CSI
 * starts a terminal control sequence, a bidi override or isolate reorders what
 * follows it (so `txt.exe` can show as `exe.txt`), zero-width and tag
 * characters hide text, a CR or line separator forges a new line.
 *
 * Unsafe, everywhere kith takes or prints outside text:
 * - controls, \p{Cc}: C0 (U+0000-U+001F), DEL (U+007F), C1 (U+0080-U+009F);
 * - format characters, \p{Cf}: bidi embeddings, overrides and isolates
 *   (U+202A-U+202E, U+2066-U+2069), marks (U+200E, U+200F, U+061C), zero-width
 *   space and no-break space (U+200B, U+FEFF), soft hyphen, tag characters
 *   (U+E0001, U+E0020-U+E007F) and the rest of the category;
 * - line and paragraph separators (U+2028, U+2029);
 * - lone surrogates (not text at all).
 *
 * Except ZWNJ and ZWJ (U+200C, U+200D): everyday Persian, Arabic and Indic
 * words and emoji sequences need them, and they only join or part the glyphs
 * beside them; they neither move the cursor nor reorder anything.
 *
 * Parsers refuse unsafe text (`isSafeText`, and zod's `safeText` in
 * safe-text.ts); what kith prints of outside text is escaped too
 * (`escapeForTerminal`), in case something got past a parser; what kith sends
 * is cleaned first (`cleanText`), so its own messages are never refused.
 * No zod here: the CLI escapes all it prints with this file, and loads no
 * more than it needs (test/services/cli-thin.spec.ts).
 */
const UNSAFE = /[[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]--[\u200C\u200D]]/v
const UNSAFE_ALL = new RegExp(UNSAFE.source, 'gv')

/** The rule, as parsers' messages say it. */
export const SAFE_TEXT_RULE = 'must not hold control, format (such as bidi override) or line-separator characters'

export function isSafeText (text: string): boolean {
  return !UNSAFE.test(text)
}

function hex (n: number, width: number): string {
  return n.toString(16).padStart(width, '0')
}

/** `text` with each unsafe character (a code point) replaced by what `by` makes of it. */
export function replaceUnsafe (text: string, by: (char: string) => string): string {
  return text.replace(UNSAFE_ALL, by)
}

/**
 * Shows every unsafe character as a visible escape: `\x1b` up to U+00FF,
 * `\u202e` in the BMP (a lone surrogate too), `\u{e0041}` beyond. Everything
 * else, a backslash included, is left as it is.
 */
export function escapeForTerminal (text: string): string {
  return replaceUnsafe(text, c => {
    const cp = c.codePointAt(0)!
    if (cp <= 0xff) return `\\x${hex(cp, 2)}`
    if (cp <= 0xffff) return `\\u${hex(cp, 4)}`
    return `\\u{${hex(cp, 5)}}`
  })
}

/**
 * For text kith sends: each unsafe character becomes a space, and the whole is
 * cut to `maxBytes` of UTF-8 at a character boundary.
 */
export function cleanText (text: string, maxBytes: number): string {
  const clean = replaceUnsafe(text, () => ' ')
  const bytes = Buffer.from(clean, 'utf8')
  if (bytes.length <= maxBytes) return clean
  return new TextDecoder().decode(bytes.subarray(0, maxBytes)).replace(/\uFFFD+$/, '')
}
