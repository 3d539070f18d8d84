/**
 * Reading a file over SFTP with several reads in flight (as OpenSSH's sftp
 * does): one read at a time waits a round trip per block, so a link with
 * 100 ms of latency would move 640 KB/s whatever its bandwidth. Blocks are
 * asked for ahead, up to READS_IN_FLIGHT, and given out in order; a block
 * the server answers short (it may) has its rest read before the next is
 * given out. A new read is asked for only when a block has been taken, so
 * the scheduler's pace (ctx.take in the writer) reaches the server, and at
 * most READS_IN_FLIGHT blocks are held.
 */
import type { SFTPWrapper } from 'ssh2'

/** bytes asked for by one read (OpenSSH answers up to 255 KiB; 64 KiB is what every server takes) */
export const READ_BLOCK = 64 * 1024
/** reads asked for ahead of the one being given out */
export const READS_IN_FLIGHT = 16

function read (sftp: SFTPWrapper, handle: Buffer, position: number, length: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    sftp.read(handle, Buffer.allocUnsafe(length), 0, length, position, (err, bytesRead, buffer) => {
      if (err != null) reject(err)
      else resolve(buffer.subarray(0, bytesRead))
    })
  })
}

/** Bytes `from` to `size` of the open file `handle`, in order. */
export async function * readAhead (sftp: SFTPWrapper, handle: Buffer, from: number, size: number): AsyncGenerator<Buffer> {
  const inFlight: Array<{ at: number, length: number, reply: Promise<Buffer> }> = []
  let next = from
  const ask = (): void => {
    const length = Math.min(READ_BLOCK, size - next)
    const reply = read(sftp, handle, next, length)
    // a read still in flight when the consumer stops fails unheard, not as an unhandled rejection
    reply.catch(() => {})
    inFlight.push({ at: next, length, reply })
    next += length
  }
  while (next < size && inFlight.length < READS_IN_FLIGHT) ask()
  for (let block = inFlight.shift(); block !== undefined; block = inFlight.shift()) {
    let data = await block.reply
    while (data.length < block.length) {
      const rest = await read(sftp, handle, block.at + data.length, block.length - data.length)
      // nothing more where the file should go on: it was cut short at the origin
      if (rest.length === 0) throw new Error(`the file ended at byte ${block.at + data.length} of ${size}`)
      data = Buffer.concat([data, rest])
    }
    yield data
    if (next < size) ask()
  }
}
