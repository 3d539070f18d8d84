import { z } from 'zod'
import { KithError } from '../../errors.ts'
import { ledger } from '../backup/health.ts'
import type { Daemon } from '../daemon.ts'
import type { Route } from './routes.ts'

/** Looking after backups (docs/api.md, Backups): audits now, health, the ledger. */
const auditBody = z.object({ friend: z.string().min(1).max(128).optional() }).strict()

export function backupCareRoutes (daemon: Daemon): Route[] {
  return [
    {
      method: 'POST',
      path: /^\/v1\/backup\/audits$/,
      handler: async ({ body }) => {
        const parsed = auditBody.safeParse(body ?? {})
        if (!parsed.success) throw new KithError('BAD_REQUEST', 'bad request body: give {} to audit every host, or { "friend": NAME }')
        return await daemon.care.audit(parsed.data.friend)
      }
    },
    { method: 'GET', path: /^\/v1\/backup\/health$/, handler: async () => await daemon.care.health() },
    {
      method: 'GET',
      path: /^\/v1\/backup\/ledger$/,
      handler: async () => ({ friends: ledger(daemon.hosting.hosted(), (await daemon.care.health()).hosts) })
    }
  ]
}
