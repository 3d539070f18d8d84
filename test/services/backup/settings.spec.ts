import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadConfig } from '../../../src/services/engine/limits.ts'
import { careSettings } from '../../../src/services/backup/settings.ts'
import { codeOf } from '../../helpers/errors.ts'

const HOUR = 3600_000

describe('the backup section of config.json', () => {
  let home: string
  beforeAll(async () => { home = await mkdtemp(join(tmpdir(), 'kith-backup-settings-')) })
  afterAll(async () => { await rm(home, { recursive: true, force: true }) })

  it('is read from the file and sets the audit period and the unreachable threshold; absent, the defaults stand', async () => {
    await writeFile(join(home, 'config.json'), JSON.stringify({ backup: { auditEveryMs: 12 * HOUR, unreachableAfterMs: 72 * HOUR } }))
    const config = await loadConfig(home)
    expect(careSettings(config?.backup, config!.path)).toEqual({ auditEveryMs: 12 * HOUR, unreachableAfterMs: 72 * HOUR })
    expect(careSettings({ auditEveryMs: 0 }, 'config.json')).toEqual({ auditEveryMs: 0 })
    expect(careSettings(undefined, 'config.json')).toEqual({})
  })

  it('refuses what is not a period of an hour to a year, and fields it does not know, naming them', () => {
    for (const bad of [{ unreachableAfterMs: 60_000 }, { unreachableAfterMs: '7d' }, { auditEveryMs: -1 }, { auditEveryMs: HOUR / 2 }, { unreachableAfterMs: 400 * 24 * HOUR }, { replicas: 3 }, 'yes']) {
      expect(codeOf(() => careSettings(bad, 'config.json')), JSON.stringify(bad)).toBe('CONFIG_INVALID')
    }
    expect(() => careSettings({ unreachableAfterMs: 60_000 }, '/h/config.json')).toThrow(/\/h\/config.json: backup.unreachableAfterMs/)
  })
})
