import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { bundle } from '../../bundle.ts'

const ROOT = dirname(dirname(dirname(fileURLToPath(import.meta.url))))

/**
 * Builds the bundle an installed kith runs (bundle.ts) from the sources as
 * they are now, into a folder of its own under node_modules/.cache/ (inside
 * the checkout, as the bundle loads classic-level and ssh2 from node_modules;
 * not in dist/, which `npm run build` empties), and names it
 * in KITH_DIST, so every daemon and CLI process started from here on runs it
 * (bin/kith.js): what users run, and half the CPU per daemon start. Tests
 * that import src/ in-process still test the sources themselves. A KITH_DIST
 * already set is kept. Returns what removes the folder again.
 */
export async function useBundle (): Promise<() => Promise<void>> {
  if (process.env.KITH_DIST != null) return async () => {}
  const cache = join(ROOT, 'node_modules', '.cache')
  await mkdir(cache, { recursive: true })
  const dir = await mkdtemp(join(cache, 'kith-test-bundle-'))
  await bundle(dir)
  process.env.KITH_DIST = dir
  return async () => {
    delete process.env.KITH_DIST
    await rm(dir, { recursive: true, force: true })
  }
}

/** vitest's global set-up (vitest.config.ts): one bundle for the whole run, removed at its end */
export default async function setup (): Promise<() => Promise<void>> {
  return await useBundle()
}
