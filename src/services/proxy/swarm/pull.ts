import type { PeerId } from '@libp2p/interface'
import { KithError } from '../../../errors.ts'
import type { BandwidthScheduler, Priority } from '../../../transfer/scheduler/index.ts'
import { RATE_WINDOW_MS } from '../../../transfer/scheduler/index.ts'
import { CHUNKS_PER_ASK, DEADLINE_LEAD_MS, FLOOR_GRACE_MS, LATE_CHUNK_MS, MAX_LOST_RACES, ORIGIN_REQUESTS_AT_FLOOR, PER_FRIEND_REQUESTS, PROBATION_MS, STALL_MS, WINDOW_CHUNKS } from './constants.ts'
import { deadline, floorDue, friendRun } from './deadline.ts'
import { chunkMatches, chunkSpan, type HashList } from './hash-list.ts'
import { askChunks, type Dialer } from './protocol.ts'

/**
 * The multi-source pull of one proxy request (docs/proxy.md, "The friend
 * swarm"): chunks `from`..`to` of a verified hash list, yielded in order
 * (playback order), each checked against the list before it is used.
 * Friends holding the file each work on the lowest chunks not taken yet,
 * in runs of consecutive chunks asked on one stream (CHUNKS_PER_ASK), two
 * runs at a time; one that sends a wrong chunk or fails is dropped and
 * its chunk goes back for another source. The origin tops up by qos:
 * - qos 0: the origin is one more source at full speed; friends take
 *   what they are fast enough to take.
 * - qos N (a floor): chunks are picked by deadline (deadline.ts). The
 *   client is due its bytes on the floor's schedule, N B/s from
 *   FLOOR_GRACE_MS on (bytes that came early give at most FLOOR_CREDIT_MS
 *   to spare), so each chunk has a deadline. A friend takes the lowest free chunks it
 *   brings by their deadlines (DEADLINE_MARGIN to spare) at the rate it
 *   gave so far, its requests under way counted, and leaves the ones
 *   before them to the origin, which takes the lowest free chunk once its
 *   deadline is within DEADLINE_LEAD_MS (ORIGIN_REQUESTS_AT_FLOOR at
 *   once): the origin fills in below the friends instead of fetching
 *   again what they are about to bring.
 *   Until a friend has brought a chunk, it takes the free chunk with the
 *   most time to spare, one at a time. When the client waits for its
 *   next chunk while what it got in order is under N B/s, the origin
 *   takes that chunk first (a friend on it is raced, unless it would
 *   bring it sooner than the origin takes for a chunk).
 * - qos 1: the origin takes a chunk only when nothing at all came for
 *   STALL_MS (friends stalled).
 * - whatever qos, the origin takes over once no friend is left.
 * A friend with no chunk free to take asks for the chunk the client has
 * waited for LATE_CHUNK_MS at another friend (and the rest of that
 * friend's run): a slow or stalled friend is raced by a faster one, not
 * only by the origin. When the origin is due and no chunk is free, it
 * fetches the chunk the client waits for if a friend is still on it. The
 * first copy to arrive is used, and a request whose chunks all came from
 * others is cancelled. A friend that loses such a race to another friend
 * MAX_LOST_RACES times (that friend's copy of a chunk the client waited
 * LATE_CHUNK_MS for came first) is dropped from the pull, as a failing
 * one is (never the last friend left): a slow friend is not raced again
 * for every run. A friend dropped as slow is on probation: after a
 * cooldown (PROBATION_MS, doubled at each drop) it is let back for one
 * chunk at a time; one that comes from it first readmits it in full,
 * a lost race drops it again. A friend that fails stays out. Losing to the
 * origin does not count: with a floor above what friends give, the origin
 * is expected to be faster, and friends still take their share.
 * Origin chunks come under If-Range and are checked against the list too:
 * an origin that changed its file mid-way is never mixed in (it is
 * dropped; friends finish, or the pull fails), and an origin chunk of the
 * same version that does not match the list fails the pull (the list was
 * forged, so friends' chunks can't be trusted either).
 */
