import { isPeerId, type PeerId } from '@libp2p/interface'
import { KithError, asKithError, type ErrorCode } from '../errors.ts'
import { CHUNK_SIZE } from './constants.ts'
import type { ChunkStore } from './chunk-store.ts'
import { askHave, getChunks, MAX_GET_IDS, MAX_HAVE_IDS, type ChunkDialer } from './chunk-protocol.ts'
import { isId } from './seal.ts'
import { BufferPool } from './buffer-pool.ts'

/**
 * Multi-source fetch: gets a set of chunks into the local store from every
 * friend that holds them, at once.
 *
 * 1. Ids already in the store are skipped (that is all resuming takes).
 * 2. Every source is asked HAVE, in batches, in the wanted order; a source is
 *    put to work as soon as its first batch is answered.
 * 3. Each source pulls work whenever it has a free request slot
 *    (`requestsPerSource` GET streams, each of up to `chunksPerRequest`
 *    chunks; bigger requests spare the per-stream set-up and window ramp):
 *    first chunks handed back by failed requests, then the next
 *    wanted chunks it holds, in order. Faster sources free their slots sooner
 *    and so take more; when several are free at once the fastest goes first.
 *    A request frees its slot early, once its last chunk is due within about
 *    twice the time its source takes to start answering a request, so the
 *    next one is under way when it ends. A source's request size follows
 *    what it moves in `targetRequestMs`, so a slow source never sits on many
 *    chunks; near the end what is left is shared among all request slots, so
 *    no source queues a long tail.
 * 4. Every chunk goes through `store.put`, which checks sha256(sealed) == id,
 *    before it counts.
 * 5. Faults: corrupt bytes or protocol violations drop a source at once.
 *    Claiming a chunk and then answering MISSING, stalling (no byte for
 *    `stallTimeoutMs`), moving slower than `minBytesPerSecond` or than
 *    `slowRatio` of the best other source (measured over `rateWindowMs`),
 *    and failing to connect or serve are strikes: the source's requests are
 *    cut, their chunks handed to others, and it waits out a growing cooldown;
 *    at `maxStrikes` it is dropped. A request that completes takes a strike
 *    back, so a source that recovers is forgiven. BUSY is no strike: the
 *    source is asked fewer requests at once, after a pause.
 * 6. Endgame: once every chunk any source can give is assigned, a source
 *    with a free slot duplicates in-flight chunks that their fetchers are
 *    expected to deliver much later than it could itself (judged by position
 *    in the request's stream and measured rates; latest first; at most
 *    `endgameCopies` fetchers a chunk). The first verified copy wins; a
 *    request whose chunks have all arrived elsewhere is aborted, and if it
 *    had a head start and still moved less than half its bytes, its source
 *    takes a strike for it.
 * 7. Sources join while it runs, if the caller gives `discover`. A look
 *    calls it every `discoverIntervalMs`; at once (at most every second)
 *    while `short()` says the fetch is below what it wants (a floor the
 *    sources don't meet); and when nothing can move: nothing in flight, no
 *    HAVE pending, and every source dropped, cooling or holding nothing still
 *    missing. Peers it names that the fetch doesn't know yet (not itself, and
 *    not one it knew before, dropped or not: a dropped source stays dropped)
 *    are asked HAVE in batches, like the first ones, and join the work loop
 *    as their answers come. A look also asks HAVE again, for what is still
 *    missing, of each live source that lacked some of it and was last asked
 *    at least `recheckMs` ago: a friend fetching the same share gains chunks
 *    over time. What `discover` throws, or returns that is no peer id, is
 *    ignored; it gets `stallTimeoutMs` to answer.
 * 8. It ends when every chunk is stored; or, when nothing is in flight and no
 *    source can still give anything (and a last look, if `discover` is given,
 *    brought nothing new), with FETCH_NO_SOURCE naming what is missing
 *    (everything obtainable is fetched first); or with FETCH_ABORTED on the
 *    signal. Chunks stored so far stay stored either way.
 *
 * Every duration and deadline (stalls, rate windows, cooldowns, looks) is
 * measured on the monotonic clock, `performance.now()`: a step of the wall
 * clock neither cuts a source that is moving, nor ends a cooldown early, nor
 * hides a stall. Stalls and rates count only time this process ran: a
 * fetcher held up (its event loop busy with other work, or not scheduled on
 * a loaded machine) cuts no source for the bytes it did not read meanwhile.
 *
 * Memory stays bounded whatever the total: per request one frame and the
 * muxer window (the stream is paused while the store is slower than the
 * network), plus a few bytes of bookkeeping per wanted chunk and a bit per
 * wanted chunk per source (at most MAX_LATE_SOURCES join late).
 */

/** Frame buffers a fetch keeps for reuse: about one per request in flight. */
const MAX_FRAME_BUFFERS = 8

/** @see FetchInit.chunksPerRequest */
export const DEFAULT_CHUNKS_PER_REQUEST = 16
/** Chunks per request until a source's rate is known. */
export const FIRST_CHUNKS_PER_REQUEST = 4
/** @see FetchInit.requestsPerSource */
export const DEFAULT_REQUESTS_PER_SOURCE = 2
/** @see FetchInit.stallTimeoutMs */
export const DEFAULT_STALL_TIMEOUT_MS = 10_000
/** @see FetchInit.rateWindowMs */
export const DEFAULT_RATE_WINDOW_MS = 5_000
/** @see FetchInit.minBytesPerSecond */
export const DEFAULT_MIN_BYTES_PER_SECOND = 16 * 1024
/** @see FetchInit.slowRatio */
export const DEFAULT_SLOW_RATIO = 0.1
/** @see FetchInit.maxStrikes */
export const DEFAULT_MAX_STRIKES = 4
/** @see FetchInit.retryDelayMs */
export const DEFAULT_RETRY_DELAY_MS = 500
/** The longest cooldown after strikes. */
export const MAX_RETRY_DELAY_MS = 15_000
/** @see FetchInit.endgameCopies */
export const DEFAULT_ENDGAME_COPIES = 2
/** @see FetchInit.targetRequestMs */
export const DEFAULT_TARGET_REQUEST_MS = 2_000
/** @see FetchInit.progressIntervalMs */
export const DEFAULT_PROGRESS_INTERVAL_MS = 100
/** @see FetchInit.discoverIntervalMs */
export const DEFAULT_DISCOVER_INTERVAL_MS = 5_000
/** @see FetchInit.recheckMs */
export const DEFAULT_RECHECK_MS = 30_000
/** Looks that `short()` or a starved fetch asks for come at most this often. */
export const MIN_LOOK_GAP_MS = 1_000
/** Sources that may join one fetch after it started; further peers `discover` names are ignored. */
export const MAX_LATE_SOURCES = 256
/** Entries of one `discover` answer looked at; the rest are ignored. */
const MAX_DISCOVERED_PER_LOOK = 1024
/** What opening a GET stream costs before its first byte, roughly (loopback: ~3 ms). */
const ENDGAME_SETUP_MS = 20
/** Penalties kept per source in the report (the count is always exact). */
const MAX_PENALTIES_KEPT = 32
/** Chunks of one request being stored at once, at most (while later frames are read)... */
const MAX_STORING = 16
/** ...and their bytes: about two chunks of CHUNK_SIZE, so big chunks are not held in memory in numbers. */
const MAX_STORING_BYTES = 2 * CHUNK_SIZE
/** `store.has` checks run this many at a time when skipping held chunks. */
const HAS_CONCURRENCY = 64
/** A wait on us (`holdBack`) at least this long holds the source back (shorter ones are noise). */
const THROTTLE_NOTICE_MS = 5

