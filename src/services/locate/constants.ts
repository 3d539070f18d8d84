import { MAX_RECORD_BYTES } from '../../peer/address-record.ts'

/** Named limits and timeouts of the locate service; docs/protocols.md describes the protocol. */
export const LOCATE_PROTOCOL = '/kith/locate/1.0.0'
export const LOCATE_PROTOCOL_VERSION = 1
/** A request or answer: one address record plus a little framing. */
export const MAX_LOCATE_MESSAGE = MAX_RECORD_BYTES + 512
/** Inbound locate streams one connection may hold open at once. */
export const MAX_INBOUND_LOCATE_STREAMS = 4
/** One push or one question, from opening the stream to the answer. */
export const LOCATE_STREAM_TIMEOUT_MS = 5_000
/** How long to wait for friends' answers to "where is X". */
export const ASK_TIMEOUT_MS = 3_000
/** Friends asked at once; a personal node has few, this bounds a big one. */
export const MAX_ASKED_FRIENDS = 16
/** Dialing a friend at the addresses of a record. */
export const LOCATE_DIAL_TIMEOUT_MS = 5_000
/** Looking a record up in the DHT, the fallback. */
export const DHT_GET_TIMEOUT_MS = 3_000
/** Putting my record into the DHT. */
export const DHT_PUT_TIMEOUT_MS = 15_000
/** My record is put into the DHT again this often, since DHT nodes keep it in memory only. */
export const DHT_REPUBLISH_MS = 30 * 60_000
/** Address changes come in bursts (several listeners, identify); sign once they settle. */
export const PUBLISH_DEBOUNCE_MS = 100
/** Automatic locates of one friend, after failed redials, run at most this often. */
export const AUTO_LOCATE_MIN_INTERVAL_MS = 1_000
