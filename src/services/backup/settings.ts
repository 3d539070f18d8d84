import { z } from 'zod'
import { KithError } from '../../errors.ts'

/**
 * The `backup` section of config.json (read once at start, like the limits;
 * docs/backup.md, Audits and Repair): how often hosts are audited and how
 * long one may stay silent before repair copies its blobs elsewhere.
 *
 *   { "backup": { "auditEveryMs": 43200000, "unreachableAfterMs": 259200000 } }
 */
export interface CareSettings {
  /** 0 turns scheduled audits off (`kith backup audit` still works) */
  auditEveryMs?: number
  unreachableAfterMs?: number
}

const HOUR = 3600_000
const schema = z.object({
  auditEveryMs: z.union([z.literal(0), z.number().int().min(HOUR).max(366 * 24 * HOUR)]).optional(),
  unreachableAfterMs: z.number().int().min(HOUR).max(366 * 24 * HOUR).optional()
}).strict()

/** `section` is config.json's `backup` as written (or undefined); CONFIG_INVALID naming the field otherwise. */
export function careSettings (section: unknown, configPath: string): CareSettings {
  const result = schema.safeParse(section ?? {})
  if (!result.success) {
    const issue = result.error.issues[0]
    throw new KithError('CONFIG_INVALID', `${configPath}: backup.${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'} (milliseconds, an hour to a year; auditEveryMs may be 0); see docs/backup.md`)
  }
  const c = result.data
  return { ...(c.auditEveryMs !== undefined ? { auditEveryMs: c.auditEveryMs } : {}), ...(c.unreachableAfterMs !== undefined ? { unreachableAfterMs: c.unreachableAfterMs } : {}) }
}
