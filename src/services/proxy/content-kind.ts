import { extname } from 'node:path'
import type { ProxyService } from './query.ts'

/**
 * What service a request gets when it names none (DNA: download, unless the
 * content says it streams): the URL's extension first, known before any
 * byte moves, then the origin's Content-Type.
 */
const STREAMING_EXTENSIONS = new Set(['.mp4', '.m4v', '.m4a', '.mkv', '.webm', '.mov', '.mp3', '.ogg', '.oga', '.ogv', '.opus', '.flac', '.wav', '.aac', '.avi', '.mpg', '.mpeg', '.ts'])

export function serviceFor (asked: ProxyService | null, url: URL, contentType: string | null): ProxyService {
  if (asked != null) return asked
  if (STREAMING_EXTENSIONS.has(extname(url.pathname).toLowerCase())) return 'streaming'
  const type = (contentType ?? '').split(';')[0]!.trim().toLowerCase()
  return type.startsWith('video/') || type.startsWith('audio/') ? 'streaming' : 'min_rate_data'
}
