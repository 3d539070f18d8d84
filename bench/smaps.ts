import { readFile } from 'node:fs/promises'

/**
 * Where a daemon's resident memory lies, from /proc/PID/smaps: what the
 * memory benchmarks print next to a peak, so that a change can be judged by
 * the part it moves.
 *
 *   files   mapped files: the node binary, its libraries, LevelDB's tables
 *   heap    glibc's main heap ([heap]): ArrayBuffers under 128 KiB (the
 *           transport's 64 KiB pieces) and native allocations of the main thread
 *   arenas  glibc's thread arenas (anonymous regions in 64 MiB-aligned 64 MiB
 *           reservations): LevelDB and file system calls on the libuv pool
 *   anon    the other anonymous memory: V8's heap pages, buffers of 128 KiB
 *           and more (mapped one by one), thread stacks
 */
export interface MemorySplit { files: number, heap: number, arenas: number, anon: number, total: number }

const ARENA = 64 * 1024 * 1024

/** The split now, bytes; undefined once the process is gone. */
export async function memorySplit (pid: number): Promise<MemorySplit | undefined> {
  let text: string
  try {
    text = await readFile(`/proc/${pid}/smaps`, 'utf8')
  } catch {
    return undefined
  }
  const split: MemorySplit = { files: 0, heap: 0, arenas: 0, anon: 0, total: 0 }
  let name = ''
  let arena = false
  for (const line of text.split('\n')) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$/.exec(line)
    if (head != null) {
      const start = parseInt(head[1]!, 16)
      name = head[3]!
      // a thread arena's heap starts on a 64 MiB boundary and is at most that big
      arena = name === '' && start % ARENA === 0 && parseInt(head[2]!, 16) - start <= ARENA
    } else if (line.startsWith('Rss:')) {
      const rss = Number(/(\d+)/.exec(line)![1]) * 1024
      split.total += rss
      if (name.startsWith('/')) split.files += rss
      else if (name === '[heap]') split.heap += rss
      else if (arena) split.arenas += rss
      else split.anon += rss
    }
  }
  return split
}

/**
 * Samples `pid` every `everyMs` until stopped; `stop()` gives the sample of
 * highest total (undefined if none was read).
 */
export function watchMemory (pid: number, everyMs = 250): { stop: () => Promise<MemorySplit | undefined> } {
  let peak: MemorySplit | undefined
  let running = true
  const loop = (async () => {
    while (running) {
      const now = await memorySplit(pid)
      if (now === undefined) return
      if (peak === undefined || now.total > peak.total) peak = now
      await new Promise(resolve => setTimeout(resolve, everyMs))
    }
  })()
  return {
    stop: async () => {
      running = false
      await loop
      return peak
    }
  }
}