export interface FetchInit {
  /** Dials sources; its `peerId`, if it has one, is never taken as a source from `discover`. */
  libp2p: ChunkDialer & { peerId?: PeerId }
  /**
   * Where chunks go. `put` must not refer to `sealed` once it resolves: the
   * fetch reuses that buffer for a later frame (ChunkStore.put copies it).
   */
  store: Pick<ChunkStore, 'has' | 'put'>
  /** Chunk ids wanted, in the order they are preferred (duplicates are ignored). */
  ids: string[]
  /** Peers that may hold them at the start; the share owner holds them all. May be empty if `discover` is given. */
  sources: PeerId[]
  /**
   * More peers that may hold the chunks, asked while the fetch runs: every
   * `discoverIntervalMs`, at once (at most every second) while `short()` is
   * true, and before giving up with FETCH_NO_SOURCE. Peers the fetch already
   * knows, dropped ones included, are ignored; so are itself and anything
   * that is not a PeerId. Throwing, or taking longer than `stallTimeoutMs`,
   * counts as an empty answer. A daemon returns the share owner and the
   * online friends who granted it files.
   *
   * @default no discovery: the sources are fixed, as given
   */
  discover?: (signal: AbortSignal) => PeerId[] | Promise<PeerId[]>
  /**
   * How errors name a source (a daemon gives its friends' labels).
   *
   * @default its peer id
   */
  name?: (peer: string) => string
  /**
   * Says the fetch is below what it wants, so sources should be sought now
   * rather than at the next interval: wire it to the scheduler flow's floor
   * (`flow.floor()?.state === 'slow'`). Polled a few times a second; only
   * used with `discover`. Throwing counts as false.
   *
   * @default never short
   */
  short?: () => boolean
  /** A look for sources (`discover`) runs at least this often. @default 5000 */
  discoverIntervalMs?: number
  /**
   * A live source that lacked some chunk still missing is asked HAVE again
   * for what is missing, at a look, once this long has passed since it was
   * last asked. Only with `discover`.
   *
   * @default 30000
   */
  recheckMs?: number
  /** Aborting stops the fetch (pause, cancel): it rejects with FETCH_ABORTED; stored chunks stay. */
  signal?: AbortSignal
  /** Called at most every `progressIntervalMs` while chunks arrive, and once at the end. */
  onProgress?: (progress: FetchProgress) => void
  /**
   * Chunks asked in one GET stream, at most (MAX_GET_IDS at most). A source's
   * first requests ask FIRST_CHUNKS_PER_REQUEST (4); once its rate is known,
   * what it moves in `targetRequestMs`, within 1..chunksPerRequest.
   * @default 16 chunks' worth of CHUNK_SIZE: more, to MAX_GET_IDS, when chunks are smaller
   */
  chunksPerRequest?: number
  /**
   * GET streams open to one source at once, not counting those whose last
   * chunk is due within the source's start-up time (the next request starts
   * then, so the source never waits between requests); at most twice this.
   * @default 2
   */
  requestsPerSource?: number
  /** Ids asked in one HAVE. @default MAX_HAVE_IDS (4096) */
  haveBatchSize?: number
  /** A request that receives no byte for this long is cut and its source takes a strike. @default 10000 */
  stallTimeoutMs?: number
  /** Span over which a busy source's rate is measured and judged. @default 5000 */
  rateWindowMs?: number
  /** A busy source moving less than this (bytes/s) over a window takes a strike. @default 16384 */
  minBytesPerSecond?: number
  /**
   * A busy source moving less than this fraction of the best other source's
   * rate takes a strike, if another source could take over its chunks.
   * @default 0.1
   */
  slowRatio?: number
  /** Strikes that drop a source. @default 4 */
  maxStrikes?: number
  /** Cooldown after a first strike; doubles with each further one (to 15 s). @default 500 */
  retryDelayMs?: number
  /** Concurrent fetchers of one chunk in the endgame. @default 2 */
  endgameCopies?: number
  /** A source's requests are sized to take about this long at its measured rate. @default 2000 */
  targetRequestMs?: number
  /** @default 100 */
  progressIntervalMs?: number
  /**
   * Called with the size of every chunk received, before it is stored; resolves
   * when it may be taken. A bandwidth scheduler plugs in here: while it waits
   * the stream is not read, so the source is held back by backpressure. The
   * wait is ours, not the source's: it earns no stall or slowness strike.
   *
   * @default no throttle
   */
  beforeReceive?: (bytes: number, peer: PeerId, signal: AbortSignal) => Promise<void>
}

export type PenaltyReason =
  /** sent bytes that don't hash to the id asked (drops at once) */
  | 'corrupt'
  /** sent frames that break the protocol (drops at once) */
  | 'protocol'
  /** refused our requests as unreadable, or speaks another version (drops at once) */
  | 'refused'
  /** said HAVE, then answered MISSING */
  | 'missing'
  /** no byte for stallTimeoutMs, or lost an endgame race having sent nothing */
  | 'stalled'
  /** below minBytesPerSecond, or far below the other sources */
  | 'slow'
  /** answered BUSY: not a strike; the source is asked less at once and after a pause */
  | 'busy'
  /** could not be dialled, the stream failed, or the holder could not read its store */
  | 'failed'

export interface Penalty {
  reason: PenaltyReason
  message: string
  /** ms since the fetch started */
  atMs: number
}

export interface SourceProgress {
  /** verified bytes stored from this source */
  bytes: number
  chunks: number
  inflight: number
  /** bytes/s, smoothed; 0 until measured */
  rate: number
  state: 'active' | 'cooling' | 'dropped'
}

export interface FetchProgress {
  /** chunks held, including those held before the fetch */
  doneChunks: number
  totalChunks: number
  /** verified bytes fetched by this run (not counting chunks held before) */
  doneBytes: number
  /** chunks that were already in the store */
  heldChunks: number
  /** by peer id */
  perSource: Record<string, SourceProgress>
}

export interface SourceReport {
  peer: string
  /** ms since the fetch started when it became a source: 0 for those given at the start, more for those `discover` added */
  joinedAtMs: number
  /** HAVE asked again for what was still missing (see FetchInit.recheckMs) */
  rechecks: number
  /** verified bytes stored from this source */
  bytes: number
  chunks: number
  /** frame bytes received, including duplicates and failed requests */
  receivedBytes: number
  requests: number
  /** chunks it said it held and then answered MISSING */
  missing: number
  /** endgame copies that arrived after another source's */
  duplicates: number
  /** bytes/s, smoothed; 0 if never measured */
  rate: number
  strikes: number
  penalties: Penalty[]
  dropped?: Penalty
}

export interface FetchReport {
  totalChunks: number
  heldChunks: number
  fetchedChunks: number
  fetchedBytes: number
  /** received but not stored: endgame duplicates, corrupt and cut-off chunks, frame headers */
  wastedBytes: number
  durationMs: number
  /** until every source still live had answered HAVE for every chunk */
  haveMs: number | undefined
  sources: SourceReport[]
  dropped: Array<{ peer: string } & Penalty>
  /** with `discover`: how often it was called, the peers it added, and its failures (throws, timeouts, bad answers) */
  discovery?: { looks: number, joined: number, failures: number, lastFailure?: string }
}

/** FETCH_NO_SOURCE and FETCH_ABORTED carry what was done and what is missing. */
export class FetchError extends KithError {
  readonly report: FetchReport
  /** ids not fetched */
  readonly missing: string[]

