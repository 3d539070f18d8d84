import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createInterface } from 'node:readline'
import { createServer } from 'node:net'
import { ApiClient, REQUEST_TIMEOUT_MS } from '../../src/services/api/client.ts'
import { DAEMON_ENV, DAEMON_STARTUP_FLAGS } from '../../src/services/daemon-heap.ts'
import { homePaths } from '../../src/peer/home.ts'
import { cpuSeconds } from '../../bench/lib.ts'

/**
 * Real kith daemons in separate processes, each with its own temp home, driven
 * through the CLI exactly as a user would. `createTestnet(n)` starts n of them;
 * `stop()` tears everything down.
 */
const ROOT = dirname(dirname(dirname(fileURLToPath(import.meta.url))))
export const KITH = join(ROOT, 'bin', 'kith.js')
/** vitest runs under the project's Node 24; child processes use the same binary */
export const NODE = process.execPath

/**
 * A daemon that has not printed its start-up line after this much of its own
 * CPU time is stuck: a start from the sources took 1.4 and 2.4 s of CPU, and
 * 27 and 49 s of wall time, at load 28 (2026-12-07). Its wall time follows
 * the load: chunk-gc.spec's "alice did not start" under a 30 s wall bound at
 * load 12-34 (session 14's loops), so the wall bound is only for a daemon
 * that neither starts nor runs (test/helpers/chunks.ts bounds its holders'
 * processes the same way).
 */
const START_CPU_MS = 20_000
const START_WALL_MS = 240_000

/**
 * Every daemon this test process started that has not exited: killed when the
 * test process ends before its tests could stop them (a set-up that timed out,
 * a failed start, vitest ending the worker with SIGTERM), so no daemon
 * outlives its test and loads the machine for the files after it.
 */
const live = new Set<ChildProcess>()
const killLive = (): void => { for (const proc of live) proc.kill('SIGKILL') }
process.once('exit', killLive)
process.once('SIGTERM', () => {
  killLive()
  // the default action, now that this listener is gone: the worker ends as it would have
  process.kill(process.pid, 'SIGTERM')
})

/**
 * Retry caps the test daemons run with (src/peer/timing-env.ts): a
 * friend or relay that comes back is redialled, and a reservation on it
 * made again, within 2 s, where a user's daemon backs off to 30 s and 5
 * minutes; a test of a restarted relay waited out those backoffs (nat-relay
 * spent ~20 s of each relay restart so). The environment a test sets wins.
 */
export const TEST_DAEMON_ENV: NodeJS.ProcessEnv = { KITH_RECONNECT_MAX_MS: '2000', KITH_RESERVE_RETRY_MAX_MS: '2000' }

/**
 * Where the processes started from a test bundle (KITH_DIST, a new folder each
 * run: bundle-setup.ts) keep Node's compile cache: inside that folder, so it
 * goes when the run removes the bundle. In the user's cache (bin/kith.js) each
 * run would leave its own entries behind, never read again (234 MB here after
 * a few hours of runs). An explicit NODE_COMPILE_CACHE or
 * NODE_DISABLE_COMPILE_CACHE in the environment wins.
 */
function compileCacheEnv (): NodeJS.ProcessEnv {
  const dist = process.env.KITH_DIST
  return dist != null && dist !== '' ? { NODE_COMPILE_CACHE: join(dist, '.compile-cache') } : {}
}

export interface CliResult {
  code: number
  stdout: string
  stderr: string
}

/** `netns`: run inside that Linux network namespace (`ip netns exec NS ...`; root only) */
export async function runCli (args: string[], env: NodeJS.ProcessEnv = {}, netns?: string): Promise<CliResult> {
  const [cmd, ...pre] = netns != null ? ['ip', 'netns', 'exec', netns, NODE] : [NODE]
  return await new Promise(resolve => {
    execFile(cmd!, [...pre, KITH, ...args], { env: { ...compileCacheEnv(), ...process.env, ...env }, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err == null ? 0 : typeof err.code === 'number' ? err.code : 1
      resolve({ code, stdout, stderr })
    })
  })
}

