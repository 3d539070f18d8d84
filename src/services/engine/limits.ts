import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { z } from 'zod'
import { KithError } from '../../errors.ts'
import type { Sublevel } from '../../peer/database.ts'
import {
  DEFAULT_CLASS_WEIGHTS, DEFAULT_PRIORITY_WEIGHTS, TRAFFIC_CLASSES, parseTime,
  type BandwidthScheduler, type LimitsUpdate, type PeerLimits, type Priority, type SchedulerStats, type TrafficClass
} from '../../transfer/scheduler/index.ts'
import { parseLimitRate } from './rate-text.ts'

/**
 * The node's bandwidth limits, from three layers (docs/scheduler.md):
 *
 *   1. `config.json` in the home folder, read at start (optional);
 *   2. what `kith limits set` / `PUT /v1/limits` stored in the database,
 *      field by field over the config file;
 *   3. `kith start --max-upload / --max-download`, for that run only, over
 *      both, until a `set` or `clear` of the same cap.
 *
 * Every change is checked by the scheduler first (nothing changes on a bad
 * value) and applied while transfers run.
 */

/** bytes/s, or 'unlimited' (JSON has no Infinity) */
export type LimitRate = number | 'unlimited'

export interface PeerLimitsDoc { upload?: LimitRate, download?: LimitRate }
export interface RuleDoc { from: string, to: string, upload?: LimitRate, download?: LimitRate }

/** A set of limits as stored, configured and answered by the API. Peers are keyed by peer id. */
export interface LimitsDoc {
  upload?: LimitRate
  download?: LimitRate
  peers?: Record<string, PeerLimitsDoc>
  schedule?: RuleDoc[]
  classWeights?: Partial<Record<TrafficClass, number>>
}

/** A change: JSON merge patch over the stored limits (null removes a setting, falling back to the config file or the default). Peers by name or peer id. */
export interface LimitsPatch {
  upload?: LimitRate | string | null
  download?: LimitRate | string | null
  peers?: Record<string, { upload?: LimitRate | string | null, download?: LimitRate | string | null } | null> | null
  schedule?: Array<RuleDoc | string> | null
  classWeights?: Partial<Record<TrafficClass, number | null>> | null
}

export const CONFIG_FILE = 'config.json'
export const MAX_PEER_LIMITS = 1000
export const MAX_RULES = 48

export function configPath (home: string): string {
  return join(home, CONFIG_FILE)
}

/** "23:00-07:00 up=unlimited down=2MB/s" as a rule; throws BAD_REQUEST naming what is wrong. */
export function parseRule (text: string): RuleDoc {
  const [span, ...parts] = text.trim().split(/\s+/)
  const match = /^(\d{1,2}:\d{2})-(\d{1,2}:\d{2})$/.exec(span ?? '')
  if (match == null) throw new KithError('BAD_REQUEST', `a schedule rule starts with FROM-TO, like "23:00-07:00 up=unlimited"; got ${JSON.stringify(text)}`)
  const rule: RuleDoc = { from: match[1]!, to: match[2]! }
  parseTime(rule.from)
  parseTime(rule.to)
  if (parts.length === 0) throw new KithError('BAD_REQUEST', `the schedule rule ${JSON.stringify(text)} sets nothing: add up=RATE and/or down=RATE`)
  for (const part of parts) {
    const kv = /^(up|upload|down|download)=(.+)$/.exec(part)
    const rate = kv == null ? undefined : parseLimitRate(kv[2])
    if (kv == null || rate === undefined) throw new KithError('BAD_REQUEST', `in the schedule rule ${JSON.stringify(text)}, ${JSON.stringify(part)} is not up=RATE or down=RATE (a rate like 2MB/s, or unlimited)`)
    if (kv[1]!.startsWith('up')) rule.upload = rate
    else rule.download = rate
  }
  return rule
}

// ---- schemas (config file and API bodies)

const rate = z.union([z.number(), z.string().max(32)]).transform((value, ctx) => {
  const parsed = parseLimitRate(value)
  if (parsed === undefined) {
    ctx.addIssue({ code: 'custom', message: `${JSON.stringify(value)} is not a rate: bytes/s, a text like "10MB/s", or "unlimited"` })
    return z.NEVER
  }
  return parsed
})
const ruleObject = z.object({ from: z.string().max(5), to: z.string().max(5), upload: rate.optional(), download: rate.optional() }).strict()
/** a rule as an object, or as text: "23:00-07:00 up=unlimited down=2MB/s" */
const rule = z.union([z.string().max(200), ruleObject]).transform((value, ctx) => {
  if (typeof value !== 'string') return value
  try {
    return parseRule(value)
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message })
    return z.NEVER
  }
})
const weight = z.number().positive().finite()
const classKey = z.enum(TRAFFIC_CLASSES as [TrafficClass, ...TrafficClass[]])

