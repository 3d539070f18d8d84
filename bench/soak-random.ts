/**
 * The soak run's dice: a small seeded generator (mulberry32), so that a run's
 * choices can be replayed from its printed seed. Not for anything secret.
 */
export class Random {
  readonly seed: number
  private state: number

  constructor (seed: number) {
    this.seed = seed >>> 0
    this.state = this.seed
  }

  /** uniform in [0, 1) */
  next (): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0
    let t = this.state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }

  /** an integer in [lo, hi] */
  int (lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1))
  }

  chance (p: number): boolean {
    return this.next() < p
  }

  pick<T> (items: readonly T[]): T {
    if (items.length === 0) throw new Error('nothing to pick from')
    return items[Math.floor(this.next() * items.length)]!
  }

  /** one of the keys, each as likely as its weight */
  weighted<K extends string> (weights: ReadonlyArray<[K, number]>): K {
    const total = weights.reduce((sum, [, w]) => sum + w, 0)
    let roll = this.next() * total
    for (const [key, w] of weights) {
      roll -= w
      if (roll < 0) return key
    }
    return weights[weights.length - 1]![0]
  }
}

/** SOAK_SEED as given, or a fresh one to print. */
export function seedFrom (raw: string | undefined): number {
  if (raw == null || raw === '') return Math.floor(Math.random() * 2 ** 32)
  const seed = Number(raw)
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) throw new Error(`SOAK_SEED wants an integer from 0 to 2^32-1; got ${JSON.stringify(raw)}`)
  return seed
}
