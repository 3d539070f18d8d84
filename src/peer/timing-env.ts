import { KithError } from '../errors.ts'

/** the shortest duration the environment may set: retries stay well apart, waits long enough for a LAN */
export const MIN_ENV_MS = 100

/**
 * A duration in ms from the environment variable `name`, or `fallback` when
 * it is unset: the waits of the network layer a person may want to tune for
 * their links (a dial-back's timeout, the hole punch's window), and the caps
 * on retry backoffs (`backoffCap`). Read once, as the daemon loads. A value
 * that is not a whole number of ms from MIN_ENV_MS to `max` stops the start,
 * naming the variable and the range.
 */
export function msFromEnv (name: string, fallback: number, max: number, env: NodeJS.ProcessEnv = process.env): number {
  const raw = env[name]
  if (raw == null || raw === '') return fallback
  const ms = Number(raw)
  if (!Number.isInteger(ms) || ms < MIN_ENV_MS || ms > max) {
    throw new KithError('CONFIG_INVALID', `${name}=${raw} is not a whole number of milliseconds from ${MIN_ENV_MS} to ${max}; fix or unset it (unset, it is ${fallback} ms)`)
  }
  return ms
}

/**
 * The cap on a retry backoff: `fallback`, unless the environment variable
 * `name` lowers it (it can't raise it). Backoffs grow long in a long outage
 * (presence's redial to 30 s, a relay reservation to 5 minutes), which is
 * right for users and makes a test whose friend or relay comes back wait
 * that long for nothing: test daemons run with lower caps
 * (test/helpers/testnet.ts, TEST_DAEMON_ENV).
 */
export function backoffCap (name: string, fallback: number, env: NodeJS.ProcessEnv = process.env): number {
  return msFromEnv(name, fallback, fallback, env)
}
