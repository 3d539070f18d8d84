import { expect } from 'vitest'

/**
 * Byte arrays of one class compare by their bytes at native speed in
 * toEqual and toStrictEqual. Vitest's own equality walks a typed array
 * through Object.keys, one string per byte: about 400 ms of CPU a MiB,
 * seconds of a unit run where specs compare files and chunks. The verdict
 * is the same: equal when the bytes are (a Buffer and a Uint8Array, whose
 * classes differ, still go to vitest's own rules), save that properties set
 * on an array beside its bytes, which no spec compares, are not looked at.
 * The failure message is vitest's, with its diff.
 *
 * A setup file (vitest.config.ts); the unit project runs its files in one
 * module cache, so the tester is added once per worker.
 */
const ADDED = Symbol.for('kith.test.byteEquality')

function sameBytes (a: unknown, b: unknown): boolean | undefined {
  if (!(a instanceof Uint8Array) || !(b instanceof Uint8Array) || a.constructor !== b.constructor) return undefined
  return Buffer.compare(a, b) === 0
}

const global = globalThis as { [ADDED]?: true }
if (global[ADDED] !== true) {
  expect.addEqualityTesters([sameBytes])
  global[ADDED] = true
}
