import { describe, it, expect } from 'vitest'
import { mkdtemp, writeFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Level } from 'level'
import { BandwidthScheduler, ManualClock } from '../../src/transfer/scheduler/index.ts'
import { LimitsBook, applyPatch, effective, loadConfig, parseRule, toUpdate, type LimitsDoc } from '../../src/services/engine/limits.ts'
import { parseLimitRate } from '../../src/services/engine/rate-text.ts'
import { KithError } from '../../src/errors.ts'
import type { Sublevel } from '../../src/peer/database.ts'

/** The limits layers (config file, stored, start flags), their parsing and validation. */
describe('bandwidth limits', () => {
  it('parses rates and schedule rules', () => {
    expect(parseLimitRate('10MB/s')).toBe(10e6)
    expect(parseLimitRate('512KiB/s')).toBe(512 * 1024)
    expect(parseLimitRate('unlimited')).toBe('unlimited')
    expect(parseLimitRate('0')).toBe(0)
    expect(parseLimitRate(1234)).toBe(1234)
    expect(parseLimitRate('fast')).toBeUndefined()
    expect(parseLimitRate(-1)).toBeUndefined()
    expect(parseRule('23:00-07:00 up=unlimited down=2MB/s')).toEqual({ from: '23:00', to: '07:00', upload: 'unlimited', download: 2e6 })
    expect(() => parseRule('23:00-07:00')).toThrow(/sets nothing/)
    expect(() => parseRule('25:00-07:00 up=1')).toThrow(/HH:MM/)
    expect(() => parseRule('23:00-07:00 up=fast')).toThrow(/up=RATE/)
  })

  it('layers the config file, stored limits and this run\'s flags', () => {
    const config: LimitsDoc = { upload: 2e6, download: 5e6, peers: { p1: { upload: 1e6, download: 1e6 } }, schedule: [{ from: '01:00', to: '02:00', download: 'unlimited' }], classWeights: { friend: 4 } }
    const stored: LimitsDoc = { download: 3e6, peers: { p1: { upload: 'unlimited' }, p2: { download: 7 } }, classWeights: { public: 2 } }
    const e = effective(config, stored, { upload: 9e6 })
    expect(e).toEqual({
      upload: 9e6,
      download: 3e6,
      peers: { p1: { upload: 'unlimited', download: 1e6 }, p2: { download: 7 } },
      schedule: config.schedule,
      classWeights: { friend: 4, foaf: 2, public: 2, backup: 2, service: 8 }
    })
    const update = toUpdate(e)
    expect(update.peers!.p1).toEqual({ upload: Infinity, download: 1e6 })
    expect(update.schedule![0]).toEqual({ from: '01:00', to: '02:00', download: Infinity })
  })

  it('applies changes as merge patches: null clears a setting', () => {
    const stored: LimitsDoc = { upload: 1, peers: { a: { upload: 1, download: 2 }, b: { upload: 3 } }, schedule: [{ from: '00:00', to: '01:00', upload: 0 }], classWeights: { friend: 3 } }
    expect(applyPatch(stored, { upload: null, download: 5, peers: { a: { download: null }, b: null, c: { upload: 'unlimited' } }, classWeights: { friend: null, foaf: 1 } }))
      .toEqual({ download: 5, peers: { a: { upload: 1 }, c: { upload: 'unlimited' } }, schedule: stored.schedule, classWeights: { foaf: 1 } })
    expect(applyPatch(stored, { peers: null, schedule: null, classWeights: null })).toEqual({ upload: 1 })
  })

  describe('LimitsBook', () => {
    async function book (config: LimitsDoc | null = null, override = {}): Promise<{ book: LimitsBook, bandwidth: BandwidthScheduler, db: Level<string, unknown>, dir: string }> {
      const dir = await mkdtemp(join(tmpdir(), 'kith-limits-'))
      const db = new Level<string, unknown>(join(dir, 'db'), { valueEncoding: 'json' })
      await db.open()
      // noon, local time: outside the 23:00-07:00 rule the tests set, whenever they run
      const bandwidth = new BandwidthScheduler({ clock: new ManualClock(new Date(2026, 0, 15, 12).getTime()) })
      const friends: Record<string, string> = { bob: 'peer-bob' }
      // a book that fails to open (a bad config) leaves no database open and no folder behind
      const b = await LimitsBook.open({
        level: db.sublevel<string, LimitsDoc>('limits', { valueEncoding: 'json' }) as unknown as Sublevel<LimitsDoc>,
        bandwidth,
        resolvePeer: name => {
          const id = friends[name] ?? Object.values(friends).find(p => p === name)
          if (id == null) throw new KithError('FRIEND_UNKNOWN', `no friend is called ${JSON.stringify(name)}`)
          return id
        },
        label: peer => Object.entries(friends).find(([, p]) => p === peer)?.[0] ?? null,
        config: config == null ? null : { path: join(dir, 'config.json'), limits: config },
        override
      }).catch(async (err: unknown) => {
        await db.close()
        await rm(dir, { recursive: true, force: true })
        throw err
      })
      return { book: b, bandwidth, db, dir }
    }

    it('applies changes to the scheduler at once, persists them, and keeps the old on a bad value', async () => {
      const { book: b, bandwidth, db, dir } = await book({ upload: 2e6, peers: { bob: { upload: 1e6 } } }, { download: 4e6 })
      try {
        expect(bandwidth.caps()).toEqual({ up: 2e6, down: 4e6 })
        expect(bandwidth.limits().peers).toEqual({ 'peer-bob': { upload: 1e6 } })
        const view = await b.update({ download: 'unlimited', peers: { bob: { download: '3MB/s' } }, schedule: ['23:00-07:00 up=unlimited'] })
        expect(view.override).toEqual({})
        expect(view.labels).toEqual({ 'peer-bob': 'bob' })
        expect(bandwidth.caps().down).toBe(Infinity)
        expect(bandwidth.limits().peers).toEqual({ 'peer-bob': { upload: 1e6, download: 3e6 } })
        expect(await db.sublevel('limits', { valueEncoding: 'json' }).get('limits')).toEqual(view.stored)
        await expect(b.update({ upload: 'fast' })).rejects.toThrow(/upload: "fast" is not a rate/)
        await expect(b.update({ schedule: ['25:00-01:00 up=1'] })).rejects.toThrow(/HH:MM/)
        await expect(b.update({ peers: { zed: { upload: 1 } } })).rejects.toMatchObject({ code: 'FRIEND_UNKNOWN' })
        await expect(b.update({ bogus: 1 })).rejects.toMatchObject({ code: 'BAD_REQUEST' })
        expect(bandwidth.caps()).toEqual({ up: 2e6, down: Infinity })
        const cleared = await b.update({ peers: { bob: null }, schedule: null })
        expect(cleared.limits.peers).toEqual({ 'peer-bob': { upload: 1e6 } }) // the config file's cap stays
        // the backup class is set like the others (`kith limits set --weights backup=0.5`)
        const weighted = await b.update({ classWeights: { backup: 0.5 } })
        expect(weighted.limits.classWeights).toMatchObject({ friend: 8, backup: 0.5 })
        expect(bandwidth.limits().classWeights.backup).toBe(0.5)
      } finally {
        bandwidth.close()
        await db.close()
        await rm(dir, { recursive: true, force: true })
      }
    })

    it('names the config file when it names an unknown friend', async () => {
      await expect(book({ peers: { zed: { upload: 1 } } })).rejects.toMatchObject({ code: 'CONFIG_INVALID', message: expect.stringContaining('config.json') })
    })
  })

  it('reads config.json, refusing a bad one with CONFIG_INVALID naming it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kith-config-'))
    try {
      expect(await loadConfig(dir)).toBeNull()
      await writeFile(join(dir, 'config.json'), JSON.stringify({ limits: { upload: '10MB/s', schedule: ['23:00-07:00 up=unlimited'], peers: { bob: { download: 1000 } } } }))
      expect((await loadConfig(dir))!.limits).toEqual({ upload: 10e6, schedule: [{ from: '23:00', to: '07:00', upload: 'unlimited' }], peers: { bob: { download: 1000 } } })
      for (const [text, message] of [
        ['{"limits":', /not valid JSON/],
        ['{"limits":{"upload":"fast"}}', /limits\.upload: "fast" is not a rate/],
        ['{"limits":{"classWeights":{"friend":0}}}', /limits\.classWeights\.friend/],
        ['{"limits":{"schedule":["7pm up=1"]}}', /FROM-TO/],
        ['{"limit":{}}', /limit/]
      ] as const) {
        await writeFile(join(dir, 'config.json'), text)
        const err = await loadConfig(dir).catch(e => e)
        expect(err).toMatchObject({ code: 'CONFIG_INVALID' })
        expect(err.message).toContain(join(dir, 'config.json'))
        expect(err.message).toMatch(message)
      }
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