  constructor (code: ErrorCode, message: string, report: FetchReport, missing: string[], options?: ErrorOptions) {
    super(code, message, options)
    this.report = report
    this.missing = missing
  }
}

/** `error`: a KithError, or the local store's own error as it threw it (a full disk's ENOSPC) */
type Outcome = { code: 'FETCH_NO_SOURCE' | 'FETCH_ABORTED' } | { error: Error }

const PENDING = 0
const INFLIGHT = 1
const DONE = 2

class Source {
  readonly peer: PeerId
  readonly key: string
  /** HAVE answers: bit i set iff the source said it holds wanted[i] */
  readonly have: Uint8Array
  /** wanted[0..haveKnown) have been asked */
  haveKnown = 0
  asking = false
  readonly requests = new Set<Request>()
  /** next wanted index to look at when picking new work */
  cursor = 0
  strikes = 0
  coolUntil = 0
  /** requests it takes at once; lowered when it answers BUSY, raised again as requests succeed */
  limit: number
  busyStreak = 0
  rate: number | undefined
  /** rate window, while the source is busy */
  window: { at: number, received: number } | undefined
  received = 0
  bytes = 0
  chunks = 0
  requestCount = 0
  missing = 0
  duplicates = 0
  penaltyCount = 0
  readonly penalties: Penalty[] = []
  dropped: Penalty | undefined
  /** when we last held one of its requests back (`beforeReceive`, or a store slower than the network) */
  throttledAt = -Infinity
  /** ms from a request's start to its first byte, smoothed: how long before one ends the next must start (see `pipeline`) */
  startupMs: number | undefined
  /** ms since the fetch started when it joined */
  readonly joinedAtMs: number
  /** when it last answered (or failed) a HAVE for everything it was asked */
  askedAt = 0
  rechecks = 0

  constructor (peer: PeerId, total: number, limit: number, joinedAtMs = 0) {
    this.peer = peer
    this.limit = limit
    this.joinedAtMs = joinedAtMs
    this.key = peer.toString()
    this.have = new Uint8Array(Math.ceil(total / 8))
  }

  holds (index: number): boolean {
    return (this.have[index >> 3]! & (0x80 >> (index & 7))) !== 0
  }
}

/** A HAVE asked and not yet answered: aborted once `deadline` (performance.now()) passes */
interface PendingHave { controller: AbortController, deadline: number }

class Request {
  readonly source: Source
  readonly indexes: number[]
  /** indexes neither received by this request nor done elsewhere */
  readonly open: Set<number>
  readonly controller = new AbortController()
  readonly startedAt = performance.now()
  lastByteAt = performance.now()
  bytes = 0
  /** why we cut it, when we did */
  fault: { reason: PenaltyReason | 'dropped', message: string } | undefined
  /** every chunk it asked for arrived elsewhere first */
  winner: Request | undefined
  promise: Promise<void> = Promise.resolve()
  /** waiting on us: in `beforeReceive`, or for the store to take the chunks it received */
  throttled = false
  /** no longer counted against its source's limit: its last chunks are due within its source's start-up time (see `pipeline`) */
  released = false

  constructor (source: Source, indexes: number[]) {
    this.source = source
    this.indexes = indexes
    this.open = new Set(indexes)
  }
}

function positive (value: number | undefined, fallback: number, name: string, integer = true): number {
  const v = value ?? fallback
  if (!(v > 0) || (integer && !Number.isInteger(v))) throw new KithError('BAD_REQUEST', `${name} must be a positive ${integer ? 'integer' : 'number'}, not ${v}`)
  return v
}

async function sleep (ms: number, signal: AbortSignal): Promise<void> {
  await new Promise<void>((resolve) => {
    const done = (): void => {
      clearTimeout(timer)
      signal.removeEventListener('abort', done)
      resolve()
    }
    const timer = setTimeout(done, Math.max(0, ms))
    signal.addEventListener('abort', done, { once: true })
  })
}

function short (id: string): string {
  return `${id.slice(0, 12)}…`
}

class Fetch {
  private readonly init: FetchInit
  private readonly wanted: string[]
  private readonly total: number
  private readonly held: number
  private readonly n: number
  private readonly state: Uint8Array
  private readonly holders: Uint16Array
  private readonly sizes: Uint32Array
  private readonly sources: Source[]
  private readonly inflight = new Map<number, Set<Request>>()
  private readonly requests = new Set<Request>()
  private readonly requeued = new Set<number>()
  private readonly tasks = new Set<Promise<void>>()
  private readonly halt = new AbortController()
  private readonly startedAt: number
  /** frame buffers, reused across this fetch's requests (each chunk's given back once stored) */
  private readonly frames = new BufferPool(MAX_FRAME_BUFFERS)
  private readonly opt: Required<Omit<FetchInit, 'libp2p' | 'store' | 'ids' | 'sources' | 'signal' | 'onProgress' | 'beforeReceive' | 'discover' | 'short' | 'name'>>
  /** every peer that ever was a source, by string (a dropped one stays known, so it is never re-added) */
  private readonly known = new Set<string>()
  private looking = false
  private lastLookAt: number
  /** a look was made since nothing could move, and brought nothing new */
  private stuckLooked = false
  private looks = 0
  private joined = 0
  private lookFailures = 0
  private lastLookFailure: string | undefined
  /** pending chunks at least one live source says it holds */
  private fetchable = 0
  private doneCount = 0
  private doneBytes = 0
  private haveMs: number | undefined
  private lastProgress = -Infinity
  private ticker: ReturnType<typeof setInterval> | undefined
  private tickMs = 0
  /** HAVEs awaiting their answer, each cut by `tick` at its deadline */
  private readonly haves = new Set<PendingHave>()
  /** when the ticker last ran: how late it runs is time this process did not run (see `tick`) */
  private tickedAt = 0
  private coolTimer: ReturnType<typeof setTimeout> | undefined
  private coolAt = 0
  private finished = false
  private outcome: Outcome | undefined
  private resolveFinished: () => void = () => {}

  constructor (init: FetchInit, wanted: string[], total: number, sources: PeerId[], startedAt: number) {
    this.init = init
    this.startedAt = startedAt
    this.wanted = wanted
    this.total = total
    this.n = wanted.length
    this.held = total - wanted.length
    this.state = new Uint8Array(this.n)
    this.holders = new Uint16Array(this.n)
    this.sizes = new Uint32Array(this.n)
    this.opt = {
      chunksPerRequest: Math.min(MAX_GET_IDS, positive(init.chunksPerRequest, DEFAULT_CHUNKS_PER_REQUEST, 'chunksPerRequest')),
      requestsPerSource: positive(init.requestsPerSource, DEFAULT_REQUESTS_PER_SOURCE, 'requestsPerSource'),
      haveBatchSize: Math.min(MAX_HAVE_IDS, positive(init.haveBatchSize, MAX_HAVE_IDS, 'haveBatchSize')),
      stallTimeoutMs: positive(init.stallTimeoutMs, DEFAULT_STALL_TIMEOUT_MS, 'stallTimeoutMs', false),
      rateWindowMs: positive(init.rateWindowMs, DEFAULT_RATE_WINDOW_MS, 'rateWindowMs', false),
      minBytesPerSecond: positive(init.minBytesPerSecond, DEFAULT_MIN_BYTES_PER_SECOND, 'minBytesPerSecond', false),
      slowRatio: positive(init.slowRatio, DEFAULT_SLOW_RATIO, 'slowRatio', false),
      maxStrikes: positive(init.maxStrikes, DEFAULT_MAX_STRIKES, 'maxStrikes'),
      retryDelayMs: positive(init.retryDelayMs, DEFAULT_RETRY_DELAY_MS, 'retryDelayMs', false),
      endgameCopies: positive(init.endgameCopies, DEFAULT_ENDGAME_COPIES, 'endgameCopies'),
      targetRequestMs: positive(init.targetRequestMs, DEFAULT_TARGET_REQUEST_MS, 'targetRequestMs', false),
      progressIntervalMs: positive(init.progressIntervalMs, DEFAULT_PROGRESS_INTERVAL_MS, 'progressIntervalMs', false),
      discoverIntervalMs: positive(init.discoverIntervalMs, DEFAULT_DISCOVER_INTERVAL_MS, 'discoverIntervalMs', false),
      recheckMs: positive(init.recheckMs, DEFAULT_RECHECK_MS, 'recheckMs', false)
    }
    if (init.discover !== undefined && typeof init.discover !== 'function') throw new KithError('BAD_REQUEST', 'discover must be a function')
    if (init.short !== undefined && typeof init.short !== 'function') throw new KithError('BAD_REQUEST', 'short must be a function')
    this.sources = sources.map(peer => new Source(peer, this.n, this.opt.requestsPerSource))
    for (const source of this.sources) this.known.add(source.key)
    this.lastLookAt = startedAt
  }

