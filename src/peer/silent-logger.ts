import type { ComponentLogger, Logger } from '@libp2p/interface'

/**
 * libp2p's logger when no DEBUG namespace is set: one shared logger that
 * does nothing, so no debug instances are made.
 *
 * libp2p (3.x, @libp2p/logger 6) makes a logger for every stream it opens or
 * accepts, and one for each stream's protocol negotiation: three `debug`
 * instances each (the log, its error and its trace), even when nothing is
 * enabled. A backup's put-many and get-many open a stream per request, and
 * the profiles of the backup bench put those instances at about 1.5% of the
 * owner's CPU and 2.5% of a host's while restoring. With DEBUG set, libp2p's
 * own logger is used, as before. (Namespaces are read from DEBUG when a
 * process starts; kith never enables them later.)
 */
export function libp2pLogger (env: NodeJS.ProcessEnv = process.env): ComponentLogger | undefined {
  if (env.DEBUG != null && env.DEBUG.trim() !== '') return undefined
  return { forComponent: () => SILENT }
}

const nothing = (): void => {}

const SILENT: Logger = Object.assign(nothing.bind(null), {
  error: nothing,
  trace: nothing,
  enabled: false,
  newScope: (): Logger => SILENT
})
