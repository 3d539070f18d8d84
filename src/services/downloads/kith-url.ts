import { KithError } from '../../errors.ts'

/**
 * kith://FRIEND/SHARE[/path]: a friend's share (or a file or folder in it)
 * as a URL, so `kith get` and POST /v1/downloads take friend shares too.
 *
 * Not a DownloadAddon: such a URL becomes a friend fetch of the file
 * service (daemon.files.fetch), which already queues, persists, resumes,
 * verifies every chunk against the friend's signed manifest and places
 * files, fetching from every friend holding the chunks at once. An add-on
 * wrapping it would keep a second record of the same job and move the
 * friend's bytes in a 'public' flow, below friends' traffic, where the
 * fetch's own flow is 'friend'. It sits in the one queue all the same:
 * `kith downloads` lists it, `kith pause|resume|cancel|priority ID` act on it.
 */
export interface KithTarget {
  friend: string
  share: string
  /** a file or folder inside the share, or '' */
  path: string
}

export function isKithUrl (text: string): boolean {
  return /^kith:/i.test(text)
}

/** Parses kith://FRIEND/SHARE[/path] (percent-escapes decoded); URL_INVALID otherwise. */
export function parseKithUrl (text: string): KithTarget {
  const match = /^kith:\/\/([^/?#]+)\/([^/?#]+)(?:\/([^?#]*))?$/i.exec(text)
  const usage = `a friend's share is kith://FRIEND/SHARE or kith://FRIEND/SHARE/path, like kith://alice/photos/2024; got ${JSON.stringify(text.slice(0, 200))}`
  if (match == null) throw new KithError('URL_INVALID', usage)
  try {
    const [friend, share, path] = [match[1]!, match[2]!, match[3] ?? ''].map(part => decodeURIComponent(part))
    if (path!.split('/').some(s => s === '.' || s === '..')) throw new KithError('URL_INVALID', `${usage}; '.' and '..' are not paths in a share`)
    return { friend: friend!, share: share!, path: path!.replace(/\/+$/, '') }
  } catch (err) {
    if (err instanceof KithError) throw err
    throw new KithError('URL_INVALID', `${usage} (a percent-escape does not decode)`)
  }
}
