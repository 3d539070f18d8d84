import type { HostBook } from '../../src/services/backup/host-book.ts'

/**
 * What a host's put-many does with blobs once reserved, for tests that drive a
 * HostBook directly: each appended to the owner's pack, the pack synced, all
 * indexed in one batch.
 */
export async function placeBlobs (book: HostBook, owner: string, blobs: Array<{ id: string, sealed: Uint8Array }>): Promise<void> {
  const batch = book.appender(owner)
  try {
    const placed = await Promise.all(blobs.map(async b => ({ id: b.id, place: await batch.append(b.sealed) })))
    await batch.sync()
    await book.commitMany(owner, placed)
  } finally {
    batch.end()
  }
}
