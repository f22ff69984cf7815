import {defineConfig} from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 180_000,
    hookTimeout: 180_000,
    // Every test makes its own databases, so files can run side by side; two workers suit these 2-core machines.
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default'],
  },
})
