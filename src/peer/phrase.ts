import { entropyToMnemonic, mnemonicToEntropy } from '@scure/bip39'
import { wordlist } from '@scure/bip39/wordlists/english.js'
import { KithError } from '../errors.ts'

/**
 * The recovery phrase: the 32-byte identity seed (Identity.secretKey's first
 * half) as 24 BIP39 English words, the last of which carries an 8-bit
 * checksum. Everything the owner holds derives from the seed (the peer id,
 * the backup keys of src/services/backup/keys.ts), so these words are the
 * one secret to write down: with them and one friend's address,
 * `kith restore` brings a node back (docs/backup.md, "Recovery").
 *
 * Parsing is forgiving about layout (case, spacing, line breaks, the
 * "1." position numbers `kith key phrase` prints) and strict about content:
 * a word outside the list is named with the list's words closest to it, a
 * wrong count or a failed checksum says so, each with its own code.
 */

export const PHRASE_WORDS = 24
export const SEED_BYTES = 32
/** a phrase file is a few hundred bytes; anything far larger is the wrong file */
export const MAX_PHRASE_TEXT = 4096

const WORDS = new Set(wordlist)

export function seedToPhrase (seed: Uint8Array): string[] {
  if (seed.length !== SEED_BYTES) throw new RangeError(`a seed is ${SEED_BYTES} bytes, got ${seed.length}`)
  return entropyToMnemonic(seed, wordlist).split(' ')
}

/** Bounded Levenshtein distance (the words are at most 8 letters: a full table is cheap). */
function distance (a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const row = [i]
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    prev = row
  }
  return prev[b.length]!
}

/**
 * The list's words nearest to a mistyped one: those sharing its first four
 * letters (BIP39 words are unique in their first four, so that alone often
 * names the word), else those one or two edits away; at most three.
 */
export function nearWords (word: string): string[] {
  const prefix = word.slice(0, 4)
  if (prefix.length === 4) {
    const byPrefix = wordlist.filter(w => w.startsWith(prefix))
    if (byPrefix.length > 0) return byPrefix.slice(0, 3)
  }
  return wordlist
    .map(w => ({ w, d: distance(word, w) }))
    .filter(x => x.d <= 2)
    .sort((x, y) => x.d - y.d)
    .slice(0, 3)
    .map(x => x.w)
}

/** The words of a phrase text, lower-cased, position numbers ("1." "12)") dropped. */
function words (text: string): string[] {
  return text.normalize('NFKD').toLowerCase().split(/\s+/).filter(t => t !== '' && !/^\d{1,2}[.):]?$/.test(t))
}

/** The seed a phrase encodes; PHRASE_WORD_COUNT, PHRASE_UNKNOWN_WORD or PHRASE_CHECKSUM when it can't be. */
export function phraseToSeed (text: string): Uint8Array {
  if (text.length > MAX_PHRASE_TEXT) {
    throw new KithError('PHRASE_MALFORMED', `a recovery phrase is ${PHRASE_WORDS} words; this text is ${text.length} characters, check you chose the right file`)
  }
  const list = words(text)
  if (list.length !== PHRASE_WORDS) {
    throw new KithError('PHRASE_WORD_COUNT', `a recovery phrase is ${PHRASE_WORDS} words; this one has ${list.length}. Copy every word, in order`)
  }
  for (const [i, w] of list.entries()) {
    if (WORDS.has(w)) continue
    const near = nearWords(w)
    const shown = w.length > 16 ? `${w.slice(0, 16)}...` : w
    throw new KithError('PHRASE_UNKNOWN_WORD',
      `word ${i + 1}, ${JSON.stringify(shown)}, is not a recovery phrase word${near.length > 0 ? `; did you mean ${near.join(', ')}?` : ''}`)
  }
  try {
    return new Uint8Array(mnemonicToEntropy(list.join(' '), wordlist))
  } catch (err) {
    throw new KithError('PHRASE_CHECKSUM',
      'the recovery phrase\'s checksum does not match: a word is wrong or two are swapped (each word is in the list, so look for one that was misread as another)', { cause: err })
  }
}
