import { build } from 'esbuild'
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
 */
export const ENTRY_POINTS = ['src/services/cli/main.ts', 'src/services/daemon-heap.ts']

const ROOT = fileURLToPath(new URL('.', import.meta.url))

export async function bundle (outdir = 'dist'): Promise<void> {
  await build({
    absWorkingDir: ROOT,
    entryPoints: ENTRY_POINTS,
    outbase: 'src',
    outdir,
    entryNames: '[dir]/[name]',
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
    logLevel: 'warning'
  })
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await bundle(process.argv[2])
