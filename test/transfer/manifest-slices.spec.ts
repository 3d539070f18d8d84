import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { decodeManifest, decodeManifestInSlices, ManifestWriter, summarizeManifest, summarizeManifestInSlices, type ManifestEntry } from '../../src/transfer/manifest.ts'
import { expectCodeAsync, keypair, plainEntries } from './helpers.ts'

/**
 * The manifest read on the daemon's event loop (src/peer/slices.ts): a
 * manifest of many files is read in slices, and what waits on the loop (an
 * API request, a timer) runs between them, not after the whole manifest.
 * Ordered by events, not timed: a turn of the loop asked for before the
 * read starts must come before the read ends.
 */
const owner = keypair(3)
const CS = 1024 * 1024
/** files in the manifest: a read of them takes well over one slice (10 ms) on any machine */
const FILES = 5_000
const PER_PACK = 64

function id (n: number): string {
  return createHash('sha256').update(String(n)).digest('hex')
}

/** A manifest of FILES small files in packs, with a folder, signed by `owner`. */
function manyFiles (): Uint8Array {
  const writer = new ManifestWriter({ shareId: id(-1), version: 1, name: 'many', chunkSize: CS })
  const packs: string[] = []
  writer.add({ type: 'dir', path: 'a-folder' })
  for (let i = 0; i < FILES; i++) {
    const k = Math.floor(i / PER_PACK)
    if (packs.length === k) packs.push(id(-2 - k))
    const entry: ManifestEntry = { type: 'file', path: `d${Math.floor(i / 1000)}/f${String(i).padStart(5, '0')}`, size: 100, executable: false, sha256: id(i), chunks: [packs[k]!], pack: { index: k, offset: (i % PER_PACK) * 100 } }
    writer.add(entry)
  }
  return writer.finish({ secretKey: owner.secretKey, publicKey: owner.publicKey, packs })
}

/** How many turns of the event loop ran while `read` ran, and its result. */
async function turnsDuring<T> (read: () => Promise<T>): Promise<{ turns: number, result: T }> {
  let turns = 0
  let reading = true
  const turn = (): void => {
    if (!reading) return
    turns++
    setImmediate(turn)
  }
  setImmediate(turn)
  try {
    const result = await read()
    return { turns, result }
  } finally {
    reading = false
  }
}

describe('a manifest read in slices', () => {
  const bytes = manyFiles()

  it('decodes what decodeManifest decodes, letting the event loop run between its slices', async () => {
    const { turns, result } = await turnsDuring(async () => await decodeManifestInSlices(bytes, { owner: owner.publicKey }))
    expect(turns).toBeGreaterThan(0)
    const whole = decodeManifest(bytes, { owner: owner.publicKey })
    expect(result.entries.length).toBe(FILES + 1)
    expect(plainEntries(result.entries)).toEqual(plainEntries(whole.entries))
    expect({ ...result, entries: [] }).toEqual({ ...whole, entries: [] })
  })

  it('walks each entry (a file with its chunk ids, a folder with none) and sums up, in slices', async () => {
    const seen: Array<[string, string | null]> = []
    const { turns, result } = await turnsDuring(async () => await summarizeManifestInSlices(bytes, {
      owner: owner.publicKey,
      visit: (path, ids) => { seen.push([path, ids === null ? null : Buffer.from(ids).toString('hex')]) }
    }))
    expect(turns).toBeGreaterThan(0)
    expect(result).toEqual(summarizeManifest(bytes, { owner: owner.publicKey }))
    const entries = decodeManifest(bytes).entries
    expect(seen).toEqual(entries.map(e => [e.path, e.type === 'dir' ? null : e.chunks.join('')]))
  })

  it('refuses what decodeManifest refuses, with the same code', async () => {
    await expectCodeAsync(decodeManifestInSlices(bytes, { owner: keypair(4).publicKey }), 'MANIFEST_WRONG_OWNER')
    const forged = Buffer.from(bytes)
    forged[forged.length - 40]! ^= 1
    await expectCodeAsync(decodeManifestInSlices(forged), 'MANIFEST_BAD_SIGNATURE')
    await expectCodeAsync(summarizeManifestInSlices(forged), 'MANIFEST_BAD_SIGNATURE')
    await expectCodeAsync(summarizeManifestInSlices(bytes.subarray(0, bytes.length - 1)), 'MANIFEST_MALFORMED')
  })
})
