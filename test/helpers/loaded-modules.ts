import { readFile, realpath } from 'node:fs/promises'
import { fileURLToPath, pathToFileURL } from 'node:url'

/**
 * The modules a process loaded, from the list test/helpers/module-log.ts
 * wrote: file URLs and node:... built-ins, one a line. A file of the bundle
 * the process ran (KITH_DIST: bundle.ts) stands for the modules bundled into
 * it: esbuild starts each module's code with a line naming it
 * (`// node_modules/libp2p/dist/src/index.js`, `// src/peer/node.ts`), and
 * each of those is listed instead, as `/node_modules/...` or `/src/...`, so
 * one assertion holds for the sources and for the bundle alike.
 */
export async function loadedModules (log: string, dist = process.env.KITH_DIST): Promise<string[]> {
  const urls = (await readFile(log, 'utf8')).split('\n').filter(Boolean)
  if (dist == null || dist === '') return urls
  // Node names modules by their real path (a node_modules that is a link is resolved)
  const bundle = pathToFileURL(await realpath(dist)).href + '/'
  const out = new Set<string>()
  for (const url of urls) {
    if (!url.startsWith(bundle)) {
      out.add(url)
      continue
    }
    const text = await readFile(fileURLToPath(url), 'utf8')
    // (a module can be named twice: at its imports, and again where its code follows the modules it imports)
    // (a path from a checkout whose node_modules is a link begins with the link's target: ../../x/node_modules/...)
    for (const [, path] of text.matchAll(/^\/\/ (?:\S*?\/)?((?:src|node_modules)\/\S+)$/gm)) out.add(`/${path!}`)
  }
  return [...out]
}
