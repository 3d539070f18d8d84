import { KithError } from '../../errors.ts'
import type { Direction, Rate, ScheduleRule } from './types.ts'

/**
 * Time-of-day rules: which one holds at a wall-clock time, and when the next
 * change comes. Times are local ('23:00' is 11 pm where the node runs).
 */

const TIME = /^([01]?\d|2[0-4]):([0-5]\d)$/

/** 'HH:MM' as minutes after midnight (0..1440). */
export function parseTime (text: string): number {
  const match = typeof text === 'string' ? TIME.exec(text) : null
  const minutes = match === null ? NaN : Number(match[1]) * 60 + Number(match[2])
  if (!(minutes <= 1440)) throw new KithError('BAD_REQUEST', `a schedule time is HH:MM between 00:00 and 24:00, not ${JSON.stringify(text)}`)
  return minutes
}

export function checkRate (value: unknown, what: string): Rate {
  if (typeof value !== 'number' || Number.isNaN(value) || value < 0) {
    throw new KithError('BAD_REQUEST', `${what} is a rate in bytes per second (0 or more, Infinity for no limit), not ${JSON.stringify(value)}`)
  }
  return value
}

/** Checks rules and returns copies; throws BAD_REQUEST naming the bad one. */
export function checkSchedule (rules: unknown): ScheduleRule[] {
  if (!Array.isArray(rules)) throw new KithError('BAD_REQUEST', 'a schedule is a list of rules')
  return rules.map((rule: Partial<ScheduleRule>, i) => {
    if (rule == null || typeof rule !== 'object') throw new KithError('BAD_REQUEST', `schedule rule ${i + 1} is not an object`)
    parseTime(rule.from!)
    parseTime(rule.to!)
    const out: ScheduleRule = { from: rule.from!, to: rule.to! }
    if (rule.upload !== undefined) out.upload = checkRate(rule.upload, `schedule rule ${i + 1} upload`)
    if (rule.download !== undefined) out.download = checkRate(rule.download, `schedule rule ${i + 1} download`)
    return out
  })
}

/** Minutes after local midnight, with fractions. */
export function minuteOfDay (wallMs: number): number {
  const d = new Date(wallMs)
  return d.getHours() * 60 + d.getMinutes() + d.getSeconds() / 60 + d.getMilliseconds() / 60_000
}

export function ruleHolds (rule: ScheduleRule, minute: number): boolean {
  const from = parseTime(rule.from) % 1440
  const to = parseTime(rule.to) % 1440
  if (from === to) return true
  return from < to ? minute >= from && minute < to : minute >= from || minute < to
}

/** Index of the first rule holding at `wallMs`, or -1. */
export function activeRule (rules: readonly ScheduleRule[], wallMs: number): number {
  const minute = minuteOfDay(wallMs)
  return rules.findIndex(rule => ruleHolds(rule, minute))
}

/** The global cap for `direction` at `wallMs`: the first holding rule's, else the base. */
export function capAt (rules: readonly ScheduleRule[], base: Rate, direction: Direction, wallMs: number): Rate {
  const i = activeRule(rules, wallMs)
  if (i < 0) return base
  const rule = rules[i]!
  return (direction === 'up' ? rule.upload : rule.download) ?? base
}

/** Wall-clock ms of the next rule edge strictly after `wallMs`, or undefined without rules. */
export function nextChange (rules: readonly ScheduleRule[], wallMs: number): number | undefined {
  const d = new Date(wallMs)
  let best: number | undefined
  for (const rule of rules) {
    for (const edge of [parseTime(rule.from), parseTime(rule.to)]) {
      // local midnight plus the edge's minutes; Date carries over DST and month ends
      for (let day = 0; day <= 1; day++) {
        const at = new Date(d.getFullYear(), d.getMonth(), d.getDate() + day, 0, edge).getTime()
        if (at > wallMs) {
          if (best === undefined || at < best) best = at
          break
        }
      }
    }
  }
  return best
}