  async run (): Promise<FetchReport> {
    const finished = new Promise<void>(resolve => { this.resolveFinished = resolve })
    const signal = this.init.signal
    const onAbort = (): void => { this.finish({ code: 'FETCH_ABORTED' }) }
    signal?.addEventListener('abort', onAbort, { once: true })
    this.tickMs = Math.max(10, Math.min(250, this.opt.stallTimeoutMs / 4, this.opt.rateWindowMs / 4))
    this.tickedAt = performance.now()
    this.ticker = setInterval(() => { this.guarded(() => { this.tick() }) }, this.tickMs)
    try {
      if (signal?.aborted === true) this.finish({ code: 'FETCH_ABORTED' })
      else {
        for (const source of this.sources) this.track(this.askTask(source))
        this.schedule()
      }
      await finished
      // let every request and HAVE unwind, so nothing touches the store after we return
      while (this.tasks.size > 0) await Promise.allSettled([...this.tasks])
    } finally {
      signal?.removeEventListener('abort', onAbort)
      clearInterval(this.ticker)
      clearTimeout(this.coolTimer)
    }
    this.progress(true)
    const report = this.report()
    const outcome = this.outcome
    if (outcome === undefined || this.doneCount === this.n) return report
    if ('error' in outcome) throw outcome.error
    const missing: string[] = []
    for (let i = 0; i < this.n; i++) if (this.state[i] !== DONE) missing.push(this.wanted[i]!)
    if (outcome.code === 'FETCH_ABORTED') {
      throw new FetchError('FETCH_ABORTED', `the fetch was stopped with ${missing.length} of ${this.total} chunks to go; the ${this.doneCount + this.held} held are kept for a resume`, report, missing)
    }
    const dropped = report.dropped.map(d => `${this.init.name?.(d.peer) ?? d.peer}: ${d.reason} (${d.message})`)
    throw new FetchError('FETCH_NO_SOURCE',
      `${missing.length} of ${this.total} chunks are held by no reachable source (${missing.slice(0, 3).map(short).join(', ')}${missing.length > 3 ? ', …' : ''}); ` +
      `the ${this.doneCount + this.held} others are stored. ${dropped.length > 0 ? `Dropped sources: ${dropped.join('; ')}. ` : ''}Try again when the owner is online; if they are online and answered MISSING, the file may have changed since they shared it, and they should share it again`,
      report, missing)
  }

  /**
   * Keeps a background task (a request, a HAVE, a look) until it settles. A
   * task handles its own failures; one that throws anyway (a bug, a store
   * that throws where it should not) ends the fetch with that error rather
   * than escaping as an unhandled rejection.
   */
  private track (task: Promise<void>): void {
    this.tasks.add(task)
    task.then(() => { this.tasks.delete(task) }, (err: unknown) => {
      this.tasks.delete(task)
      this.finish({ error: asKithError(err) })
    })
  }

  /** Runs a timer's work; a throw there (a bug) ends the fetch with it instead of the process. */
  private guarded (work: () => void): void {
    try {
      work()
    } catch (err) {
      this.finish({ error: asKithError(err) })
    }
  }

  private finish (outcome?: Outcome): void {
    if (this.finished) return
    this.finished = true
    this.outcome = outcome
    this.halt.abort()
    for (const request of this.requests) request.controller.abort()
    this.resolveFinished()
  }

  private now (): number {
    return performance.now() - this.startedAt
  }

  // ---- availability bookkeeping

  private setHave (source: Source, index: number): void {
    if (source.holds(index)) return
    source.have[index >> 3]! |= 0x80 >> (index & 7)
    if (++this.holders[index]! === 1 && this.state[index] === PENDING) this.fetchable++
  }

  private unsetHave (source: Source, index: number): void {
    if (!source.holds(index)) return
    source.have[index >> 3]! &= ~(0x80 >> (index & 7))
    if (--this.holders[index]! === 0 && this.state[index] === PENDING) {
      this.fetchable--
      this.requeued.delete(index)
    }
  }

  private claim (index: number, request: Request): void {
    if (this.state[index] === PENDING) {
      this.state[index] = INFLIGHT
      if (this.holders[index]! > 0) this.fetchable--
      this.requeued.delete(index)
    }
    let set = this.inflight.get(index)
    if (set === undefined) this.inflight.set(index, set = new Set())
    set.add(request)
  }

  /** This request no longer waits for `index`; hands it back if nobody else fetches it. */
  private release (request: Request, index: number): void {
    if (!request.open.delete(index)) return
    const set = this.inflight.get(index)
    set?.delete(request)
    if (set !== undefined && set.size > 0) return
    this.inflight.delete(index)
    if (this.state[index] === INFLIGHT) {
      this.state[index] = PENDING
      if (this.holders[index]! > 0) {
        this.fetchable++
        this.requeued.add(index)
      }
    }
  }

  private complete (index: number, size: number, request: Request): void {
    const source = request.source
    this.state[index] = DONE
    this.sizes[index] = size
    this.doneCount++
    this.doneBytes += size
    source.bytes += size
    source.chunks++
    const others = [...(this.inflight.get(index) ?? [])].filter(r => r !== request)
    this.release(request, index)
    for (const other of others) {
      this.release(other, index)
      if (other.open.size === 0 && other.winner === undefined && other.fault === undefined) {
        other.winner = request
        other.controller.abort()
      }
    }
    this.progress(false)
    if (this.doneCount === this.n) this.finish()
  }

  // ---- penalties

  private penalise (source: Source, reason: PenaltyReason, message: string): void {
    if (source.dropped !== undefined || this.finished) return
    const penalty: Penalty = { reason, message, atMs: this.now() }
    source.penaltyCount++
    if (source.penalties.length < MAX_PENALTIES_KEPT) source.penalties.push(penalty)
    if (reason === 'busy') {
      // an honest holder at its limit: ask it less at once, and later
      source.busyStreak++
      source.limit = Math.max(1, source.requests.size - 1)
      source.coolUntil = performance.now() + Math.min(MAX_RETRY_DELAY_MS, this.opt.retryDelayMs * 2 ** (source.busyStreak - 1))
      return
    }
    if (reason === 'corrupt' || reason === 'protocol' || reason === 'refused') {
      this.drop(source, penalty)
      return
    }
    source.strikes++
    if (source.strikes >= this.opt.maxStrikes) {
      this.drop(source, { ...penalty, message: `${message} (strike ${source.strikes} of ${this.opt.maxStrikes})` })
      return
    }
    source.coolUntil = performance.now() + Math.min(MAX_RETRY_DELAY_MS, this.opt.retryDelayMs * 2 ** (source.strikes - 1))
  }

