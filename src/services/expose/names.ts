import { KithError } from '../../errors.ts'
import { isSafeText, SAFE_TEXT_RULE } from '../../peer/text.ts'
import { MAX_DESCRIPTION_LENGTH, MAX_NAME_LENGTH } from './constants.ts'

/**
 * What a service's name, description, host and port may be, checked the
 * same in the CLI (which loads no zod: test/services/cli-thin.spec.ts), the
 * API and the wire. A name is what friends type in `kith connect
 * FRIEND:NAME` and what crosses the wire: lowercase letters, digits and
 * dashes, like a DNS label, so it needs no escaping anywhere.
 */
export const SERVICE_NAME = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/

export function isServiceName (value: unknown): value is string {
  return typeof value === 'string' && value.length <= MAX_NAME_LENGTH && SERVICE_NAME.test(value)
}

export function checkServiceName (value: unknown): string {
  if (!isServiceName(value)) {
    throw new KithError('BAD_REQUEST', `a service name is 1 to ${MAX_NAME_LENGTH} lowercase letters, digits and dashes (not at either end), like blog or photo-album; got ${JSON.stringify(value)}`)
  }
  return value
}

export function checkDescription (value: unknown): string {
  if (typeof value !== 'string' || value.length > MAX_DESCRIPTION_LENGTH || !isSafeText(value)) {
    throw new KithError('BAD_REQUEST', `a description is at most ${MAX_DESCRIPTION_LENGTH} characters and ${SAFE_TEXT_RULE}`)
  }
  return value
}

export function checkPort (value: unknown, what = 'port'): number {
  const port = typeof value === 'string' && /^\d{1,5}$/.test(value) ? Number(value) : value
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new KithError('BAD_REQUEST', `${what} must be a whole number from 1 to 65535; got ${JSON.stringify(value)}`)
  }
  return port
}

/** An IPv4 or IPv6 literal, or a host name (letters, digits, dots, dashes): where the exposing node connects, and nowhere else. */
export function checkHost (value: unknown): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > 253 ||
    !(/^[0-9a-zA-Z.-]+$/.test(value) || /^[0-9a-fA-F:.]+$/.test(value))) {
    throw new KithError('BAD_REQUEST', `--host wants an address like 127.0.0.1, ::1 or localhost; got ${JSON.stringify(value)}`)
  }
  return value
}

/**
 * `FRIEND:NAME` as `kith connect` takes it. A friend's name may hold a
 * colon; a service name can't, so the last colon splits them.
 */
export function parseTarget (text: string): { friend: string, service: string } {
  const at = text.lastIndexOf(':')
  if (at <= 0 || at === text.length - 1) {
    throw new KithError('USAGE', `want FRIEND:SERVICE, like bob:blog (see \`kith services bob\`); got ${JSON.stringify(text)}`)
  }
  return { friend: text.slice(0, at), service: checkServiceName(text.slice(at + 1)) }
}
