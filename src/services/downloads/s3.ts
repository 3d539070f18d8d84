/**
 * s3:// (docs/downloads.md, "Protocol add-ons"): an object, or every object
 * under a prefix as a folder, with GET, HEAD and ListObjectsV2 signed with
 * SigV4 (aws4fetch). Credentials, region and endpoint: s3-config.ts.
 *
 *   s3://bucket/path/key        one object
 *   s3://bucket/path/prefix/    every object under the prefix, as a folder
 *   s3://bucket                 the whole bucket, as a folder
 *
 * s3://bucket/name with no object of that name but objects under name/ is
 * that folder. An object resumes with a Range request with If-Range on its
 * ETag. Presigned URLs are https:// URLs and go to the HTTP engine (their
 * signature does not cover Range, so they resume there too).
 * Options: region, endpoint, profile, pathStyle.
 */
import { Readable } from 'node:stream'
import { AwsClient } from 'aws4fetch'
import { fetch, type Dispatcher, type Response } from 'undici'
import { KithError } from '../../errors.ts'
import type { DownloadAddon, DownloadContext, DownloadJob, DownloadResult } from './addon.ts'
import { makeDispatcher } from './http/dispatcher.ts'
import { AddonOptions, decodedPath } from './options.ts'
import { abortReason, fetchInto, Progress, type FetchFrom, type RemoteFile } from './partial.ts'
import { readBody } from './read-body.ts'
import { s3Config, checkEndpoint, type S3Config } from './s3-config.ts'
import { checkTreeSize, downloadTree } from './tree.ts'

const OPTIONS = ['region', 'endpoint', 'profile', 'pathStyle'] as const
/** bytes of one ListObjectsV2 answer, checked before it is parsed (1000 keys of up to 1 KiB each and their fields) */
const MAX_LISTING_BYTES = 4 * 1024 * 1024
/** S3's bucket names: 3 to 63 of lower case letters, digits, dots and hyphens */
/** bytes of an S3 error document read for its <Code> */
const MAX_ERROR_BYTES = 64 * 1024
const BUCKET = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/

interface S3Target {
  bucket: string
  key: string
  options: AddonOptions
}

function target (url: URL, options: Readonly<Record<string, unknown>>): S3Target {
  const opts = new AddonOptions('s3', options, OPTIONS)
  if (url.username !== '' || url.password !== '') throw new KithError('URL_INVALID', 's3:// URLs carry no credentials; kith reads them from the environment or ~/.aws/credentials (docs/downloads.md)')
  if (!BUCKET.test(url.hostname)) throw new KithError('URL_INVALID', `${JSON.stringify(url.hostname)} is not an S3 bucket name (3 to 63 lower case letters, digits, dots and hyphens): give s3://bucket/key`)
  if (url.search !== '' || url.hash !== '') throw new KithError('URL_INVALID', 's3:// URLs have no query or fragment; a presigned URL is an https:// URL')
  const endpoint = opts.string('endpoint')
  if (endpoint !== undefined) checkEndpoint(endpoint, 'the option endpoint')
  opts.string('region')
  opts.string('profile')
  opts.boolean('pathStyle')
  return { bucket: url.hostname, key: decodedPath(url).slice(1), options: opts }
}

/** The URL of `key` (or of the bucket, with '') at the endpoint. */
function objectUrl (config: S3Config, bucket: string, key: string): URL {
  const path = key.split('/').map(encodeURIComponent).join('/')
  const endpoint = new URL(config.endpoint)
  if (config.pathStyle) return new URL(`${config.endpoint}/${bucket}/${path}`)
  return new URL(`${endpoint.protocol}//${bucket}.${endpoint.host}/${path}`)
}

/** S3's answer to a failed request, as a KithError naming S3's code. */
async function s3Error (response: Response, what: string, ctx: DownloadContext): Promise<KithError> {
  const text = (await readBody(response.body, MAX_ERROR_BYTES, ctx, () => new KithError('REMOTE_FAILED', 'too long')).catch(() => Buffer.alloc(0))).toString('utf8')
  const code = /<Code>([^<]{1,100})<\/Code>/.exec(text)?.[1] ?? `HTTP ${response.status}`
  if (response.status === 404) return new KithError('REMOTE_NOT_FOUND', `S3 has no ${what} (${code})`)
  if (response.status === 401 || response.status === 403) {
    return new KithError('REMOTE_AUTH_FAILED', `S3 refused ${what} (${code}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials), the region and the bucket's policy`)
  }
  return new KithError('REMOTE_FAILED', `S3 failed for ${what} (${code})`)
}

const ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" }

function unescapeXml (text: string): string {
  return text.replace(/&(#x[0-9a-f]+|#\d+|[a-z]+);/gi, (all, name: string) => {
    if (name.startsWith('#x') || name.startsWith('#X')) return String.fromCodePoint(parseInt(name.slice(2), 16))
    if (name.startsWith('#')) return String.fromCodePoint(parseInt(name.slice(1), 10))
    return ENTITIES[name] ?? all
  })
}

function tag (xml: string, name: string): string | undefined {
  const found = new RegExp(`<${name}>([^<]*)</${name}>`).exec(xml)?.[1]
  return found === undefined ? undefined : unescapeXml(found)
}

class S3 {
  readonly #aws: AwsClient | null
  readonly #config: S3Config
  readonly #ctx: DownloadContext
  readonly #dispatcher: Dispatcher

  constructor (config: S3Config, ctx: DownloadContext) {
    this.#config = config
    this.#ctx = ctx
    this.#aws = config.credentials === null ? null : new AwsClient({ ...config.credentials, service: 's3', region: config.region })
    this.#dispatcher = makeDispatcher(ctx.settings)
  }

