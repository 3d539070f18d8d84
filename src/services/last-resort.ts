/**
 * The daemon's last resort against its own bugs: a promise rejected with
 * nobody to handle it, or an exception thrown outside any caller. Background
 * work routes its failures to its own errors and events (a transfer fails
 * with its error, the collector records its last error, presence retries);
 * whatever escapes that is a bug, and is logged loudly, with its stack.
 *
 * - An unhandled rejection is logged and the daemon keeps running. Nobody
 *   was waiting on that promise, so no state is left waiting on it either,
 *   and friends' connections and the fetches in flight are worth more than
 *   a fresh start. (Node's default, since v15, ends the process.)
 * - An uncaught exception is logged and the daemon exits with status 70
 *   (EX_SOFTWARE): it was thrown in the middle of some synchronous work that
 *   may have left state half changed, and Node does not promise a sound
 *   process after one. A restart recovers as after a kill: partials kept,
 *   fetches queued again.
 */
export const UNCAUGHT_EXIT_CODE = 70

export interface LastResortInit {
  /** @default a line on stderr */
  log?: (line: string) => void
  /** @default process.exit */
  exit?: (code: number) => void
}

function describe (reason: unknown): string {
  return reason instanceof Error ? (reason.stack ?? `${reason.name}: ${reason.message}`) : String(reason)
}

/** Installs both handlers on `process`; returns a function that removes them. */
export function installLastResort (init: LastResortInit = {}): () => void {
  const log = init.log ?? (line => { process.stderr.write(line + '\n') })
  const exit = init.exit ?? (code => process.exit(code))
  const onRejection = (reason: unknown): void => {
    log(`kith: BUG: a promise was rejected and nothing handled it; the daemon keeps running. Please report this with the stack:\n${describe(reason)}`)
  }
  const onException = (err: unknown): void => {
    log(`kith: BUG: an exception escaped every handler; the daemon stops (exit ${UNCAUGHT_EXIT_CODE}) and recovers on its next start. Please report this with the stack:\n${describe(err)}`)
    exit(UNCAUGHT_EXIT_CODE)
  }
  process.on('unhandledRejection', onRejection)
  process.on('uncaughtException', onException)
  return () => {
    process.off('unhandledRejection', onRejection)
    process.off('uncaughtException', onException)
  }
}
