/** Named limits of the HTTP download engine (docs/downloads.md, "HTTP engine"). */

/**
 * A file is split over several connections only when each would get at least
 * this much: below it, a new connection's handshake and slow start cost more
 * than its share saves. The file's size divided by this caps the connections.
 */
export const MIN_SPLIT_SIZE = 1024 * 1024
/**
 * With several connections, each request is for one piece, the first free
 * bytes in file order (aria2's "inorder" piece selection), so the file fills
 * from its start and its SHA-256 is computed during the download, from
 * memory: the pieces other connections fetch ahead of the hash wait in
 * memory for it (HASH_AHEAD), so they are sized to fit in it: HASH_AHEAD
 * shared by the connections, at least MIN_PIECE (1 MiB at 8 connections).
 * Each piece costs a request, so a piece doubles, up to MAX_PIECE, whenever
 * a response's headers took over PIECE_WAIT_SHARE of the time its body
 * did (a long round trip: at 50 ms and 10 MB/s per connection a 1 MiB piece
 * would wait a third as long as it flows); bytes that then do not fit in
 * HASH_AHEAD are read back from the page cache instead.
 */
export const MIN_PIECE = 1024 * 1024
export const MAX_PIECE = 16 * 1024 * 1024
export const PIECE_WAIT_SHARE = 1 / 8
/** the event loop's use over a piece above which its request's wait is the process's, not the network's (piece-timing.ts) */
export const PIECE_BUSY = 0.8
/**
 * bytes written ahead of the hash that it keeps in memory rather than read
 * back from the file (hash-cursor.ts), on top of CACHE_BUDGET. 1 GiB on 8
 * connections from nginx (a loaded machine): 1,012 MB of it read back with
 * 16 MiB pieces and nothing kept; 21 MB with 1 MiB pieces and this. A/B,
 * engine alone, CPU ms/MB: 8 MiB (1 MiB pieces) 2.91-3.48; 32 MiB (4 MiB
 * pieces) 3.26-3.64 (more kept blocks, colder in the CPU's caches by their
 * turn, we think); 4 and 2 MiB (512 and 256 KiB pieces) 3.41-3.84, a
 * request costing more than the read-back it saves
 */
export const HASH_AHEAD = 8 * 1024 * 1024
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
