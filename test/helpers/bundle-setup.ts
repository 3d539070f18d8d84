import { mkdir, mkdtemp, readdir, rm, stat } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { bundle } from '../../bundle.ts'

const ROOT = dirname(dirname(dirname(fileURLToPath(import.meta.url))))

const PREFIX = 'kith-test-bundle-'
/** a run that was killed leaves its bundle behind; none runs this long */
const LEFT_OVER_AFTER_MS = 6 * 60 * 60_000

async function removeLeftOvers (cache: string): Promise<void> {
  for (const name of await readdir(cache)) {
    if (!name.startsWith(PREFIX)) continue
    const info = await stat(join(cache, name)).catch(() => null)
    if (info != null && Date.now() - info.mtimeMs > LEFT_OVER_AFTER_MS) await rm(join(cache, name), { recursive: true, force: true })
  }
}

/**
 * Builds the bundle an installed kith runs (bundle.ts) from the sources as
 * they are now, into a folder of its own under node_modules/.cache/ (inside
 * the checkout, as the bundle loads classic-level and ssh2 from node_modules;
 * not in dist/, which `npm run build` empties). Returns the folder, and what
 * removes it again.
 */
export async function buildBundle (): Promise<{ dir: string, remove: () => Promise<void> }> {
  const cache = join(ROOT, 'node_modules', '.cache')
  await mkdir(cache, { recursive: true })
  await removeLeftOvers(cache)
  const dir = await mkdtemp(join(cache, PREFIX))
  await bundle(dir)
  return { dir, remove: async () => { await rm(dir, { recursive: true, force: true }) } }
}

/**
 * Builds the bundle and names it in KITH_DIST, so every daemon and CLI
 * process started from here on runs it (bin/kith.js): what users run, and
 * less CPU per daemon start. Tests that import src/ in-process still test the
 * sources themselves. A KITH_DIST already set (not empty) is kept. Returns
 * what removes the bundle again.
 */
export async function useBundle (): Promise<() => Promise<void>> {
  if (process.env.KITH_DIST != null && process.env.KITH_DIST !== '') return async () => {}
  const { dir, remove } = await buildBundle()
  process.env.KITH_DIST = dir
  return async () => {
    delete process.env.KITH_DIST
    await remove()
  }
}

/** vitest's global set-up (vitest.config.ts): one bundle for the whole run, removed at its end */
export default async function setup (): Promise<() => Promise<void>> {
  return await useBundle()
}
