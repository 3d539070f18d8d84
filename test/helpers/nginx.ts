import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort, startServer, type ServerProcess } from './servers.ts'

/**
 * A real nginx for the download tests (Debian's `nginx`; .ci/run installs it):
 * started on 127.0.0.1 on a free port, in the foreground as the current user,
 * with its config, pid file, temp folders and logs in a temp folder, serving
 * `root`. `server` is added inside the server block (`limit_rate 10m;`,
 * `location /dav { dav_methods PUT; }`), `http` inside the http block,
 * `main` at the top (`load_module` lines).
 *
 *   const nginx = await startNginx({ root })
 *   await fetch(`${nginx.url}/file.bin`)
 *   await nginx.stop()
 */
export interface Nginx {
  /** http://127.0.0.1:PORT, without a trailing slash */
  url: string
  port: number
  /** the temp folder with nginx.conf, logs/error.log and logs/access.log */
  dir: string
  /** the access log so far: one line per request, `$status "$http_range" $body_bytes_sent $request_time $msec $request_uri` (seconds; the end, in Unix seconds) */
  accessLog: () => Promise<string[]>
  stop: () => Promise<void>
}

export interface NginxOptions {
  root: string
  /** inside `server { }` */
  server?: string
  /** inside `http { }` */
  http?: string
  /** at the top of nginx.conf, outside every block (`load_module ...;`) */
  main?: string
}

const CANDIDATES = ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/bin/nginx']

/** nginx's path, or null when it is not installed. */
export function nginxPath (): string | null {
  return CANDIDATES.find(p => existsSync(p)) ?? null
}

/** For test/helpers/needs.ts's requireOrSkip and describeNeeding: what is missing, or null. */
export function needsNginx (): string | null {
  return nginxPath() == null ? 'nginx missing (apt-get install -y nginx; .ci/run installs it)' : null
}

export async function startNginx (options: NginxOptions): Promise<Nginx> {
  const nginx = nginxPath()
  if (nginx == null) throw new Error(needsNginx()!)
  const dir = await mkdtemp(join(tmpdir(), 'kith-nginx-'))
  // a port taken between freePort and nginx's bind makes nginx exit: try another
  for (let attempt = 1; ; attempt++) {
    const port = await freePort()
    await writeFile(join(dir, 'nginx.conf'), config(dir, port, options))
    let server: ServerProcess
    try {
      server = await startServer(nginx, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'error.log')], port)
    } catch (err) {
      const log = await readFile(join(dir, 'error.log'), 'utf8').catch(() => '')
      if (attempt < 3 && log.includes('Address already in use')) continue
      await rm(dir, { recursive: true, force: true })
      throw new Error(`nginx did not start: ${(err as Error).message}\n${log}`)
    }
    return {
      url: `http://127.0.0.1:${port}`,
      port,
      dir,
      accessLog: async () => (await readFile(join(dir, 'access.log'), 'utf8').catch(() => '')).split('\n').filter(Boolean),
      stop: async () => {
        await server.stop()
        await rm(dir, { recursive: true, force: true })
      }
    }
  }
}

function config (dir: string, port: number, options: NginxOptions): string {
  // as root, nginx's workers would switch to nobody, who can't read a private temp folder
  const user = process.getuid?.() === 0 ? 'user root;' : ''
  return `
${options.main ?? ''}
${user}
daemon off;
master_process on;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 512; }
http {
  default_type application/octet-stream;
  types { text/html html; application/vnd.apple.mpegurl m3u8; video/mp2t ts; }
  log_format kith '$status "$http_range" $body_bytes_sent $request_time $msec $request_uri';
  access_log ${dir}/access.log kith;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  sendfile on;
  tcp_nopush on;
  ${options.http ?? ''}
  server {
    listen 127.0.0.1:${port};
    root ${options.root};
    ${options.server ?? ''}
  }
}
`
}