export interface PullInit {
  list: HashList
  /** first and last chunk, inclusive */
  from: number
  to: number
  /** friends holding the file under validators the origin matches */
  friends: PeerId[]
  dialer: Dialer
  /** chunk `index` from the origin, through the origin's own flow */
  origin: (index: number, signal: AbortSignal) => Promise<Uint8Array>
  bandwidth: BandwidthScheduler
  qos: number
  priority: Priority
  /** chunks already in hand (the origin sample) */
  have?: Map<number, Uint8Array>
  signal: AbortSignal
  /** told of every verified chunk: who it came from */
  onChunk?: (from: 'friend' | 'origin', bytes: number) => void
  /** how long the client waits for a chunk at one friend before it is late (raced) @default LATE_CHUNK_MS */
  lateMs?: number
  /** how long a friend dropped as slow sits out before its probation, the first time @default PROBATION_MS */
  probationMs?: number
}

/** One `chunks` request to a friend under way: its run, the next chunk it brings and since when, and its cancel. */
interface Ask {
  run: number[]
  at: number
  since: number
  stop: AbortController
}

/** A friend in the pull: its requests under way, the races it lost, and its cancel (dropped). */
interface Source {
  asks: Set<Ask>
  lost: number
  stop: AbortController
  /** bytes it brought, and the ms it had a request open before the current stretch (since `busySince`): its rate */
  bytes: number
  busyMs: number
  busySince: number
  /** let back after a drop as slow: one chunk at a time until one comes from it first */
  probation: boolean
  /** how long it sits out when dropped as slow next */
  cooldown: number
}

export async function * pull (init: PullInit): AsyncGenerator<Uint8Array> {
  const run = new Pull(init)
  try {
    yield * run.chunks()
  } finally {
    run.stop()
  }
}

class Pull {
  private readonly init: PullInit
  private readonly stopping = new AbortController()
  private readonly signal: AbortSignal
  /** chunks nobody is fetching, lowest first */
  private readonly todo: number[] = []
  private readonly done = new Map<number, Uint8Array>()
  /** friends still in the pull */
  private readonly alive = new Map<string, Source>()
  /** friends dropped as slow: when they are let back on probation, and the cooldown after that */
  private readonly benched = new Map<string, { until: number, cooldown: number }>()
  /** ms the origin took for its last chunk; null before its first */
  private originMs: number | null = null
  /** chunks friends are fetching now, and which friends */
  private readonly atFriends = new Map<number, Set<string>>()
  /** chunks the origin fetched while a friend was on them too */
  private readonly doubled = new Set<number>()
  /** chunks a second friend fetched while a first was late with them */
  private readonly raced = new Set<number>()
  /** the chunk the client waits for, and since when */
  private waiting = { index: -1, since: 0 }
  /** chunks a source failed: the origin takes them whatever qos says */
  private readonly orphans = new Set<number>()
  private readonly arrivals: Array<[number, number]> = []
  /** bytes given to the client in order, and when */
  private readonly given: Array<[number, number]> = []
  private givenBytes = 0
  private readonly started = performance.now()
  private readonly lateMs: number
  private readonly probationMs: number
  private next: number
  private originOk = true
  private failure: unknown = null
  private wake: () => void = () => {}
  private changed: Promise<void>

  constructor (init: PullInit) {
    this.init = init
    this.signal = AbortSignal.any([init.signal, this.stopping.signal])
    this.next = init.from
    this.lateMs = init.lateMs ?? LATE_CHUNK_MS
    this.probationMs = init.probationMs ?? PROBATION_MS
    for (let i = init.from; i <= init.to; i++) {
      const had = init.have?.get(i)
      if (had != null) this.done.set(i, had)
      else this.todo.push(i)
    }
    this.changed = new Promise(resolve => { this.wake = resolve })
  }

  stop (): void {
    this.stopping.abort(new KithError('FETCH_ABORTED', 'the proxy request ended'))
    this.notify()
  }

