import { z } from 'zod'
import { isSafeText, SAFE_TEXT_RULE } from './text.ts'

/** A zod string of `min` to `max` UTF-16 units of safe text (the rule: text.ts). */
export function safeText (max: number, min = 0): z.ZodType<string> {
  return z.string().min(min).max(max).refine(isSafeText, SAFE_TEXT_RULE)
}
