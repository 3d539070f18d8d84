import { registerHooks } from 'node:module'
import { writeFileSync } from 'node:fs'

/**
 * `KITH_MODULE_LOG=FILE node --import test/helpers/module-log.ts ...`: the
 * process writes the URL of every module it loaded, imported or required (Node
 * built-ins too, as node:...), one a line, to FILE as it exits.
 * test/services/cli-thin.spec.ts reads it.
 */
const file = process.env.KITH_MODULE_LOG
if (file == null || file === '') throw new Error('module-log.ts wants KITH_MODULE_LOG: the file to write the list of modules to')
const loaded: string[] = []
registerHooks({
  load (url, context, nextLoad) {
    loaded.push(url)
    return nextLoad(url, context)
  }
})
process.on('exit', () => writeFileSync(file, loaded.join('\n') + '\n'))
