import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { AwsClient, AwsV4Signer } from 'aws4fetch'
import S3rver from 's3rver'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { httpAddon } from '../../../src/services/downloads/http/index.ts'
import { s3Addon } from '../../../src/services/downloads/s3.ts'
import { scratch, type Scratch } from '../../helpers/addon-context.ts'
import { freePort } from '../../helpers/servers.ts'

/**
 * The s3 add-on against s3rver (a real S3 server from npm, on 127.0.0.1)
 * for objects, prefixes and resume, and against a small server of the
 * test's own that checks SigV4 signatures (s3rver does not), for signing
 * that works and a wrong secret that does not. Credentials come from a
 * shared credentials file, as they would from ~/.aws/credentials.
 */
const SECRET = 'kith-test-secret'
const SAVED = ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_PROFILE', 'AWS_SHARED_CREDENTIALS_FILE', 'AWS_CONFIG_FILE', 'AWS_REGION', 'AWS_ENDPOINT_URL', 'AWS_ENDPOINT_URL_S3']

/** The authorization a request should carry if signed with SECRET: the header's, or a presigned URL's signature. */
async function expectedSignature (req: IncomingMessage): Promise<{ given: string, expected: string | null }> {
  const url = new URL(req.url!, `http://${req.headers.host!}`)
  const query = url.searchParams.get('X-Amz-Signature')
  const auth = req.headers.authorization ?? ''
  const credential = /^([^/]+)\/\d{8}\/([^/]+)\/([^/]+)\//.exec(query !== null ? url.searchParams.get('X-Amz-Credential') ?? '' : /Credential=([^,]+)/.exec(auth)?.[1] ?? '')
  if (credential === null) return { given: query ?? auth, expected: null }
  const common = { method: req.method!, accessKeyId: credential[1]!, secretAccessKey: SECRET, region: credential[2]!, service: credential[3]! }
  if (query !== null) {
    url.searchParams.delete('X-Amz-Signature')
    const signed = await new AwsV4Signer({ ...common, url: url.href, signQuery: true, datetime: url.searchParams.get('X-Amz-Date') ?? '' }).sign()
    return { given: query, expected: signed.url.searchParams.get('X-Amz-Signature') }
  }
  const headers: Record<string, string> = {}
  for (const name of /SignedHeaders=([^,]+)/.exec(auth)?.[1]?.split(';') ?? []) if (name !== 'host') headers[name] = String(req.headers[name])
  const signed = await new AwsV4Signer({ ...common, url: url.href, headers, datetime: req.headers['x-amz-date'] as string }).sign()
  return { given: auth, expected: signed.headers.get('authorization') }
}

/** Answers GET and HEAD of /bucket/ok.bin when the request's SigV4 signature (header or presigned) is right for SECRET; 403 SignatureDoesNotMatch otherwise. */
function sigV4Server (body: Buffer): Server {
  return createServer((req, res) => {
    void (async () => {
      const { given, expected } = await expectedSignature(req)
      if (expected === null || expected !== given) {
        res.writeHead(403, { 'content-type': 'application/xml' }).end('<Error><Code>SignatureDoesNotMatch</Code></Error>')
      } else if (new URL(req.url!, 'http://x').pathname === '/bucket/ok.bin') {
        res.writeHead(200, { 'content-length': body.length, etag: '"e1"' }).end(req.method === 'HEAD' ? undefined : body)
      } else {
        res.writeHead(404).end('<Error><Code>NoSuchKey</Code></Error>')
      }
    })()
  })
}

