import { z } from 'zod'
import { KithError } from '../../errors.ts'
import type { DownloadSettings } from './addon.ts'
import { DEFAULT_MAX_ACTIVE, DEFAULT_MIN_FREE_BYTES } from './constants.ts'

/**
 * The download queue's settings: config.json's `downloads` section (read
 * once at start, like the limits), over defaults; proxies default from the
 * environment, as curl and aria2 take them. docs/downloads.md lists them.
 *
 *   { "downloads": { "maxActive": 3, "minFreeBytes": 1073741824,
 *                    "ipv6": false, "dns": ["9.9.9.9"], "retries": 5 } }
 */
export interface QueueSettings {
  /** downloads running at once */
  maxActive: number
  /** the queue pauses while the destination's disk has less free than this */
  minFreeBytes: number
  network: DownloadSettings
}

const proxyUrl = z.string().min(1).max(2048).nullable()
const schema = z.object({
  maxActive: z.number().int().min(1).max(32).optional(),
  minFreeBytes: z.number().int().min(0).optional(),
  proxy: z.object({ http: proxyUrl.optional(), https: proxyUrl.optional(), all: proxyUrl.optional(), noProxy: z.string().max(4096).nullable().optional() }).strict().optional(),
  ipv6: z.boolean().optional(),
  dns: z.array(z.ipv4().or(z.ipv6())).max(8).optional(),
  connectTimeoutMs: z.number().int().min(100).max(600_000).optional(),
  readTimeoutMs: z.number().int().min(100).max(3_600_000).optional(),
  retries: z.number().int().min(0).max(100).optional(),
  maxRetryWaitMs: z.number().int().min(0).max(3_600_000).optional()
}).strict()

/** `section` is config.json's `downloads` as written (or undefined); CONFIG_INVALID naming the field otherwise. */
export function queueSettings (section: unknown, configPath: string, env: NodeJS.ProcessEnv = process.env): QueueSettings {
  const result = schema.safeParse(section ?? {})
  if (!result.success) {
    const issue = result.error.issues[0]
    throw new KithError('CONFIG_INVALID', `${configPath}: downloads.${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'}; see docs/downloads.md`)
  }
  const c = result.data
  const fromEnv = (name: string): string | null => env[name] ?? env[name.toLowerCase()] ?? null
  return {
    maxActive: c.maxActive ?? DEFAULT_MAX_ACTIVE,
    minFreeBytes: c.minFreeBytes ?? DEFAULT_MIN_FREE_BYTES,
    network: {
      proxy: {
        http: c.proxy?.http !== undefined ? c.proxy.http : fromEnv('HTTP_PROXY'),
        https: c.proxy?.https !== undefined ? c.proxy.https : fromEnv('HTTPS_PROXY'),
        all: c.proxy?.all !== undefined ? c.proxy.all : fromEnv('ALL_PROXY'),
        noProxy: c.proxy?.noProxy !== undefined ? c.proxy.noProxy : fromEnv('NO_PROXY')
      },
      ipv6: c.ipv6 ?? true,
      dns: c.dns ?? [],
      connectTimeoutMs: c.connectTimeoutMs ?? 30_000,
      readTimeoutMs: c.readTimeoutMs ?? 60_000,
      retries: c.retries ?? 5,
      maxRetryWaitMs: c.maxRetryWaitMs ?? 60_000
    }
  }
}
