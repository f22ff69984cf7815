import path from 'node:path'

import {defineConfig} from 'vitest/config'

// The tests that matter per server version (engine, migrations up and down, verify, rollback by restore and by
// down migrations, with their backup and dry-run clone), run once per server 14, 16, 17 and 18 started by
// scripts/pg-servers.sh on 127.0.0.1:54MM (the machine's 15 runs the whole suite with `npm test`). Each server
// gets client tools at least as new as itself: 14 the machine's 15; 16 Debian's 17 (so every restore meets
// pg_restore's SET transaction_timeout); 17 and 18 their own, from scripts/pg-clients.sh.
const FILES = [
  'test/engine/runner.test.ts',
  'test/sql/up-down.test.ts',
  'test/sql/app-operations.test.ts',
  'test/verify/verify.test.ts',
  'test/verify/expected-schema.test.ts',
  'test/e2e/rollback.test.ts',
]
const clients = process.env.PG_CLIENTS_DIR || '/tmp/nself-e2ee-clients'
const portBase = Number(process.env.PG_SERVERS_PORT_BASE || 5400)
const pairs: Array<{server: number; client: number}> = [
  {client: 15, server: 14},
  {client: 17, server: 16},
  {client: 17, server: 17},
  {client: 18, server: 18},
]
const only = process.env.PG_VERSIONS?.split(',').map(Number)

export default defineConfig({
  test: {
    hookTimeout: 180_000,
    maxWorkers: 2,
    pool: 'forks',
    projects: pairs
      .filter((p) => !only || only.includes(p.server))
      .map(({client, server}) => ({
        extends: true,
        test: {
          env: {
            PATH: client === 15 ? (process.env.PATH ?? '') : `${path.join(clients, String(client), 'bin')}${path.delimiter}${process.env.PATH}`,
            PGHOST: '127.0.0.1',
            PGPORT: String(portBase + server),
          },
          include: FILES,
          name: `server ${server}, client ${client}`,
        },
      })),
    reporters: ['default'],
    testTimeout: 180_000,
  },
})
