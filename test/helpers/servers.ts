import { spawn, type ChildProcess } from 'node:child_process'
import { createServer, connect } from 'node:net'
import { once } from 'node:events'

/**
 * Real servers for the download add-on tests (vsftpd, sshd, s3rver...): a
 * free port on 127.0.0.1, a process started on it and waited for until it
 * takes connections, and stopped at the end.
 */

/** A port nothing listens on right now (the system's pick, let go at once). */
export async function freePort (): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  server.close()
  await once(server, 'close')
  return port
}

/** Resolves once 127.0.0.1:port takes a connection; rejects after `timeoutMs`, or at once if `alive` says the server died. */
export async function waitForPort (port: number, alive: () => string | null, timeoutMs = 10_000): Promise<void> {
  const deadline = performance.now() + timeoutMs
  for (;;) {
    const up = await new Promise<boolean>(resolve => {
      const socket = connect(port, '127.0.0.1')
      socket.once('connect', () => { socket.destroy(); resolve(true) })
      socket.once('error', () => resolve(false))
    })
    if (up) return
    const dead = alive()
    if (dead !== null) throw new Error(dead)
    if (performance.now() > deadline) throw new Error(`nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`)
    await new Promise(resolve => setTimeout(resolve, 25))
  }
}

export interface ServerProcess {
  child: ChildProcess
  /** what it printed, for a failure's message */
  output: () => string
  stop: () => Promise<void>
}

/** Starts `command` and waits for it to listen on `port`. */
export async function startServer (command: string, args: string[], port: number, options: { env?: NodeJS.ProcessEnv, cwd?: string } = {}): Promise<ServerProcess> {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env, cwd: options.cwd })
  let output = ''
  child.stdout!.on('data', (data: Buffer) => { output += data.toString() })
  child.stderr!.on('data', (data: Buffer) => { output += data.toString() })
  let exited: string | null = null
  child.once('exit', (code, signal) => { exited = `${command} exited (${code ?? signal}): ${output.slice(-2000)}` })
  child.once('error', err => { exited = `${command} did not start: ${err.message}` })
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return
    const gone = once(child, 'exit')
    child.kill('SIGTERM')
    await gone
  }
  try {
    await waitForPort(port, () => exited)
  } catch (err) {
    await stop()
    throw err
  }
  return { child, output: () => output, stop }
}
