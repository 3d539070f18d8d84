import { Socket } from 'node:net'
import type { ConnectionEncrypter } from '@libp2p/interface'
import type { Uint8ArrayList } from 'uint8arraylist'

/**
 * One socket write per batch of Noise messages, not one per piece.
 *
 * @libp2p/tcp (11.0) writes every piece of what it is handed with its own
 * `socket.write`, and Noise hands it, per message of up to 64 KiB, a 2-byte
 * length, then each piece of ciphertext (the 12-byte yamux header's, the
 * data's) and the 16-byte tag: four or more writes, so four system calls
 * and, with TCP_NODELAY, four segments, three of them tiny, each waking the
 * receiver. Corked, the pieces of one send leave in one `writev`.
 *
 * It wraps the connection encrypter because that is the one place the raw
 * TCP connection passes through before anything is written on it; any other
 * connection (a relayed one has no socket) is left as it is.
 */
export function corkedWrites<T extends ConnectionEncrypter> (encrypter: T): T {
  const secureInbound = encrypter.secureInbound.bind(encrypter)
  const secureOutbound = encrypter.secureOutbound.bind(encrypter)
  encrypter.secureInbound = async (connection, options) => await secureInbound(cork(connection), options)
  encrypter.secureOutbound = async (connection, options) => await secureOutbound(cork(connection), options)
  return encrypter
}

interface TcpConnection {
  socket?: unknown
  sendData?: (data: Uint8ArrayList) => { sentBytes: number, canSendMore: boolean }
}

function cork<C> (connection: C): C {
  const tcp = connection as TcpConnection
  const socket = tcp.socket
  if (!(socket instanceof Socket) || typeof tcp.sendData !== 'function') return connection
  tcp.sendData = (data) => {
    let sentBytes = 0
    socket.cork()
    try {
      for (const buf of data) {
        socket.write(buf)
        sentBytes += buf.byteLength
      }
    } finally {
      socket.uncork()
    }
    // what the kernel did not take at once waits in the socket: more may follow once it drains
    return { sentBytes, canSendMore: socket.writableLength < socket.writableHighWaterMark }
  }
  return connection
}
