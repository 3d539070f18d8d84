import { KithError } from '../errors.ts'

/** the lowest cap the environment may set: retries stay well apart from each other */
export const MIN_BACKOFF_CAP_MS = 100

/**
 * The cap on a retry backoff: `fallback`, unless the environment variable
 * `name` lowers it. Backoffs grow long in a long outage (presence's redial
 * to 30 s, a relay reservation to 5 minutes), which is right for users and
 * makes a test whose friend or relay comes back wait that long for nothing:
 * test daemons run with lower caps (test/helpers/testnet.ts, TEST_DAEMON_ENV).
 * A cap can only be lowered; a value that is not a whole number of ms from
 * MIN_BACKOFF_CAP_MS to `fallback` stops the start, naming the variable.
 */
export function backoffCap (name: string, fallback: number, env: NodeJS.ProcessEnv = process.env): number {
  const raw = env[name]
  if (raw == null || raw === '') return fallback
  const ms = Number(raw)
  if (!Number.isInteger(ms) || ms < MIN_BACKOFF_CAP_MS || ms > fallback) {
    throw new KithError('CONFIG_INVALID', `${name}=${raw} is not a whole number of milliseconds from ${MIN_BACKOFF_CAP_MS} to ${fallback}; fix or unset it (unset, the cap is ${fallback} ms)`)
  }
  return ms
}