  private drop (source: Source, penalty: Penalty): void {
    source.dropped = penalty
    source.coolUntil = 0
    for (const request of source.requests) {
      request.fault ??= { reason: 'dropped', message: penalty.message }
      request.controller.abort()
    }
    for (let i = 0; i < this.n; i++) if (source.holds(i)) this.unsetHave(source, i)
  }

  /** Cuts a request; its source is penalised when it unwinds. */
  private cut (request: Request, reason: PenaltyReason, message: string): void {
    if (request.fault !== undefined || request.winner !== undefined) return
    request.fault = { reason, message }
    request.controller.abort()
  }

  private classify (err: unknown): PenaltyReason {
    switch ((err as KithError).code) {
      case 'CHUNK_FRAME_MALFORMED':
      case 'CHUNK_FRAME_TOO_LARGE':
        return 'protocol'
      case 'CHUNK_PEER_REFUSED':
      case 'UNSUPPORTED_VERSION':
        return 'refused'
      case 'CHUNK_PEER_BUSY':
        return 'busy'
      case 'CHUNK_PEER_STALLED':
        return 'stalled'
      default:
        return 'failed'
    }
  }

  // ---- HAVE

  /** One HAVE of `indexes` to `source`, with stallTimeoutMs to answer; the held ones are marked. */
  private async askOnce (source: Source, indexes: number[]): Promise<number[]> {
    // a HAVE gets stallTimeoutMs, like a GET without progress
    const controller = new AbortController()
    const stop = (): void => { controller.abort(this.halt.signal.reason) }
    this.halt.signal.addEventListener('abort', stop, { once: true })
    // the deadline is kept by `tick`, which excuses time this process did not run (see `excuse`)
    const have: PendingHave = { controller, deadline: performance.now() + this.opt.stallTimeoutMs }
    this.haves.add(have)
    try {
      const held = await askHave(this.init.libp2p, source.peer, indexes.map(i => this.wanted[i]!), { signal: controller.signal })
      if (this.finished || source.dropped !== undefined) return []
      const fresh: number[] = []
      for (const index of indexes) {
        if (held.has(this.wanted[index]!) && !source.holds(index)) {
          this.setHave(source, index)
          fresh.push(index)
        }
      }
      return fresh
    } finally {
      this.haves.delete(have)
      this.halt.signal.removeEventListener('abort', stop)
    }
  }

  private async askTask (source: Source): Promise<void> {
    source.asking = true
    try {
      while (source.haveKnown < this.n && source.dropped === undefined && !this.finished) {
        const from = source.haveKnown
        const indexes: number[] = []
        for (let i = from; i < Math.min(this.n, from + this.opt.haveBatchSize); i++) indexes.push(i)
        try {
          await this.askOnce(source, indexes)
          if (this.finished || source.dropped !== undefined) return
          source.haveKnown = from + indexes.length
        } catch (err) {
          if (this.finished) return
          this.penalise(source, this.classify(err), `HAVE failed: ${(err as Error).message}`)
          if (source.dropped !== undefined) return
          await sleep(source.coolUntil - performance.now(), this.halt.signal)
        }
        this.schedule()
      }
    } finally {
      source.asking = false
      source.askedAt = performance.now()
      if (!this.finished) {
        if (this.haveMs === undefined && this.sources.every(s => !s.asking)) this.haveMs = this.now()
        this.schedule()
      }
    }
  }

  /**
   * Asks `source` HAVE again for every chunk still missing that it did not
   * hold, in batches. A failure is a strike like any HAVE's, and ends this
   * round; the next look may try again.
   */
  private async recheckTask (source: Source): Promise<void> {
    source.asking = true
    source.rechecks++
    try {
      let at = 0
      while (at < this.n && source.dropped === undefined && !this.finished) {
        const indexes: number[] = []
        for (; at < this.n && indexes.length < this.opt.haveBatchSize; at++) {
          if (this.state[at] !== DONE && !source.holds(at)) indexes.push(at)
        }
        if (indexes.length === 0) break
        try {
          const fresh = await this.askOnce(source, indexes)
          // its cursor may have passed them already
          if (fresh.length > 0) source.cursor = Math.min(source.cursor, fresh[0]!)
        } catch (err) {
          if (this.finished) return
          this.penalise(source, this.classify(err), `HAVE (again) failed: ${(err as Error).message}`)
          return
        }
        this.schedule()
      }
    } finally {
      source.asking = false
      source.askedAt = performance.now()
      if (!this.finished) this.schedule()
    }
  }

  // ---- discovery

  private isShort (): boolean {
    if (this.init.short === undefined) return false
    try {
      return this.init.short() === true
    } catch {
      return false
    }
  }

  /** Starts a look for sources, unless one is running. */
  private look (): void {
    if (this.looking || this.finished || this.init.discover === undefined) return
    this.looking = true
    this.lastLookAt = performance.now()
    this.looks++
    this.track(this.lookTask())
  }

  private async lookTask (): Promise<void> {
    let found = false
    try {
      const peers = await this.discover()
      if (this.finished) return
      const self = this.init.libp2p.peerId?.toString()
      for (const peer of peers) {
        if (this.joined >= MAX_LATE_SOURCES || this.sources.length >= 0xffff) break
        const key = peer.toString()
        if (key === self || this.known.has(key)) continue
        this.known.add(key)
        const source = new Source(peer, this.n, this.opt.requestsPerSource, this.now())
        this.sources.push(source)
        this.joined++
        found = true
        this.track(this.askTask(source))
      }
      const now = performance.now()
      for (const source of this.sources) {
        if (source.dropped !== undefined || source.asking || source.coolUntil > now || source.haveKnown < this.n || now - source.askedAt < this.opt.recheckMs) continue
        if (!this.lacksMissing(source)) continue
        found = true
        this.track(this.recheckTask(source))
      }
    } finally {
      this.looking = false
      if (found) this.stuckLooked = false
      if (!this.finished) this.schedule()
    }
  }

  /** What `discover` names, as valid PeerIds, each once; [] when it throws, hangs past stallTimeoutMs or answers garbage. */
  private async discover (): Promise<PeerId[]> {
    const controller = new AbortController()
    const stop = (): void => { controller.abort(this.halt.signal.reason) }
    this.halt.signal.addEventListener('abort', stop, { once: true })
    let timer: ReturnType<typeof setTimeout> | undefined
    try {
      const answer = await Promise.race([
        (async () => await this.init.discover!(controller.signal))(),
        new Promise<never>((_resolve, reject) => {
          timer = setTimeout(() => { reject(new Error(`no answer within ${this.opt.stallTimeoutMs} ms`)) }, this.opt.stallTimeoutMs)
          controller.signal.addEventListener('abort', () => { reject(new Error('stopped')) }, { once: true })
        })
      ])
      if (!Array.isArray(answer)) throw new Error(`answered ${answer === null ? 'null' : typeof answer}, not an array of peer ids`)
      const peers: PeerId[] = []
      const seen = new Set<string>()
      let bad = 0
      for (const peer of answer.slice(0, MAX_DISCOVERED_PER_LOOK)) {
        if (!isPeerId(peer)) {
          bad++
          continue
        }
        const key = peer.toString()
        if (seen.has(key)) continue
        seen.add(key)
        peers.push(peer)
      }
      if (bad > 0) this.lookFailed(`${bad} of its ${answer.length} answers are not peer ids`)
      return peers
    } catch (err) {
      if (!this.finished) this.lookFailed(err instanceof Error ? err.message : String(err))
      return []
    } finally {
      clearTimeout(timer)
      this.halt.signal.removeEventListener('abort', stop)
      controller.abort()
    }
  }

