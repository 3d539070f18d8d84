/** Named limits of the HTTP download engine (docs/downloads.md, "HTTP engine"). */

/**
 * A file is split over several connections only when each would get at least
 * this much: below it, a new connection's handshake and slow start cost more
 * than its share saves. The file's size divided by this caps the connections.
 */
export const MIN_SPLIT_SIZE = 1024 * 1024
/**
 * With several connections, each request is for at most this much, the
 * first free bytes in file order: so the file fills from its start and its
 * SHA-256 is computed during the download rather than after it (measured,
 * 1 GiB from nginx: hashing it whole at the end took ~0.8 s of a ~3.8 s
 * download). The price is one request (a round trip on a kept-alive
 * connection) per piece: at 50 ms and 10 MB/s per connection, 3%.
 */
export const MAX_PIECE = 16 * 1024 * 1024
/**
 * An idle connection takes over half of the busiest connection's remaining
 * range, but never leaves either with less than this (aria2 splits the same
 * way; smaller pieces would reconnect more than they help).
 */
export const MIN_STEAL_SIZE = 256 * 1024
/**
 * the write-back cache's memory, whatever the connection count: connections
 * wait for it (backpressure). 4 MiB: blocks of 256 KiB at 8 connections;
 * the memory a download adds to the daemon is mostly this and what
 * scavenge.ts lets wait
 */
export const CACHE_BUDGET = 4 * 1024 * 1024
/** what one connection gathers before one write; smaller when the budget is shared by many */
export const MAX_BLOCK = 1024 * 1024
/** the least one connection's block may be, even with many connections */
export const MIN_BLOCK = 32 * 1024
/** the control file (the ranges safely on disk) is saved at most this often, after an fdatasync of the partial */
export const CONTROL_INTERVAL_MS = 1000
/** redirects followed per request; more is an error (HTTP_TOO_MANY_REDIRECTS) */
export const MAX_REDIRECTS = 10
/** first backoff; doubled per failed attempt, with jitter, up to settings.maxRetryWaitMs */
export const RETRY_BASE_MS = 250
/** times a download starts over because the file changed at the origin, before HTTP_ORIGIN_CHANGED */
export const MAX_RESTARTS = 3
/**
 * what the hash reads back from the file at a time (other connections'
 * pieces: most of a file at 8 connections). 1 GiB at 8 connections took
 * 4,041 reads of 256 KiB, each a round trip through libuv's thread pool
 * and a promise; 1,017 of 1 MiB (strace -c: 76,600 system calls in all ->
 * 52,200, futex 42,400 -> 27,800). One buffer per download.
 */
export const HASH_READ_BLOCK = 1024 * 1024
