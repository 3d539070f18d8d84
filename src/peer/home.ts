import { open, mkdir, rename, chmod } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join, resolve, dirname } from 'node:path'
import { randomBytes } from 'node:crypto'

/**
 * The home folder holds everything a node is: its key, its database and the
 * files that tell the CLI where the running daemon's API is.
 *
 * Resolution order: `--home`, then `KITH_HOME`, then `~/.kith`.
 */
export interface HomePaths {
  root: string
  identity: string
  db: string
  apiInfo: string
  apiToken: string
}

export function resolveHome (explicit?: string): string {
  const chosen = explicit ?? process.env.KITH_HOME ?? join(homedir(), '.kith')
  return resolve(chosen)
}

export function homePaths (root: string): HomePaths {
  return {
    root,
    identity: join(root, 'identity.key'),
    db: join(root, 'db'),
    apiInfo: join(root, 'api.json'),
    apiToken: join(root, 'api.token')
  }
}

export async function ensureHome (root: string): Promise<void> {
  await mkdir(root, { recursive: true, mode: 0o700 })
}

/**
 * Writes a file so that a crash at any moment leaves either the old content or
 * the new, never a torn file: write a sibling temp file, fsync it, rename it
 * over the target, fsync the folder.
 */
export async function writeFileAtomic (path: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`
  const handle = await open(tmp, 'wx', mode)
  try {
    await handle.writeFile(data)
    await handle.sync()
  } finally {
    await handle.close()
  }
  await chmod(tmp, mode)
  await rename(tmp, path)
  await syncDir(dirname(path))
}

/** fsyncs a folder, so a rename or a new file in it survives a power loss. */
export async function syncDir (path: string): Promise<void> {
  const handle = await open(path, 'r')
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}
