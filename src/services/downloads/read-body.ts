/**
 * Reading a small response whole (an HLS playlist, an S3 listing or error):
 * through the scheduler like every other byte, and refused once it passes
 * its limit, before more of it is held.
 */
import type { KithError } from '../../errors.ts'
import type { DownloadContext } from './addon.ts'

export async function readBody (body: AsyncIterable<Uint8Array> | null, max: number, ctx: DownloadContext, tooLarge: () => KithError): Promise<Buffer> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of body ?? []) {
    size += chunk.length
    if (size > max) throw tooLarge()
    await ctx.take(chunk.length, ctx.signal)
    chunks.push(Buffer.from(chunk))
  }
  return Buffer.concat(chunks)
}
