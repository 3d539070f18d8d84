/**
 * The bandwidth scheduler: global, per-peer and time-of-day caps; classes
 * (friend > friend of a friend > public) sharing by weight; per-flow
 * priorities and floors; rates and ETAs from the scheduler's view.
 * See docs/scheduler.md.
 *
 *   const bandwidth = new BandwidthScheduler({ limits: { upload: 10e6 } })
 *   const flow = bandwidth.flow({ direction: 'up', peer, class: 'friend' })
 *   await flow.take(bytes, signal)   // then send them
 *   bandwidth.eta(flow, bytesLeft)   // seconds, from its share of the caps
 *   flow.close()
 */
export { BandwidthScheduler, type Flow, type SchedulerInit } from './scheduler.ts'
export { ManualClock } from './manual-clock.ts'
export { RateMeter } from './rate-meter.ts'
export { allocate, waterFill, type Claim } from './share.ts'
export { activeRule, capAt, checkSchedule, nextChange, parseTime } from './time-of-day.ts'
export * from './constants.ts'
export * from './types.ts'
