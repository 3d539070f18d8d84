import type { ServerResponse } from 'node:http'

/**
 * Until the client took what was written to `res` (or went away): the
 * proxy's backpressure towards its client. Listeners are removed each time,
 * as one body has many chunks.
 */
export async function drained (res: ServerResponse): Promise<void> {
  await new Promise<void>(resolve => {
    const done = (): void => { res.off('drain', done); res.off('close', done); resolve() }
    res.on('drain', done)
    res.on('close', done)
  })
}
