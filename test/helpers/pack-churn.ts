/**
 * A host's book churning its packs until it is killed, for
 * test/integration/backup-pack-kill.spec.ts: `node pack-churn.ts HOME OWNER
 * PACK_SIZE` writes blobs of OWNER in put-many batches to small packs, removes
 * about half of what it holds after each batch, and compacts. It prints
 * `held ID` once a blob is indexed, `removing ID...` before it asks for a
 * remove (those may be gone from then on) and `compacted` after each
 * compaction, so the test knows what must survive a kill -9 at any moment.
 */
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { openDatabase } from '../../src/peer/database.ts'
import { openChunkStore } from '../../src/transfer/chunk-store.ts'
import { chunkId } from '../../src/transfer/seal.ts'
import { HostBook } from '../../src/services/backup/host-book.ts'
import { placeBlobs } from './host-place.ts'

const [home, CHURN_OWNER, packSize] = process.argv.slice(2) as [string, string, string]
const db = await openDatabase(join(home, 'db'))
const store = await openChunkStore({ dir: join(home, 'chunks'), db: db.sublevel('chunk-index'), sync: false })
const book = new HostBook({ db, home, store, sync: false, packSize: Number(packSize) })
await book.open()
let counter = book.usage(CHURN_OWNER).counter
const held: string[] = []
for (;;) {
  const blobs = Array.from({ length: 8 }, () => {
    const sealed = randomBytes(2000 + Math.floor(Math.random() * 10_000))
    return { id: chunkId(sealed), sealed }
  })
  await book.reserveMany(CHURN_OWNER, blobs.map(b => ({ id: b.id, size: b.sealed.length })))
  await placeBlobs(book, CHURN_OWNER, blobs)
  for (const b of blobs) process.stdout.write(`held ${b.id}\n`)
  held.push(...blobs.map(b => b.id))
  const gone = held.filter(() => Math.random() < 0.5)
  process.stdout.write(`removing ${gone.join(' ')}\n`)
  await book.remove(CHURN_OWNER, gone, ++counter)
  held.splice(0, held.length, ...held.filter(id => !gone.includes(id)))
  await book.compactSoon(CHURN_OWNER)
  process.stdout.write('compacted\n')
}
