import { describe, it, expect } from 'vitest'
import { execFile } from 'node:child_process'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { NODE } from '../helpers/testnet.ts'

/**
 * The daemon's last resort (src/services/last-resort.ts), in a real process
 * of its own: a rejection nobody handles is logged with its stack and the
 * process goes on; an uncaught exception is logged and ends it with 70.
 */
const MODULE = join(dirname(dirname(dirname(fileURLToPath(import.meta.url)))), 'src', 'services', 'last-resort.ts')

async function run (body: string): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const script = `import { installLastResort } from ${JSON.stringify(MODULE)}\ninstallLastResort()\n${body}`
  return await new Promise(resolve => {
    execFile(NODE, ['--input-type=module', '-e', script], { timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err == null ? 0 : typeof err.code === 'number' ? err.code : null, stdout, stderr })
    })
  })
}

describe('the last resort', () => {
  it('logs a rejection nobody handled, with its stack, and keeps the process running', async () => {
    // Node checks for unhandled rejections before it runs the next setImmediate: without the handler it would end here
    const { code, stdout, stderr } = await run(`
      async function backgroundTask () { throw new Error('the database refused a write') }
      backgroundTask()
      setImmediate(() => { setImmediate(() => { console.log('still running') }) })
    `)
    expect(code).toBe(0)
    expect(stdout).toContain('still running')
    expect(stderr).toContain('BUG: a promise was rejected and nothing handled it')
    expect(stderr).toContain('the database refused a write')
    expect(stderr).toContain('backgroundTask') // the stack
  })

  it('logs an uncaught exception with its stack and exits with 70', async () => {
    const { code, stdout, stderr } = await run(`
      function timerWork () { throw new Error('state half changed') }
      setImmediate(timerWork)
      setImmediate(() => { setImmediate(() => { console.log('still running') }) })
    `)
    expect(code).toBe(70)
    expect(stdout).not.toContain('still running')
    expect(stderr).toContain('BUG: an exception escaped every handler')
    expect(stderr).toContain('timerWork')
  })
})