export const limitsSchema = z.object({
  upload: rate.optional(),
  download: rate.optional(),
  peers: z.record(z.string().min(1).max(128), z.object({ upload: rate.optional(), download: rate.optional() }).strict()).optional(),
  schedule: z.array(rule).max(MAX_RULES).optional(),
  classWeights: z.partialRecord(classKey, weight).optional()
}).strict()

/** `downloads` is the download queue's section, checked by src/services/downloads/settings.ts when the queue starts (`proxy` and `backup` alike) */
export const configSchema = z.object({ limits: limitsSchema.optional(), downloads: z.unknown().optional(), proxy: z.unknown().optional(), backup: z.unknown().optional() }).strict()

export const patchSchema = z.object({
  upload: rate.nullable().optional(),
  download: rate.nullable().optional(),
  peers: z.record(z.string().min(1).max(128), z.object({ upload: rate.nullable().optional(), download: rate.nullable().optional() }).strict().nullable()).nullable().optional(),
  schedule: z.array(rule).max(MAX_RULES).nullable().optional(),
  classWeights: z.partialRecord(classKey, weight.nullable()).nullable().optional()
}).strict()

export interface ConfigFile {
  path: string
  limits: LimitsDoc
  /** the `downloads` section as written (downloads/settings.ts checks it) */
  downloads?: unknown
  /** the `proxy` section as written (proxy/settings.ts checks it) */
  proxy?: unknown
  /** the `backup` section as written (backup/settings.ts checks it) */
  backup?: unknown
}

/**
 * Reads `config.json` from the home folder; null when there is none. A file
 * that is not JSON or breaks the schema is a CONFIG_INVALID naming it.
 * Peers are still named as the file names them (resolved once friends load).
 */
export async function loadConfig (home: string): Promise<ConfigFile | null> {
  const path = configPath(home)
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw new KithError('CONFIG_INVALID', `can't read ${path}: ${(err as Error).message}`)
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (err) {
    throw new KithError('CONFIG_INVALID', `${path} is not valid JSON (${(err as Error).message}); fix or remove it`)
  }
  const result = configSchema.safeParse(json)
  if (!result.success) {
    const issue = result.error.issues[0]
    throw new KithError('CONFIG_INVALID', `${path}: ${issue?.path.join('.') || '(top level)'}: ${issue?.message ?? 'invalid'}; see docs/scheduler.md`)
  }
  return { path, limits: clean(result.data.limits ?? {}), ...(result.data.downloads !== undefined ? { downloads: result.data.downloads } : {}), ...(result.data.proxy !== undefined ? { proxy: result.data.proxy } : {}), ...(result.data.backup !== undefined ? { backup: result.data.backup } : {}) }
}

/** Drops undefined fields (zod leaves them out already; this keeps the type exact). */
function clean (doc: z.infer<typeof limitsSchema>): LimitsDoc {
  const out: LimitsDoc = {}
  if (doc.upload !== undefined) out.upload = doc.upload
  if (doc.download !== undefined) out.download = doc.download
  if (doc.peers !== undefined) out.peers = Object.fromEntries(Object.entries(doc.peers).map(([k, v]) => [k, pick(v)]))
  if (doc.schedule !== undefined) out.schedule = doc.schedule.map(r => ({ from: r.from, to: r.to, ...pick(r) }))
  if (doc.classWeights !== undefined) out.classWeights = { ...doc.classWeights }
  return out
}

function pick (v: { upload?: LimitRate | undefined, download?: LimitRate | undefined }): PeerLimitsDoc {
  return { ...(v.upload !== undefined ? { upload: v.upload } : {}), ...(v.download !== undefined ? { download: v.download } : {}) }
}

const toRate = (r: LimitRate | undefined): number => r === undefined || r === 'unlimited' ? Infinity : r

