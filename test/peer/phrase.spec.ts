import { describe, it, expect } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { seedToPhrase, phraseToSeed, nearWords, PHRASE_WORDS } from '../../src/peer/phrase.ts'
import { createIdentity, loadIdentity } from '../../src/peer/identity.ts'
import { codeOf } from '../helpers/errors.ts'
import { KithError } from '../../src/errors.ts'

describe('recovery phrase', () => {
  it('is 24 words that give the seed back, and the same identity', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kith-phrase-'))
    try {
      const original = await createIdentity(join(dir, 'a.key'))
      const words = seedToPhrase(original.secretKey.subarray(0, 32))
      expect(words).toHaveLength(PHRASE_WORDS)
      const seed = phraseToSeed(words.join(' '))
      const again = await createIdentity(join(dir, 'b.key'), undefined, seed)
      expect(again.peerId.toString()).toBe(original.peerId.toString())
      expect(Buffer.from((await loadIdentity(join(dir, 'b.key'))).secretKey)).toEqual(Buffer.from(original.secretKey))
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('reads the layout kith key phrase prints: numbers, case, line breaks', () => {
    const seed = randomBytes(32)
    const words = seedToPhrase(seed)
    const numbered = words.map((w, i) => `${i + 1}. ${i % 2 === 0 ? w.toUpperCase() : w}${i % 4 === 3 ? '\r\n' : '   '}`).join('')
    expect(Buffer.from(phraseToSeed(numbered))).toEqual(seed)
  })

  it('names a wrong word and the words near it', () => {
    const words = seedToPhrase(randomBytes(32))
    words[6] = 'abandn'
    let err: unknown
    try { phraseToSeed(words.join(' ')) } catch (e) { err = e }
    expect(err).toBeInstanceOf(KithError)
    expect((err as KithError).code).toBe('PHRASE_UNKNOWN_WORD')
    expect((err as KithError).message).toMatch(/word 7, "abandn".*did you mean abandon/)
    expect(nearWords('zoooo')).toContain('zoo')
    expect(nearWords('acquir')).toEqual(['acquire'])
  })

  it('refuses a wrong checksum, a wrong count, oversize text', () => {
    const words = seedToPhrase(randomBytes(32))
    // a valid word replaced by another valid word: only the checksum can catch it (1 in 256 slips through, so pick one that fails)
    const swapped = [...words]
    for (const candidate of ['zoo', 'abandon', 'ability', 'able']) {
      swapped[3] = candidate
      if (codeOf(() => phraseToSeed(swapped.join(' '))) !== 'ok') break
    }
    expect(codeOf(() => phraseToSeed(swapped.join(' ')))).toBe('PHRASE_CHECKSUM')
    expect(codeOf(() => phraseToSeed(words.slice(0, 23).join(' ')))).toBe('PHRASE_WORD_COUNT')
    expect(codeOf(() => phraseToSeed([...words, 'zoo'].join(' ')))).toBe('PHRASE_WORD_COUNT')
    expect(codeOf(() => phraseToSeed(words.slice(0, 12).join(' ')))).toBe('PHRASE_WORD_COUNT')
    expect(codeOf(() => phraseToSeed(''))).toBe('PHRASE_WORD_COUNT')
    expect(codeOf(() => phraseToSeed('abandon '.repeat(1000)))).toBe('PHRASE_MALFORMED')
  })
})