describe('s3 add-on against s3rver and a SigV4-checking server', () => {
  const objects: Record<string, Buffer> = {
    'big.bin': randomBytes(2 * 1024 * 1024 + 9),
    'trip/a.jpg': randomBytes(300_000),
    'trip/day 2/b.jpg': randomBytes(200_001),
    'trip/day 2/c&d.jpg': randomBytes(100_002),
    'tripe.txt': Buffer.from('not under trip/')
  }
  let dir: string
  let s3rver: S3rver
  let endpoint: string
  let checker: Server
  let checkerEndpoint: string
  const saved: Record<string, string | undefined> = {}
  let s: Scratch

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kith-s3-'))
    for (const name of SAVED) { saved[name] = process.env[name]; delete process.env[name] }
    await writeFile(join(dir, 'credentials'), `[good]\naws_access_key_id = S3RVER\naws_secret_access_key = ${SECRET}\n\n[bad]\naws_access_key_id = S3RVER\naws_secret_access_key = not-the-secret\n`)
    process.env.AWS_SHARED_CREDENTIALS_FILE = join(dir, 'credentials')
    process.env.AWS_CONFIG_FILE = join(dir, 'no-config')
    const port = await freePort()
    s3rver = new S3rver({ port, address: '127.0.0.1', silent: true, directory: join(dir, 's3rver'), configureBuckets: [{ name: 'photos', configs: [] }] })
    await s3rver.run()
    endpoint = `http://127.0.0.1:${port}`
    const aws = new AwsClient({ accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER', service: 's3', region: 'us-east-1' })
    for (const [key, body] of Object.entries(objects)) {
      const put = await aws.fetch(`${endpoint}/photos/${key.split('/').map(encodeURIComponent).join('/')}`, { method: 'PUT', body })
      expect(put.status).toBe(200)
    }
    checker = sigV4Server(objects['big.bin']!)
    checker.listen(0, '127.0.0.1')
    await once(checker, 'listening')
    checkerEndpoint = `http://127.0.0.1:${(checker.address() as { port: number }).port}`
    s = await scratch()
  })
  afterAll(async () => {
    await s?.cleanup()
    await s3rver?.close()
    checker?.close()
    for (const name of SAVED) { if (saved[name] === undefined) delete process.env[name]; else process.env[name] = saved[name] }
    await rm(dir, { recursive: true, force: true })
  })

  it('downloads an object; a resume after an abort fetches only the rest', async () => {
    const options = { endpoint, profile: 'good' }
    const size = objects['big.bin']!.length
    await expect(s.run(s3Addon, 's3://photos/big.bin', options, 512 * 1024)).rejects.toThrow('aborted by the test')
    const kept = (await stat(s.partial)).size
    expect(kept).toBeGreaterThan(0)
    expect(kept).toBeLessThan(size)
    const resumed = await s.run(s3Addon, 's3://photos/big.bin', options)
    expect(resumed.result).toEqual({ size, name: 'big.bin', kind: 'file' })
    expect(resumed.taken).toBe(size - kept)
    expect((await readFile(s.partial)).equals(objects['big.bin']!)).toBe(true)
  })

  it('downloads a prefix as a folder (ListObjectsV2), with or without its trailing slash', async () => {
    for (const url of ['s3://photos/trip/', 's3://photos/trip']) {
      await rm(s.partial, { recursive: true, force: true })
      await rm(s.stateDir, { recursive: true, force: true })
      const run = await s.run(s3Addon, url, { endpoint, profile: 'good' })
      expect(run.result).toEqual({ size: 600_003, name: 'trip', kind: 'tree' })
      for (const key of ['a.jpg', 'day 2/b.jpg', 'day 2/c&d.jpg']) {
        expect((await readFile(join(s.partial, key))).equals(objects[`trip/${key}`]!)).toBe(true)
      }
      // the files and the listing page went through the scheduler
      expect(run.taken).toBeGreaterThan(600_003)
      expect(run.taken).toBeLessThan(600_003 + 16_384)
    }
  })

  it('signs with SigV4 (a server that checks takes it); refuses a wrong secret, a missing key and bad URLs with typed errors', async () => {
    await rm(s.partial, { recursive: true, force: true })
    await rm(s.stateDir, { recursive: true, force: true })
    expect((await s.run(s3Addon, 's3://bucket/ok.bin', { endpoint: checkerEndpoint, profile: 'good' })).result.size).toBe(objects['big.bin']!.length)
    await rm(s.partial)
    await rm(s.stateDir, { recursive: true })
    const refused = await s.run(s3Addon, 's3://bucket/ok.bin', { endpoint: checkerEndpoint, profile: 'bad' }).catch((err: unknown) => err)
    expect(refused).toMatchObject({ code: 'REMOTE_AUTH_FAILED' })
    expect((refused as Error).message).toContain('HTTP 403')
    await expect(s.run(s3Addon, 's3://photos/nothing.bin', { endpoint, profile: 'good' })).rejects.toMatchObject({ code: 'REMOTE_NOT_FOUND' })
    await expect(s.run(s3Addon, 's3://photos/big.bin', { endpoint, profile: 'nobody' })).rejects.toMatchObject({ code: 'URL_INVALID' })
    for (const [url, options] of [['s3://Not_A_Bucket/x', {}], ['s3://key:secret@photos/x', {}], ['s3://photos/x?X-Amz-Signature=1', {}], ['s3://photos/x', { endpoint: 'ftp://x' }], ['s3://photos/x', { secret: 'no' }]] as const) {
      expect(() => s3Addon.check!(new URL(url), options)).toThrow(expect.objectContaining({ code: 'URL_INVALID' }))
    }
  })

  it('a presigned URL is an https:// URL the HTTP engine downloads as it is; a tampered one is refused', async () => {
    await rm(s.partial, { recursive: true, force: true })
    await rm(s.stateDir, { recursive: true, force: true })
    const aws = new AwsClient({ accessKeyId: 'S3RVER', secretAccessKey: SECRET, service: 's3', region: 'us-east-1' })
    const presigned = (await aws.sign(`${checkerEndpoint}/bucket/ok.bin`, { aws: { signQuery: true } })).url
    expect((await s.run(httpAddon, presigned)).result.size).toBe(objects['big.bin']!.length)
    expect((await readFile(s.partial)).equals(objects['big.bin']!)).toBe(true)
    await rm(s.partial)
    await rm(s.stateDir, { recursive: true })
    await expect(s.run(httpAddon, presigned.replace(/X-Amz-Signature=[0-9a-f]/, m => m.endsWith('0') ? m.slice(0, -1) + '1' : m.slice(0, -1) + '0'))).rejects.toMatchObject({ code: 'HTTP_STATUS' })
  })
})