  private lookFailed (message: string): void {
    this.lookFailures++
    this.lastLookFailure = `discover: ${message}`.slice(0, 300)
  }

  /** Some chunk not yet stored is one `source` did not say it holds. */
  private lacksMissing (source: Source): boolean {
    for (let i = 0; i < this.n; i++) if (this.state[i] !== DONE && !source.holds(i)) return true
    return false
  }

  // ---- scheduling

  /** Chunks per request for this source: what it moves in targetRequestMs, within 1..chunksPerRequest. */
  private chunksFor (source: Source): number {
    if (source.rate === undefined) return Math.min(this.opt.chunksPerRequest, FIRST_CHUNKS_PER_REQUEST)
    const chunk = this.averageChunk()
    const perRequest = source.rate / this.opt.requestsPerSource * this.opt.targetRequestMs / 1000
    return Math.max(1, Math.min(this.requestCap(chunk), Math.floor(perRequest / chunk)))
  }

  /**
   * Chunks one request may ask, at most: `chunksPerRequest` when the caller
   * set it; by default as many bytes as DEFAULT_CHUNKS_PER_REQUEST chunks of
   * CHUNK_SIZE, so small chunks (small files) go many to a request (up to
   * MAX_GET_IDS) rather than a stream each few kilobytes.
   */
  private requestCap (chunk: number): number {
    if (this.init.chunksPerRequest !== undefined) return this.opt.chunksPerRequest
    return Math.min(MAX_GET_IDS, Math.max(DEFAULT_CHUNKS_PER_REQUEST, Math.floor(DEFAULT_CHUNKS_PER_REQUEST * CHUNK_SIZE / chunk)))
  }

  private pick (source: Source): number[] {
    // near the end, share what is left among all request slots, so no source
    // queues up a long tail that others then have to duplicate
    let slots = 0
    for (const s of this.sources) if (s.dropped === undefined) slots += s.limit
    const max = Math.min(this.chunksFor(source), Math.max(1, Math.ceil(this.fetchable / Math.max(1, slots))))
    const picks: number[] = []
    for (const index of this.requeued) {
      if (picks.length >= max) break
      if (this.state[index] !== PENDING || this.holders[index] === 0) {
        this.requeued.delete(index)
        continue
      }
      if (source.holds(index)) picks.push(index)
    }
    while (picks.length < max && source.cursor < source.haveKnown) {
      const index = source.cursor++
      if (this.state[index] === PENDING && source.holds(index) && !picks.includes(index)) picks.push(index)
    }
    if (picks.length > 0 || this.fetchable > 0) return picks
    // Endgame: everything obtainable is assigned. Duplicate in-flight chunks
    // this source holds that their current fetchers are expected to deliver
    // much later than this source could (a copy costs the receiver as much as
    // the original, so a close race is a loss), latest first.
    const now = performance.now()
    const chunk = this.averageChunk()
    const mine = source.rate === undefined ? 0 : 2 * (ENDGAME_SETUP_MS + chunk / (source.rate / this.opt.requestsPerSource) * 1000)
    const candidates: Array<{ index: number, arrival: number }> = []
    for (const [index, set] of this.inflight) {
      if (set.size >= this.opt.endgameCopies || !source.holds(index)) continue
      let arrival = Infinity
      let skip = false
      for (const r of set) {
        // held back by us (beforeReceive, the store): its pace is ours, and a copy would only queue behind it
        if (r.source === source || r.throttled || r.source.throttledAt >= r.startedAt) skip = true
        arrival = Math.min(arrival, this.arrival(r, index, now, chunk))
      }
      if (!skip && arrival > mine) candidates.push({ index, arrival })
    }
    candidates.sort((a, b) => b.arrival - a.arrival || a.index - b.index)
    // small copies, so estimates are taken again as the race unfolds
    return candidates.slice(0, Math.min(max, FIRST_CHUNKS_PER_REQUEST)).map(c => c.index).sort((a, b) => a - b)
  }

  private averageChunk (): number {
    return this.doneCount > 0 ? this.doneBytes / this.doneCount : CHUNK_SIZE
  }

  /** When `request` should deliver `index`, in ms from now: it streams its chunks in order. */
  private arrival (request: Request, index: number, now: number, chunk: number): number {
    let ahead = 0
    for (const i of request.indexes) {
      ahead += this.sizes[i]! > 0 ? this.sizes[i]! : chunk
      if (i === index) break
    }
    const remaining = ahead - request.bytes
    if (remaining <= 0) return 0
    const source = request.source
    const rate = source.rate !== undefined
      ? source.rate / Math.max(1, source.requests.size)
      : request.bytes * 1000 / Math.max(1, now - request.startedAt)
    return rate > 0 ? remaining / rate * 1000 : Infinity
  }

  /** Requests counted against `source`'s limit: those open and not released (see `pipeline`). */
  private busy (source: Source): number {
    let busy = 0
    for (const request of source.requests) if (!request.released) busy++
    return busy
  }

  private schedule (): void {
    if (this.finished) return
    if (this.doneCount === this.n) {
      this.finish()
      return
    }
    const now = performance.now()
    const live = this.sources.filter(s => s.dropped === undefined)
    const ready = live
      .filter(s => s.coolUntil <= now)
      .sort((a, b) => (b.rate ?? 0) - (a.rate ?? 0) || a.requests.size - b.requests.size)
    // one request per source per round, so a fast source can't starve the others of a start
    let started = true
    while (started) {
      started = false
      for (const source of ready) {
        if (this.busy(source) >= source.limit || source.requests.size >= 2 * source.limit) continue
        const picks = this.pick(source)
        if (picks.length === 0) continue
        this.start(source, picks)
        started = true
      }
    }
    const cooling = live.filter(s => s.coolUntil > now)
    if (cooling.length > 0) {
      const at = Math.min(...cooling.map(s => s.coolUntil))
      if (this.coolTimer === undefined || at < this.coolAt) {
        clearTimeout(this.coolTimer)
        this.coolAt = at
        this.coolTimer = setTimeout(() => {
          this.coolTimer = undefined
          this.guarded(() => { this.schedule() })
        }, at - now)
      }
    }
    if (this.requests.size > 0 || live.some(s => s.asking) || this.looking) return
    // nothing moves: every source is dropped, cooling, or holds nothing still missing
    if (this.init.discover === undefined) {
      if (cooling.length === 0) this.finish({ code: 'FETCH_NO_SOURCE' })
    } else if (cooling.length > 0) {
      if (now - this.lastLookAt >= MIN_LOOK_GAP_MS) this.look()
    } else if (!this.stuckLooked) {
      // one more look before giving up; it clears the flag if it brings anything new
      this.stuckLooked = true
      this.look()
    } else {
      this.finish({ code: 'FETCH_NO_SOURCE' })
    }
  }

