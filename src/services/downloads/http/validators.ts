import type { IncomingHttpHeaders } from 'node:http'

/**
 * What identifies one version of a file at the origin: its ETag and
 * Last-Modified. Ranges of two versions must never be mixed in one file.
 */
export interface Validators {
  etag: string | null
  lastModified: string | null
}

export function validatorsOf (headers: IncomingHttpHeaders): Validators {
  return { etag: one(headers.etag), lastModified: one(headers['last-modified']) }
}

/**
 * The If-Range value: a strong ETag, else Last-Modified (RFC 9110 13.1.5: a
 * weak ETag can't be used there); null when the origin gave neither, and
 * changes are then caught only by a changed size or validators on a 206.
 */
export function ifRangeOf (v: Validators): string | null {
  if (v.etag != null && !v.etag.startsWith('W/')) return v.etag
  return v.lastModified
}

/**
 * Whether a response belongs to the version `known` describes: a validator
 * both carry must be equal (a 206 without validators is taken as the same).
 */
export function sameVersion (known: Validators, seen: Validators): boolean {
  if (known.etag != null && seen.etag != null) return known.etag === seen.etag
  if (known.lastModified != null && seen.lastModified != null) return known.lastModified === seen.lastModified
  return true
}

function one (value: string | string[] | undefined): string | null {
  const v = Array.isArray(value) ? value[0] : value
  return v == null || v === '' ? null : v
}
