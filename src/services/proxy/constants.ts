/** Named limits of the local proxy (docs/proxy.md). */

/** a /proxy request line's query longer than this is PROXY_BAD_QUERY, refused before it is split */
export const MAX_QUERY_LENGTH = 64 * 1024
/** url= values one request may name (one equivalence class) */
export const MAX_CLASS_URLS = 16
/** qos above this (1 TB/s) is not a rate any link has: PROXY_BAD_QOS */
export const MAX_QOS = 1e12
/** the cache's size when config.json says nothing: 1 GiB */
export const DEFAULT_CACHE_BYTES = 1024 * 1024 * 1024
/** the name of the cache folder in the home */
export const CACHE_DIR = 'proxy-cache'
/** the file in the home naming the proxy's address, as api.json names the API's */
export const PROXY_INFO = 'proxy.json'
/** what an origin may take to answer the cache's conditional HEAD before the entry is not trusted */
export const REVALIDATE_TIMEOUT_MS = 10_000
/** requests served at once; more wait in the kernel's accept queue */
export const MAX_CONNECTIONS = 256
/** bytes a cache file is written in at once (one writev): a write per 64 KiB socket read cost the daemon more CPU than hashing the bytes */
export const CACHE_WRITE_BATCH = 1024 * 1024
/** bytes a cache file is flushed to the disk after while its fetch goes on, so the fsync before the last byte has little left */
export const CACHE_SYNC_EVERY = 32 * 1024 * 1024
/** bytes a cache writer holds for the disk before the fetch waits for it: a slow disk slows the fetch rather than filling memory */
export const MAX_CACHE_UNWRITTEN = 8 * 1024 * 1024
/** bytes a streaming answer's first read-ahead fetches beyond a bounded range: a player's next Range usually starts there */
export const READ_AHEAD_FIRST_BYTES = 2 * 1024 * 1024
/** bytes a read-ahead grows to, doubling each time the client reads on into the last one (a seek starts again from the first size) */
export const READ_AHEAD_BYTES = 8 * 1024 * 1024
/** bytes all read-aheads hold at once; the oldest go first */
export const READ_AHEAD_MEMORY = 32 * 1024 * 1024
/** a read-ahead older than this is dropped, not served: bytes the origin gave seconds ago, never an old version kept long */
export const READ_AHEAD_TTL_MS = 30_000
