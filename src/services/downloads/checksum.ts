import { KithError } from '../../errors.ts'

/** 'sha256:' and 64 hex digits: the one checksum form downloads take. Light: the thin CLI checks with it too. */
const CHECKSUM = /^sha256:([0-9a-fA-F]{64})$/

/** The hex digest (lower case) of a checksum as asked for ('sha256:HEX'); BAD_REQUEST otherwise. */
export function parseChecksum (text: string): string {
  const match = CHECKSUM.exec(text)
  if (match == null) throw new KithError('BAD_REQUEST', `a checksum is sha256: and 64 hex digits, like sha256:${'0'.repeat(64)}; got ${JSON.stringify(text.slice(0, 100))}`)
  return match[1]!.toLowerCase()
}
