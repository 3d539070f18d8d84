import type { Sublevel } from '../../peer/database.ts'

/**
 * What friend services keep in LevelDB, mirrored in memory (a personal node
 * exposes and connects to a handful): the services I expose, each with the
 * friends granted it, and the local ports I keep for friends' services.
 * Both survive restarts; a port is the one first given (or chosen), kept
 * until `kith disconnect`.
 */
export interface Exposed {
  name: string
  host: string
  port: number
  description: string
  /** peer ids of the friends granted this service (its per-service grant) */
  to: string[]
  /** ms since epoch */
  created: number
}

export interface Connect {
  /** the friend's peer id */
  peer: string
  service: string
  /** the local port on 127.0.0.1 */
  port: number
  created: number
}

export class Book<V> {
  private readonly level: Sublevel<V>
  private readonly byKey = new Map<string, V>()

  constructor (level: Sublevel<V>) {
    this.level = level
  }

  async load (): Promise<void> {
    for await (const [key, value] of this.level.iterator()) this.byKey.set(key, value)
  }

  get (key: string): V | undefined {
    return this.byKey.get(key)
  }

  list (): V[] {
    return [...this.byKey.values()]
  }

  get size (): number {
    return this.byKey.size
  }

  async put (key: string, value: V): Promise<void> {
    await this.level.put(key, value)
    this.byKey.set(key, value)
  }

  async delete (key: string): Promise<void> {
    await this.level.del(key)
    this.byKey.delete(key)
  }
}

export function connectKey (peer: string, service: string): string {
  return `${peer}/${service}`
}
