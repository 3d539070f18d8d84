import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.spec.ts'],
    pool: 'forks',
    // integration tests start several node processes each; on 2 cores, two files at a time is plenty
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 60_000
  }
})