/** Polls `check` until it returns a truthy value or the deadline passes. */
export async function waitFor<T> (check: () => Promise<T | undefined | false | null> | T | undefined | false | null, what: string, timeoutMs = 20_000, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  while (true) {
    try {
      const value = await check()
      if (value != null && value !== false) return value
    } catch (err) {
      last = err
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last != null ? `: ${(last as Error).message}` : ''}`)
    await new Promise(resolve => setTimeout(resolve, intervalMs))
  }
}

export interface StartInfo {
  peerId: string
  name: string
  addrs: string[]
  api: string
}

export class TestNode {
  readonly name: string
  readonly home: string
  readonly extraArgs: string[]
  /** the network namespace the daemon and its CLI run in (test/helpers/netns.ts), if any */
  readonly netns: string | undefined
  /** extra environment for the daemon, like DEBUG=libp2p:dcutr* */
  readonly env: NodeJS.ProcessEnv
  /** started as a user's `kith start` is: the daemon re-executes itself with its heap flags (bin/kith.js) */
  readonly reexec: boolean
  private proc: ChildProcess | null = null
  private apiClient: Promise<ApiClient> | null = null
  info: StartInfo | null = null
  output = ''

  constructor (name: string, home: string, extraArgs: string[] = [], options: { netns?: string, env?: NodeJS.ProcessEnv, reexec?: boolean } = {}) {
    this.name = name
    this.home = home
    this.extraArgs = extraArgs
    this.netns = options.netns
    this.env = options.env ?? {}
    this.reexec = options.reexec ?? false
  }

  get peerId (): string {
    if (this.info == null) throw new Error(`${this.name} is not running`)
    return this.info.peerId
  }

  /** The running daemon's process id, or undefined when it is not running. */
  get pid (): number | undefined {
    return this.proc?.pid
  }

  /**
   * How the daemon ended, if it ended by itself (a crash): "exit code 1" or
   * "signal SIGABRT"; null while it runs, and after `stop()` or `kill9()`.
   */
  get exited (): string | null {
    const proc = this.proc
    if (proc == null) return null
    if (proc.exitCode != null) return `exit code ${proc.exitCode}`
    if (proc.signalCode != null) return `signal ${proc.signalCode}`
    return null
  }

  /**
   * Starts the daemon and resolves once it printed its start-up line. It
   * listens on 127.0.0.1, port 0 (which reuses the last run's port), unless
   * `args` or `extraArgs` give `--listen`, which then replaces that default.
   */
  async start (args: string[] = []): Promise<StartInfo> {
    const listen = [...this.extraArgs, ...args].includes('--listen') ? [] : ['--listen', '/ip4/127.0.0.1/tcp/0']
    // `ip netns exec` execs the program: the pid is the daemon's
    const [cmd, ...pre] = this.netns != null ? ['ip', 'netns', 'exec', this.netns, NODE] : [NODE]
    // with the heap flags and environment `kith start` would re-execute itself with (bin/kith.js,
    // src/services/daemon-heap.ts) given here, the daemon starts in one Node process instead of
    // two: about 0.1 s of CPU less per start
    const flags = this.reexec ? [] : DAEMON_STARTUP_FLAGS
    const env = { ...TEST_DAEMON_ENV, ...compileCacheEnv(), ...(this.reexec ? {} : DAEMON_ENV) }
    this.apiClient = null
    const proc = spawn(cmd!, [...pre, ...flags, KITH, '--home', this.home, 'start', ...listen, '--api', '127.0.0.1:0', '--name', this.name, '--json', ...this.extraArgs, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...env, ...process.env, ...this.env }
    })
    this.proc = proc
    live.add(proc)
    proc.once('exit', () => live.delete(proc))
    proc.stderr.on('data', (d: Buffer) => { this.output += d.toString() })
    const lines = createInterface({ input: proc.stdout })
    const started = Date.now()
    try {
      this.info = await new Promise<StartInfo>((resolve, reject) => {
        // bounded by the daemon's own CPU time, not the wall clock, which follows the machine's load
        const fail = (why: string): void => {
          clearInterval(watch)
          reject(new Error(`${this.name} ${why}: ${this.output}`))
        }
        const watch = setInterval(() => {
          void cpuSeconds(proc.pid).then(cpu => {
            if (cpu * 1000 > START_CPU_MS) fail(`did not start in ${START_CPU_MS / 1000} s of its CPU time`)
            else if (Date.now() - started > START_WALL_MS) fail(`did not start in ${START_WALL_MS / 1000} s, with ${cpu} s of CPU time`)
          })
        }, 250)
        lines.once('line', line => {
          clearInterval(watch)
          try { resolve(JSON.parse(line)) } catch { reject(new Error(`${this.name}: unexpected start-up output ${line}`)) }
        })
        proc.once('exit', code => { fail(`exited with ${code ?? 'signal'}`) })
      })
    } catch (err) {
      // a daemon that did not start as expected is not left running
      await this.kill9()
      throw err
    }
    lines.on('line', line => { this.output += line + '\n' })
    return this.info
  }

  async cli (...args: string[]): Promise<CliResult> {
    return await runCli(['--home', this.home, ...args], {}, this.netns)
  }

  /** Runs a CLI command with --json and returns its parsed output; throws on failure. */
  async json<T = any> (...args: string[]): Promise<T> {
    const result = await this.cli(...args, '--json')
    if (result.code !== 0) throw new Error(`kith ${args.join(' ')} failed (${result.code}): ${result.stderr}`)
    return JSON.parse(result.stdout) as T
  }

  /**
   * A GET on the daemon's local API: the JSON that `kith ... --json` prints for
   * a command that only reads and prints what the API answers (`transfers`,
   * `friends`), without starting a CLI process (a Node start each, a fifth of a
   * second of CPU): for polls in waitFor, which a test makes by the dozen.
   */
  async get<T = any> (path: string): Promise<T> {
    return await this.call<T>('GET', path)
  }

  /**
   * A request to the daemon's local API, for a test's set-up (a share, a
   * limit, an invite) that a CLI process (a Node start) would send the same
   * way, where that command's own output is not what the test is about. A
   * node in a network namespace has its API in there: curl sends the request
   * from in there (a C program, a hundredth of a CLI process's CPU).
   */
  async call<T = any> (method: string, path: string, body?: unknown): Promise<T> {
    const api = await this.api()
    return await this.forgetApiOnError(this.netns == null ? api.call<T>(method, path, body) : this.curl<T>(new URL(path, api.url).href, method, body))
  }

  /** `call` through curl inside the node's network namespace, with the API client's timeout. */
  private async curl<T> (url: string, method: string, body?: unknown): Promise<T> {
    const token = (await readFile(homePaths(this.home).apiToken, 'utf8')).trim()
    // curl reads the token and the body from its config on stdin (--config -), not from a command
    // line other users can read; a config string escapes backslashes and double quotes
    const quoted = (text: string): string => `"${text.replaceAll('\\', '\\\\').replaceAll('"', '\\"')}"`
    const config = [
      `request = ${quoted(method)}`,
      `header = ${quoted(`authorization: Bearer ${token}`)}`,
      ...(body === undefined ? [] : ['header = "content-type: application/json"', `data-binary = ${quoted(JSON.stringify(body))}`])
    ].join('\n') + '\n'
    return await new Promise<T>((resolve, reject) => {
      const curl = execFile('ip', ['netns', 'exec', this.netns!, 'curl', '-sS', '--max-time', String(REQUEST_TIMEOUT_MS / 1000), '--fail-with-body', '--config', '-', url], (err, stdout, stderr) => {
        if (err != null) reject(new Error(`${method} ${new URL(url).pathname} on ${this.name}: ${stderr.trim() || err.message} ${stdout}`))
        else resolve((stdout === '' ? undefined : JSON.parse(stdout)) as T)
      })
      curl.stdin!.end(config)
    })
  }

  /**
   * The running daemon's API (its address and token), read from the home once
   * per start, not for each of the dozens of polls a test makes (reading it
   * each time cost a poll 0.5-1.2 ms of CPU instead of 0.2-0.3); forgotten
   * when the daemon starts or stops, and after any failed request, so a
   * request after a restart reads the new port.
   */
  private async api (): Promise<ApiClient> {
    this.apiClient ??= ApiClient.forHome(this.home)
    try {
      return await this.apiClient
    } catch (err) {
      this.apiClient = null
      throw err
    }
  }

  private async forgetApiOnError<T> (request: Promise<T>): Promise<T> {
    try {
      return await request
    } catch (err) {
      this.apiClient = null
      throw err
    }
  }

  /** SIGTERM, and wait for a clean exit. */
  async stop (): Promise<number | null> {
    return await this.signal('SIGTERM')
  }

  /** kill -9: no chance to clean up. */
  async kill9 (): Promise<number | null> {
    return await this.signal('SIGKILL')
  }

  private async signal (signal: NodeJS.Signals): Promise<number | null> {
    const proc = this.proc
    if (proc == null || proc.exitCode != null || proc.signalCode != null) return proc?.exitCode ?? null
    const exited = new Promise<number | null>(resolve => proc.once('exit', code => resolve(code)))
    proc.kill(signal)
    const code = await exited
    this.proc = null
    this.apiClient = null
    return code
  }
}

export interface Testnet {
  nodes: TestNode[]
  stop: () => Promise<void>
}

export interface TestnetOptions {
  /** run on each node's home (made, mode 0700) before its daemon starts: a config.json, say */
  before?: (node: TestNode) => Promise<void>
  /** `kith start` flags by node name, like `{ bob: ['--max-download', '4MB/s'] }` */
  args?: Record<string, string[]>
}

export async function createTestnet (names: string[], options: TestnetOptions = {}): Promise<Testnet> {
  const base = await mkdtemp(join(tmpdir(), 'kith-testnet-'))
  const nodes = names.map(name => new TestNode(name, join(base, name)))
  const stop = async (): Promise<void> => {
    await Promise.all(nodes.map(async n => await n.kill9()))
    await rm(base, { recursive: true, force: true })
  }
  const started = await Promise.allSettled(nodes.map(async n => {
    if (options.before != null) {
      await mkdir(n.home, { mode: 0o700 })
      await options.before(n)
    }
    await n.start(options.args?.[n.name])
  }))
  const failed = started.find(s => s.status === 'rejected')
  if (failed != null) {
    // the nodes that did start are stopped: the caller gets no testnet to stop
    await stop()
    throw failed.reason
  }
  return { nodes, stop }
}

/**
 * Makes two nodes friends the way users do: an invite made by one, accepted by
 * the other; `createArgs` are `kith invite create`'s `--grant SERVICE...`. It
 * sends what `kith invite create` and `kith invite accept` send to the API,
 * without a CLI process for each (a Node start: tests befriend by the dozen;
 * friends.spec runs those commands themselves).
 */
export async function befriend (issuer: TestNode, accepter: TestNode, ...createArgs: string[]): Promise<void> {
  const [flag, ...grants] = createArgs
  if (flag != null && (flag !== '--grant' || grants.length === 0)) throw new Error(`befriend takes --grant SERVICE... only, not ${createArgs.join(' ')}`)
  const { text } = await issuer.call<{ text: string }>('POST', '/v1/invites', { label: accepter.name, ...(flag != null ? { grants } : {}) })
  await accepter.call('POST', '/v1/invites/accept', { text })
}

/** Three daemons, alice, bob and carol, each a friend of the other two (invites with the default grants). */
export async function threeFriends (options: TestnetOptions = {}): Promise<{ net: Testnet, alice: TestNode, bob: TestNode, carol: TestNode }> {
  const net = await createTestnet(['alice', 'bob', 'carol'], options)
  const [alice, bob, carol] = net.nodes as [TestNode, TestNode, TestNode]
  try {
    await befriend(alice, bob)
    await befriend(alice, carol)
    await befriend(bob, carol)
  } catch (err) {
    await net.stop()
    throw err
  }
  return { net, alice, bob, carol }
}

/** A node's transfer by id, as `kith transfers --json` shows it. */
export async function transferOf (node: TestNode, id: string): Promise<any> {
  return (await node.get<{ transfers: any[] }>('/v1/transfers')).transfers.find(t => t.id === id)
}

/** Whether `node` sees its friend `label` online, as `kith friends --json` shows it. */
export async function seesOnline (node: TestNode, label: string): Promise<boolean> {
  const { friends } = await node.get<{ friends: Array<{ label: string, link: { online: boolean } }> }>('/v1/friends')
  return friends.find(f => f.label === label)?.link.online === true
}

/** Waits for a transfer to be done and returns it; throws at once if it fails (with `what` and its error). */
export async function transferDone (node: TestNode, id: string, what = `transfer ${id} to finish`, timeoutMs = 60_000): Promise<any> {
  return await waitFor(async () => {
    const t = await transferOf(node, id)
    if (t?.state === 'failed') throw new Error(`${what}: the fetch failed: ${JSON.stringify(t.error)}`)
    return t?.state === 'done' ? t : undefined
  }, what, timeoutMs)
}

/** Waits for a transfer to fail; one that finishes instead is an error. */
export async function transferFailed (node: TestNode, id: string, what = `transfer ${id} to fail`, timeoutMs = 60_000): Promise<any> {
  return await waitFor(async () => {
    const t = await transferOf(node, id)
    if (t?.state === 'done') throw new Error(`${what}: the fetch finished`)
    return t?.state === 'failed' ? t : undefined
  }, what, timeoutMs)
}

/**
 * A TCP port free on 127.0.0.1 right now (for a node that must move to a new
 * port), other than those in `avoid`: a port a stopped node just gave up is
 * free again, and the system may well hand it out next.
 */
export async function freePort (avoid: number[] = []): Promise<number> {
  while (true) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = createServer()
      server.listen(0, '127.0.0.1', () => {
        const { port } = server.address() as { port: number }
        server.close(() => resolve(port))
      })
      server.on('error', reject)
    })
    if (!avoid.includes(port)) return port
  }
}

/**
 * Starts `node` listening on a free port of 127.0.0.1 (none of `avoid`) and
 * returns it. A port is free only until someone takes it: another test's
 * outgoing connection or daemon can bind it between `freePort` and the
 * start (a CI run saw EADDRINUSE so), so a start that fails on it is tried
 * again on another port, up to 5 times.
 */
export async function startOnFreePort (node: TestNode, avoid: number[] = []): Promise<number> {
  const taken = [...avoid]
  for (let attempt = 1; ; attempt++) {
    const port = await freePort(taken)
    try {
      await node.start(['--listen', `/ip4/127.0.0.1/tcp/${port}`])
      return port
    } catch (err) {
      if (attempt >= 5 || !String(err).includes('EADDRINUSE')) throw err
      taken.push(port)
    }
  }
}
