import { isAbsolute } from 'node:path'
import { z } from 'zod'
import { KithError } from '../../errors.ts'
import { SERVICES, serviceGrant } from '../../trust/grants.ts'
import { parseInvite, summarise, checkValidity, MAX_INVITE_TEXT } from '../../trust/invite.ts'
import { PRIORITIES, type Priority } from '../../transfer/scheduler/index.ts'
import type { Daemon } from '../daemon.ts'
import { backupHostRoutes } from './backup-host-routes.ts'
import { backupRoutes } from './backup-routes.ts'
import { backupCareRoutes } from './backup-care-routes.ts'
import { MAX_URL_LENGTH, MAX_URLS_PER_REQUEST } from '../downloads/constants.ts'

/**
 * The API's endpoints, each a path pattern, a zod schema for its body and a
 * call into the daemon. docs/api.md documents them.
 */
export interface RouteContext {
  /** the path's named groups, percent-decoded (the server refuses an escape that does not decode) */
  params: Record<string, string>
  body: unknown
  query: URLSearchParams
}

export interface Route {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE'
  path: RegExp
  handler: (ctx: RouteContext) => Promise<unknown>
}

export interface EventSource {
  on: (event: 'event', listener: (evt: { type: string }) => void) => unknown
  off: (event: 'event', listener: (evt: { type: string }) => void) => unknown
}

const grants = z.array(z.enum(SERVICES)).max(SERVICES.length)
const inviteText = z.string().max(MAX_INVITE_TEXT * 2)

const schemas = {
  createInvite: z.object({
    label: z.string().optional(),
    expiresIn: z.number().int().optional(),
    uses: z.number().int().optional(),
    grants: grants.optional()
  }).strict(),
  inviteText: z.object({ text: inviteText }).strict(),
  acceptInvite: z.object({ text: inviteText, label: z.string().optional(), grants: grants.optional() }).strict(),
  rename: z.object({ label: z.string() }).strict(),
  share: z.object({ path: z.string().min(1).max(4096), with: z.array(z.string().max(128)).max(1000).optional(), name: z.string().max(255).optional() }).strict(),
  fetch: z.object({
    friend: z.string().min(1).max(128),
    share: z.string().min(1).max(255),
    path: z.string().max(1024).optional(),
    dest: z.string().min(1).max(4096).optional(),
    destDir: z.string().min(1).max(4096).optional(),
    priority: z.enum(PRIORITIES as [Priority, ...Priority[]]).optional(),
    minRate: z.number().min(0).finite().optional()
  }).strict().refine(r => (r.dest == null) !== (r.destDir == null), 'give exactly one of dest and destDir'),
  priority: z.object({ priority: z.enum(PRIORITIES as [Priority, ...Priority[]]) }).strict(),
  // friend services: names, ports and hosts are checked by src/services/expose/names.ts (BAD_REQUEST); sizes here
  expose: z.object({
    port: z.number().int(),
    host: z.string().max(253).optional(),
    description: z.string().max(200).optional(),
    to: z.array(z.string().max(128)).max(256).optional()
  }).strict(),
  connect: z.object({ friend: z.string().min(1).max(128), service: z.string().min(1).max(63), port: z.number().int().optional() }).strict(),
  // URLs and the rest are checked by the download service (typed URL_INVALID, URL_UNSUPPORTED...); sizes here
  download: z.object({
    // a URL is checked (URL_INVALID past MAX_URL_LENGTH) by the service; this bounds the body
    urls: z.array(z.string().max(4 * MAX_URL_LENGTH)).min(1).max(MAX_URLS_PER_REQUEST),
    dest: z.string().min(1).max(4096),
    priority: z.enum(PRIORITIES as [Priority, ...Priority[]]).optional(),
    limit: z.union([z.number(), z.string().max(32)]).optional(),
    connections: z.number().int().optional(),
    checksum: z.string().max(100).optional(),
    options: z.record(z.string().max(64), z.unknown()).optional()
  }).strict(),
  downloadLimit: z.object({ limit: z.union([z.number(), z.string().max(32)]).nullable() }).strict()
}

function body<T> (schema: z.ZodType<T>, value: unknown): T {
  const result = schema.safeParse(value)
  if (!result.success) {
    const issue = result.error.issues[0]
    throw new KithError('BAD_REQUEST', `bad request body: ${issue?.path.join('.') || 'body'}: ${issue?.message ?? 'invalid'}`)
  }
  return result.data
}

