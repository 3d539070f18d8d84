import type { Rate, TrafficClass } from './types.ts'
import { TRAFFIC_CLASSES } from './types.ts'

/**
 * The rates the scheduler is expected to give each flow: the same policy as
 * the dispatcher (per-peer caps, then classes by weight, then flows by
 * priority weight, then floors), computed as weighted max-min fair shares
 * (water-filling) instead of by running it. Used for ETAs and stats.
 */

export interface Claim {
  /** weighted share inside its class */
  weight: number
  class: TrafficClass
  /** the peer whose cap applies, if any */
  peer: string | undefined
  /** what it would take if given all: Infinity when it waits for bandwidth, else its measured rate */
  demand: Rate
  /** rate reserved for its floor */
  reserved: Rate
}

/**
 * Weighted max-min fair split of `capacity`: each item gets at most its
 * demand, and what one can't use goes to the others by weight.
 */
export function waterFill (capacity: Rate, items: ReadonlyArray<{ weight: number, demand: Rate }>): Rate[] {
  const alloc = items.map(() => 0)
  if (!(capacity > 0)) return alloc
  if (capacity === Infinity) return items.map(item => item.weight > 0 ? item.demand : 0)
  let open = items.map((_, i) => i).filter(i => items[i]!.weight > 0 && items[i]!.demand > 0)
  let left = capacity
  while (open.length > 0 && left > 0) {
    const weights = open.reduce((sum, i) => sum + items[i]!.weight, 0)
    const fair = left / weights
    const satisfied = open.filter(i => items[i]!.demand <= fair * items[i]!.weight)
    if (satisfied.length === 0) {
      for (const i of open) alloc[i] = fair * items[i]!.weight
      break
    }
    for (const i of satisfied) {
      alloc[i] = items[i]!.demand
      left -= items[i]!.demand
    }
    open = open.filter(i => !satisfied.includes(i))
  }
  return alloc
}

/**
 * Expected rates for `claims` under a global `cap`, per-peer caps
 * (`peerCap(peer)`, Infinity for none) and class weights.
 */
export function allocate (cap: Rate, claims: readonly Claim[], classWeights: Readonly<Record<TrafficClass, number>>, peerCap: (peer: string) => Rate): Rate[] {
  // 1. per-peer caps bound what each flow can take, split among that peer's flows
  const demand = claims.map(c => c.demand)
  const byPeer = new Map<string, number[]>()
  claims.forEach((c, i) => {
    if (c.peer !== undefined && Number.isFinite(peerCap(c.peer))) {
      let list = byPeer.get(c.peer)
      if (list === undefined) byPeer.set(c.peer, list = [])
      list.push(i)
    }
  })
  for (const [peer, list] of byPeer) {
    const split = waterFill(peerCap(peer), list.map(i => ({ weight: classWeights[claims[i]!.class] * claims[i]!.weight, demand: demand[i]! })))
    list.forEach((i, k) => { demand[i] = split[k]! })
  }
  // 2. classes by weight, each wanting what its flows want
  const members = TRAFFIC_CLASSES.map(cls => claims.map((c, i) => c.class === cls ? i : -1).filter(i => i >= 0))
  const classDemand = members.map(list => list.reduce((sum, i) => sum + demand[i]!, 0))
  const classAlloc = waterFill(cap, TRAFFIC_CLASSES.map((cls, k) => ({ weight: classWeights[cls], demand: classDemand[k]! })))
  // 3. flows by priority weight within their class
  const rates = claims.map(() => 0)
  members.forEach((list, k) => {
    const split = waterFill(classAlloc[k]!, list.map(i => ({ weight: claims[i]!.weight, demand: demand[i]! })))
    list.forEach((i, j) => { rates[i] = split[j]! })
  })
  // 4. floors: a flow under its reservation is raised to it, at the expense of flows above theirs
  if (Number.isFinite(cap)) {
    let deficit = 0
    claims.forEach((c, i) => {
      const want = Math.min(c.reserved, demand[i]!)
      if (rates[i]! < want) {
        deficit += want - rates[i]!
        rates[i] = want
      }
    })
    if (deficit > 0) {
      const spare = claims.map((c, i) => Math.max(0, rates[i]! - c.reserved))
      const total = spare.reduce((a, b) => a + b, 0)
      if (total > 0) {
        const cut = Math.min(1, deficit / total)
        claims.forEach((_, i) => { rates[i] = rates[i]! - spare[i]! * cut })
      }
    }
  }
  return rates
}
