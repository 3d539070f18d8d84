import type { AbortOptions, PeerId } from '@libp2p/interface'
import type { KadDHT } from '@libp2p/kad-dht'
import { dhtRecordKey, type AddressRecord } from '../../peer/address-record.ts'

/**
 * The DHT fallback: address records also live in kad-dht under
 * `/kith-addr/<peer id>`, validated by signature and seq on every node (see
 * `dhtRecordRules` in address-record.ts). The DHT speaks only between friends
 * (the gate), so it reaches the friends I share with the peer I look for,
 * including ones that don't grant me `locate`; it is tried after asking
 * friends directly. Everything here is best effort: failures return nothing.
 */

/** Peers in the DHT routing table; a query with none would only wait. */
export function dhtPeers (dht: KadDHT): number {
  return (dht as Partial<{ routingTable: { size: number } }>).routingTable?.size ?? 0
}

/** Puts my record to the DHT peers closest to its key; resolves to how many took it. */
export async function putRecord (dht: KadDHT, peerId: PeerId, record: AddressRecord, options: AbortOptions): Promise<number> {
  let accepted = 0
  try {
    for await (const event of dht.put(dhtRecordKey(peerId.toMultihash().bytes), record.bytes, options)) {
      // the query for the closest peers answers with PEER_RESPONSE too: count only PUT_VALUE answers
      if (event.name === 'PEER_RESPONSE' && event.messageName === 'PUT_VALUE') accepted++
    }
  } catch {}
  return accepted
}

/**
 * Collects the records DHT peers hold for `peerId`. kad-dht has already run
 * the validator on each; the caller verifies again against what it asked.
 */
export async function getRecords (dht: KadDHT, peerId: PeerId, options: AbortOptions): Promise<Uint8Array[]> {
  const found: Uint8Array[] = []
  try {
    for await (const event of dht.get(dhtRecordKey(peerId.toMultihash().bytes), options)) {
      if (event.name === 'PEER_RESPONSE' && event.messageName === 'GET_VALUE' && event.record != null) found.push(event.record.value)
      else if (event.name === 'VALUE') found.push(event.value)
    }
  } catch {
    // kad-dht throws when the signal fires or a correction fails; keep what arrived
  }
  return found
}
