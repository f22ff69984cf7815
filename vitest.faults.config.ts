import {defineConfig} from 'vitest/config'

// `npm run faults`: the slow rows of the fault table (server restarts, ended sessions, busy writers), each file
// on its own private PostgreSQL cluster. docs/reliability.md lists every row and the test that proves it.
export default defineConfig({
  test: {
    // The server-restart rows are all open (docs/reliability.md): they run only with FAULT_OPEN=1.
    include: ['test/faults/**/*.faults.ts'],
    exclude: process.env.FAULT_OPEN === '1' ? [] : ['test/faults/server-restart.faults.ts'],
    testTimeout: 300_000,
    hookTimeout: 180_000,
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default'],
  },
})