/** The three layers as one set of limits (see the top of this file). */
export function effective (config: LimitsDoc, stored: LimitsDoc, override: { upload?: number, download?: number }): Required<LimitsDoc> {
  const peers: Record<string, PeerLimitsDoc> = {}
  for (const [peer, limits] of [...Object.entries(config.peers ?? {}), ...Object.entries(stored.peers ?? {})]) {
    peers[peer] = { ...peers[peer], ...limits }
  }
  return {
    upload: override.upload ?? stored.upload ?? config.upload ?? 'unlimited',
    download: override.download ?? stored.download ?? config.download ?? 'unlimited',
    peers,
    schedule: stored.schedule ?? config.schedule ?? [],
    classWeights: { ...DEFAULT_CLASS_WEIGHTS, ...config.classWeights, ...stored.classWeights }
  }
}

/** As the scheduler takes it. */
export function toUpdate (doc: Required<LimitsDoc>): LimitsUpdate {
  const peers: Record<string, PeerLimits> = {}
  for (const [peer, l] of Object.entries(doc.peers)) {
    peers[peer] = { ...(l.upload !== undefined ? { upload: toRate(l.upload) } : {}), ...(l.download !== undefined ? { download: toRate(l.download) } : {}) }
  }
  return {
    upload: toRate(doc.upload),
    download: toRate(doc.download),
    peers,
    schedule: doc.schedule.map(r => ({ from: r.from, to: r.to, ...(r.upload !== undefined ? { upload: toRate(r.upload) } : {}), ...(r.download !== undefined ? { download: toRate(r.download) } : {}) })),
    classWeights: doc.classWeights as Record<TrafficClass, number>
  }
}

/** Applies a merge patch (peers already resolved to peer ids) to stored limits; returns a new document. */
export function applyPatch (stored: LimitsDoc, patch: z.infer<typeof patchSchema>): LimitsDoc {
  const next: LimitsDoc = structuredClone(stored)
  for (const key of ['upload', 'download'] as const) {
    const value = patch[key]
    if (value === null) delete next[key]
    else if (value !== undefined) next[key] = value
  }
  if (patch.peers === null) delete next.peers
  else if (patch.peers !== undefined) {
    const peers = next.peers ?? {}
    for (const [peer, limits] of Object.entries(patch.peers)) {
      if (limits === null) {
        delete peers[peer]
        continue
      }
      const entry: PeerLimitsDoc = { ...peers[peer] }
      for (const key of ['upload', 'download'] as const) {
        const value = limits[key]
        if (value === null) delete entry[key]
        else if (value !== undefined) entry[key] = value
      }
      if (Object.keys(entry).length === 0) delete peers[peer]
      else peers[peer] = entry
    }
    if (Object.keys(peers).length > MAX_PEER_LIMITS) throw new KithError('BAD_REQUEST', `at most ${MAX_PEER_LIMITS} per-peer limits`)
    if (Object.keys(peers).length === 0) delete next.peers
    else next.peers = peers
  }
  if (patch.schedule === null) delete next.schedule
  else if (patch.schedule !== undefined) next.schedule = patch.schedule.map(r => ({ from: r.from, to: r.to, ...pick(r) }))
  if (patch.classWeights === null) delete next.classWeights
  else if (patch.classWeights !== undefined) {
    const weights: Partial<Record<TrafficClass, number>> = { ...next.classWeights }
    for (const [cls, w] of Object.entries(patch.classWeights) as Array<[TrafficClass, number | null | undefined]>) {
      if (w === null) delete weights[cls]
      else if (w !== undefined) weights[cls] = w
    }
    if (Object.keys(weights).length === 0) delete next.classWeights
    else next.classWeights = weights
  }
  return next
}

// ---- rates as the API shows them

export interface PeerRate { peerId: string, label: string | null, rate: number, cap: number | null }
export interface LaneView {
  /** the global cap in force now (after the schedule); null for none */
  cap: number | null
  /** bytes/s over the last 2 s */
  rate: number
  classes: Record<TrafficClass, { rate: number, weight: number, flows: number }>
  peers: PeerRate[]
  waiting: number
}
export interface BandwidthView {
  up: LaneView
  down: LaneView
  /** index of the schedule rule in force, or null */
  rule: number | null
  /** wall-clock ms of the next schedule change, or null */
  nextChange: number | null
}

/** Current rates per direction, class and peer, peers with their friend labels. */
export function bandwidthView (stats: SchedulerStats, label: (peerId: string) => string | null): BandwidthView {
  const lane = (l: SchedulerStats['up']): LaneView => ({
    cap: l.cap,
    rate: l.rate,
    classes: l.classes,
    peers: Object.entries(l.peers).map(([peerId, p]) => ({ peerId, label: label(peerId), rate: p.rate, cap: p.cap })),
    waiting: l.waiting
  })
  return { up: lane(stats.up), down: lane(stats.down), rule: stats.rule, nextChange: stats.nextChange }
}

