import { once } from 'node:events'
import { createServer, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { Agent } from 'undici'
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest'
import { Response } from '../../../src/services/downloads/http/response.ts'
import { waitFor } from '../../helpers/testnet.ts'

/**
 * The HTTP engine's response body (src/services/downloads/http/response.ts),
 * read through undici's dispatch API from a node:http server of the test's
 * own that writes a large body as fast as its socket takes it, and records
 * when its writes are held back (`res.write` false, no 'drain' yet).
 */

const MiB = 1024 * 1024
/** well over what loopback's socket buffers hold on both ends (a few MiB each), so only a paused reader holds the server back */
const BODY = bodyOf(48 * MiB)

/** `size` bytes, each 4-byte word its own offset, big-endian: a body whose bytes out of order show */
function bodyOf (size: number): Buffer {
  // a typed array's loop and one swap: writeUInt32BE word by word took 0.8 s of CPU at import
  const words = new Uint32Array(size / 4)
  for (let k = 0; k < words.length; k++) words[k] = k * 4
  return Buffer.from(words.buffer).swap32()
}

interface Sent {
  /** bytes handed to res.write */
  written: number
  /** since when res.write has waited for 'drain', or null */
  heldSince: number | null
  finished: boolean
  closed: boolean
}

let server: Server
let origin: string
let sent: Sent
const sockets = new Set<Socket>()
const dispatcher = new Agent()

beforeAll(async () => {
  server = createServer((_req, res) => { serve(res) })
  server.on('connection', socket => { sockets.add(socket); socket.once('close', () => sockets.delete(socket)) })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})
afterEach(() => { for (const s of sockets) s.destroy() })
afterAll(async () => {
  await dispatcher.destroy()
  server.close()
})

function serve (res: ServerResponse): void {
  const state: Sent = { written: 0, heldSince: null, finished: false, closed: false }
  sent = state
  res.once('close', () => { state.closed = true })
  res.writeHead(200, { 'content-length': BODY.length })
  const more = (): void => {
    state.heldSince = null
    while (state.written < BODY.length && !res.destroyed) {
      const chunk = BODY.subarray(state.written, state.written + 64 * 1024)
      state.written += chunk.length
      if (!res.write(chunk)) {
        state.heldSince = Date.now()
        res.once('drain', more)
        return
      }
    }
    if (!res.destroyed) res.end(() => { state.finished = true })
  }
  more()
}

async function get (): Promise<Response> {
  const response = new Response(new AbortController().signal)
  dispatcher.dispatch({ origin, path: '/', method: 'GET' }, response)
  await response.head
  return response
}

/** the server has waited for 'drain' for 300 ms without finishing: something holds it back */
async function heldBack (): Promise<void> {
  await waitFor(() => {
    if (sent.finished) throw new Error(`the server wrote all ${BODY.length} bytes: nothing held it back`)
    return sent.heldSince != null && Date.now() - sent.heldSince >= 300
  }, 'the server to be held back', 15_000, 50)
}

it('stops reading the socket while the reader is busy, then gives every byte in order', async () => {
  const response = await get()
  const chunks: Buffer[] = []
  let open!: () => void
  const gate = new Promise<void>(resolve => { open = resolve })
  const reading = response.read(async chunk => {
    chunks.push(chunk)
    if (chunks.length === 1) await gate
    return false
  })
  await heldBack()
  expect(sent.written).toBeLessThan(BODY.length)
  open()
  await reading
  expect(Buffer.concat(chunks).equals(BODY)).toBe(true)
})

it('is paused after its head until read, and discard() closes the connection', async () => {
  const response = await get()
  await heldBack()
  response.discard()
  await waitFor(() => sent.closed, 'the server to see the connection closed')
  expect(sent.finished).toBe(false)
})

it('ends the request when the reader wants no more', async () => {
  const response = await get()
  let pieces = 0
  await response.read(async () => ++pieces === 3)
  expect(pieces).toBe(3)
  await waitFor(() => sent.closed, 'the server to see the connection closed')
  expect(sent.finished).toBe(false)
})

it('fails the read when the connection breaks mid-body, after the reader is done with its piece', async () => {
  const response = await get()
  let busy = false
  const reading = response.read(async () => {
    busy = true
    for (const s of sockets) s.destroy()
    await new Promise(resolve => setImmediate(resolve))
    busy = false
    return false
  })
  await expect(reading).rejects.toThrow()
  expect(busy).toBe(false)
})
