import { setTimeout as sleep } from 'node:timers/promises'
import { RETRY_BASE_MS } from './constants.ts'

/**
 * How long to wait before attempt `attempt` (1 for the first retry):
 * exponential backoff with "full jitter" between half and all of it, so
 * connections that failed together don't come back together; a server's
 * Retry-After (in ms) replaces it. Both are capped at `maxMs`.
 */
export function backoffMs (attempt: number, maxMs: number, retryAfterMs: number | null = null, random = Math.random): number {
  if (retryAfterMs != null) return Math.min(retryAfterMs, maxMs)
  const ceiling = Math.min(maxMs, RETRY_BASE_MS * 2 ** Math.min(attempt - 1, 20))
  return Math.round(ceiling * (0.5 + random() / 2))
}

/**
 * A Retry-After header in ms from `nowMs` (wall clock, as the HTTP-date is):
 * either delay-seconds (`120`) or an HTTP-date (`Wed, 21 Oct 2015 07:28:00 GMT`);
 * a date in the past is 0. Null when absent or unreadable.
 */
export function parseRetryAfter (value: string | null | undefined, nowMs = Date.now()): number | null {
  if (value == null) return null
  const text = value.trim()
  if (/^\d+$/.test(text)) return Number(text) * 1000
  const at = Date.parse(text)
  if (Number.isNaN(at) || !/[a-z]/i.test(text)) return null
  return Math.max(0, at - nowMs)
}

/** Waits `ms`, or rejects with the signal's reason. */
export async function wait (ms: number, signal: AbortSignal): Promise<void> {
  try {
    await sleep(ms, undefined, { signal })
  } catch (err) {
    throw signal.aborted ? signal.reason : err
  }
}
