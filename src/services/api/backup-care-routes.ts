import { isAbsolute } from 'node:path'
import { z } from 'zod'
import { KithError } from '../../errors.ts'
import { parseTrailQuery } from '../backup/audit-trail.ts'
import { ledger } from '../backup/health.ts'
import { scheduleRequest } from '../backup/schedule.ts'
import type { Daemon } from '../daemon.ts'
import type { Route } from './routes.ts'

/** Looking after backups (docs/api.md, Backups): audits now and their trail, health, the ledger, schedules. */
const auditBody = z.object({ friend: z.string().min(1).max(128).optional() }).strict()
const scheduleBody = scheduleRequest.refine(r => r.paths.every(p => isAbsolute(p)), 'paths must be absolute')

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
    { method: 'GET', path: /^\/v1\/backup\/audits$/, handler: async ({ query }) => ({ audits: await daemon.care.trail(parseTrailQuery(query)) }) },
    { method: 'GET', path: /^\/v1\/backup\/health$/, handler: async () => await daemon.care.health() },
    {
      method: 'GET',
      path: /^\/v1\/backup\/ledger$/,
      handler: async () => ({ friends: ledger(daemon.hosting.hosted(), (await daemon.care.health()).hosts) })
    },
    { method: 'GET', path: /^\/v1\/backup\/schedules$/, handler: async () => ({ schedules: await daemon.care.schedules.list() }) },
    {
      method: 'POST',
      path: /^\/v1\/backup\/schedules$/,
      handler: async ({ body }) => {
        const parsed = scheduleBody.safeParse(body)
        if (!parsed.success) {
          const issue = parsed.error.issues[0]
          throw new KithError('BAD_REQUEST', `bad request body: ${issue?.path.join('.') || 'body'}: ${issue?.message ?? 'invalid'}`)
        }
        return { schedule: await daemon.care.schedules.add(parsed.data) }
      }
    },
    { method: 'DELETE', path: /^\/v1\/backup\/schedules\/(?<id>[^/]+)$/, handler: async ({ params }) => ({ schedule: await daemon.care.schedules.remove(params.id!) }) }
  ]
}