  private start (source: Source, indexes: number[]): void {
    const request = new Request(source, indexes)
    for (const index of indexes) this.claim(index, request)
    source.requests.add(request)
    source.requestCount++
    this.requests.add(request)
    source.window ??= { at: performance.now(), received: source.received }
    request.promise = this.runRequest(request)
    this.track(request.promise)
  }

  private async runRequest (request: Request): Promise<void> {
    const source = request.source
    const ids = request.indexes.map(i => this.wanted[i]!)
    let k = 0
    let missing = 0
    /** chunks received and being stored (each task handles its own failure) */
    const storing = new Set<Promise<void>>()
    let storingBytes = 0
    try {
      const items = getChunks(this.init.libp2p, source.peer, ids, {
        signal: request.controller.signal,
        buffers: this.frames,
        onBytes: bytes => {
          if (request.bytes === 0) {
            const ms = performance.now() - request.startedAt
            source.startupMs = source.startupMs === undefined ? ms : (source.startupMs + ms) / 2
          }
          request.bytes += bytes
          request.lastByteAt = performance.now()
          source.received += bytes
        }
      })
      for await (const item of items) {
        const index = request.indexes[k++]!
        if ('missing' in item) {
          missing++
          source.missing++
          this.unsetHave(source, index)
          this.release(request, index)
          continue
        }
        const beforeReceive = this.init.beforeReceive
        if (beforeReceive !== undefined) await this.holdBack(request, async () => { await beforeReceive(item.sealed.byteLength, source.peer, request.controller.signal) })
        // stored while the next frames are read: a chunk's writes (many small files: a file each) overlap the next one's
        const size = item.sealed.byteLength
        const task = this.store(request, index, item.id, item.sealed).catch((err: unknown) => { this.finish({ error: asKithError(err) }) })
        storing.add(task)
        storingBytes += size
        void task.finally(() => {
          storing.delete(task)
          storingBytes -= size
        })
        while (storing.size >= MAX_STORING || storingBytes >= MAX_STORING_BYTES) await this.holdBack(request, async () => { await Promise.race(storing) })
        if (this.finished) return
        this.pipeline(request)
        if (request.fault !== undefined) throw new KithError('CHUNK_FRAME_MALFORMED', request.fault.message)
      }
      // every byte is in: nothing is due from the source while the store takes the last chunks, so no stall clock runs
      request.throttled = true
      try {
        await Promise.all(storing)
      } finally {
        request.throttled = false
        request.lastByteAt = Math.max(request.lastByteAt, performance.now())
      }
      if (this.finished) return
      if (request.fault !== undefined) throw new KithError('CHUNK_FRAME_MALFORMED', request.fault.message)
      if (request.fault === undefined && request.winner === undefined) {
        if (missing === 0 && source.strikes > 0) source.strikes--
        source.busyStreak = 0
        if (source.limit < this.opt.requestsPerSource) source.limit++
        const ms = performance.now() - request.startedAt
        if (source.rate === undefined && ms > 0) source.rate = request.bytes * 1000 / ms * source.requests.size
        if (missing > 0) this.penalise(source, 'missing', `said it held ${missing} chunk(s) it then answered MISSING`)
      }
    } catch (err) {
      if (this.finished || source.dropped !== undefined) return
      if (request.winner !== undefined) {
        this.judgeRace(request)
      } else if (request.fault !== undefined && request.fault.reason !== 'dropped') {
        this.penalise(source, request.fault.reason, request.fault.message)
      } else if (request.fault === undefined) {
        this.penalise(source, this.classify(err), (err as Error).message)
      }
    } finally {
      // a chunk being stored is not handed back meanwhile: it may be stored yet
      await Promise.all(storing)
      for (const index of request.indexes) this.release(request, index)
      source.requests.delete(request)
      this.requests.delete(request)
      if (source.requests.size === 0) source.window = undefined
      this.schedule()
    }
  }

  /**
   * Stores one chunk a request received, then counts it (or, if another
   * source's copy came first, counts a duplicate). Never rejects: bytes that
   * don't match the id mark the request corrupt and cut it (its source is
   * dropped as it unwinds); a failure of the local store ends the fetch with
   * that error as it is (a full disk's ENOSPC stays one: DISK_FULL, a pause).
   */
  private async store (request: Request, index: number, id: string, sealed: Uint8Array): Promise<void> {
    const source = request.source
    if (this.state[index] !== DONE) {
      try {
        await this.init.store.put(id, sealed)
      } catch (err) {
        const code = (err as KithError).code
        if (code === 'CHUNK_HASH_MISMATCH' || code === 'CHUNK_TOO_LARGE') {
          request.fault ??= { reason: 'corrupt', message: `sent bytes for chunk ${short(id)} that do not match its id` }
          request.controller.abort()
        } else {
          this.finish({ error: err instanceof Error ? err : asKithError(err) })
        }
        return
      }
    }
    const size = sealed.byteLength
    // stored (the store copies, or has used the bytes by the time put resolves) or not needed: a later frame may reuse them
    this.frames.give(sealed)
    if (this.state[index] === DONE) {
      source.duplicates++
      this.release(request, index)
    } else {
      this.complete(index, size, request)
    }
  }

  /**
   * Frees `request`'s slot before it ends, once its last chunk is due within
   * about twice the time its source takes to start delivering a request: the
   * next one is then under way when this one ends, so the source never
   * stands idle between requests. (A source's requests otherwise start
   * together, share its bandwidth, end together, and both wait for the next
   * ones' first bytes.) A source has at most twice its limit of requests
   * open (`schedule`), the released ones near their end.
   */
  private pipeline (request: Request): void {
    const source = request.source
    if (request.released || source.startupMs === undefined) return
    const last = request.indexes[request.indexes.length - 1]!
    if (this.arrival(request, last, performance.now(), this.averageChunk()) > 2 * source.startupMs) return
    request.released = true
    this.schedule()
  }

  /**
   * Waits on something of ours that holds the request's source back while
   * its stream goes unread: `beforeReceive`, or a store slower than the
   * network. The time is ours, so the request's stall clock restarts after
   * it. (Store waits counted as the source's: puts of 7 s, a disk under
   * load, struck a healthy source stalled at each rate window, and the fetch
   * ended FETCH_NO_SOURCE.)
   */
  private async holdBack (request: Request, wait: () => Promise<void>): Promise<void> {
    const started = performance.now()
    request.throttled = true
    try {
      await wait()
    } finally {
      request.throttled = false
      const now = performance.now()
      if (now - started >= THROTTLE_NOTICE_MS) {
        request.lastByteAt = Math.max(request.lastByteAt, now)
        request.source.throttledAt = now
      }
    }
  }

  /** A request all of whose chunks arrived elsewhere first: a strike if it had a head start and moved under half. */
  private judgeRace (request: Request): void {
    const winner = request.winner!
    if (request.startedAt > winner.startedAt) return
    // we held its source back meanwhile: no fault of the source's
    if (request.source.throttledAt >= request.startedAt) return
    let expected = 0
    for (const index of request.indexes) expected += this.sizes[index]!
    if (request.bytes >= expected / 2) return
    const now = performance.now()
    const ms = now - request.startedAt
    // next to nothing (a frame header), or nothing for most of its life: a stall
    if (request.bytes < expected / 100 || now - request.lastByteAt > ms / 2) {
      this.penalise(request.source, 'stalled', `sent ${request.bytes} of ${expected} bytes and then nothing for ${now - request.lastByteAt} ms while ${winner.source.key} delivered the same chunks`)
    } else {
      this.penalise(request.source, 'slow', `sent ${request.bytes} of ${expected} bytes in ${ms} ms while ${winner.source.key} delivered the same chunks`)
    }
  }

