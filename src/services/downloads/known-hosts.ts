/**
 * OpenSSH's known_hosts, read to check an SSH server's host key (the sftp
 * add-on): a key the file holds for the host is trusted; a host the file
 * knows with other keys only is HOST_KEY_CHANGED; a host it does not know is
 * HOST_KEY_UNKNOWN. Either is let through only when the user accepted that
 * very key, by its fingerprint (the sftp option `hostKey`, as `ssh-keygen
 * -lf` and ssh print it: SHA256:base64).
 *
 * Read: plain and hashed (|1|salt|hash) host names, `[host]:port` for
 * other ports than 22, comma lists, * and ? patterns, ! negations, and
 * @revoked keys (refused even when listed). @cert-authority lines are
 * skipped: kith does not check host certificates.
 */
import { createHash, createHmac } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { KithError } from '../../errors.ts'

/** The fingerprint of a host key blob, as OpenSSH prints it. */
export function fingerprint (key: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(key).digest('base64').replace(/=+$/, '')
}

function globMatch (pattern: string, name: string): boolean {
  const re = new RegExp('^' + pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.') + '$', 'i')
  return re.test(name)
}

function hashedMatch (entry: string, name: string): boolean {
  const [, kind, salt, hash] = entry.split('|')
  if (kind !== '1' || salt === undefined || hash === undefined) return false
  return createHmac('sha1', Buffer.from(salt, 'base64')).update(name).digest('base64') === hash
}

/** Whether a known_hosts host field (comma list, patterns, negations, or one hashed name) names `name`. */
function hostsMatch (field: string, name: string): boolean {
  if (field.startsWith('|')) return hashedMatch(field, name)
  let matched = false
  for (const pattern of field.split(',')) {
    if (pattern.startsWith('!')) {
      if (globMatch(pattern.slice(1), name)) return false
    } else if (globMatch(pattern, name)) {
      matched = true
    }
  }
  return matched
}

/** known_hosts' text, or '' when the file is missing. */
export async function readKnownHosts (path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return ''
    throw err
  }
}

/**
 * Checks the server's host key `key` (its wire blob) for `host`:`port`
 * against known_hosts' `text`; `accepted` is the fingerprint the user
 * accepted, if any. Returns nothing when the key is to be trusted; throws
 * HOST_KEY_UNKNOWN or HOST_KEY_CHANGED saying how to accept it otherwise.
 */
export function checkHostKey (text: string, host: string, port: number, key: Buffer, accepted: string | undefined, knownHostsPath: string): void {
  const name = port === 22 ? host : `[${host}]:${port}`
  const blob = key.toString('base64')
  const print = fingerprint(key)
  let known = false
  let trusted = false
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    const fields = line.split(/\s+/)
    const marker = fields[0]?.startsWith('@') === true ? fields.shift() : undefined
    const [hosts, , keyBlob] = fields
    if (hosts === undefined || keyBlob === undefined || !hostsMatch(hosts, name)) continue
    if (marker === '@revoked') {
      if (keyBlob === blob) throw new KithError('HOST_KEY_CHANGED', `the SSH server ${name} offers the host key ${print}, which ${knownHostsPath} marks as revoked; kith won't connect`)
      continue
    }
    if (marker !== undefined) continue
    known = true
    if (keyBlob === blob) trusted = true
  }
  if (trusted || accepted === print) return
  if (known) {
    throw new KithError('HOST_KEY_CHANGED', `the SSH server ${name} offers the host key ${print}, not the one ${knownHostsPath} holds for it: someone may be in the middle, or the server's key was changed. ` +
      `If you know it was changed, remove the old line (ssh-keygen -R '${name}') or accept this key with the option hostKey: "${print}"`)
  }
  throw new KithError('HOST_KEY_UNKNOWN', `the SSH server ${name} is not in ${knownHostsPath}; its host key is ${print}. ` +
    `Check that fingerprint with the server's owner, then accept it with the option hostKey: "${print}" (or connect once with ssh, which adds it to known_hosts)`)
}
