import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readdir } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { openDatabase } from '../../src/peer/database.ts'
import { openChunkStore } from '../../src/transfer/chunk-store.ts'
import { HostBook } from '../../src/services/backup/host-book.ts'
import { NODE } from '../helpers/testnet.ts'
import { tempDir } from '../helpers/chunks.ts'

/**
 * A host's packs under kill -9 at moments nobody chose: a process puts,
 * removes and compacts one owner's blobs in small packs without pause
 * (test/helpers/pack-churn.ts) and is killed with -9 after a random number
 * of compactions and a random delay, five times over on the same home. After
 * each kill the book, opened again, holds every blob the process had indexed
 * and not begun to remove, reads every blob it lists, counts exactly what it
 * lists in `used`, and keeps no pack no row points at once its compactions
 * are done. (pack-store.spec.ts makes each crash point of a compaction on
 * purpose; this one finds whatever the kills hit.)
 */
const CHURN = join(dirname(fileURLToPath(import.meta.url)), '..', 'helpers', 'pack-churn.ts')
const CHURN_OWNER = '12D3KooWChurnChurnChurnChurnChurnChurnChurnChurnChur'
/** small packs: many roll-overs and compactions a second */
const CHURN_PACK_SIZE = 64 * 1024

describe('pack files under kill -9', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>

  beforeAll(async () => { tmp = await tempDir('kith-pack-kill-') })
  afterAll(async () => { await tmp?.cleanup() })

  it('keeps every indexed blob readable and used exact, whatever a kill -9 cuts', async () => {
    const mustHold = new Set<string>()
    for (let round = 0; round < 5; round++) {
      const child = spawn(NODE, [CHURN, tmp.dir, CHURN_OWNER, String(CHURN_PACK_SIZE)], { stdio: ['ignore', 'pipe', 'inherit'] })
      const exited = once(child, 'exit')
      const compactions = 2 + Math.floor(Math.random() * 6)
      let seen = 0
      // every line up to the kill is read: what the process printed after the kill was decided still counts
      for await (const line of createInterface({ input: child.stdout })) {
        const [word, ...ids] = line.split(' ')
        if (word === 'held') mustHold.add(ids[0]!)
        if (word === 'removing') for (const id of ids) mustHold.delete(id)
        if (word === 'compacted' && ++seen === compactions) setTimeout(() => { child.kill('SIGKILL') }, Math.random() * 20)
      }
      await exited
      expect(child.signalCode).toBe('SIGKILL')

      const db = await openDatabase(join(tmp.dir, 'db'))
      const store = await openChunkStore({ dir: join(tmp.dir, 'chunks'), db: db.sublevel('chunk-index'), sync: false })
      const book = new HostBook({ db, home: tmp.dir, store, sync: false, packSize: CHURN_PACK_SIZE })
      await book.open()
      try {
        const listed: Array<{ id: string, size: number }> = []
        for (let next: string | null = null, first = true; first || next !== null; first = false) {
          const page = await book.list(CHURN_OWNER, next, 1000)
          listed.push(...page.ids)
          next = page.next
        }
        const ids = new Set(listed.map(x => x.id))
        expect([...mustHold].filter(id => !ids.has(id))).toEqual([])
        const held = await book.locate(CHURN_OWNER, [...ids])
        for (const [i, id] of [...ids].entries()) await book.read(CHURN_OWNER, id, held[i]!)
        expect(book.usage(CHURN_OWNER)).toMatchObject({ used: listed.reduce((n, x) => n + x.size, 0), blobs: listed.length })
        await book.compactSoon(CHURN_OWNER)
        const packs = await readdir(join(tmp.dir, 'backup-host', 'packs', CHURN_OWNER))
        const pointed = new Set((await book.locate(CHURN_OWNER, [...ids])).map(h => `${h!.place!.pack}.pack`))
        expect(packs.filter(name => !pointed.has(name))).toEqual([])
      } finally {
        await book.close()
        await db.close()
      }
    }
  })
})