  async * chunks (): AsyncGenerator<Uint8Array> {
    const friendFlow = this.init.bandwidth.flow({ direction: 'down', class: 'friend', priority: this.init.priority, label: 'proxy-swarm' })
    const workers: Array<Promise<void>> = []
    for (const peer of this.init.friends) {
      this.alive.set(peer.toString(), this.source(this.probationMs, false))
      for (let n = 0; n < PER_FRIEND_REQUESTS; n++) workers.push(this.friendWorker(peer, friendFlow))
    }
    // at a floor, chunks from an origin slow to answer (a far server, a loaded machine) overlap, or it can't keep pace
    for (let n = 0; n < (this.init.qos > 1 ? ORIGIN_REQUESTS_AT_FLOOR : 1); n++) workers.push(this.originWorker())
    try {
      while (this.next <= this.init.to) {
        const bytes = this.done.get(this.next)
        if (bytes != null) {
          this.done.delete(this.next)
          this.next++
          this.given.push([performance.now(), bytes.length])
          this.givenBytes += bytes.length
          this.notify()
          yield bytes
          continue
        }
        if (this.failure != null) throw this.failure
        this.signal.throwIfAborted()
        if (this.waiting.index !== this.next) {
          this.waiting = { index: this.next, since: performance.now() }
          // friends with nothing to take start timing it
          this.notify()
        }
        await this.changed
      }
    } finally {
      this.stop()
      friendFlow.close()
      await Promise.allSettled(workers)
    }
  }

  private source (cooldown: number, probation: boolean): Source {
    // let back on probation, one more lost race drops it again
    return { asks: new Set(), lost: probation ? MAX_LOST_RACES - 1 : 0, stop: new AbortController(), bytes: 0, busyMs: 0, busySince: 0, probation, cooldown }
  }

  private notify (): void {
    const wake = this.wake
    this.changed = new Promise(resolve => { this.wake = resolve })
    wake()
  }

  /** The lowest chunk nobody fetches, within the window ahead of the client; null when none now. */
  private take (): number | null {
    const first = this.todo[0]
    if (first == null || first >= this.next + WINDOW_CHUNKS) return null
    this.todo.shift()
    return first
  }

  /** The lowest run of consecutive chunks nobody fetches (at most `max`), within the window; empty when none now. */
  private takeRun (max: number): number[] {
    const run: number[] = []
    for (let index = this.take(); index != null; index = run.length < max && this.todo[0] === index + 1 ? this.take() : null) run.push(index)
    return run
  }

  /**
   * For a friend, at a floor: the lowest run of free chunks (at most `max`)
   * it brings by their deadlines at its rate, after what it has in hand
   * (deadline.ts); the ones before, which it would bring late, stay for
   * the origin. Lowest first when there is no floor or no origin left;
   * while its rate is unknown, the free chunk with the most time to spare.
   */
  private takeFor (source: Source, max: number): number[] {
    if (this.init.qos <= 1 || !this.originOk) return this.takeRun(max)
    const rate = this.rateOf(source)
    if (rate == null) {
      const last = this.todo.findLastIndex(index => index < this.next + WINDOW_CHUNKS)
      return last < 0 ? [] : this.todo.splice(last, 1)
    }
    let queued = 0
    for (const ask of source.asks) for (const i of ask.run) if (i >= ask.at && !this.have(i)) queued += this.size(i)
    const run = friendRun({ ...this.schedule(), todo: this.todo, end: this.next + WINDOW_CHUNKS, max, rate, queued })
    for (const index of run) this.todo.splice(this.todo.indexOf(index), 1)
    return run
  }

  /** The floor's schedule now: when chunk `next` is due (deadline.ts). */
  private schedule (): { next: number, size: (index: number) => number, qos: number, due: number, now: number } {
    const now = performance.now()
    return { next: this.next, size: index => this.size(index), qos: this.init.qos, due: floorDue(this.givenBytes, now, this.started, this.init.qos), now }
  }

  private size (index: number): number {
    const [first, end] = chunkSpan(this.init.list, index)
    return end - first
  }

  /** B/s a friend gave over the time it had a request open; null before its first chunk. */
  private rateOf (source: Source): number | null {
    const busy = source.busyMs + (source.asks.size > 0 ? performance.now() - source.busySince : 0)
    return source.bytes > 0 && busy > 0 ? source.bytes * 1000 / busy : null
  }

  /** Chunk `index` back for another source; an orphan (the origin takes it whatever qos says) when its source failed. */
  private giveBack (index: number, orphan = true): void {
    // the other copy came already, or one is on its way
    if (this.have(index) || this.todo.includes(index) || this.atFriends.has(index)) return
    if (orphan) this.orphans.add(index)
    const at = this.todo.findIndex(i => i > index)
    this.todo.splice(at < 0 ? this.todo.length : at, 0, index)
    this.notify()
  }

  private have (index: number): boolean {
    return index < this.next || this.done.has(index)
  }

