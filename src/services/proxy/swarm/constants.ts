/** Named limits of the friend swarm behind the local proxy (docs/proxy.md, "The friend swarm"; docs/protocols.md). */

export const SWARM_PROTOCOL = '/kith/swarm/2.0.0'
/** bytes per chunk of a hash list; one chunk is one request and one SHA-256 */
export const SWARM_CHUNK_SIZE = 1024 * 1024
/** chunks one hash list may name (64 GiB at 1 MiB): its list is at most 2 MiB of hashes */
export const MAX_SWARM_CHUNKS = 65_536
/** holdings one answer to `who` may name */
export const MAX_HOLDINGS = 16
/** a request (`who` names at most MAX_CLASS_URLS URLs of MAX_URL_LENGTH) is refused above this before it is read */
export const MAX_SWARM_REQUEST = 160 * 1024
/** an answer (a hash list of MAX_SWARM_CHUNKS hashes, or one chunk) is refused above this before it is read */
export const MAX_SWARM_RESPONSE = MAX_SWARM_CHUNKS * 32 + 64 * 1024
/** validators (ETag, Last-Modified) longer than this are not indexed nor accepted */
export const MAX_VALIDATOR_LENGTH = 256
/** what a friend may take to answer one question or one chunk */
export const SWARM_TIMEOUT_MS = 30_000
/** how long the proxy waits for friends to say who holds a URL class before it goes to the origin alone */
export const ASK_DEADLINE_MS = 1_500
/** chunks one `chunks` request may ask (MiB of one stream's answer) */
export const MAX_CHUNKS_PER_ASK = 16
/** chunks the pull asks of a friend in one request: a run on one stream, whose yamux window grows */
export const CHUNKS_PER_ASK = 4
/** a chunk the client has waited for this long at one friend is asked of another friend too (one with nothing else to take) */
export const LATE_CHUNK_MS = 1_000
/** requests the pull keeps open to one friend at once */
export const PER_FRIEND_REQUESTS = 2
/** chunks fetched ahead of what the client took: bounds the memory one request holds (16 MiB); two friends' runs in flight fill it */
export const WINDOW_CHUNKS = 16
/** streams a node answers at once on the swarm protocol */
export const MAX_INBOUND_SWARM_STREAMS = 64
/** races a friend may lose in one pull (another source first with a chunk the client waited LATE_CHUNK_MS for) before it is dropped from it */
export const MAX_LOST_RACES = 2
/** how long a friend dropped as slow sits out before it is let back for one chunk (probation); doubled at each drop in the pull */
export const PROBATION_MS = 5_000
/**
 * at qos=1 (the most offload) the origin takes a chunk only once nothing came from friends for this long: a stall, not a
 * busy friend (a loaded machine pauses a friend for 2 s at times, and racing among friends already handles a slow one)
 */
export const STALL_MS = 5_000
/** a pull with a floor (qos above 1) is due its first chunk this long after it starts at the soonest: friends may start alone */
export const FLOOR_GRACE_MS = 500
/** at a floor, bytes that came ahead of the floor's schedule give friends at most this much time to spare */
export const FLOOR_CREDIT_MS = 500
/** at a floor, the origin takes the lowest chunk friends left once it is due within this (plus the origin's time for a chunk) */
export const DEADLINE_LEAD_MS = 250
/** chunks asked of the origin at once at a floor: one at a time, an origin slow to answer (~150 ms a chunk) can't keep 8 MB/s */
export const ORIGIN_REQUESTS_AT_FLOOR = 2
/** at a floor, a friend takes a chunk only if it would bring it by its deadline in this many times what its rate so far says (rates swing) */
export const DEADLINE_MARGIN = 1.5
