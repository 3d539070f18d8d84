import { parseTarget } from '../../src/services/cli/files.ts'
import { transferDone, type TestNode } from './testnet.ts'

/**
 * A test's set-up sent to a daemon's API as the CLI sends it, where the
 * command's own output is not what the test is about: a CLI process is a
 * Node start (a third of a second of CPU or more), and the slow specs made
 * dozens. Each names the command it stands for.
 */

/** `kith share PATH [--with FRIEND...] --json`: the share, and what was skipped */
export async function share (node: TestNode, path: string, ...friends: string[]): Promise<any> {
  return await node.call('POST', '/v1/shares', { path, ...(friends.length > 0 ? { with: friends } : {}) })
}

/** `kith fetch FRIEND:SHARE[/PATH] -o DEST --detach [--priority P]`: the queued transfer */
export async function fetchDetached (node: TestNode, target: string, dest: string, priority = 'normal'): Promise<any> {
  const { friend, share, path } = parseTarget(target)
  return (await node.call('POST', '/v1/transfers', { friend, share, ...(path !== '' ? { path } : {}), priority, dest })).transfer
}

/** `kith fetch FRIEND:SHARE[/PATH] -o DEST`, which waits: the transfer once done (throws if it fails) */
export async function fetched (node: TestNode, target: string, dest: string): Promise<any> {
  return await transferDone(node, (await fetchDetached(node, target, dest)).id, `${node.name}'s fetch of ${target}`)
}