  /** A verified chunk in; false when another copy came first. */
  private arrived (index: number, bytes: Uint8Array, from: 'friend' | 'origin'): boolean {
    if (this.have(index)) return false
    const now = performance.now()
    // friends still on a chunk the client waited for past lateness, that another friend brought first, lost a race; the
    // origin beating them does not count: at a floor above what friends give, it is expected to, and friends still offload
    const losers = from === 'friend' && index === this.waiting.index && now - this.waiting.since >= this.lateMs ? [...this.atFriends.get(index) ?? []] : []
    this.orphans.delete(index)
    this.done.set(index, bytes)
    this.arrivals.push([now, bytes.length])
    this.init.onChunk?.(from, bytes.length)
    for (const name of losers) this.lostRace(name)
    this.cancelBeaten()
    this.notify()
    return true
  }

  private lostRace (name: string): void {
    const source = this.alive.get(name)
    // the last friend left is kept: races lost to one another can be the whole machine pausing, not this friend, and
    // dropping both would hand the rest to the origin whatever qos says
    if (source == null || ++source.lost < MAX_LOST_RACES || this.alive.size < 2) return
    const why = source.probation ? `too slow on probation: it lost a race for a chunk the client waited ${this.lateMs} ms for` : `too slow: it lost ${source.lost} races for chunks the client waited ${this.lateMs} ms for`
    this.benched.set(name, { until: performance.now() + source.cooldown, cooldown: source.cooldown * 2 })
    this.drop(name, new KithError('CHUNK_PEER_STALLED', `${why}; back on probation in ${Math.round(source.cooldown)} ms`))
  }

  /** `name` leaves the pull (for good unless benched as slow): its requests are cancelled and their chunks go back for other sources. */
  private drop (name: string, err: Error): void {
    const source = this.alive.get(name)
    if (source == null) return
    this.alive.delete(name)
    source.stop.abort(err)
    console.error(`kith proxy: friend ${name} dropped from a swarm pull: ${err.message}`)
  }

  /**
   * Whether `name`, benched as slow, is let back on probation now (its
   * cooldown over, or no friend left in the pull); ms until it is, when not.
   */
  private readmit (name: string): number | true {
    const benched = this.benched.get(name)!
    const wait = benched.until - performance.now()
    if (wait > 0 && this.alive.size > 0) return wait
    this.benched.delete(name)
    this.alive.set(name, this.source(benched.cooldown, true))
    console.error(`kith proxy: friend ${name} back in a swarm pull on probation`)
    return true
  }

  /** Cancels friends' requests whose every chunk left came from another source already. */
  private cancelBeaten (): void {
    for (const source of this.alive.values()) {
      for (const ask of source.asks) {
        if (ask.run.every(i => i < ask.at || this.have(i))) ask.stop.abort()
      }
    }
  }

  private async idle (ms?: number): Promise<void> {
    const changed = this.changed
    if (ms == null) { await changed; return }
    let timer: NodeJS.Timeout | undefined
    await Promise.race([changed, new Promise<void>(resolve => { timer = setTimeout(resolve, ms) })])
    clearTimeout(timer)
  }

  private async friendWorker (peer: PeerId, flow: ReturnType<BandwidthScheduler['flow']>): Promise<void> {
    const name = peer.toString()
    while (!this.signal.aborted) {
      const source = this.alive.get(name)
      if (source == null) {
        // failed: out for good; dropped as slow: back on probation after its cooldown (one worker readmits it)
        if (!this.benched.has(name)) return
        const wait = this.readmit(name)
        if (wait !== true) await this.idle(wait + 1)
        continue
      }
      // on probation one chunk at a time, on one request
      if (source.probation && source.asks.size > 0) { await this.idle(); continue }
      const run = this.takeFor(source, source.probation ? 1 : CHUNKS_PER_ASK)
      if (run.length === 0) run.push(...this.race(name))
      if (run.length === 0) {
        // nothing free now; a chunk another source fails comes back, one may become late (the pull's end stops the wait)
        await this.idle(this.lateIn(name))
        continue
      }
      await this.ask(peer, source, run, flow)
    }
  }

