/**
 * Every failure a user or a calling program can meet carries a stable `code`.
 * Callers branch on `code`, never on message text. The message says what
 * happened and what to do about it.
 *
 * Codes are grouped by what they concern; the HTTP status is the one the local
 * API answers with when the error reaches it.
 */
export const ERROR_CODES = {
  // input that can't be understood
  USAGE: 400,
  BAD_REQUEST: 400,
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED_VERSION: 400,
  // invites
  INVITE_MALFORMED: 400,
  INVITE_TOO_LARGE: 413,
  INVITE_BAD_SIGNATURE: 400,
  INVITE_EXPIRED: 410,
  INVITE_NOT_YET_VALID: 400,
  INVITE_USED: 410,
  INVITE_REVOKED: 410,
  INVITE_UNKNOWN: 404,
  INVITE_OWN: 400,
  INVITE_ISSUER_UNREACHABLE: 502,
  // redeem protocol
  PROTOCOL_VIOLATION: 502,
  // friends
  FRIEND_UNKNOWN: 404,
  FRIEND_AMBIGUOUS: 409,
  FRIEND_NAME_TAKEN: 409,
  FRIEND_REVOKED: 403,
  NOT_A_FRIEND: 403,
  // local API
  UNAUTHORIZED: 401,
  FORBIDDEN_ORIGIN: 403,
  NOT_FOUND: 404,
  DAEMON_NOT_RUNNING: 503,
  /** a percent-escape in the path or query that does not decode (like `%zz` or `%ff`) */
  URL_MALFORMED: 400,
  /** every event stream slot is taken (see docs/api.md) */
  EVENT_STREAMS_FULL: 503,
  /** api.token can be read by other users: the CLI won't send it */
  TOKEN_NOT_PRIVATE: 403,
  /** `kith stop` asked, and the daemon's process had not ended by the deadline */
  DAEMON_STILL_RUNNING: 504,
  /** a dashboard login link that is unknown, used already or too old (docs/dashboard.md) */
  LOGIN_LINK_INVALID: 401,
  // transfer
  MANIFEST_MALFORMED: 400,
  MANIFEST_TOO_LARGE: 413,
  MANIFEST_BAD_SIGNATURE: 400,
  MANIFEST_WRONG_OWNER: 403,
  MANIFEST_LIMIT: 413,
  MANIFEST_BAD_PATH: 400,
  CHUNK_BAD_ID: 400,
  CHUNK_HASH_MISMATCH: 400,
  CHUNK_TOO_LARGE: 413,
  CHUNK_DECRYPT_FAILED: 400,
  CHUNK_NOT_FOUND: 404,
  CHUNK_CORRUPT: 500,
  SOURCE_UNREADABLE: 400,
  SOURCE_CHANGED: 409,
  FILE_VERIFY_FAILED: 502,
  DESTINATION_EXISTS: 409,
  /** a symbolic link where a fetch would write (a folder, the destination, a partial): never followed */
  DESTINATION_LINK: 409,
  // transfer: the chunk protocol and multi-source fetch
  CHUNK_FRAME_MALFORMED: 400,
  CHUNK_FRAME_TOO_LARGE: 413,
  CHUNK_PEER_UNREACHABLE: 502,
  CHUNK_PEER_REFUSED: 502,
  CHUNK_PEER_BUSY: 503,
  CHUNK_PEER_FAILED: 502,
  CHUNK_PEER_STALLED: 504,
  FETCH_NO_SOURCE: 502,
  /** the caller aborted (pause or cancel); 499 as in "client closed request" */
  FETCH_ABORTED: 499,
  /** a bandwidth flow was closed (its transfer ended) while a take waited */
  FLOW_CLOSED: 409,
  // file sharing
  KEY_UNWRAP_FAILED: 502,
  SHARE_UNKNOWN: 404,
  SHARE_NOT_GRANTED: 403,
  FRIEND_OFFLINE: 503,
  /** the connection a stream was being opened on closed under it (src/peer/dial.ts) */
  CONNECTION_CLOSED: 503,
  /** the friend is online, but only through a relay whose budget limits the connection: files don't move there */
  FRIEND_RELAY_LIMITED: 503,
  TRANSFER_UNKNOWN: 404,
  TRANSFER_STATE: 409,
  DISK_FULL: 507,
  // friend services (src/services/expose)
  /** no service of that name is offered to you (unknown and not granted answer alike), or you expose none of that name */
  SERVICE_UNKNOWN: 404,
  /** the program behind an exposed service refused or did not accept the connection */
  SERVICE_DOWN: 502,
  /** the friend holds the most connections to services one friend may */
  SERVICE_BUSY: 503,
  /** the other side of a service connection took nothing for a long time */
  SERVICE_STALLED: 504,
  /** `kith connect` of a friend's service kept on another port already */
  CONNECT_EXISTS: 409,
  CONNECT_UNKNOWN: 404,
  /** the local port asked for is taken by another program */
  PORT_IN_USE: 409,
  // downloads (src/services/downloads)
  /** not a URL, too long, or carrying what a download URL may not (the message says which) */
  URL_INVALID: 400,
  /** no add-on takes this URL's scheme (or its module is not in this build) */
  URL_UNSUPPORTED: 400,
  /** the downloaded file's sha256 is not the one asked for (--checksum): nothing was kept */
  CHECKSUM_MISMATCH: 502,
  DOWNLOAD_UNKNOWN: 404,
  DOWNLOAD_STATE: 409,
  /** the destination's disk has less free space than downloads.minFreeBytes: the queue waits for room */
  DISK_LOW: 507,
  // downloads: the HTTP engine (src/services/downloads/http); the retried ones are final once retries run out
  /** the server refused the file (404, 403, 410...; the message names the status): not retried */
  HTTP_STATUS: 502,
  /** the server failed (5xx, 408) on every attempt */
  HTTP_SERVER_ERROR: 502,
  /** the server answered 429 or 503 (Retry-After honoured) on every attempt */
  HTTP_BUSY: 503,
  HTTP_CONNECT_FAILED: 502,
  /** no byte (or no answer) within settings.readTimeoutMs, on every attempt */
  HTTP_TIMEOUT: 504,
  /** connections broke mid-response on every attempt */
  HTTP_CONNECTION_LOST: 502,
  /** the origin's TLS certificate is not trusted (self-signed, unknown authority, expired, another name): not retried */
  HTTP_TLS_UNTRUSTED: 502,
  /** an answer that can't be used: a Content-Range other than the one asked, a redirect without Location */
  HTTP_BAD_RESPONSE: 502,
  HTTP_REDIRECT_LOOP: 508,
  HTTP_TOO_MANY_REDIRECTS: 502,
  /** the file kept changing at the origin while it was downloaded (the download restarted each time) */
  HTTP_ORIGIN_CHANGED: 409,
  /** a proxy setting that is not an http:// or https:// URL (SOCKS is not supported) */
  PROXY_UNSUPPORTED: 400,
  // the local proxy (src/services/proxy, docs/proxy.md)
  /** a /proxy query kith can't read: a pair without '=', an unknown key, an escape that does not decode, too long */
  PROXY_BAD_QUERY: 400,
  /** a /proxy query without a url= */
  PROXY_NO_URL: 400,
  /** service= other than min_rate_data or streaming */
  PROXY_BAD_SERVICE: 400,
  /** qos= other than a whole number of bytes per second */
  PROXY_BAD_QOS: 400,
  /** a browser request from another site (Origin, Sec-Fetch-Site): the proxy serves local programs */
  PROXY_CROSS_SITE: 403,
  /** a Host header other than 127.0.0.1:PORT or localhost:PORT (DNS rebinding) */
  PROXY_BAD_HOST: 421,
  /** the origin is on a loopback, private or link-local address (allowed only by config.json's proxy.allowPrivateOrigins) */
  PROXY_ORIGIN_PRIVATE: 403,
  /** the proxy answers GET and HEAD only */
  PROXY_METHOD: 405,
  /** a friend asked the swarm for a file or chunk this node does not hold (any longer) */
  SWARM_NOT_HELD: 404,
  /** a friend's hash list not signed by them, malformed, or for another file */
  SWARM_BAD_LIST: 502,
  // locate: signed address records and finding friends who moved
  RECORD_MALFORMED: 400,
  RECORD_TOO_LARGE: 413,
  RECORD_BAD_SIGNATURE: 400,
  RECORD_WRONG_PEER: 400,
  RECORD_FUTURE: 400,
  RECORD_STALE: 409,
  LOCATE_NOT_GRANTED: 403,
  LOCATE_FAILED: 502,
  /** a DHT peer put more records than this node holds (src/peer/datastore.ts) */
  DHT_STORE_FULL: 507,
  // hole punching (/kith/punch/1.0.0)
  PUNCH_MALFORMED: 400,
  PUNCH_TOO_LARGE: 413,
  /** the friend won't punch (it doesn't know its public address), or offered an address that isn't public */
  PUNCH_REFUSED: 502,
  /** the simultaneous connect got no direct connection in time */
  PUNCH_FAILED: 504,
  // backup: blobs, trees and snapshots (src/services/backup/), runs and restores
  BLOB_MALFORMED: 400,
  /** a blob failed authentication: altered, swapped for another, or not sealed by this owner */
  BLOB_OPEN_FAILED: 502,
  TREE_MALFORMED: 400,
  TREE_TOO_LARGE: 413,
  SNAPSHOT_MALFORMED: 400,
  SNAPSHOT_TOO_LARGE: 413,
  SNAPSHOT_BAD_SIGNATURE: 400,
  /** a snapshot signed by someone else, or whose seq or id differs from the one the index names (a rollback or a swap) */
  SNAPSHOT_MISMATCH: 409,
  SNAPSHOT_UNKNOWN: 404,
  /** no friend granted me backup (or none of those named with --to), or fewer than the replicas asked */
  BACKUP_NO_HOSTS: 409,
  /** a blob could not be placed on as many hosts as asked (they refused, are full or offline) */
  BACKUP_PLACEMENT_FAILED: 502,
  /** a run, restore or forget is already under way */
  BACKUP_BUSY: 409,
  // backup recovery: the phrase (src/peer/phrase.ts) and the recovery record (services/backup/recovery.ts)
  PHRASE_MALFORMED: 400,
  PHRASE_WORD_COUNT: 400,
  /** a word outside the BIP39 English list; the message names it and the nearest words */
  PHRASE_UNKNOWN_WORD: 400,
  PHRASE_CHECKSUM: 400,
  RECOVERY_MALFORMED: 400,
  RECOVERY_TOO_LARGE: 413,
  RECOVERY_BAD_SIGNATURE: 400,
  /** a record older than (or as old as) one already seen: a replay or a rollback */
  RECOVERY_STALE: 409,
  /** the friend asked keeps no recovery record for this identity */
  RECOVERY_NOT_FOUND: 404,
  /** kith restore makes a new home: it refuses one that already holds an identity or a database */
  HOME_NOT_EMPTY: 409,
  /** a host failed `kith backup audit` (or could not be reached): the report says which and how */
  BACKUP_AUDIT_FAILED: 502,
  // backup hosting: the host book and /kith/backup/1.0.0 (src/services/backup/host*.ts, protocol.ts)
  /** the host has not granted this friend backup (or I asked a stranger) */
  BACKUP_NOT_GRANTED: 403,
  /** the blob would take the owner past the quota the host granted; the host wrote nothing */
  QUOTA_EXCEEDED: 507,
  /** the host holds no such blob (or recovery record) for this owner */
  BLOB_MISSING: 404,
  /** the bytes a host sent do not hash to the blob's id: altered or swapped */
  BLOB_CORRUPT: 502,
  /** a signed backup request whose counter is not above the last one the host accepted: a replay */
  BACKUP_REPLAYED: 409,
  BACKUP_BAD_SIGNATURE: 400,
  /** the host serves as many backup requests of this friend (or recovery records) as it takes at once; try again shortly */
  BACKUP_HOST_BUSY: 503,
  // home folder and stored state
  HOME_LOCKED: 409,
  IDENTITY_CORRUPT: 500,
  IDENTITY_MISSING: 500,
  IDENTITY_LOCKED: 401,
  DATABASE_CORRUPT: 500,
  /** the home has an identity but its database folder is gone: kith won't start an empty node with an old identity */
  DATABASE_MISSING: 500,
  /** something in the home folder belongs to another user, or its mode can't be made private */
  HOME_NOT_PRIVATE: 500,
  /** config.json in the home folder is not JSON or breaks its schema (the message names the file) */
  CONFIG_INVALID: 400,
  // download add-ons (src/services/downloads/<scheme>.ts): what the origin server said
  /** the server has no such file or folder */
  REMOTE_NOT_FOUND: 404,
  /** the server refused the credentials (or asked for some and none were given) */
  REMOTE_AUTH_FAILED: 401,
  /** the server could not be reached, or failed in a way kith can't name more closely (the message quotes it) */
  REMOTE_FAILED: 502,
  /** the object changed at the origin while it was being fetched (its length, or what a resume would join to) */
  REMOTE_CHANGED: 409,
  /** an SSH server whose host key is not in known_hosts: refused unless the user accepts it */
  HOST_KEY_UNKNOWN: 403,
  /** an SSH server whose host key differs from the one known_hosts holds for it */
  HOST_KEY_CHANGED: 403,
  /** an HLS playlist kith can't read */
  PLAYLIST_MALFORMED: 502,
  /** an HLS playlist of a kind kith does not download (live, encrypted) */
  PLAYLIST_UNSUPPORTED: 400,
  INTERNAL: 500
} as const

export type ErrorCode = keyof typeof ERROR_CODES

export class KithError extends Error {
  override name = 'KithError'
  readonly code: ErrorCode

  constructor (code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options)
    this.code = code
  }

  get status (): number {
    return ERROR_CODES[this.code]
  }

  toJSON (): { code: ErrorCode, message: string } {
    return { code: this.code, message: this.message }
  }
}

export function isErrorCode (value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(ERROR_CODES, value)
}

/** Wraps anything thrown into a KithError, keeping the original as the cause. */
export function asKithError (err: unknown): KithError {
  if (err instanceof KithError) return err
  const message = err instanceof Error ? err.message : String(err)
  return new KithError('INTERNAL', message, { cause: err })
}
