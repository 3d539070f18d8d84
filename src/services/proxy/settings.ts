import { z } from 'zod'
import { KithError } from '../../errors.ts'
import { DEFAULT_CACHE_BYTES } from './constants.ts'

/**
 * The local proxy's settings: config.json's `proxy` section, read once at
 * start (docs/proxy.md, "Settings").
 *
 *   { "proxy": { "port": 9900, "cacheBytes": 4294967296, "allowPrivateOrigins": false, "serveFriends": true } }
 */
export interface ProxySettings {
  /** the port on 127.0.0.1; 0: any free port @default 0 */
  port: number
  /** the cache's size bound, least recently used entries go first; 0: nothing kept @default DEFAULT_CACHE_BYTES */
  cacheBytes: number
  /** origins on loopback, private and link-local addresses are served (a LAN's own server, tests) @default false */
  allowPrivateOrigins: boolean
  /** friends may ask what this node holds and fetch its chunks (/kith/swarm/2.0.0); false: the protocol is not offered (asking friends still works) @default true */
  serveFriends: boolean
}

const schema = z.object({
  port: z.number().int().min(0).max(65535).optional(),
  cacheBytes: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
  allowPrivateOrigins: z.boolean().optional(),
  serveFriends: z.boolean().optional()
}).strict()

/** `section` is config.json's `proxy` as written (or undefined); CONFIG_INVALID naming the field otherwise. */
export function proxySettings (section: unknown, configPath: string): ProxySettings {
  const result = schema.safeParse(section ?? {})
  if (!result.success) {
    const issue = result.error.issues[0]
    throw new KithError('CONFIG_INVALID', `${configPath}: proxy.${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'}; see docs/proxy.md`)
  }
  const c = result.data
  return { port: c.port ?? 0, cacheBytes: c.cacheBytes ?? DEFAULT_CACHE_BYTES, allowPrivateOrigins: c.allowPrivateOrigins ?? false, serveFriends: c.serveFriends ?? true }
}
