import { describe, it, expect } from 'vitest'
import {
  allocate, activeRule, capAt, checkSchedule, nextChange, parseTime, RateMeter, waterFill,
  DEFAULT_CLASS_WEIGHTS, type Claim
} from '../../src/transfer/scheduler/index.ts'

const at = (h: number, m: number, day = 15): number => new Date(2025, 0, day, h, m).getTime()

describe('time of day', () => {
  it('parses HH:MM and refuses anything else', () => {
    expect(parseTime('00:00')).toBe(0)
    expect(parseTime('7:30')).toBe(450)
    expect(parseTime('23:59')).toBe(1439)
    expect(parseTime('24:00')).toBe(1440)
    for (const bad of ['24:01', '25:00', '12:60', '12', '12:5', 'noon', '']) {
      expect(() => parseTime(bad), bad).toThrow(expect.objectContaining({ code: 'BAD_REQUEST' }))
    }
    expect(() => checkSchedule([{ from: '23:00', to: '07:00', upload: -1 }])).toThrow(expect.objectContaining({ code: 'BAD_REQUEST' }))
    expect(() => checkSchedule({})).toThrow(expect.objectContaining({ code: 'BAD_REQUEST' }))
  })

  it('finds the rule in force, wrapping past midnight, first match winning', () => {
    const rules = [
      { from: '23:00', to: '07:00', upload: Infinity },
      { from: '06:00', to: '09:00', upload: 5 },
      { from: '12:00', to: '12:00', download: 7 }
    ]
    expect(activeRule(rules, at(23, 0))).toBe(0)
    expect(activeRule(rules, at(2, 0))).toBe(0)
    expect(activeRule(rules, at(6, 30))).toBe(0)
    expect(activeRule(rules, at(7, 0))).toBe(1)
    expect(activeRule(rules, at(9, 0))).toBe(2) // all day
    expect(capAt(rules, 100, 'up', at(8, 0))).toBe(5)
    expect(capAt(rules, 100, 'down', at(8, 0))).toBe(100) // rule 1 says nothing about downloads
    expect(capAt(rules, 100, 'up', at(10, 0))).toBe(100)
    expect(capAt(rules.slice(0, 2), 100, 'up', at(10, 0))).toBe(100)
  })

  it('says when the next change comes, tomorrow included', () => {
    const rules = [{ from: '23:00', to: '07:00' }]
    expect(nextChange(rules, at(22, 59))).toBe(at(23, 0))
    expect(nextChange(rules, at(23, 0))).toBe(at(7, 0, 16))
    expect(nextChange(rules, at(3, 0))).toBe(at(7, 0))
    expect(nextChange([], at(3, 0))).toBeUndefined()
    expect(nextChange([{ from: '00:00', to: '24:00' }], at(3, 0))).toBe(at(0, 0, 16))
  })
})

describe('shares (water-filling)', () => {
  it('splits by weight and hands on what a flow does not use', () => {
    expect(waterFill(110, [{ weight: 8, demand: Infinity }, { weight: 2, demand: Infinity }, { weight: 1, demand: Infinity }])).toEqual([80, 20, 10])
    const [a, b, c] = waterFill(110, [{ weight: 8, demand: 30 }, { weight: 2, demand: Infinity }, { weight: 1, demand: Infinity }])
    expect(a).toBe(30)
    expect(b).toBeCloseTo(80 * 2 / 3)
    expect(c).toBeCloseTo(80 / 3)
    expect(waterFill(100, [{ weight: 1, demand: 10 }, { weight: 1, demand: 0 }])).toEqual([10, 0])
    expect(waterFill(Infinity, [{ weight: 1, demand: 10 }, { weight: 1, demand: Infinity }])).toEqual([10, Infinity])
    expect(waterFill(0, [{ weight: 1, demand: 10 }])).toEqual([0])
  })

  it('applies peer caps, then classes, then priorities, then floors', () => {
    const claim = (c: Partial<Claim>): Claim => ({ weight: 8, class: 'friend', peer: undefined, demand: Infinity, reserved: 0, ...c })
    const noPeerCaps = (): number => Infinity
    // classes 8:1, and inside the friend class 64:8
    const split = allocate(90, [claim({ weight: 64 }), claim({}), claim({ class: 'public' })], DEFAULT_CLASS_WEIGHTS, noPeerCaps)
    expect(split[0]).toBeCloseTo(80 * 64 / 72)
    expect(split[1]).toBeCloseTo(80 * 8 / 72)
    expect(split[2]).toBeCloseTo(10)
    // a peer capped at 5 leaves the rest to the other friend
    expect(allocate(90, [claim({ peer: 'p' }), claim({}), claim({ class: 'public' })], DEFAULT_CLASS_WEIGHTS, p => p === 'p' ? 5 : Infinity))
      .toEqual([5, 75, 10])
    // a floor of 30 for the public flow comes out of the others in proportion
    const rates = allocate(90, [claim({}), claim({ class: 'foaf' }), claim({ class: 'public', reserved: 30 })], DEFAULT_CLASS_WEIGHTS, noPeerCaps)
    expect(rates[2]).toBeCloseTo(30)
    expect(rates[0]! / rates[1]!).toBeCloseTo(4)
    expect(rates[0]! + rates[1]! + rates[2]!).toBeCloseTo(90)
  })
})

describe('rate meter', () => {
  it('measures over a sliding window and forgets what is older', () => {
    const meter = new RateMeter(1000, 10)
    expect(meter.rate(0)).toBe(0)
    for (let t = 0; t < 3000; t += 10) meter.add(1000, t) // 100 kB/s
    expect(meter.rate(3000)).toBeCloseTo(100_000, -3)
    expect(meter.total).toBe(300_000)
    expect(meter.rate(4500)).toBe(0)
    expect(meter.idle(4500)).toBe(true)
    // a young meter divides by its age, not the whole window
    const young = new RateMeter(1000, 10)
    young.add(5000, 0)
    young.add(5000, 400)
    expect(young.rate(500)).toBeCloseTo(20_000, -3)
  })
})
