import { performance, type EventLoopUtilization } from 'node:perf_hooks'
import { MIN_PIECE, PIECE_BUSY, PIECE_WAIT_SHARE } from './constants.ts'

/**
 * Whether one connection's requests wait long against their pieces' flow,
 * so larger pieces would pay (constants.ts, PIECE_WAIT_SHARE). The wait
 * counted is the quickest answer of the connection's requests after its
 * first (that one waited for the connection too); and none counts while the
 * event loop was busy over the piece: then the answers waited for the
 * process, not for the network, and fewer requests would not make it faster.
 */
export class PieceTiming {
  private requests = 0
  private quickest = Infinity
  private asked = 0
  private answered = 0
  private loop: EventLoopUtilization | null = null

  /** a request goes out */
  ask (): void {
    this.asked = performance.now()
    this.loop = performance.eventLoopUtilization()
  }

  /** its response's headers came */
  answer (): void {
    this.answered = performance.now()
  }

  /** Its body ended after `bytes`: true when the pieces should be larger. */
  ended (bytes: number): boolean {
    if (++this.requests === 1 || this.loop == null) return false
    this.quickest = Math.min(this.quickest, this.answered - this.asked)
    const busy = performance.eventLoopUtilization(this.loop).utilization
    return bytes >= MIN_PIECE && busy < PIECE_BUSY && this.quickest > (performance.now() - this.answered) * PIECE_WAIT_SHARE
  }
}
