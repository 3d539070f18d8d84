import { describe, expect, it } from 'vitest'
import { once } from 'node:events'
import { createServer, type Server, type Socket } from 'node:net'
import { tunnel } from '../../../src/services/downloads/tunnel.ts'

/**
 * src/services/downloads/tunnel.ts: the first bytes the far end sends reach
 * the caller even when they come in the same read as the proxy's answer to
 * CONNECT (an SSH server sends its banner at once; sftp.spec's handshake
 * through a proxy timed out once so in CI).
 */

const BANNER = 'SSH-2.0-OpenSSH_9.2 kith-test\r\n'

/** A proxy that answers CONNECT and the far end's banner in one write, so the client reads both at once. */
async function eagerProxy (): Promise<{ server: Server, port: number }> {
  const server = createServer(client => {
    let request = ''
    client.on('data', (data: Buffer) => {
      request += data.toString('latin1')
      if (request.includes('\r\n\r\n')) client.write(`HTTP/1.1 200 Connection Established\r\n\r\n${BANNER}`)
    })
    client.on('error', () => {})
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return { server, port: (server.address() as { port: number }).port }
}

async function firstBytes (socket: Socket, deadlineMs: number): Promise<string> {
  let got = ''
  const deadline = Date.now() + deadlineMs
  while (!got.includes('\r\n') && Date.now() < deadline) {
    const chunk = socket.read() as Buffer | null
    if (chunk !== null) got += chunk.toString('latin1')
    else await Promise.race([once(socket, 'readable'), new Promise(resolve => { setTimeout(resolve, 100) })])
  }
  return got
}

describe('tunnel', () => {
  it("hands over the far end's first bytes that came with the proxy's answer", async () => {
    const { server, port } = await eagerProxy()
    const controller = new AbortController()
    try {
      const socket = await tunnel(`http://127.0.0.1:${port}`, 'ssh.example', 22, 'sftp', 5_000, controller.signal)
      try {
        expect(await firstBytes(socket, 5_000)).toBe(BANNER)
      } finally {
        socket.destroy()
      }
    } finally {
      controller.abort()
      server.close()
    }
  })
})
