import { z } from 'zod'
import { KithError } from '../../errors.ts'
import { parseSize } from '../backup/quota-text.ts'
import type { Daemon } from '../daemon.ts'
import type { Route } from './routes.ts'

/** The backup host's endpoints (docs/api.md, Backup hosting): what I keep for friends, and their quotas. */
const quotaBody = z.object({ quota: z.union([z.number(), z.string().max(32)]) }).strict()

export function backupHostRoutes (daemon: Daemon): Route[] {
  return [
    { method: 'GET', path: /^\/v1\/backup\/hosted$/, handler: async () => ({ hosted: daemon.hosting.hosted() }) },
    {
      method: 'PUT',
      path: /^\/v1\/friends\/(?<name>[^/]+)\/quota$/,
      handler: async ({ params, body }) => {
        const parsed = quotaBody.safeParse(body)
        if (!parsed.success) throw new KithError('BAD_REQUEST', 'bad request body: give { "quota": SIZE }, a number of bytes or a size like "20GB"')
        return { hosted: await daemon.hosting.setQuota(params.name!, parseSize(parsed.data.quota)) }
      }
    }
  ]
}