// ---- the book

export interface LimitsView {
  /** the limits in force (config file, then stored, then this run's override), peers by id with their labels */
  limits: Required<LimitsDoc> & { priorityWeights: Record<Priority, number> }
  labels: Record<string, string>
  /** what `kith limits set` stored */
  stored: LimitsDoc
  /** the config file, with peers resolved to ids, or null when there is none */
  config: ConfigFile | null
  /** `kith start --max-upload/--max-download` for this run */
  override: { upload?: number, download?: number }
  rates: BandwidthView
}

export interface LimitsBookInit {
  level: Sublevel<LimitsDoc>
  bandwidth: BandwidthScheduler
  /** friend name or peer id to peer id; throws FRIEND_UNKNOWN */
  resolvePeer: (name: string) => string
  label: (peerId: string) => string | null
  config?: ConfigFile | null
  override?: { upload?: number, download?: number }
}

const KEY = 'limits'

export class LimitsBook {
  private readonly init: LimitsBookInit
  private readonly config: ConfigFile | null
  private stored: LimitsDoc = {}
  private override: { upload?: number, download?: number }

  private constructor (init: LimitsBookInit, config: ConfigFile | null) {
    this.init = init
    this.config = config
    this.override = { ...init.override }
  }

  /** Resolves the config file's peer names, loads what was stored, and applies it all. */
  static async open (init: LimitsBookInit): Promise<LimitsBook> {
    let config: ConfigFile | null = null
    if (init.config != null) {
      const peers: Record<string, PeerLimitsDoc> = {}
      for (const [name, limits] of Object.entries(init.config.limits.peers ?? {})) {
        let peer: string
        try {
          peer = init.resolvePeer(name)
        } catch (err) {
          throw new KithError('CONFIG_INVALID', `${init.config.path}: limits.peers: ${(err as Error).message}`)
        }
        peers[peer] = { ...peers[peer], ...limits }
      }
      config = { path: init.config.path, limits: { ...init.config.limits, ...(init.config.limits.peers != null ? { peers } : {}) } }
    }
    const book = new LimitsBook(init, config)
    book.stored = await init.level.get(KEY) ?? {}
    try {
      book.apply(book.stored, book.override)
    } catch (err) {
      if (config == null || !(err instanceof KithError)) throw err
      throw new KithError('CONFIG_INVALID', `${config.path}: ${err.message}`)
    }
    return book
  }

  private apply (stored: LimitsDoc, override: { upload?: number, download?: number }): void {
    this.init.bandwidth.setLimits(toUpdate(effective(this.config?.limits ?? {}, stored, override)))
  }

  view (): LimitsView {
    const limits = effective(this.config?.limits ?? {}, this.stored, this.override)
    const labels: Record<string, string> = {}
    for (const peer of Object.keys(limits.peers)) {
      const label = this.init.label(peer)
      if (label != null) labels[peer] = label
    }
    return {
      limits: { ...limits, priorityWeights: { ...DEFAULT_PRIORITY_WEIGHTS, ...this.init.bandwidth.limits().priorityWeights } },
      labels,
      stored: structuredClone(this.stored),
      config: this.config,
      override: { ...this.override },
      rates: bandwidthView(this.init.bandwidth.stats(), this.init.label)
    }
  }

  /**
   * Applies a change while transfers run; a global cap that is set or cleared
   * ends this run's `--max-*` override for it. Throws BAD_REQUEST (changing
   * nothing) on a bad value, FRIEND_UNKNOWN on an unknown peer name.
   */
  async update (body: unknown): Promise<LimitsView> {
    const result = patchSchema.safeParse(body)
    if (!result.success) {
      const issue = result.error.issues[0]
      throw new KithError('BAD_REQUEST', `bad limits: ${issue?.path.join('.') || 'body'}: ${issue?.message ?? 'invalid'}`)
    }
    const patch = result.data
    if (patch.peers != null) {
      const byId: typeof patch.peers = {}
      for (const [name, limits] of Object.entries(patch.peers)) byId[this.init.resolvePeer(name)] = limits
      patch.peers = byId
    }
    const stored = applyPatch(this.stored, patch)
    const override = { ...this.override }
    if (patch.upload !== undefined) delete override.upload
    if (patch.download !== undefined) delete override.download
    this.apply(stored, override)
    try {
      await this.init.level.put(KEY, stored)
    } catch (err) {
      this.apply(this.stored, this.override)
      throw err
    }
    this.stored = stored
    this.override = override
    return this.view()
  }
}
