/**
 * Where the s3 add-on finds credentials, the region and the endpoint, as the
 * AWS command line tools do (docs/downloads.md, "s3"), first found wins:
 *
 * - credentials: the profile named by the option profile, in the shared
 *   credentials file (AWS_SHARED_CREDENTIALS_FILE, or ~/.aws/credentials);
 *   else AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)
 *   in the daemon's environment; else that file's AWS_PROFILE or "default"
 *   profile; else none, and requests go unsigned (public buckets).
 * - region: option region, AWS_REGION, AWS_DEFAULT_REGION, the profile's
 *   region in AWS_CONFIG_FILE or ~/.aws/config, else us-east-1.
 * - endpoint: option endpoint, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else
 *   AWS's own (https://s3.REGION.amazonaws.com). A custom endpoint (MinIO,
 *   Ceph, R2...) is addressed path-style (ENDPOINT/bucket/key), AWS
 *   virtual-hosted (bucket.s3...); option pathStyle decides otherwise.
 *
 * Secrets never travel in a download's options: the queue stores options,
 * and lists them.
 */
import { readFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { KithError } from '../../errors.ts'

export interface S3Credentials {
  accessKeyId: string
  secretAccessKey: string
  sessionToken?: string
}

export interface S3Config {
  credentials: S3Credentials | null
  region: string
  /** without a trailing slash */
  endpoint: string
  pathStyle: boolean
}

export interface S3Choices {
  profile?: string | undefined
  region?: string | undefined
  endpoint?: string | undefined
  pathStyle?: boolean | undefined
}

const DEFAULT_REGION = 'us-east-1'

/** The sections of an AWS ini file: name -> key -> value ('' when the file is missing). */
export function parseIni (text: string): Map<string, Map<string, string>> {
  const sections = new Map<string, Map<string, string>>()
  let current: Map<string, string> | undefined
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue
    const section = /^\[\s*(?:profile\s+)?([^\]]+?)\s*\]$/.exec(line)
    if (section !== null) {
      current = new Map()
      sections.set(section[1]!, current)
      continue
    }
    const pair = /^([^=]+?)\s*=\s*(.*)$/.exec(line)
    if (pair !== null && current !== undefined) current.set(pair[1]!.toLowerCase(), pair[2]!)
  }
  return sections
}

async function readIni (path: string): Promise<Map<string, Map<string, string>>> {
  const text = await readFile(path, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return ''
    throw err
  })
  return parseIni(text)
}

/** Checks an endpoint given as an option or in the environment: an http(s) URL. */
export function checkEndpoint (endpoint: string, where: string): string {
  let url: URL
  try {
    url = new URL(endpoint)
  } catch {
    throw new KithError('URL_INVALID', `the S3 endpoint ${JSON.stringify(endpoint)} (${where}) is not a URL; give one like https://minio.example.org:9000`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new KithError('URL_INVALID', `the S3 endpoint ${endpoint} (${where}) must be an http(s) URL`)
  return url.href.replace(/\/+$/, '')
}

/** Credentials, region and endpoint from the options, then `env`, then the AWS files. */
export async function s3Config (choices: S3Choices, env: NodeJS.ProcessEnv = process.env): Promise<S3Config> {
  const profile = choices.profile ?? env.AWS_PROFILE ?? 'default'
  let credentials: S3Credentials | null = null
  const file = env.AWS_SHARED_CREDENTIALS_FILE ?? join(homedir(), '.aws', 'credentials')
  const fromFile = async (): Promise<S3Credentials | null> => {
    const section = (await readIni(file)).get(profile)
    const id = section?.get('aws_access_key_id')
    const secret = section?.get('aws_secret_access_key')
    return id === undefined || secret === undefined ? null : { accessKeyId: id, secretAccessKey: secret, sessionToken: section?.get('aws_session_token') }
  }
  if (choices.profile !== undefined) {
    // a profile asked for by name wins over the environment, as with aws --profile
    credentials = await fromFile()
    if (credentials === null) throw new KithError('URL_INVALID', `the AWS profile ${choices.profile} has no aws_access_key_id and aws_secret_access_key in ${file}`)
  } else if (env.AWS_ACCESS_KEY_ID !== undefined && env.AWS_ACCESS_KEY_ID !== '' && env.AWS_SECRET_ACCESS_KEY !== undefined) {
    credentials = { accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY, sessionToken: env.AWS_SESSION_TOKEN }
  } else {
    credentials = await fromFile()
  }
  const configured = (await readIni(env.AWS_CONFIG_FILE ?? join(homedir(), '.aws', 'config'))).get(profile)
  const region = choices.region ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? configured?.get('region') ?? DEFAULT_REGION
  const custom = choices.endpoint ?? env.AWS_ENDPOINT_URL_S3 ?? env.AWS_ENDPOINT_URL
  const endpoint = custom === undefined ? `https://s3.${region}.amazonaws.com` : checkEndpoint(custom, choices.endpoint !== undefined ? 'the option endpoint' : 'the environment')
  return { credentials, region, endpoint, pathStyle: choices.pathStyle ?? custom !== undefined }
}