export function routes (daemon: Daemon): Route[] {
  const friendView = (name: string): unknown => daemon.view(daemon.friends.resolve(name))
  return [
    // the chunk store's size and last clean-up come from file sharing
    { method: 'GET', path: /^\/v1\/status$/, handler: async () => ({ ...daemon.status(), store: daemon.engine.storeStatus(), services: daemon.services.summary(), proxy: daemon.proxy?.info ?? null }) },
    // frees chunks nothing needs any more, now; answers once that cycle is over
    { method: 'POST', path: /^\/v1\/gc$/, handler: async () => ({ gc: await daemon.engine.collect() }) },
    { method: 'GET', path: /^\/v1\/invites$/, handler: async () => ({ invites: await daemon.listInvites() }) },
    {
      method: 'POST',
      path: /^\/v1\/invites$/,
      handler: async ({ body: b }) => {
        const req = body(schemas.createInvite, b)
        return await daemon.createInvite({
          ...(req.label != null ? { label: req.label } : {}),
          ...(req.expiresIn != null ? { expiresIn: req.expiresIn } : {}),
          ...(req.uses != null ? { uses: req.uses } : {}),
          ...(req.grants != null ? { grants: req.grants } : {})
        })
      }
    },
    {
      method: 'POST',
      path: /^\/v1\/invites\/inspect$/,
      handler: async ({ body: b }) => {
        const invite = parseInvite(body(schemas.inviteText, b).text)
        let validity: { valid: boolean, reason?: string } = { valid: true }
        try {
          checkValidity(invite)
        } catch (err) {
          validity = { valid: false, reason: (err as KithError).code }
        }
        return { invite: summarise(invite), ...validity }
      }
    },
    {
      method: 'POST',
      path: /^\/v1\/invites\/accept$/,
      handler: async ({ body: b }) => {
        const req = body(schemas.acceptInvite, b)
        return { friend: await daemon.acceptInvite(req.text, req.label, req.grants) }
      }
    },
    {
      method: 'DELETE',
      path: /^\/v1\/invites\/(?<id>[^/]+)$/,
      handler: async ({ params }) => ({ invite: await daemon.revokeInvite(params.id!) })
    },
    { method: 'GET', path: /^\/v1\/friends$/, handler: async () => ({ friends: daemon.listFriends() }) },
    { method: 'GET', path: /^\/v1\/friends\/(?<name>[^/]+)$/, handler: async ({ params }) => ({ friend: friendView(params.name!) }) },
    {
      method: 'PATCH',
      path: /^\/v1\/friends\/(?<name>[^/]+)$/,
      handler: async ({ params, body: b }) => {
        const friend = await daemon.friends.rename(params.name!, body(schemas.rename, b).label)
        return { friend: daemon.view(friend) }
      }
    },
    {
      method: 'PUT',
      path: /^\/v1\/friends\/(?<name>[^/]+)\/grants\/(?<service>[^/]+)$/,
      handler: async ({ params }) => {
        // `service:NAME`: the per-service grant of a friend service (grants.ts)
        const service = serviceGrant(params.service!)
        if (service != null) await daemon.services.grant(params.name!, service)
        return { friend: service != null ? friendView(params.name!) : daemon.view(await daemon.friends.grant(params.name!, params.service!)) }
      }
    },
    {
      method: 'DELETE',
      path: /^\/v1\/friends\/(?<name>[^/]+)\/grants\/(?<service>[^/]+)$/,
      handler: async ({ params }) => {
        const service = serviceGrant(params.service!)
        if (service != null) await daemon.services.ungrant(params.name!, service)
        return { friend: service != null ? friendView(params.name!) : daemon.view(await daemon.friends.ungrant(params.name!, params.service!)) }
      }
    },
    {
      method: 'POST',
      path: /^\/v1\/friends\/(?<name>[^/]+)\/revoke$/,
      handler: async ({ params }) => ({ friend: await daemon.revokeFriend(params.name!) })
    },
    {
      method: 'POST',
      path: /^\/v1\/friends\/(?<name>[^/]+)\/locate$/,
      handler: async ({ params }) => ({ locate: await daemon.locate.locate(params.name!) })
    },
    { method: 'GET', path: /^\/v1\/friends\/(?<name>[^/]+)\/shares$/, handler: async ({ params }) => await daemon.files.listFriend(params.name!) },
    { method: 'GET', path: /^\/v1\/shares$/, handler: async () => ({ shares: await daemon.files.listMine() }) },
    {
      method: 'POST',
      path: /^\/v1\/shares$/,
      handler: async ({ body: b }) => {
        const req = body(schemas.share, b)
        if (!isAbsolute(req.path)) throw new KithError('BAD_REQUEST', 'path must be absolute')
        return await daemon.files.share({ path: req.path, ...(req.with != null ? { with: req.with } : {}), ...(req.name != null ? { name: req.name } : {}) })
      }
    },
    { method: 'DELETE', path: /^\/v1\/shares\/(?<ref>[^/]+)$/, handler: async ({ params }) => ({ share: await daemon.files.unshare(params.ref!) }) },
    { method: 'GET', path: /^\/v1\/transfers$/, handler: async () => ({ transfers: daemon.files.transfers.list(), eta: daemon.files.transfers.queueEta() }) },
    {
      method: 'POST',
      path: /^\/v1\/transfers$/,
      handler: async ({ body: b }) => {
        const req = body(schemas.fetch, b)
        for (const p of [req.dest, req.destDir]) if (p != null && !isAbsolute(p)) throw new KithError('BAD_REQUEST', 'dest and destDir must be absolute paths')
        return {
          transfer: await daemon.files.fetch({
            friend: req.friend,
            share: req.share,
            ...(req.path != null ? { path: req.path } : {}),
            ...(req.priority != null ? { priority: req.priority } : {}),
            ...(req.minRate != null ? { minRate: req.minRate } : {}),
            ...(req.dest != null ? { dest: req.dest } : { destDir: req.destDir! })
          })
        }
      }
    },
    { method: 'GET', path: /^\/v1\/transfers\/(?<id>[0-9a-f]+)$/, handler: async ({ params }) => ({ transfer: daemon.files.transfers.get(params.id!) }) },
    {
      method: 'POST',
      path: /^\/v1\/transfers\/(?<id>[0-9a-f]+)\/(?<action>pause|resume|cancel)$/,
      handler: async ({ params }) => {
        const transfers = daemon.files.transfers
        const id = params.id!
        const transfer = params.action === 'pause' ? await transfers.pause(id) : params.action === 'resume' ? await transfers.resume(id) : await transfers.cancel(id)
        return { transfer }
      }
    },
    {
      method: 'POST',
      path: /^\/v1\/transfers\/(?<id>[0-9a-f]+)\/priority$/,
      handler: async ({ params, body: b }) => ({ transfer: await daemon.files.transfers.setPriority(params.id!, body(schemas.priority, b).priority) })
    },
    // downloads (docs/downloads.md); pause, resume, cancel and priority also take a friend fetch's id: one queue
    { method: 'GET', path: /^\/v1\/downloads$/, handler: async () => ({ downloads: daemon.downloads.list(), fetches: daemon.files.transfers.list(), ...daemon.downloads.outlook() }) },
    {
      method: 'POST',
      path: /^\/v1\/downloads$/,
      handler: async ({ body: b }) => {
        return await daemon.downloads.add(body(schemas.download, b))
      }
    },
    { method: 'GET', path: /^\/v1\/downloads\/(?<id>[0-9a-f]{4,12})$/, handler: async ({ params }) => daemon.downloads.find(params.id!) },
    {
      method: 'POST',
      path: /^\/v1\/downloads\/(?<id>[0-9a-f]{4,12})\/(?<action>pause|resume|cancel)$/,
      handler: async ({ params }) => await daemon.downloads.control(params.id!, params.action as 'pause' | 'resume' | 'cancel')
    },
    {
      method: 'POST',
      path: /^\/v1\/downloads\/(?<id>[0-9a-f]{4,12})\/priority$/,
      handler: async ({ params, body: b }) => await daemon.downloads.setPriority(params.id!, body(schemas.priority, b).priority)
    },
    {
      method: 'POST',
      path: /^\/v1\/downloads\/(?<id>[0-9a-f]{4,12})\/limit$/,
      handler: async ({ params, body: b }) => await daemon.downloads.setLimit(params.id!, body(schemas.downloadLimit, b).limit)
    },
    // friend services (docs/services.md)
    { method: 'GET', path: /^\/v1\/services$/, handler: async () => ({ services: daemon.services.list() }) },
    { method: 'PUT', path: /^\/v1\/services\/(?<name>[^/]+)$/, handler: async ({ params, body: b }) => ({ service: await daemon.services.expose({ name: params.name!, ...body(schemas.expose, b) }) }) },
    { method: 'DELETE', path: /^\/v1\/services\/(?<name>[^/]+)$/, handler: async ({ params }) => ({ service: await daemon.services.unexpose(params.name!) }) },
    { method: 'GET', path: /^\/v1\/friends\/(?<name>[^/]+)\/services$/, handler: async ({ params }) => await daemon.services.offeredBy(params.name!) },
    { method: 'GET', path: /^\/v1\/connections$/, handler: async () => ({ connections: daemon.services.connections() }) },
    { method: 'POST', path: /^\/v1\/connections$/, handler: async ({ body: b }) => ({ connection: await daemon.services.connect(body(schemas.connect, b)) }) },
    { method: 'DELETE', path: /^\/v1\/connections\/(?<friend>[^/]+)\/(?<service>[^/]+)$/, handler: async ({ params }) => ({ connection: await daemon.services.disconnect(params.friend!, params.service!) }) },
    // bandwidth limits: the body is a merge patch validated by limits.ts (null clears a setting)
    { method: 'GET', path: /^\/v1\/limits$/, handler: async () => daemon.engine.limits.view() },
    { method: 'PUT', path: /^\/v1\/limits$/, handler: async ({ body: b }) => await daemon.engine.limits.update(b) },
    // the last hour's rates per direction and class, for the dashboard's plot (engine/bandwidth-history.ts)
    { method: 'GET', path: /^\/v1\/bandwidth\/history$/, handler: async () => daemon.engine.bandwidthHistory() },
    // backups I make (backup-routes.ts)
    ...backupRoutes(daemon),
    // audits, health, the ledger (backup-care-routes.ts)
    ...backupCareRoutes(daemon),
    // backups I keep for friends (backup-host-routes.ts)
    ...backupHostRoutes(daemon)
  ]
}
