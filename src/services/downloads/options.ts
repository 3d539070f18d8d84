/**
 * Reading an add-on's options (`options` of POST /v1/downloads, as given):
 * each is checked for its type, and an option the add-on does not know is
 * refused, so a typo does not go unnoticed. URL_INVALID names the option.
 */
import { KithError } from '../../errors.ts'

export class AddonOptions {
  readonly #options: Readonly<Record<string, unknown>>
  readonly #scheme: string

  /** Refuses any option not in `known`. */
  constructor (scheme: string, options: Readonly<Record<string, unknown>>, known: readonly string[]) {
    this.#options = options
    this.#scheme = scheme
    const unknown = Object.keys(options).filter(key => !known.includes(key))
    if (unknown.length > 0) {
      throw new KithError('URL_INVALID', `the ${scheme} add-on has no option ${unknown.map(k => JSON.stringify(k)).join(', ')}; it takes ${known.length === 0 ? 'none' : known.join(', ')} (docs/downloads.md)`)
    }
  }

  string (name: string): string | undefined {
    const value = this.#options[name]
    if (value === undefined) return undefined
    if (typeof value !== 'string' || value === '') throw this.#bad(name, 'a non-empty string')
    return value
  }

  boolean (name: string): boolean | undefined {
    const value = this.#options[name]
    if (value === undefined) return undefined
    if (typeof value !== 'boolean') throw this.#bad(name, 'true or false')
    return value
  }

  /** an integer from `min` to `max` */
  integer (name: string, min: number, max: number): number | undefined {
    const value = this.#options[name]
    if (value === undefined) return undefined
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) throw this.#bad(name, `an integer from ${min} to ${max}`)
    return value
  }

  #bad (name: string, what: string): KithError {
    return new KithError('URL_INVALID', `the ${this.#scheme} option ${name} must be ${what}`)
  }
}

/** The URL's user name and password, percent-decoded ('' when absent). */
export function userInfo (url: URL): { user: string, password: string } {
  try {
    return { user: decodeURIComponent(url.username), password: decodeURIComponent(url.password) }
  } catch {
    throw new KithError('URL_INVALID', 'the user name or password in the URL has a percent-escape that does not decode')
  }
}

/** The URL's path, percent-decoded; URL_INVALID when it does not decode. */
export function decodedPath (url: URL): string {
  try {
    return decodeURIComponent(url.pathname)
  } catch {
    throw new KithError('URL_INVALID', `the path of ${url.protocol}//${url.host}${url.pathname} has a percent-escape that does not decode`)
  }
}

/** The URL must name a host. */
export function needHost (url: URL): void {
  if (url.hostname === '') throw new KithError('URL_INVALID', `a ${url.protocol}// URL names a host, like ${url.protocol}//example.org/path`)
}
