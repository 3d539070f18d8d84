import { KithError } from '../../errors.ts'
import type { Sublevel } from '../../peer/database.ts'
import type { Priority } from '../../transfer/scheduler/types.ts'

/**
 * The downloads the queue holds, persisted in LevelDB (one record per
 * download, written on every change of state and, while one runs, of its
 * progress now and then), so they survive restarts and kill -9. A record
 * that was running when the daemon ended is queued again when it opens.
 *
 * Only the record lives here; what an add-on needs to resume lives in its
 * partial file and its state folder (queue.ts).
 */
export type DownloadState = 'queued' | 'running' | 'paused' | 'done' | 'failed' | 'cancelled'
export const FINAL_STATES: readonly DownloadState[] = ['done', 'failed', 'cancelled']
/** The stored format's version: records of a version this code does not know are refused, not guessed at. */
export const DOWNLOAD_RECORD_VERSION = 1

export interface Download {
  v: typeof DOWNLOAD_RECORD_VERSION
  /** 12 hex digits, distinct from every friend fetch's id (one queue: `kith pause ID` finds either) */
  id: string
  /** the URL as given (credentials of ftp/sftp/webdav URLs are shown as *** in listings, see `publicView`) */
  url: string
  /** the folder it is placed in (absolute) */
  dir: string
  /** the file (or folder) name in `dir`: given with -o, else the origin's once known */
  name: string | null
  state: DownloadState
  priority: Priority
  /** bytes/s cap for this download alone, or null */
  limit: number | null
  connections: number
  /** 'sha256:HEX' asked for, or null */
  checksum: string | null
  /** add-on options, as given */
  options: Record<string, unknown>
  totalBytes: number | null
  doneBytes: number
  /** bytes/s over the scheduler's window; 0 unless running */
  rate: number
  /** seconds left, or null when unknown */
  eta: number | null
  /** the whole file's sha256 once verified */
  sha256: string | null
  kind: 'file' | 'tree' | null
  error: { code: string, message: string } | null
  /** wall-clock ms (shown to people; durations use the monotonic clock) */
  created: number
  updated: number
}

/** The absolute path it is (or will be) placed at; null while the name is not known yet. */
export function destOf (d: Pick<Download, 'dir' | 'name'>): string | null {
  return d.name === null ? null : `${d.dir.replace(/\/+$/, '')}/${d.name}`
}

/** A record as listings show it: the URL without a password. */
export function publicView (d: Download): Download & { dest: string | null } {
  let url = d.url
  try {
    const parsed = new URL(d.url)
    if (parsed.password !== '') {
      parsed.password = '***'
      url = parsed.toString()
    }
  } catch {}
  return { ...d, url, dest: destOf(d) }
}

export class DownloadBook {
  private readonly level: Sublevel<Download>
  private readonly records = new Map<string, Download>()

  constructor (level: Sublevel<Download>) {
    this.level = level
  }

  /**
   * Loads every record; one that was running is queued again (its run ended
   * with the process). A record of an unknown version stops the load:
   * DATABASE_CORRUPT names it rather than a queue that silently drops it.
   */
  async load (): Promise<void> {
    for await (const [key, record] of this.level.iterator()) {
      if (record?.v !== DOWNLOAD_RECORD_VERSION) {
        throw new KithError('DATABASE_CORRUPT', `the download record ${JSON.stringify(key)} has version ${JSON.stringify(record?.v)}, which this kith does not know; run a newer kith`)
      }
      this.records.set(key, record.state === 'running' ? { ...record, state: 'queued', rate: 0, eta: null } : { ...record, rate: 0, eta: null })
    }
  }

  list (): Download[] {
    return [...this.records.values()].sort((a, b) => a.created - b.created || a.id.localeCompare(b.id))
  }

  has (id: string): boolean {
    return this.records.has(id)
  }

  /** By id, or by an unambiguous start of at least 4 digits; undefined if none. */
  find (id: string): Download | undefined {
    const exact = this.records.get(id)
    if (exact !== undefined || id.length < 4) return exact
    const matches = [...this.records.values()].filter(r => r.id.startsWith(id))
    return matches.length === 1 ? matches[0] : undefined
  }

  get (id: string): Download {
    const record = this.find(id)
    if (record === undefined) throw new KithError('DOWNLOAD_UNKNOWN', `no download ${JSON.stringify(id)}; see \`kith downloads\``)
    return record
  }

  /** Records the new state (in memory at once, even if the write fails: the caller learns of the failure). */
  async save (record: Download): Promise<Download> {
    const updated = { ...record, updated: Date.now() }
    this.records.set(record.id, updated)
    await this.level.put(record.id, updated)
    return updated
  }

  /** Progress in memory only: written with the next save (a kill loses a little progress, never state). */
  touch (record: Download): Download {
    this.records.set(record.id, record)
    return record
  }
}
