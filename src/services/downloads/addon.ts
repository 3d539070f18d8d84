/**
 * The download add-on interface (docs/downloads.md, "Writing an add-on").
 *
 * An add-on knows one family of URL schemes and how to fetch an object to a
 * place; the queue (queue.ts) does everything around it: persistence across
 * restarts, a few downloads at a time, the bandwidth flow, pause, resume and
 * cancel, the checksum, the low-disk pause and the atomic move into place.
 * Add-ons are loaded on first use by the registry (registry.ts): the daemon
 * imports no add-on's library before a URL of its scheme is queued.
 *
 * This file holds types only, and stays light: the CLI and every add-on
 * import it.
 */
import type { Validators } from './http/validators.ts'

export interface DownloadAddon {
  /** URL schemes it takes, without the colon, lower case, e.g. ['http', 'https'] */
  schemes: readonly string[]
  /**
   * Checks a URL (and the job's options) before anything is queued; throws a
   * typed KithError (URL_INVALID, URL_UNSUPPORTED...) naming what is wrong.
   * Synchronous and local: no network here.
   */
  check?: (url: URL, options: Readonly<Record<string, unknown>>) => void
  /**
   * Fetches `job.url` to `ctx.partial` (a file; or a folder for trees) and
   * resolves with what it wrote. Resumable: after a pause, a restart or a
   * kill -9, it is called again with the same `partial` and `stateDir`, and
   * goes on from what they hold (a file that is longer than the add-on can
   * vouch for is cut back, or started over).
   *
   * Rejects with a KithError with a stable code on failure; with the
   * signal's reason once `ctx.signal` aborts (pause, cancel, stop), keeping
   * whatever is resumable. Every byte it receives passes `ctx.take` first.
   */
  download: (job: DownloadJob, ctx: DownloadContext) => Promise<DownloadResult>
}

export interface DownloadJob {
  /** the queue's id for it (12 hex digits) */
  id: string
  url: URL
  /** connections the user allows it (`--connections`, 1 to MAX_CONNECTIONS); one-connection add-ons ignore it */
  connections: number
  /** add-on-specific options from the request, as given (`options` in POST /v1/downloads); the add-on checks them */
  options: Readonly<Record<string, unknown>>
  /**
   * A checksum is to be verified: an add-on that can hash the file in order
   * while it writes it returns its sha256 (the queue reads the file back
   * otherwise). False: nothing needs the file's hash, compute none.
   */
  hash: boolean
}

export interface DownloadContext {
  /** where to write: absolute; the queue verifies it and moves it into place */
  partial: string
  /** a private folder kept across restarts for the add-on's control files; removed once the download ends */
  stateDir: string
  /** aborts on pause, cancel or stop: stop quickly, keep what is resumable */
  signal: AbortSignal
  /**
   * The bandwidth scheduler (the download's flow, class 'public', its
   * priority and `--limit`): await it for `bytes` before using bytes read.
   * Callable from several connections at once; pass a connection's own
   * signal to abort one take alone.
   */
  take: (bytes: number, signal?: AbortSignal) => Promise<void>
  /**
   * Reports progress: `done` bytes written so far (including what was there
   * from before a resume), `total` when known, and the name the object has
   * at the origin (a Content-Disposition name, the last path segment) used
   * for the destination when the user gave a folder. Cheap: the queue
   * throttles what it passes on.
   */
  progress: (p: DownloadProgress) => void
  /** network settings from config.json's `downloads` section */
  settings: DownloadSettings
}

export interface DownloadProgress {
  done: number
  total: number | null
  name?: string
}

export interface DownloadResult {
  /** bytes of the file (or of every file of the tree) */
  size: number
  /** hex sha256 of the file when the job asked for it and the add-on computed it while writing (the queue then does not read the file again) */
  sha256?: string
  /** the object's name at the origin, when known */
  name?: string
  /** 'tree': `partial` is a folder (an S3 prefix, a WebDAV collection) */
  kind: 'file' | 'tree'
  /** the origin's ETag and Last-Modified of the version fetched (http, https): what the proxy's friend swarm offers it under */
  validators?: Validators
}

/**
 * Network settings every add-on honours where its protocol has them
 * (config.json: `{"downloads": {...}}`, see docs/downloads.md). Proxies
 * default from the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY).
 */
export interface DownloadSettings {
  proxy: { http: string | null, https: string | null, all: string | null, noProxy: string | null }
  /** false: connect over IPv4 only @default true */
  ipv6: boolean
  /** DNS servers (IP addresses) to resolve with instead of the system's @default [] */
  dns: readonly string[]
  /** @default 30000 */
  connectTimeoutMs: number
  /** no byte for this long fails the connection (it is retried) @default 60000 */
  readTimeoutMs: number
  /** attempts after the first, per connection or request, with exponential backoff and jitter @default 5 */
  retries: number
  /** cap on how long one backoff (or Retry-After) waits @default 60000 */
  maxRetryWaitMs: number
}
