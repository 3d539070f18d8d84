import { describe, expect, it } from 'vitest'
import { queueText, reasons, type Item } from '../../../src/services/cli/downloads.ts'

/** What `kith downloads` says in words under its table. */
const item = (id: string, state: string, error: Item['error'] = null): Item =>
  ({ id, kind: 'url', what: 'http://example.org/x.iso', state, priority: 'normal', done: 0, total: null, rate: 0, eta: null, dest: '/d/', error })

describe('kith downloads in words', () => {
  it('says why one waits or failed, and what to do about a failed one', () => {
    expect(reasons([
      item('aaaa01', 'running'),
      item('bbbb02', 'paused', { code: 'DISK_LOW', message: 'only 1 MB free on /d; downloads.minFreeBytes asks 512 MiB' }),
      item('cccc03', 'failed', { code: 'HTTP_CONNECT_FAILED', message: 'could not connect to example.org: refused' }),
      item('dddd04', 'paused')
    ])).toEqual([
      'bbbb02: only 1 MB free on /d; downloads.minFreeBytes asks 512 MiB',
      'cccc03: could not connect to example.org: refused (`kith resume cccc03` tries again, `kith cancel cccc03` drops it)'
    ])
  })

  it('gives the whole queue\'s time left, and what it leaves out', () => {
    expect(queueText({ eta: 0, unknownSizes: 0 })).toBe('queue: nothing running or queued')
    expect(queueText({ eta: null, unknownSizes: 1 })).toBe('queue: time left unknown (1 of unknown size not counted)')
  })
})
