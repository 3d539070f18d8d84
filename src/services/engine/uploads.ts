import type { BandwidthScheduler, Flow, TrafficClass } from '../../transfer/scheduler/index.ts'

/**
 * What the node serves over the chunk protocol goes through one upload flow
 * per peer, in the class the peer's standing gives it. The scheduler only
 * sees the class name; who counts as what is decided here.
 */
export class UploadFlows {
  private readonly flows = new Map<string, Flow>()
  private readonly bandwidth: BandwidthScheduler
  private readonly classOf: (peer: string) => TrafficClass

  constructor (bandwidth: BandwidthScheduler, classOf: (peer: string) => TrafficClass) {
    this.bandwidth = bandwidth
    this.classOf = classOf
  }

  /** The flow what I serve `peer` goes through, made anew if the peer changed class (a revoked friend). */
  of (peer: string): Flow {
    const cls = this.classOf(peer)
    let flow = this.flows.get(peer)
    if (flow === undefined || flow.closed || flow.class !== cls) {
      flow?.close()
      flow = this.bandwidth.flow({ direction: 'up', peer, class: cls })
      this.flows.set(peer, flow)
    }
    return flow
  }

  close (): void {
    for (const flow of this.flows.values()) flow.close()
    this.flows.clear()
  }
}
