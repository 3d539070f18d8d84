import { MovingAverage } from '@libp2p/utils'

/**
 * libp2p's adaptive timeouts survive the wall clock stepping back.
 *
 * @libp2p/utils 7.4.1's `MovingAverage`, under every `AdaptiveTimeout`
 * (libp2p's connection monitor, kad-dht's queries and its reprovider),
 * weighs each sample by the wall-clock time since the one before:
 * alpha = 1 - exp(-(now - previous) / span), with `Date.now()`. When the
 * clock steps back by more than about 59 minutes between two samples (NTP
 * correcting a machine whose clock was an hour fast, a user setting the
 * date), alpha is -Infinity and the average NaN, and it stays NaN:
 * `AbortSignal.timeout(NaN)` then throws at every use, so the connection
 * monitor aborted every connection at each heartbeat (every 10 s) and every
 * DHT query failed, for as long as the daemon ran. Shorter steps back threw
 * the average far off (alpha hugely negative).
 *
 * This counts a step back as no time passed: alpha 0, the sample leaves
 * the average as it was, and the next sample is weighed from the new clock.
 * A step forward was always harmless (alpha 1: the sample becomes the
 * average, within the timeouts' bounds).
 *
 * test/peer/clock-steps.spec.ts fails if a node's connection monitor stops
 * timing pings with this class, if this stops applying, or the day libp2p
 * no longer needs it.
 */
const wallClockAlpha = MovingAverage.prototype.alpha

function steady (this: MovingAverage, t: number, pt: number): number {
  return wallClockAlpha.call(this, Math.max(t, pt), pt)
}

/** Installs the rule on every moving average of this process (src/peer/node.ts does, once); `false` restores libp2p's own. */
export function averagesIgnoreClockSteps (on = true): void {
  MovingAverage.prototype.alpha = on ? steady : wallClockAlpha
}
