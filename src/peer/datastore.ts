import type { Libp2pInit } from 'libp2p'
import { peerIdFromString } from '@libp2p/peer-id'
import { KithError } from '../errors.ts'
import { dhtRecordKey } from './address-record.ts'

/**
 * The libp2p node's datastore: in memory, like libp2p's default, holding the
 * peer store and kad-dht's records, with kad-dht's share of it bounded.
 * kad-dht stores whatever a DHT peer PUTs (once its validator accepts it) and
 * every provider record an ADD_PROVIDER names, with no limit; a friend could
 * fill my memory with either. Here:
 *
 * - DHT records (`/dht/record/...`): at most MAX_DHT_RECORDS of them and
 *   MAX_DHT_RECORD_BYTES in all; a record replacing one under the same key
 *   always fits if its size does. Which records are taken at all is the
 *   validator's business (address records of my friends and me only, see
 *   `dhtRecordRules` and src/services/locate).
 * - Provider records (`/dht/provider/...`): refused. kith never provides
 *   content through the DHT.
 * - `dropRecord(peerId)` forgets the address record of a peer (a friend
 *   revoked), which kad-dht has no call for.
 *
 * Over a limit, `put` throws DHT_STORE_FULL; kad-dht answers the PUT with an
 * error and stores nothing.
 */
export const MAX_DHT_RECORDS = 512
export const MAX_DHT_RECORD_BYTES = 4 * 1024 * 1024
/** kad-dht's layout under its default prefix `/dht` (pinned with libp2p; test/services/locate/dht.spec.ts checks it). */
const RECORD_PREFIX = '/dht/record/'
const PROVIDER_PREFIX = '/dht/provider/'

type Datastore = NonNullable<Libp2pInit['datastore']>
type Key = Parameters<Datastore['put']>[0]
type Query = Parameters<Datastore['query']>[0]
type KeyQuery = Parameters<Datastore['queryKeys']>[0]
type Options = Parameters<Datastore['get']>[1]
interface Pair { key: Key, value: Uint8Array }

class NotFoundError extends Error {
  override name = 'NotFoundError' // what libp2p and kad-dht look for
}

export interface NodeDatastoreInit {
  /** @default MAX_DHT_RECORDS */
  maxRecords?: number
  /** @default MAX_DHT_RECORD_BYTES */
  maxRecordBytes?: number
}

export class NodeDatastore implements Datastore {
  private readonly data = new Map<string, Pair>()
  private readonly maxRecords: number
  private readonly maxRecordBytes: number
  private records = 0
  private recordBytes = 0

  constructor (init: NodeDatastoreInit = {}) {
    this.maxRecords = init.maxRecords ?? MAX_DHT_RECORDS
    this.maxRecordBytes = init.maxRecordBytes ?? MAX_DHT_RECORD_BYTES
  }

  put (key: Key, value: Uint8Array, options?: Options): Key {
    options?.signal?.throwIfAborted()
    const id = key.toString()
    if (id.startsWith(PROVIDER_PREFIX)) throw new KithError('DHT_STORE_FULL', 'this node keeps no DHT provider records')
    if (id.startsWith(RECORD_PREFIX)) {
      const previous = this.data.get(id)
      const count = this.records + (previous == null ? 1 : 0)
      const bytes = this.recordBytes - (previous?.value.length ?? 0) + value.length
      if (count > this.maxRecords || bytes > this.maxRecordBytes) {
        throw new KithError('DHT_STORE_FULL', `this node holds ${this.maxRecords} DHT records or ${this.maxRecordBytes} bytes of them at most`)
      }
      this.records = count
      this.recordBytes = bytes
    }
    this.data.set(id, { key, value })
    return key
  }

  get (key: Key, options?: Options): Uint8Array {
    options?.signal?.throwIfAborted()
    const pair = this.data.get(key.toString())
    if (pair == null) throw new NotFoundError(`${key.toString()} is not stored`)
    return pair.value
  }

  has (key: Key, options?: Options): boolean {
    options?.signal?.throwIfAborted()
    return this.data.has(key.toString())
  }

  delete (key: Key, options?: Options): void {
    options?.signal?.throwIfAborted()
    this.remove(key.toString())
  }

  /** Forgets the DHT address record of `peerId`, if held. */
  dropRecord (peerId: string): boolean {
    const key = dhtRecordKey(peerIdFromString(peerId).toMultihash().bytes)
    return this.remove(RECORD_PREFIX + base32(key))
  }

  /** DHT records held now: how many, and their bytes. */
  get recordUsage (): { records: number, bytes: number } {
    return { records: this.records, bytes: this.recordBytes }
  }

  async * putMany (source: AsyncIterable<Pair> | Iterable<Pair>, options?: Options): AsyncGenerator<Key> {
    for await (const { key, value } of source) yield this.put(key, value, options)
  }

  async * getMany (source: AsyncIterable<Key> | Iterable<Key>, options?: Options): AsyncGenerator<Pair> {
    for await (const key of source) yield { key, value: this.get(key, options) }
  }

  async * deleteMany (source: AsyncIterable<Key> | Iterable<Key>, options?: Options): AsyncGenerator<Key> {
    for await (const key of source) {
      this.delete(key, options)
      yield key
    }
  }

  batch (): ReturnType<Datastore['batch']> {
    const puts: Pair[] = []
    const deletes: Key[] = []
    return {
      put: (key, value) => { puts.push({ key, value }) },
      delete: (key) => { deletes.push(key) },
      commit: (options) => {
        for (const { key, value } of puts.splice(0)) this.put(key, value, options)
        for (const key of deletes.splice(0)) this.delete(key, options)
      }
    }
  }

  * query (query: Query, options?: Options): Generator<Pair> {
    options?.signal?.throwIfAborted()
    yield * select([...this.data.values()], p => p.key.toString(), query)
  }

  * queryKeys (query: KeyQuery, options?: Options): Generator<Key> {
    options?.signal?.throwIfAborted()
    yield * select([...this.data.values()].map(p => p.key), k => k.toString(), query)
  }

  private remove (id: string): boolean {
    const previous = this.data.get(id)
    if (previous == null) return false
    this.data.delete(id)
    if (id.startsWith(RECORD_PREFIX)) {
      this.records--
      this.recordBytes -= previous.value.length
    }
    return true
  }
}

/** A query over a snapshot, in datastore-core's order: prefix, filters, orders, offset, limit. */
function select<T> (items: T[], name: (item: T) => string, query: { prefix?: string, filters?: Array<(item: T) => boolean>, orders?: Array<(a: T, b: T) => -1 | 0 | 1>, offset?: number, limit?: number }): T[] {
  let out = query.prefix != null ? items.filter(i => name(i).startsWith(query.prefix!)) : items
  for (const f of query.filters ?? []) out = out.filter(f)
  for (const order of query.orders ?? []) out = out.sort(order)
  if (query.offset != null) out = out.slice(query.offset)
  if (query.limit != null) out = out.slice(0, query.limit)
  return out
}

/** RFC 4648 base32, lower case, unpadded: how kad-dht names a record's key in the datastore. */
function base32 (bytes: Uint8Array): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz234567'
  let out = ''
  let bits = 0
  let value = 0
  for (const byte of bytes) {
    value = ((value << 8) | byte) & 0xffff
    bits += 8
    while (bits >= 5) {
      out += alphabet[(value >>> (bits - 5)) & 31]
      bits -= 5
    }
  }
  if (bits > 0) out += alphabet[(value << (5 - bits)) & 31]
  return out
}
