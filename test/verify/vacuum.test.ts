// vacuumTables: VACUUM (ANALYZE) of every listed table that exists, each alone; last_vacuum/last_analyze set.
import {describe, expect, it} from 'vitest'

import {loadMigrations} from '../../src/migrations/files.js'
import {tablesCreatedBy} from '../../src/migrations/plan.js'
import {VACUUM_TABLES} from '../../src/nchat/tables.js'
import {createRunScope, loggerOf} from '../../src/run/scope.js'
import {lastVacuumed, vacuumTables} from '../../src/steps/vacuum.js'
import {migratedDatabase, T} from './_db.js'

describe('vacuumTables', () => {
  it('VACUUM_TABLES is the new tables of 013-016 plus nchat_messages and nchat_channels', () => {
    expect([...VACUUM_TABLES].sort()).toEqual([...tablesCreatedBy(loadMigrations()), 'nchat_messages', 'nchat_channels'].sort())
  })

  for (const schema of ['public', 'nchat'] as const) {
    it(
      `sets last_vacuum and last_analyze of every table (schema ${schema})`,
      async () => {
        const m = await migratedDatabase(16, {schema})
        try {
          const before = await lastVacuumed(m.sql, m.schema, VACUUM_TABLES)
          expect(Object.keys(before).sort()).toEqual([...VACUUM_TABLES].sort())
          for (const t of VACUUM_TABLES) expect(before[t].lastVacuum, t).toBeNull()

          const [{started}] = await m.sql<{started: Date}[]>`select now() as started`
          const lines: string[] = []
          const done = await vacuumTables(m.sql, m.schema, VACUUM_TABLES, createRunScope({log: loggerOf((l) => lines.push(l))}))
          expect(done.map((d) => d.table)).toEqual([...VACUUM_TABLES])
          for (const d of done) expect(d.ms).toBeGreaterThanOrEqual(0)
          expect(lines).toContain('VACUUM (ANALYZE) nchat_messages (13/14)')

          const after = await lastVacuumed(m.sql, m.schema, VACUUM_TABLES)
          for (const t of VACUUM_TABLES) {
            expect(after[t].lastVacuum, t).not.toBeNull()
            expect(after[t].lastAnalyze, t).not.toBeNull()
            expect(after[t].lastVacuum!.getTime(), t).toBeGreaterThanOrEqual(started.getTime())
          }
        } finally {
          await m.done()
        }
      },
      T,
    )
  }

  it(
    'skips tables that do not exist (a database at 014 has no call or stream tables) and refuses unsafe names',
    async () => {
      const m = await migratedDatabase(14)
      try {
        const done = await vacuumTables(m.sql, m.schema, VACUUM_TABLES)
        expect(done.map((d) => d.table)).not.toContain('nchat_calls')
        expect(done.map((d) => d.table)).toContain('nchat_identity_keys')
        expect(done).toHaveLength(9)
        const stats = await lastVacuumed(m.sql, m.schema, ['nchat_identity_keys', 'nchat_calls'])
        expect(Object.keys(stats)).toEqual(['nchat_identity_keys'])
        expect(stats.nchat_identity_keys.lastVacuum).not.toBeNull()
        await expect(vacuumTables(m.sql, m.schema, ['nchat_users; drop table nchat_users'])).rejects.toThrow(/not a valid PostgreSQL identifier/)
      } finally {
        await m.done()
      }
    },
    T,
  )
})
