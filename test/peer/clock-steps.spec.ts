import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { AdaptiveTimeout, MovingAverage, type AdaptiveTimeoutSignal } from '@libp2p/utils'
import { createNode, type KithLibp2p } from '../../src/peer/node.ts'
import { averagesIgnoreClockSteps } from '../../src/peer/clock-steps.ts'

/**
 * src/peer/clock-steps.ts: a wall clock stepped back by an hour leaves the
 * timeouts of a node's connection monitor and DHT sane. Without the rule the
 * monitor's average went NaN and every heartbeat threw, aborting every
 * connection every 10 s for as long as the daemon ran.
 * The first test fails if the monitor or the DHT stop timing with
 * @libp2p/utils's AdaptiveTimeout, the last the day libp2p no longer needs
 * the rule.
 */

const HOUR = 3600_000

/** The fields of AdaptiveTimeout (private in its types) the checks read */
interface Timed { next: unknown, success: unknown }

let node: KithLibp2p

function monitorTimeout (): AdaptiveTimeout {
  return (node as unknown as { components: { connectionMonitor?: { timeout?: AdaptiveTimeout } } }).components.connectionMonitor?.timeout as AdaptiveTimeout
}

/** A ping timed on a clock an hour fast, then one after the clock is stepped back to the right time; the timeout asked for next. */
function pingsAcrossStepBack (timeout: AdaptiveTimeout): AdaptiveTimeoutSignal {
  const real = Date.now.bind(Date)
  const spy = vi.spyOn(Date, 'now').mockImplementation(() => real() + HOUR)
  try {
    timeout.cleanUp(timeout.getTimeoutSignal())
  } finally {
    spy.mockRestore()
  }
  timeout.cleanUp(timeout.getTimeoutSignal())
  return timeout.getTimeoutSignal()
}

describe('clock steps', () => {
  beforeAll(async () => {
    node = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], gater: {} })
  })
  afterEach(() => { averagesIgnoreClockSteps(true) })
  afterAll(async () => { await node?.stop() })

  it("a node's connection monitor and DHT time with @libp2p/utils's AdaptiveTimeout, whose averages the rule governs", () => {
    const monitor = monitorTimeout()
    expect(monitor, 'the connection monitor no longer has an AdaptiveTimeout `timeout`: check whether clock-steps.ts still applies').toBeInstanceOf(AdaptiveTimeout)
    expect((monitor as unknown as Timed).next).toBeInstanceOf(MovingAverage)
    const dht = (node.services.dht as unknown as { network?: { timeout?: unknown } }).network?.timeout
    expect(dht, "kad-dht's network no longer has an AdaptiveTimeout `timeout`: check whether clock-steps.ts still applies").toBeInstanceOf(AdaptiveTimeout)
  })

  it("the monitor's ping timeout stays within its bounds after the wall clock steps back an hour", () => {
    const signal = pingsAcrossStepBack(monitorTimeout())
    try {
      expect(Number.isFinite(signal.timeout)).toBe(true)
      expect(signal.timeout).toBeGreaterThanOrEqual(5_000)
      expect(signal.timeout).toBeLessThanOrEqual(60_000)
      expect(signal.aborted).toBe(false)
    } finally {
      signal.clear()
    }
  })

  it('without the rule, a step back still poisons an AdaptiveTimeout (the day this fails, libp2p fixed it: remove clock-steps.ts)', () => {
    averagesIgnoreClockSteps(false)
    const timeout = new AdaptiveTimeout()
    expect(() => pingsAcrossStepBack(timeout)).toThrow(/delay|out of range/i)
    expect(Number.isNaN(((timeout as unknown as Timed).next as MovingAverage).movingAverage)).toBe(true)
  })
})