  async request (url: URL, method: string, headers: Record<string, string> = {}): Promise<Response> {
    const signal = this.#ctx.signal
    try {
      // signed by aws4fetch, sent by undici through the download's dispatcher (proxies, DNS, IPv6, timeouts)
      const signed = this.#aws === null ? null : await this.#aws.sign(url, { method, headers })
      return await fetch(url, { method, headers: signed === null ? headers : Object.fromEntries(signed.headers), signal, dispatcher: this.#dispatcher })
    } catch (err) {
      if (signal.aborted) throw signal.reason
      const e = err as Error & { cause?: Error & { code?: string } }
      throw new KithError('REMOTE_FAILED', `S3 at ${url.host} can't be reached: ${e.cause?.code ?? e.cause?.message ?? e.message}`, { cause: err })
    }
  }

  async close (): Promise<void> {
    await this.#dispatcher.destroy().catch(() => {})
  }

  /** The object's size and ETag, or null when there is none of that key. */
  async head (bucket: string, key: string): Promise<RemoteFile | null> {
    const response = await this.request(objectUrl(this.#config, bucket, key), 'HEAD')
    if (response.status === 404) return null
    if (!response.ok) throw await s3Error(response, `s3://${bucket}/${key}`, this.#ctx)
    const size = Number(response.headers.get('content-length'))
    if (!Number.isSafeInteger(size) || size < 0) throw new KithError('REMOTE_FAILED', `S3 gave no length for s3://${bucket}/${key}`)
    return { segments: [key.split('/').at(-1)!], size, validator: response.headers.get('etag') }
  }

  /** Every object under `prefix` (ListObjectsV2, page after page), its path under the prefix as segments. */
  async list (bucket: string, prefix: string): Promise<RemoteFile[]> {
    const files: RemoteFile[] = []
    let token: string | undefined
    do {
      const url = objectUrl(this.#config, bucket, '')
      url.searchParams.set('list-type', '2')
      if (prefix !== '') url.searchParams.set('prefix', prefix)
      if (token !== undefined) url.searchParams.set('continuation-token', token)
      const response = await this.request(url, 'GET')
      if (!response.ok) throw await s3Error(response, `the listing of s3://${bucket}/${prefix}`, this.#ctx)
      const xml = (await readBody(response.body, MAX_LISTING_BYTES, this.#ctx, () =>
        new KithError('REMOTE_FAILED', `S3 sent a listing page over ${MAX_LISTING_BYTES} bytes; kith reads pages up to that`))).toString('utf8')
      for (const [, entry] of xml.matchAll(/<Contents>([\s\S]*?)<\/Contents>/g)) {
        const key = tag(entry!, 'Key')
        const size = Number(tag(entry!, 'Size'))
        // a key ending in / is a folder marker some tools make, with nothing in it
        if (key === undefined || !key.startsWith(prefix) || key.endsWith('/') || !Number.isSafeInteger(size)) continue
        files.push({ segments: key.slice(prefix.length).split('/'), size, validator: tag(entry!, 'ETag') ?? null })
        checkTreeSize(files.length, `s3://${bucket}/${prefix}`)
      }
      token = tag(xml, 'IsTruncated') === 'true' ? tag(xml, 'NextContinuationToken') : undefined
    } while (token !== undefined)
    return files
  }

  /** FetchFrom for keys under `prefix`. */
  fetchFrom (bucket: string, prefix: string): FetchFrom {
    return async (file, at) => {
      const key = prefix + file.segments.join('/')
      const headers: Record<string, string> = {}
      if (at > 0) {
        headers.Range = `bytes=${at}-`
        if (file.validator !== null) headers['If-Range'] = file.validator
      }
      const response = await this.request(objectUrl(this.#config, bucket, key), 'GET', headers)
      if (!response.ok) throw await s3Error(response, `s3://${bucket}/${key}`, this.#ctx)
      // 200 to a Range: the object changed (If-Range) or the server takes no ranges
      return { body: Readable.from(response.body ?? []), from: response.status === 206 ? at : 0 }
    }
  }
}

async function download (job: DownloadJob, ctx: DownloadContext): Promise<DownloadResult> {
  const t = target(job.url, job.options)
  let s3: S3 | undefined
  try {
    const config = await s3Config({ profile: t.options.string('profile'), region: t.options.string('region'), endpoint: t.options.string('endpoint'), pathStyle: t.options.boolean('pathStyle') })
    s3 = new S3(config, ctx)
    const object = t.key === '' || t.key.endsWith('/') ? null : await s3.head(t.bucket, t.key)
    if (object !== null) {
      const progress = new Progress(ctx, object.size, object.segments[0])
      await fetchInto(ctx.partial, ctx.stateDir, object, ctx, progress, s3.fetchFrom(t.bucket, t.key.slice(0, t.key.length - object.segments[0]!.length)))
      return { size: object.size, name: object.segments[0], kind: 'file' }
    }
    const prefix = t.key === '' || t.key.endsWith('/') ? t.key : t.key + '/'
    const files = await s3.list(t.bucket, prefix)
    if (files.length === 0) throw new KithError('REMOTE_NOT_FOUND', `S3 has no object ${prefix === t.key ? 'under' : 'named'} s3://${t.bucket}/${t.key}`)
    const name = prefix.split('/').filter(Boolean).at(-1) ?? t.bucket
    return await downloadTree(files, name, ctx, s3.fetchFrom(t.bucket, prefix))
  } catch (err) {
    throw abortReason(ctx.signal, err)
  } finally {
    await s3?.close()
  }
}

export const s3Addon: DownloadAddon = {
  schemes: ['s3'],
  check: (url, options) => { target(url, options) },
  download
}