  /** One `chunks` request of `run` to `peer`: each chunk checked and handed in as it comes. */
  private async ask (peer: PeerId, source: Source, run: number[], flow: ReturnType<BandwidthScheduler['flow']>): Promise<void> {
    const name = peer.toString()
    for (const index of run) this.onIt(index, name)
    const ask: Ask = { run, at: run[0]!, since: performance.now(), stop: new AbortController() }
    if (source.asks.size === 0) source.busySince = ask.since
    source.asks.add(ask)
    const signal = AbortSignal.any([this.signal, source.stop.signal, ask.stop.signal])
    try {
      // each chunk's bytes are taken before it is read (the stream's window holds the friend back meanwhile), not the
      // whole run's before asking: under a low cap a run's first chunk comes after one chunk's time, not four
      await flow.take(this.size(ask.at), signal, name)
      for await (const bytes of askChunks(this.init.dialer, peer, this.init.list.hash, ask.at, run.length, { signal })) {
        if (!chunkMatches(this.init.list, ask.at, bytes)) throw new KithError('SWARM_BAD_LIST', `${name} sent chunk ${ask.at} not matching its hash list`)
        this.offIt(ask.at, name)
        source.bytes += bytes.length
        // on probation, a chunk that came from it first readmits it in full
        if (this.arrived(ask.at++, bytes, 'friend') && source.probation) { source.probation = false; source.lost = 0 }
        ask.since = performance.now()
        if (ask.at <= run.at(-1)!) await flow.take(this.size(ask.at), signal, name)
      }
    } catch (err) {
      // a friend dropped as too slow failed nothing: its chunks go back to whoever is free, not to the origin
      const slow = source.stop.signal.aborted
      for (const left of run.filter(i => i >= ask.at)) {
        this.offIt(left, name)
        this.giveBack(left, !slow)
      }
      // the pull ended, the friend was dropped, or every chunk it had left came from others (it takes the next run)
      if (signal.aborted) return
      // a wrong chunk, a refusal, a friend gone: no more chunks from them in this pull
      this.benched.delete(name)
      this.drop(name, err as Error)
      this.failIfStuck(err)
      this.notify()
    } finally {
      source.asks.delete(ask)
      if (source.asks.size === 0) source.busyMs += performance.now() - source.busySince
    }
  }

  private onIt (index: number, name: string): void {
    const friends = this.atFriends.get(index) ?? new Set<string>()
    friends.add(name)
    this.atFriends.set(index, friends)
  }

  private offIt (index: number, name: string): void {
    const friends = this.atFriends.get(index)
    friends?.delete(name)
    if (friends?.size === 0) this.atFriends.delete(index)
  }

  /** Whether another friend is late with the chunk the client waits for, as `name` sees it: ms until it is, or 0; null when none is on it. */
  private late (name: string): number | null {
    const on = this.atFriends.get(this.next)
    if (on == null || on.has(name) || this.raced.has(this.next) || this.waiting.index !== this.next) return null
    return Math.max(0, this.waiting.since + this.lateMs - performance.now())
  }

  /** How long a friend with nothing to take waits before it looks again for a late chunk; undefined: until something changes. */
  private lateIn (name: string): number | undefined {
    const ms = this.late(name)
    return ms == null ? undefined : ms + 1
  }

  /**
   * For `name`, which has nothing to take: the chunk the client has waited
   * lateMs for at another friend, and the ones after it that other
   * friends are on, up to a run; empty when none is late.
   */
  private race (name: string): number[] {
    if (this.late(name) !== 0) return []
    const run: number[] = []
    for (let index = this.next; run.length < CHUNKS_PER_ASK && this.atFriends.has(index) && !this.atFriends.get(index)!.has(name) && !this.raced.has(index) && !this.have(index); index++) {
      this.raced.add(index)
      run.push(index)
    }
    return run
  }

  /** Whether the origin should take a chunk now (see the class comment). */
  private originDue (): boolean {
    if (this.init.qos === 0 || this.alive.size === 0 || this.orphans.size > 0) return true
    // qos=1 (the most offload) waits for STALL_MS of nothing; a real floor is kept from FLOOR_GRACE_MS on, over what
    // came so far while the pull is younger than a window (else friends alone set the rate of its first 2 s)
    if (this.init.qos === 1) return performance.now() - this.started >= STALL_MS && this.rate(this.arrivals, STALL_MS) < 1
    return this.deadlineNear()
  }

  /**
   * At a floor: whether the lowest free chunk is due within DEADLINE_LEAD_MS
   * (and the origin's time for a chunk): friends left it, as they would
   * bring it late, so the origin takes it now, whatever came meanwhile.
   */
  private deadlineNear (): boolean {
    const first = this.todo[0]
    if (first == null || first >= this.next + WINDOW_CHUNKS) return false
    const schedule = this.schedule()
    return deadline(schedule, first) - schedule.now <= DEADLINE_LEAD_MS + (this.originMs ?? 0)
  }

