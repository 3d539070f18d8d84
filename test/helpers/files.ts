import { readdir, readFile, stat } from 'node:fs/promises'
import { createHash } from 'node:crypto'
import { join, relative } from 'node:path'

/** What integration tests ask of the files a fetch wrote: hashes, whole trees, presence. */

/** SHA-256 of a file, hex. */
export async function sha (path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex')
}

/** Every file under `root` (relative path) with its SHA-256; folders only by the files in them. */
export async function tree (root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {}
  async function walk (dir: string): Promise<void> {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name)
      if (entry.isDirectory()) await walk(path)
      else out[relative(root, path)] = await sha(path)
    }
  }
  await walk(root)
  return out
}

export async function exists (path: string): Promise<boolean> {
  return await stat(path).then(() => true, () => false)
}
