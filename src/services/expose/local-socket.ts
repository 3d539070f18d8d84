import { connect, type Socket } from 'node:net'
import { KithError } from '../../errors.ts'
import { LOCAL_CONNECT_TIMEOUT_MS } from './constants.ts'

/**
 * The exposing node's connection to the program it exposes: to the host and
 * port its owner gave, never anywhere a friend names (no open proxy). A
 * program that is down or accepts nothing is SERVICE_DOWN within
 * LOCAL_CONNECT_TIMEOUT_MS, so the friend gets a refusal, not a hang. The
 * message goes to the friend: it names the service, not the address.
 */
export async function connectLocal (host: string, port: number, service: string, signal: AbortSignal): Promise<Socket> {
  signal.throwIfAborted()
  return await new Promise<Socket>((resolve, reject) => {
    const socket = connect({ host, port, allowHalfOpen: true, noDelay: true })
    const done = (err?: Error): void => {
      clearTimeout(timer)
      signal.removeEventListener('abort', onAbort)
      socket.off('connect', onConnect)
      socket.off('error', onError)
      if (err === undefined) {
        // from here on the splice reports failures; an error must never go unheard (it would end the process)
        socket.on('error', () => {})
        resolve(socket)
        return
      }
      socket.destroy()
      reject(err)
    }
    const onConnect = (): void => { done() }
    const onError = (err: NodeJS.ErrnoException): void => {
      done(new KithError('SERVICE_DOWN', `the program behind service ${service} is not running (${err.code ?? err.message} at its end); ask its owner to start it`))
    }
    const onAbort = (): void => { done(signal.reason) }
    const timer = setTimeout(() => {
      done(new KithError('SERVICE_DOWN', `the program behind service ${service} did not accept a connection within ${LOCAL_CONNECT_TIMEOUT_MS / 1000} s; ask its owner to check it`))
    }, LOCAL_CONNECT_TIMEOUT_MS)
    socket.once('connect', onConnect)
    socket.once('error', onError)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}
