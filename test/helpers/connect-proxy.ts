import { once } from 'node:events'
import { createServer } from 'node:http'
import { connect } from 'node:net'

/**
 * An HTTP proxy of the tests' own on 127.0.0.1 (a free port) that tunnels
 * CONNECT requests, as undici's proxy agents use it for every origin, and
 * records each tunnel's target ("host:port").
 */
export interface ConnectProxy {
  /** http://127.0.0.1:PORT */
  url: string
  tunnels: string[]
  stop: () => Promise<void>
}

export async function startConnectProxy (): Promise<ConnectProxy> {
  const tunnels: string[] = []
  const proxy = createServer()
  proxy.on('connect', (req, client, head) => {
    tunnels.push(req.url ?? '')
    const at = (req.url ?? '').lastIndexOf(':')
    const upstream = connect(Number((req.url ?? '').slice(at + 1)), (req.url ?? '').slice(0, at), () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n')
      upstream.write(head)
      upstream.pipe(client).pipe(upstream)
    })
    upstream.on('error', () => client.destroy())
    client.on('error', () => upstream.destroy())
  })
  proxy.listen(0, '127.0.0.1')
  await once(proxy, 'listening')
  return {
    url: `http://127.0.0.1:${(proxy.address() as { port: number }).port}`,
    tunnels,
    stop: async () => {
      proxy.closeAllConnections()
      proxy.close()
      await once(proxy, 'close')
    }
  }
}
