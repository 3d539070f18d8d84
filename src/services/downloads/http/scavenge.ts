/**
 * Frees the response bodies' buffers as fast as they are used up.
 *
 * Every read from a socket is a fresh 64 KiB buffer, and V8 frees one only
 * when a scavenge (a young-generation collection) finds its small JavaScript
 * wrapper dead. Few JavaScript objects are made per buffer, so the young
 * generation fills slowly and scavenges are rare: between two of them 60-90
 * MB of dead buffers waited (measured, 1 GiB from nginx on 8 connections:
 * arrayBuffers peaked at 64-89 MB, resident memory at 170-190 MB, for a
 * process that holds a few MB of live data). Scavenging every
 * SCAVENGE_EVERY bytes received keeps them at ~8 MB and, the same memory
 * being reused while it is still in the CPU's caches, costs less CPU than it
 * saves (the same download: 2.7 -> 1.8 s of CPU per GiB). A scavenge of the
 * daemon's small young generation takes well under a millisecond.
 *
 * It needs `gc` (the daemon starts with --expose-gc, src/services/daemon-heap.ts);
 * without it this does nothing.
 */
export const SCAVENGE_EVERY = 8 * 1024 * 1024

type Gc = (options: { type: 'minor', execution: 'sync' }) => void
const gc = (globalThis as { gc?: Gc }).gc
let since = 0

/** Counts `bytes` of response body received by this process; scavenges every SCAVENGE_EVERY. */
export function bodyReceived (bytes: number): void {
  since += bytes
  if (since < SCAVENGE_EVERY) return
  since = 0
  gc?.({ type: 'minor', execution: 'sync' })
}
