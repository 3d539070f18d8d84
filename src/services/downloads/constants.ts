/** Named limits of the download queue (docs/downloads.md). */

/** longest URL taken, checked before parsing */
export const MAX_URL_LENGTH = 8192
/** connections one download may use (`--connections`) */
export const MAX_CONNECTIONS = 16
/** connections when none is asked for */
export const DEFAULT_CONNECTIONS = 4
/** downloads running at once, unless config.json says otherwise */
export const DEFAULT_MAX_ACTIVE = 3
/** URLs one request may queue (`kith get URL...`) */
export const MAX_URLS_PER_REQUEST = 64
/** bytes of add-on options in a request, as JSON */
export const MAX_OPTIONS_BYTES = 16 * 1024
/** progress events at most this often per download */
export const PROGRESS_INTERVAL_MS = 250
/** the queue pauses while the destination's disk has less free than this (config.json downloads.minFreeBytes) */
export const DEFAULT_MIN_FREE_BYTES = 512 * 1024 * 1024
/** how often a queue paused for disk space looks again */
export const DISK_RECHECK_MS = 2_000
