import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { DownloadAddon, DownloadContext, DownloadProgress, DownloadResult, DownloadSettings } from '../../src/services/downloads/addon.ts'
import { BandwidthScheduler } from '../../src/transfer/scheduler/index.ts'

/**
 * Driving a download add-on directly, as the queue does: a real bandwidth
 * scheduler flow behind `take`, a temp folder for the partial and the state,
 * and a count of what the add-on took, so a test sees how many bytes a
 * resumed download fetched again.
 */

export const SETTINGS: DownloadSettings = {
  proxy: { http: null, https: null, all: null, noProxy: null },
  ipv6: true,
  dns: [],
  connectTimeoutMs: 10_000,
  readTimeoutMs: 10_000,
  retries: 2,
  maxRetryWaitMs: 1000
}

export interface AddonRun {
  result: DownloadResult
  /** bytes passed to take */
  taken: number
  progress: DownloadProgress[]
}

export interface Scratch {
  dir: string
  partial: string
  stateDir: string
  bandwidth: BandwidthScheduler
  /** runs the add-on once; with `abortAfter`, aborts it once that many bytes were taken (and rejects with the abort) */
  run: (addon: DownloadAddon, url: string, options?: Record<string, unknown>, abortAfter?: number) => Promise<AddonRun>
  /** the taken count of the last run, also when it rejected */
  lastTaken: () => number
  cleanup: () => Promise<void>
}

/** `settings` over SETTINGS: a download's network settings (proxies, DNS servers...) */
export async function scratch (name = 'download', settings: Partial<DownloadSettings> = {}): Promise<Scratch> {
  const dir = await mkdtemp(join(tmpdir(), 'kith-addon-'))
  const partial = join(dir, name + '.partial')
  const stateDir = join(dir, 'state')
  const bandwidth = new BandwidthScheduler()
  let last = 0
  const run = async (addon: DownloadAddon, url: string, options: Record<string, unknown> = {}, abortAfter?: number): Promise<AddonRun> => {
    // the queue makes the state folder before each call
    await mkdir(stateDir, { recursive: true })
    const controller = new AbortController()
    const flow = bandwidth.flow({ direction: 'down', class: 'public' })
    const progress: DownloadProgress[] = []
    last = 0
    const ctx: DownloadContext = {
      partial,
      stateDir,
      signal: controller.signal,
      take: async (bytes, signal) => {
        last += bytes
        if (abortAfter !== undefined && last > abortAfter) controller.abort(new Error('aborted by the test'))
        await flow.take(bytes, signal)
      },
      progress: p => { progress.push(p) },
      settings: { ...SETTINGS, ...settings }
    }
    try {
      const parsed = new URL(url)
      addon.check?.(parsed, options)
      const result = await addon.download({ id: 'a1b2c3d4e5f6', url: parsed, connections: 4, options, hash: false }, ctx)
      return { result, taken: last, progress }
    } finally {
      flow.close()
    }
  }
  return {
    dir,
    partial,
    stateDir,
    bandwidth,
    run,
    lastTaken: () => last,
    cleanup: async () => {
      bandwidth.close()
      await rm(dir, { recursive: true, force: true })
    }
  }
}
