import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { hlsAddon } from '../../../src/services/downloads/hls.ts'
import { scratch, type Scratch } from '../../helpers/addon-context.ts'
import { describeNeeding } from '../../helpers/needs.ts'
import { needsNginx, startNginx, type Nginx } from '../../helpers/nginx.ts'

/**
 * The hls add-on against a real nginx serving playlists and segments made
 * here (random bytes stand in for video: the add-on joins bytes, it does not
 * decode them), driven directly with a real bandwidth scheduler.
 */
describeNeeding('hls add-on against nginx', [needsNginx()], () => {
  const SEGMENTS = 12
  let root: string
  let nginx: Nginx
  let segments: Buffer[]
  let s: Scratch

  const media = (names: string[], end = true): string =>
    ['#EXTM3U', '#EXT-X-VERSION:3', '#EXT-X-TARGETDURATION:2', '#EXT-X-PLAYLIST-TYPE:VOD', ...names.flatMap(n => ['#EXTINF:2.0,', n]), ...(end ? ['#EXT-X-ENDLIST'] : []), ''].join('\n')

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'kith-hls-'))
    await mkdir(join(root, 'high'))
    await mkdir(join(root, 'low'))
    segments = Array.from({ length: SEGMENTS }, (_, i) => randomBytes(150_000 + i))
    for (const [i, segment] of segments.entries()) await writeFile(join(root, 'high', `seg${i}.ts`), segment)
    await writeFile(join(root, 'high', 'index.m3u8'), media(segments.map((_, i) => `seg${i}.ts`)))
    await writeFile(join(root, 'low', 'only.ts'), randomBytes(1000))
    await writeFile(join(root, 'low', 'index.m3u8'), media(['only.ts']))
    await writeFile(join(root, 'master.m3u8'), '#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=200000\nlow/index.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=4000000,RESOLUTION=1920x1080\nhigh/index.m3u8\n')
    // one file cut by byte ranges, behind an fMP4 initialisation section
    await writeFile(join(root, 'init.mp4'), Buffer.from('init section'))
    await writeFile(join(root, 'joined.m4s'), Buffer.concat(segments.slice(0, 3)))
    await writeFile(join(root, 'ranges.m3u8'), ['#EXTM3U', '#EXT-X-VERSION:7', '#EXT-X-TARGETDURATION:2', '#EXT-X-MAP:URI="init.mp4"',
      ...segments.slice(0, 3).flatMap((seg, i) => ['#EXTINF:2.0,', `#EXT-X-BYTERANGE:${seg.length}@${segments.slice(0, i).reduce((a, b) => a + b.length, 0)}`, 'joined.m4s']), '#EXT-X-ENDLIST', ''].join('\n'))
    await writeFile(join(root, 'live.m3u8'), media(['high/seg0.ts'], false))
    nginx = await startNginx({ root })
    s = await scratch()
  })
  afterAll(async () => {
    await s?.cleanup()
    await nginx?.stop()
    await rm(root, { recursive: true, force: true })
  })

  it('downloads the highest variant of a master playlist, segments in parallel, joined in order; a resume after an abort fetches only the segments not kept', async () => {
    const whole = Buffer.concat(segments)
    const playlists = (await stat(join(root, 'master.m3u8'))).size + (await stat(join(root, 'high', 'index.m3u8'))).size
    await expect(s.run(hlsAddon, `${nginx.url}/master.m3u8`, {}, 700_000)).rejects.toThrow('aborted by the test')
    let kept = (await stat(s.partial)).size
    for (const file of await readdir(join(s.stateDir, 'pieces'))) {
      if (/^\d+$/.test(file)) kept += (await stat(join(s.stateDir, 'pieces', file))).size
    }
    expect(kept).toBeGreaterThan(0)
    expect(kept).toBeLessThan(whole.length)
    const resumed = await s.run(hlsAddon, `${nginx.url}/master.m3u8`)
    expect(resumed.result).toEqual({ size: whole.length, name: 'master.ts', kind: 'file' })
    expect(resumed.taken).toBe(playlists + whole.length - kept)
    expect((await readFile(s.partial)).equals(whole)).toBe(true)
  })

  it('fetches byte ranges after an fMP4 initialisation section; a low maxBandwidth picks the low variant', async () => {
    await rm(s.partial)
    await rm(s.stateDir, { recursive: true })
    const ranged = await s.run(hlsAddon, `hls+${nginx.url}/ranges.m3u8`)
    expect(ranged.result.name).toBe('ranges.mp4')
    expect((await readFile(s.partial)).equals(Buffer.concat([Buffer.from('init section'), ...segments.slice(0, 3)]))).toBe(true)
    await rm(s.partial)
    await rm(s.stateDir, { recursive: true })
    expect((await s.run(hlsAddon, `${nginx.url}/master.m3u8`, { maxBandwidth: 1_000_000 })).result.size).toBe(1000)
  })

  it('refuses a live playlist, a missing one, what is not a playlist and bad options with typed errors', async () => {
    for (const [path, code] of [['live.m3u8', 'PLAYLIST_UNSUPPORTED'], ['nothing.m3u8', 'REMOTE_NOT_FOUND'], ['init.mp4', 'PLAYLIST_MALFORMED']]) {
      await rm(s.partial, { force: true })
      await rm(s.stateDir, { recursive: true, force: true })
      await expect(s.run(hlsAddon, `hls+${nginx.url}/${path!}`)).rejects.toMatchObject({ code })
    }
    expect(() => hlsAddon.check!(new URL(`${nginx.url}/master.m3u8`), { maxBandwidth: -1 })).toThrow(expect.objectContaining({ code: 'URL_INVALID' }))
    expect(() => hlsAddon.check!(new URL('hls+ftp://x/a.m3u8'), {})).toThrow(expect.objectContaining({ code: 'URL_INVALID' }))
    expect(() => hlsAddon.check!(new URL('hls://example.org/a.m3u8'), {})).not.toThrow()
  })
})
