import { KithError, type ErrorCode } from '../../src/errors.ts'

/** What a parser made of an input: 'ok', or the code of the KithError it threw (anything else is rethrown, failing the test). */
export function codeOf (fn: () => unknown): ErrorCode | 'ok' {
  try {
    fn()
    return 'ok'
  } catch (err) {
    if (!(err instanceof KithError)) throw err
    return err.code
  }
}
