import {defineConfig} from 'vitest/config'

// `npm run faults`: the slow rows of the fault table (server restarts, ended sessions, busy writers), each file
// on its own private PostgreSQL cluster. docs/reliability.md lists every row and the test that proves it.
export default defineConfig({
  test: {
    include: ['test/faults/**/*.faults.ts'],
    testTimeout: 300_000,
    hookTimeout: 180_000,
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default'],
  },
})
