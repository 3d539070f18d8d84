import { relative } from 'node:path'
import { BaseSequencer, type TestSpecification } from 'vitest/node'

/**
 * Seconds the slowest spec files took in the last green fresh-clone CI run
 * on a 2-core machine, three files at a time (25432d0, 2026-12-07: the run
 * took 271 s; every file of 4 s or more). Four files cut after it carry
 * their times from a run of the ten slowest, three at a time, at load 3-5
 * (2026-12-07): fetch-kill 33, fetch-resume 29, fetch-faults 23 (with the
 * others there at 26-70 s), and fetch-control 17 (alone). Four cut later
 * carry their CI time scaled by what the file alone took before and after
 * in the same hour (2026-12-07, load 4-17): nat-relay 65 -> 29-41 s and
 * nat 30 -> 15-19 s (the NAT waits as settings); chunk-gc and fetch (set-up
 * through the API, not the CLI) by their CPU, 25 -> 17 s and 18 -> 14 s,
 * their wall times being within the load's noise. http and proxy moved from
 * the unit project (2026-12-07) with their times there.
 * With three files at a time, one of these starting last ends the run alone;
 * vitest starts the longest first from the durations it cached on this
 * machine (node_modules/.vite), but a fresh clone has none, and its fallback
 * (largest file first) started home.spec, small and slow, among the last.
 * Only the order matters; a file not listed is taken as shorter than these.
 * Refresh the list when a file grows much slower or faster.
 */
export const SLOWEST: Record<string, number> = {
  'test/integration/home.spec.ts': 42,
  'test/integration/bandwidth.spec.ts': 37,
  'test/integration/nat-relay.spec.ts': 37,
  'test/integration/backup.spec.ts': 34,
  'test/integration/friends.spec.ts': 34,
  'test/integration/fetch-kill.spec.ts': 33,
  'test/integration/fetch.spec.ts': 30,
  'test/integration/fetch-resume.spec.ts': 29,
  'test/integration/chunk-gc.spec.ts': 28,
  'test/integration/locate.spec.ts': 24,
  'test/integration/fetch-faults.spec.ts': 23,
  'test/integration/backup-care.spec.ts': 23,
  'test/integration/dashboard.spec.ts': 22,
  'test/integration/downloads.spec.ts': 21,
  'test/integration/home-private.spec.ts': 21,
  'test/transfer/fetcher.spec.ts': 19,
  'test/transfer/fetcher-discover.spec.ts': 18,
  'test/integration/proxy-swarm.spec.ts': 17,
  'test/integration/fetch-control.spec.ts': 17,
  'test/integration/nat.spec.ts': 15,
  'test/integration/expose.spec.ts': 13,
  'test/services/cli-thin.spec.ts': 10,
  'test/services/downloads/http.spec.ts': 10,
  'test/services/proxy/proxy.spec.ts': 6,
  'test/integration/strangers.spec.ts': 7,
  'test/integration/proxy.spec.ts': 7,
  'test/services/api.spec.ts': 6,
  'test/integration/backup-host.spec.ts': 5,
  'test/trust/gate.spec.ts': 4,
  // the unit project (sorted apart): its files of about 3 s or more in two quiet runs
  // of `npm run test:unit` (2026-12-07, 40 s each), the mean rounded; fetcher-bandwidth
  // and fetcher-clock as they wait since c8db3ba (a 3.5 s hold, 3 s windows); care-schedule, 4 s then,
  // waits 0.7 s since its scheduler sleeps a tenth of its 200 ms period (1f04c30)
  'test/transfer/fetcher-bandwidth.spec.ts': 6,
  'test/transfer/fetcher-clock.spec.ts': 5,
  'test/transfer/scheduler.spec.ts': 5,
  'test/peer/identity.spec.ts': 4,
  'test/services/connection-slots.spec.ts': 4,
  'test/services/chunk-gc.spec.ts': 3,
  'test/transfer/manifest.spec.ts': 3
}

/**
 * Vitest's order (projects one after the other, the longest cached file
 * first), with SLOWEST standing in for durations this machine has not
 * cached yet.
 */
export class SlowestFirst extends BaseSequencer {
  override async sort (files: TestSpecification[]): Promise<TestSpecification[]> {
    const sorted = await super.sort(files)
    const cache = this.ctx.cache
    if (files.every(spec => cache.getTestSpecificationResult(spec) != null)) return sorted
    const root = this.ctx.config.root
    const seconds = (spec: TestSpecification): number => {
      const cached = cache.getTestSpecificationResult(spec)
      return cached != null ? cached.duration / 1000 : SLOWEST[relative(root, spec.moduleId)] ?? 0
    }
    // within each project, in the order vitest runs the projects; the sort is stable, so
    // files with nothing known keep vitest's fallback order among themselves
    const byProject = new Map<string, TestSpecification[]>()
    for (const spec of sorted) byProject.set(spec.project.name, [...byProject.get(spec.project.name) ?? [], spec])
    return [...byProject.values()].flatMap(specs => specs.sort((a, b) => seconds(b) - seconds(a)))
  }
}
