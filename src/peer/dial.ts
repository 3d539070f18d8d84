import type { AbortOptions, Stream } from '@libp2p/interface'
import { KithError } from '../errors.ts'

/** What `dialProtocol` needs of libp2p: its own `dialProtocol`, by peer id or address. */
export interface ProtocolDialer<P, O extends AbortOptions> {
  dialProtocol: (peer: P, protocol: string, options?: O) => Promise<Stream>
}

/**
 * Opens a `protocol` stream to `peer`, the one way kith's clients do it:
 * libp2p's `dialProtocol`, tried once more at once when the connection it
 * picked closed under it, and every failure an Error.
 *
 * Why: libp2p 3.3.11 (@libp2p/utils 7.4.1) rejects a dial with the
 * connection's bare close Event, not an Error, when the connection closes
 * while multistream-select's first write waits for it to drain
 * (`byteStream.write` waits with p-event's `rejectionEvents: ['close']`, and
 * p-event rejects with the event itself). Printed, that is "[object Event]":
 * CI saw it as backup-care.spec's owner failing to reach a host it had just
 * seen online. test/peer/dial.spec.ts reproduces it over real TCP and fails
 * the day libp2p rejects with an Error there; then the Event case of
 * `closedUnder` and `asError` can go.
 *
 * The connection that closed is no longer one libp2p picks, so the second
 * try takes another open connection or dials a new one.
 */
export async function dialProtocol<P, O extends AbortOptions> (dialer: ProtocolDialer<P, O>, peer: P, protocol: string, options: O): Promise<Stream> {
  try {
    return await dialer.dialProtocol(peer, protocol, options)
  } catch (err) {
    if (!closedUnder(err) || options.signal?.aborted === true) throw asError(err, protocol)
  }
  try {
    return await dialer.dialProtocol(peer, protocol, options)
  } catch (err) {
    throw asError(err, protocol)
  }
}

/** The connection a stream was being opened on closed: the Event above, or libp2p's own errors for it. */
export function closedUnder (err: unknown): boolean {
  return isCloseEvent(err) || (err instanceof Error && (err.name === 'ConnectionClosedError' || err.name === 'ConnectionClosingError'))
}

/** What opening a `protocol` stream threw, as an Error whose message says what happened (an Error is kept as it is). */
export function asError (err: unknown, protocol: string): Error {
  if (err instanceof Error) return err
  if (isCloseEvent(err)) return new KithError('CONNECTION_CLOSED', `the connection closed while ${protocol} was being opened on it; try again`, { cause: err })
  return new KithError('CONNECTION_CLOSED', `libp2p failed to open ${protocol} without saying why (${String(err)}); try again`, { cause: err })
}

function isCloseEvent (err: unknown): err is Event {
  return err instanceof Event && err.type === 'close'
}
