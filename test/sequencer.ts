import { relative } from 'node:path'
import { BaseSequencer, type TestSpecification } from 'vitest/node'

/**
 * Seconds the slowest spec files took in the last green fresh-clone CI run
 * on a 2-core machine, three files at a time (2026-12-06; the run took about
 * 300 s).
 * With three files at a time, one of these starting last ends the run alone;
 * vitest starts the longest first from the durations it cached on this
 * machine (node_modules/.vite), but a fresh clone has none, and its fallback
 * (largest file first) started home.spec, small and slow, among the last.
 * Only the order matters; a file not listed is taken as shorter than these.
 * Refresh the list when a file grows much slower or faster.
 */
export const SLOWEST: Record<string, number> = {
  'test/integration/nat-relay.spec.ts': 65,
  'test/integration/backup.spec.ts': 52,
  'test/integration/home.spec.ts': 48,
  'test/integration/fetch-resume.spec.ts': 45,
  'test/integration/backup-care.spec.ts': 41,
  'test/integration/bandwidth.spec.ts': 39,
  'test/integration/fetch-kill.spec.ts': 39,
  'test/integration/friends.spec.ts': 37,
  'test/integration/chunk-gc.spec.ts': 36,
  'test/integration/fetch-faults.spec.ts': 36,
  'test/integration/home-private.spec.ts': 36,
  'test/integration/fetch.spec.ts': 31,
  'test/integration/nat.spec.ts': 31,
  'test/transfer/fetcher.spec.ts': 26,
  'test/integration/fetch-control.spec.ts': 25,
  'test/integration/locate.spec.ts': 24,
  'test/integration/dashboard.spec.ts': 24,
  'test/integration/downloads.spec.ts': 23,
  'test/integration/proxy-swarm.spec.ts': 23,
  'test/transfer/fetcher-discover.spec.ts': 21,
  'test/integration/expose.spec.ts': 16,
  'test/services/cli-thin.spec.ts': 13,
  'test/transfer/scheduler.spec.ts': 11,
  'test/services/chunk-gc.spec.ts': 10
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
