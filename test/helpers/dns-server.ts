import { createSocket } from 'node:dgram'
import { once } from 'node:events'
import { isIPv4, isIPv6 } from 'node:net'

/**
 * A tiny DNS server of the tests' own on 127.0.0.1 (UDP, a free port): it
 * answers A and AAAA questions for the names it is given, and NXDOMAIN for
 * others; for testing "custom DNS servers" settings (`127.0.0.1:PORT`).
 */
export interface DnsServer {
  /** "127.0.0.1:PORT", as a DNS server setting */
  address: string
  /** questions asked, as "name type" (type 1 = A, 28 = AAAA) */
  asked: string[]
  stop: () => Promise<void>
}

export async function startDnsServer (names: Record<string, { a?: string[], aaaa?: string[] }>): Promise<DnsServer> {
  const socket = createSocket('udp4')
  const asked: string[] = []
  socket.on('message', (query, peer) => {
    // the header is 12 bytes; the question's name is labels up to a zero byte, then type and class
    let at = 12
    const labels: string[] = []
    while (at < query.length && query[at] !== 0) {
      labels.push(query.subarray(at + 1, at + 1 + query[at]!).toString('latin1'))
      at += 1 + query[at]!
    }
    const questionEnd = at + 5
    if (questionEnd > query.length) return
    const name = labels.join('.').toLowerCase()
    const type = query.readUInt16BE(at + 1)
    asked.push(`${name} ${type}`)
    const entry = names[name]
    const addresses = entry == null ? [] : type === 1 ? (entry.a ?? []) : type === 28 ? (entry.aaaa ?? []) : []
    const answers = addresses.map(address => {
      const rdata = type === 1 ? Buffer.from(address.split('.').map(Number)) : ipv6Bytes(address)
      const rr = Buffer.alloc(12)
      rr.writeUInt16BE(0xc00c, 0) // the name: a pointer to the question's
      rr.writeUInt16BE(type, 2)
      rr.writeUInt16BE(1, 4) // IN
      rr.writeUInt32BE(60, 6)
      rr.writeUInt16BE(rdata.length, 10)
      return Buffer.concat([rr, rdata])
    })
    const header = Buffer.alloc(12)
    query.copy(header, 0, 0, 2) // id
    header.writeUInt16BE(entry == null ? 0x8183 : 0x8180, 2) // a response, recursion available; NXDOMAIN for unknown names
    header.writeUInt16BE(1, 4)
    header.writeUInt16BE(answers.length, 6)
    socket.send(Buffer.concat([header, query.subarray(12, questionEnd), ...answers]), peer.port, peer.address)
  })
  socket.bind(0, '127.0.0.1')
  await once(socket, 'listening')
  return {
    address: `127.0.0.1:${socket.address().port}`,
    asked,
    stop: async () => { socket.close(); await once(socket, 'close') }
  }
}

function ipv6Bytes (address: string): Buffer {
  if (!isIPv6(address) || isIPv4(address)) throw new Error(`${address} is not an IPv6 address`)
  const [head, tail] = address.split('::') as [string, string | undefined]
  const parts = (s: string | undefined): string[] => s == null || s === '' ? [] : s.split(':')
  const h = parts(head)
  const t = parts(tail)
  const groups = [...h, ...Array(8 - h.length - t.length).fill('0'), ...t]
  return Buffer.from(groups.flatMap(g => { const n = parseInt(g, 16); return [n >> 8, n & 0xff] }))
}
