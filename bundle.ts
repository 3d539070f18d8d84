import { build, type Metafile } from 'esbuild'
import { readdir, readFile, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

/**
 * The JavaScript kith runs as a package: its two entry points (the CLI and
 * the daemon's heap set-up, both loaded by bin/kith.js) bundled by esbuild,
 * with what they import from node_modules, into dist/ (`npm run build`,
 * which `npm pack` runs). A start of the daemon loaded ~800 modules one by
 * one, 0.8 s of the ~1.2 s of CPU a start took; a bundle is a few files.
 * Code a command or an add-on loads on first use stays behind a dynamic
 * import, in a chunk of its own (splitting), so a thin command such as
 * `kith status` still loads no libp2p.
 *
 * Left out of the bundle, loaded from node_modules as they are:
 * - classic-level (LevelDB) and ssh2: native code, found by path at run time;
 * - lean-qr: the dashboard serves its file to the browser (api/dashboard.ts).
 *
 * Source maps link each file back to src/ (sources inlined: the package
 * ships no src/); `node --enable-source-maps` uses them in stack traces.
 * The licences of the packages bundled in go beside it, in
 * THIRD-PARTY-LICENSES.txt.
 */
export const ENTRY_POINTS = ['src/services/cli/main.ts', 'src/services/daemon-heap.ts']

const ROOT = fileURLToPath(new URL('.', import.meta.url))

export async function bundle (outdir = 'dist'): Promise<void> {
  const { metafile } = await build({
    absWorkingDir: ROOT,
    entryPoints: ENTRY_POINTS,
    outbase: 'src',
    outdir,
    entryNames: '[dir]/[name]',
    // ES modules by their name, wherever they lie: a .js file outside a package of "type": "module"
    // (a test run's bundle in node_modules/.cache) was parsed twice, as Node detected its syntax
    outExtension: { '.js': '.mjs' },
    chunkNames: 'chunks/[name]-[hash]',
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node22.18',
    external: ['classic-level', 'ssh2', 'lean-qr'],
    // CommonJS packages inside an ES module bundle still call require()
    banner: { js: "import { createRequire as __kithCreateRequire } from 'node:module'; const require = __kithCreateRequire(import.meta.url);" },
    sourcemap: 'linked',
    sourcesContent: true,
    legalComments: 'eof',
    metafile: true,
    logLevel: 'warning'
  })
  await writeFile(resolve(ROOT, outdir, 'THIRD-PARTY-LICENSES.txt'), await licences(metafile))
}

/** Each bundled package's name, version and licence text (its LICENSE file, or the licence its package.json names) */
async function licences (metafile: Metafile): Promise<string> {
  const folders = new Set<string>()
  for (const input of Object.keys(metafile.inputs)) {
    const match = /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(input)
    if (match != null) folders.add(match[1]!)
  }
  const parts: string[] = []
  for (const folder of [...folders].sort()) {
    const pkg = JSON.parse(await readFile(join(ROOT, folder, 'package.json'), 'utf8')) as { name: string, version: string, license?: string }
    // LICENSE, LICENSE.md, or one file per licence offered (LICENSE-MIT, LICENSE-APACHE)
    const files = (await readdir(join(ROOT, folder))).filter(f => /^(?:licen[cs]e|copying)(?:[.-]|$)/i.test(f)).sort()
    const texts = await Promise.all(files.map(async f => (await readFile(join(ROOT, folder, f), 'utf8')).trim()))
    const text = texts.length > 0 ? texts.join('\n\n') : `${pkg.license ?? 'no licence named'} (the package has no licence file)`
    parts.push(`${pkg.name} ${pkg.version}\n\n${text}\n`)
  }
  return `kith's bundle (dist/) holds code of these packages, under these licences.\n\n${parts.join('\n' + '-'.repeat(72) + '\n\n')}`
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await bundle(process.argv[2])
