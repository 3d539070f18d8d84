/**
 * Named limits of friend services (docs/services.md, docs/protocols.md
 * "Friend services").
 */

/** A friend asks what I offer them: `{ v:1, op:'list' }` -> the names and descriptions granted to them. */
export const CATALOG_PROTOCOL = '/kith/services/1.0.0'
/** One TCP connection to one exposed service: a header each way, then raw bytes both ways. */
export const TUNNEL_PROTOCOL = '/kith/service-stream/1.0.0'

/** Services one node exposes at most (so a catalog answer stays small). */
export const MAX_EXPOSED = 64
/** Ports one node keeps open for friends' services (`kith connect`) at most. */
export const MAX_CONNECTS = 64
/** Friends named in one service's grant at most. */
export const MAX_GRANTEES = 256

export const MAX_NAME_LENGTH = 63
/** UTF-16 units; descriptions are safe text (src/peer/text.ts) */
export const MAX_DESCRIPTION_LENGTH = 200

export const MAX_CATALOG_REQUEST = 64
/** 64 services of a 63-character name and a 200-character description (up to 4 bytes each), with room for CBOR */
export const MAX_CATALOG_RESPONSE = 64 * 1024
export const CATALOG_TIMEOUT_MS = 15_000

/** The opening header (`{ v, service }`), checked before it is read. */
export const MAX_OPEN_HEADER = 256
/** The answer header (`{ v, ok }` or a failure with its message). */
export const MAX_ANSWER_HEADER = 2048
/** From the stream's opening to the answer: a friend that says nothing is cut off after this. */
export const OPEN_TIMEOUT_MS = 10_000
/**
 * The exposing node's connect to the local service gives up after this and
 * refuses the friend with SERVICE_DOWN: a program that accepts nothing must
 * not leave the friend hanging.
 */
export const LOCAL_CONNECT_TIMEOUT_MS = 5_000

/** Open connections one friend may hold to my services at once; more are refused with SERVICE_BUSY. */
export const MAX_CONNECTIONS_PER_FRIEND = 64
/** libp2p's per-connection cap on inbound tunnel streams: above the per-friend cap, so that one answers first, with a reason. */
export const MAX_INBOUND_TUNNEL_STREAMS = MAX_CONNECTIONS_PER_FRIEND + 16
/** ...and on outbound ones (local programs may open many connections to one friend's services). */
export const MAX_OUTBOUND_TUNNEL_STREAMS = 256

/**
 * Bytes one direction of one connection holds at most in kith's own
 * buffers: what arrived from the stream and waits for the local socket (the
 * stream is paused above it, and yamux stops granting window), and what
 * waits in the stream's write buffer. Per connection: about twice this plus
 * one yamux window (4 MiB, src/peer/node.ts) each way.
 */
export const HIGH_WATER = 1024 * 1024
/** Bytes asked of the bandwidth scheduler, and sent, at a time. */
export const SEND_SLICE = 64 * 1024
/** A stream whose other side takes nothing for this long is given up (the local socket is reset). */
export const STALL_TIMEOUT_MS = 120_000