  /**
   * Whether the client waits for its next chunk while what it got in
   * order is under a floor (qos above 1): a slow friend holds it back,
   * whatever arrived ahead of it. The origin then takes that chunk first.
   */
  private starved (): boolean {
    return this.init.qos > 1 && this.next <= this.init.to && this.waiting.index === this.next && !this.done.has(this.next) && this.underFloor(this.given)
  }

  /** Whether `samples` came slower than qos: over the last window, or over the pull's age from FLOOR_GRACE_MS on. */
  private underFloor (samples: Array<[number, number]>): boolean {
    const elapsed = performance.now() - this.started
    return elapsed >= FLOOR_GRACE_MS && this.rate(samples, Math.min(elapsed, RATE_WINDOW_MS)) < this.init.qos
  }

  /** B/s of `samples` over the last `window` ms */
  private rate (samples: Array<[number, number]>, window: number): number {
    const since = performance.now() - window
    let bytes = 0
    for (const [at, n] of samples) if (at >= since) bytes += n
    return bytes * 1000 / window
  }

  private async originWorker (): Promise<void> {
    while (!this.signal.aborted && this.originOk) {
      const starved = this.starved()
      if (!starved && !this.originDue()) { await this.idle(100); continue }
      const index = this.orphans.size > 0 && this.todo.includes(Math.min(...this.orphans))
        ? this.takeOrphan()
        : starved && this.todo[0] !== this.next ? this.double() ?? this.take() : this.take() ?? this.double()
      if (index == null) {
        // every chunk is in or on its way from a friend the origin already doubled
        if (this.todo.length === 0 && this.atFriends.size === 0) return
        await this.idle(100)
        continue
      }
      try {
        const asked = performance.now()
        const bytes = await this.init.origin(index, this.signal)
        this.originMs = performance.now() - asked
        if (!chunkMatches(this.init.list, index, bytes)) {
          // the origin confirmed the version (If-Range, validators, length): the list is what is wrong, and so may be
          // every friend's chunk checked against it; nothing more goes to the client
          this.failure = new KithError('SWARM_BAD_LIST', `the origin's chunk ${index} of the same version does not match the friends' hash list`)
          this.notify()
          return
        }
        this.arrived(index, bytes, 'origin')
      } catch (err) {
        this.giveBack(index)
        if (this.signal.aborted) return
        this.originOk = false
        this.failIfStuck(err)
        this.notify()
      }
    }
  }

  /**
   * No source left at all (the origin failed, no friend in the pull, no
   * chunk on its way from one dropped meanwhile): the pull fails with `err`,
   * and the answer is cut (a client can tell).
   */
  private failIfStuck (err: unknown): void {
    if (!this.originOk && this.alive.size === 0 && this.benched.size === 0 && this.atFriends.size === 0 && this.failure == null) this.failure = err
  }

  /**
   * The chunk the client waits for, when a friend is on it, the origin has
   * not fetched it too, and no friend on it would bring it sooner than the
   * origin takes for a chunk; null otherwise.
   */
  private double (): number | null {
    if (!this.atFriends.has(this.next) || this.doubled.has(this.next) || this.friendSooner(this.next)) return null
    this.doubled.add(this.next)
    return this.next
  }

  /** Whether a friend on chunk `index` should bring it before the origin would (at their rates so far). */
  private friendSooner (index: number): boolean {
    if (this.originMs == null) return false
    const now = performance.now()
    for (const name of this.atFriends.get(index) ?? []) {
      const source = this.alive.get(name)
      const rate = source == null ? null : this.rateOf(source)
      if (source == null || rate == null) continue
      for (const ask of source.asks) {
        if (index < ask.at || index > ask.run.at(-1)!) continue
        // its requests share its rate; the chunks before `index` in this one come first
        const eta = ask.since + (index - ask.at + 1) * this.size(index) * 1000 * source.asks.size / rate
        if (eta - now < this.originMs) return true
      }
    }
    return false
  }

  private takeOrphan (): number {
    const index = Math.min(...[...this.orphans].filter(i => this.todo.includes(i)))
    this.todo.splice(this.todo.indexOf(index), 1)
    return index
  }
}
