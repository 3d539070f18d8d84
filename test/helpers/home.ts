import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runCli, TestNode, type CliResult } from './testnet.ts'

/** A node with a home folder of its own in a new temp folder, not started; `remove` kills it and deletes everything. */
export interface FreshHome {
  /** the temp folder the home is in; a test may put other files here */
  base: string
  node: TestNode
  remove: () => Promise<void>
}

export async function freshHome (): Promise<FreshHome> {
  const base = await mkdtemp(join(tmpdir(), 'kith-home-'))
  const node = new TestNode('home', join(base, 'home'))
  return {
    base,
    node,
    remove: async () => {
      await node.kill9()
      await rm(base, { recursive: true, force: true })
    }
  }
}

/** `kith start` on the node's home, for a start expected to fail: its exit code and output. */
export async function startFailing (node: TestNode, ...extra: string[]): Promise<CliResult> {
  return await runCli(['--home', node.home, 'start', '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '127.0.0.1:0', ...extra])
}