  // ---- stall and rate checks

  private tick (): void {
    if (this.finished) return
    const now = performance.now()
    this.excuse(now - this.tickedAt - this.tickMs)
    this.tickedAt = now
    if (this.init.discover !== undefined && !this.looking) {
      const since = now - this.lastLookAt
      if (since >= this.opt.discoverIntervalMs || (since >= MIN_LOOK_GAP_MS && this.isShort())) this.look()
    }
    for (const have of this.haves) {
      if (now < have.deadline) continue
      this.haves.delete(have)
      have.controller.abort(new KithError('CHUNK_PEER_STALLED', `no answer to HAVE within ${this.opt.stallTimeoutMs} ms`))
    }
    for (const request of this.requests) {
      if (request.throttled) continue
      const idle = now - request.lastByteAt
      if (idle >= this.opt.stallTimeoutMs) this.cut(request, 'stalled', `no byte for ${idle} ms`)
    }
    for (const source of this.sources) {
      const window = source.window
      if (source.dropped !== undefined || window === undefined || source.requests.size === 0) continue
      const elapsed = now - window.at
      if (elapsed < this.opt.rateWindowMs) continue
      if (source.throttledAt >= window.at || [...source.requests].some(r => r.throttled)) {
        // we held it back in this window: its rate says more about our limits than about it
        source.window = { at: now, received: source.received }
        continue
      }
      const rate = (source.received - window.received) * 1000 / elapsed
      source.window = { at: now, received: source.received }
      source.rate = source.rate === undefined ? rate : (source.rate + rate) / 2
      let threshold = this.opt.minBytesPerSecond
      let why = `under the floor of ${this.opt.minBytesPerSecond} B/s`
      const best = Math.max(0, ...this.sources.filter(s => s !== source && s.dropped === undefined).map(s => s.rate ?? 0))
      if (best * this.opt.slowRatio > threshold && this.othersCouldTake(source)) {
        threshold = best * this.opt.slowRatio
        why = `under ${this.opt.slowRatio} of the best source's ${Math.round(best)} B/s`
      }
      if (rate < threshold) {
        // nothing at all for most of the window is a stall, a little is slowness
        let idle = Infinity
        for (const request of source.requests) idle = Math.min(idle, now - request.lastByteAt)
        const [reason, message] = idle >= elapsed / 2
          ? ['stalled', `no byte for ${idle} ms (${Math.round(rate)} B/s over ${elapsed} ms)`] as const
          : ['slow', `moved ${Math.round(rate)} B/s over ${elapsed} ms, ${why}`] as const
        for (const request of source.requests) this.cut(request, reason, message)
      }
    }
  }

  /**
   * Time this process did not run (its event loop held by other work, or
   * the process not scheduled on a loaded machine), seen as the ticker
   * running `ms` late, is no source's fault: every stall clock and rate
   * window moves on by it. The late tick runs before the bytes that waited
   * in the sockets meanwhile are read (timers come before I/O in Node's
   * loop), so without this a 3 s hold-up struck every healthy source of a
   * fetch with a 3 s stall timeout as stalled (fetcher-clock.spec).
   */
  private excuse (ms: number): void {
    if (!(ms > 0)) return
    for (const request of this.requests) request.lastByteAt += ms
    for (const have of this.haves) have.deadline += ms
    for (const source of this.sources) if (source.window !== undefined) source.window.at += ms
  }

  private othersCouldTake (source: Source): boolean {
    for (const request of source.requests) {
      for (const index of request.open) {
        if (this.holders[index]! > 1) return true
      }
    }
    return false
  }

  // ---- progress and report

  progress (final: boolean): void {
    const onProgress = this.init.onProgress
    if (onProgress === undefined) return
    const now = performance.now()
    if (!final && now - this.lastProgress < this.opt.progressIntervalMs) return
    this.lastProgress = now
    const perSource: Record<string, SourceProgress> = {}
    for (const s of this.sources) {
      perSource[s.key] = {
        bytes: s.bytes,
        chunks: s.chunks,
        inflight: s.requests.size,
        rate: s.rate ?? 0,
        state: s.dropped !== undefined ? 'dropped' : s.coolUntil > now ? 'cooling' : 'active'
      }
    }
    try {
      onProgress({ doneChunks: this.doneCount + this.held, totalChunks: this.total, doneBytes: this.doneBytes, heldChunks: this.held, perSource })
    } catch {
      // a progress listener's bug must not break the fetch
    }
  }

  report (): FetchReport {
    const sources: SourceReport[] = this.sources.map(s => ({
      peer: s.key,
      joinedAtMs: s.joinedAtMs,
      rechecks: s.rechecks,
      bytes: s.bytes,
      chunks: s.chunks,
      receivedBytes: s.received,
      requests: s.requestCount,
      missing: s.missing,
      duplicates: s.duplicates,
      rate: Math.round(s.rate ?? 0),
      strikes: s.strikes,
      penalties: [...s.penalties],
      ...(s.dropped !== undefined ? { dropped: s.dropped } : {})
    }))
    const received = sources.reduce((sum, s) => sum + s.receivedBytes, 0)
    return {
      totalChunks: this.total,
      heldChunks: this.held,
      fetchedChunks: this.doneCount,
      fetchedBytes: this.doneBytes,
      wastedBytes: Math.max(0, received - this.doneBytes),
      durationMs: this.now(),
      haveMs: this.haveMs,
      sources,
      dropped: sources.filter(s => s.dropped !== undefined).map(s => ({ peer: s.peer, ...s.dropped! })),
      ...(this.init.discover !== undefined
        ? { discovery: { looks: this.looks, joined: this.joined, failures: this.lookFailures, ...(this.lastLookFailure !== undefined ? { lastFailure: this.lastLookFailure } : {}) } }
        : {})
    }
  }
}

/**
 * Fetches `ids` into `store` from `sources`; see the top of this file for how.
 * Resolves with a report once every chunk is stored. Rejects with a
 * FetchError: FETCH_NO_SOURCE (after fetching everything obtainable) or
 * FETCH_ABORTED; with CHUNK_BAD_ID or BAD_REQUEST for bad arguments; or with
 * the store's own error if the local store fails (a full disk).
 */
export async function fetchChunks (init: FetchInit): Promise<FetchReport> {
  const startedAt = performance.now()
  const unique: string[] = []
  const seen = new Set<string>()
  for (const id of init.ids) {
    if (!isId(id)) throw new KithError('CHUNK_BAD_ID', `${JSON.stringify(String(id).slice(0, 80))} is not a chunk id (64 lowercase hex characters)`)
    if (!seen.has(id)) {
      seen.add(id)
      unique.push(id)
    }
  }
  seen.clear()
  const bySource = new Map<string, PeerId>()
  for (const peer of init.sources) bySource.set(peer.toString(), peer)
  const sources = [...bySource.values()]
  if (sources.length > 0xffff) throw new KithError('BAD_REQUEST', `at most ${0xffff} sources`)

  const wanted: string[] = []
  for (let at = 0; at < unique.length; at += HAS_CONCURRENCY) {
    const batch = unique.slice(at, at + HAS_CONCURRENCY)
    const held = await Promise.all(batch.map(async id => await init.store.has(id)))
    batch.forEach((id, i) => { if (!held[i]) wanted.push(id) })
  }
  const fetch = new Fetch(init, wanted, unique.length, sources, startedAt)
  if (wanted.length === 0) {
    fetch.progress(true)
    return { ...fetch.report(), haveMs: 0 }
  }
  return await fetch.run()
}
