import { KithError } from '../errors.ts'

/**
 * The services one friend can grant another. A grant is directional: what I
 * grant you decides what you may use on my node.
 *
 * - files:  fetch what I share with you, and serve chunks of it to my friends
 * - backup: keep encrypted backups on my disk, within a quota
 * - relay:  relay your connections through me when NAT is in the way
 * - locate: ask me where our common friends are now
 */
export const SERVICES = ['files', 'backup', 'relay', 'locate'] as const
export type Service = typeof SERVICES[number]

/**
 * Per-service grants of friend services (src/services/expose) are not in
 * SERVICES: `service:NAME` names one service I expose, and who holds it is
 * kept with that service (its list of friends), not in the friend record.
 * Invites don't carry them and grant sync doesn't tell them: a friend learns
 * what I offer them by asking (`kith services`). They are granted and
 * revoked with the same commands and endpoints as the others (`kith friend
 * grant bob service:blog`), and shown beside them (`kith friends`).
 */
export const SERVICE_GRANT_PREFIX = 'service:'

/** The service named by a `service:NAME` grant, or null for any other grant. */
export function serviceGrant (value: string): string | null {
  return value.startsWith(SERVICE_GRANT_PREFIX) ? value.slice(SERVICE_GRANT_PREFIX.length) : null
}

/** What an invite grants when `--grant` is not given. */
export const DEFAULT_GRANTS: readonly Service[] = ['files', 'locate', 'relay']

export function isService (value: unknown): value is Service {
  return typeof value === 'string' && (SERVICES as readonly string[]).includes(value)
}

/** Validates a list of service names from outside, returning it sorted and without duplicates. */
export function parseGrants (values: readonly unknown[]): Service[] {
  const out = new Set<Service>()
  for (const value of values) {
    if (!isService(value)) {
      throw new KithError('BAD_REQUEST', `unknown service ${JSON.stringify(value)}; choose from ${SERVICES.join(', ')}`)
    }
    out.add(value)
  }
  return [...out].sort()
}
