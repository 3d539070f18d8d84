import { isAbsolute } from 'node:path'
import { z } from 'zod'
import { KithError } from '../../errors.ts'
import type { Daemon } from '../daemon.ts'
import type { Route } from './routes.ts'

/**
 * The backup owner's endpoints (docs/api.md, Backups): runs and restores are
 * jobs followed by `backup:job` events; list, ls and forget answer at once.
 */
const absolute = z.string().min(1).max(4096).refine(isAbsolute, 'must be an absolute path')
const schemas = {
  run: z.object({
    paths: z.array(absolute).min(1).max(256),
    to: z.array(z.string().min(1).max(128)).max(64).optional(),
    replicas: z.number().int().min(1).max(64).optional(),
    name: z.string().max(255).optional()
  }).strict(),
  restore: z.object({ snapshot: z.string().min(1).max(64), path: z.string().max(4096).optional(), out: absolute }).strict(),
  forget: z.object({ keepLast: z.number().int().min(0).optional(), keepDaily: z.number().int().min(0).optional() }).strict()
}

function parse<T> (schema: z.ZodType<T>, value: unknown): T {
  const result = schema.safeParse(value)
  if (!result.success) {
    const issue = result.error.issues[0]
    throw new KithError('BAD_REQUEST', `bad request body: ${issue?.path.join('.') || 'body'}: ${issue?.message ?? 'invalid'}`)
  }
  return result.data
}

export function backupRoutes (daemon: Daemon): Route[] {
  return [
    { method: 'GET', path: /^\/v1\/backup\/snapshots$/, handler: async () => ({ snapshots: await daemon.backup.list() }) },
    {
      method: 'GET',
      path: /^\/v1\/backup\/snapshots\/(?<ref>[^/]+)\/ls$/,
      handler: async ({ params, query }) => await daemon.backup.ls(params.ref!, query.get('path') ?? undefined)
    },
    { method: 'POST', path: /^\/v1\/backup\/runs$/, handler: async ({ body }) => ({ job: daemon.backup.run(parse(schemas.run, body)) }) },
    { method: 'POST', path: /^\/v1\/backup\/restores$/, handler: async ({ body }) => ({ job: daemon.backup.restore(parse(schemas.restore, body)) }) },
    { method: 'GET', path: /^\/v1\/backup\/jobs$/, handler: async () => ({ jobs: daemon.backup.listJobs() }) },
    { method: 'GET', path: /^\/v1\/backup\/jobs\/(?<id>[0-9a-f]{8})$/, handler: async ({ params }) => ({ job: daemon.backup.getJob(params.id!) }) },
    { method: 'POST', path: /^\/v1\/backup\/forget$/, handler: async ({ body }) => await daemon.backup.forget(parse(schemas.forget, body)) }
  ]
}
