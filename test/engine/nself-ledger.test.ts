import {afterEach, describe, expect, it} from 'vitest'

import {migrateDown, migrateUp} from '../../src/migrations/runner.js'
import {createV030Database, type V030Database} from '../helpers/fixture.js'
import {engineSql, packaged, silent} from '../helpers/engine.js'

const dbs: V030Database[] = []
afterEach(async () => {
  while (dbs.length) await dbs.pop()!.drop()
})

type Sql = ReturnType<typeof engineSql>

/** nself's ledger as `nself db migrate` creates it (ensureSchemaVersions, ensureMigrationsTable). */
async function createNselfLedger(sql: Sql): Promise<void> {
  await sql.unsafe(`create schema if not exists np_common;
    create table if not exists np_common.schema_versions (name text primary key, applied_at timestamptz not null default now());
    create schema if not exists nself_ops;
    create table if not exists nself_ops.migrations (id text primary key, name text not null, checksum text not null,
      applied_at timestamptz not null default now(), applied_by text, duration_ms int, rolled_back_at timestamptz);
    insert into np_common.schema_versions (name) values ('001_nself_base.sql');`)
}

/** What `nself db migrate status` reads: the applied names in np_common.schema_versions. */
async function nselfStatus(sql: Sql): Promise<string[]> {
  const rows = await sql<{name: string}[]>`select name from np_common.schema_versions order by name`
  return rows.map((r) => r.name)
}

async function opsRows(sql: Sql) {
  return sql<{id: string; name: string; checksum: string; rolled: boolean}[]>`
    select id, name, checksum, rolled_back_at is not null as rolled from nself_ops.migrations order by id`
}

describe("nself's own ledger sees 013-016", () => {
  it('records each file in np_common.schema_versions and nself_ops.migrations with its checksum; rollback marks them as nself does', async () => {
    const db = await createV030Database()
    dbs.push(db)
    const sql = engineSql(db.name)
    try {
      await createNselfLedger(sql)
      const files = packaged()
      await migrateUp({log: silent, migrations: files, sql})
      expect(await nselfStatus(sql)).toEqual([
        '001_nself_base.sql',
        '013_e2ee_system.sql',
        '014_e2ee_system.sql',
        '015_voice_calls.sql',
        '016_live_streaming.sql',
      ])
      const ops = await opsRows(sql)
      expect(ops.map((r) => [r.id, r.name, r.checksum, r.rolled])).toEqual(files.map((m) => [m.name, `${m.name}.sql`, m.checksum, false]))
      // schema_migrations for nChat and the guide is still written.
      const [{v}] = await sql<{v: number}[]>`select max(version)::int as v from schema_migrations`
      expect(v).toBe(16)

      await migrateDown({log: silent, migrations: files, sql, to: 14})
      expect(await nselfStatus(sql)).toEqual(['001_nself_base.sql', '013_e2ee_system.sql', '014_e2ee_system.sql'])
      expect((await opsRows(sql)).map((r) => `${r.id}:${r.rolled}`)).toEqual([
        '013_e2ee_system:false',
        '014_e2ee_system:false',
        '015_voice_calls:true',
        '016_live_streaming:true',
      ])

      // Applying again is nself's re-apply: the row comes back without rolled_back_at.
      await migrateUp({log: silent, migrations: files, sql})
      expect((await opsRows(sql)).every((r) => !r.rolled)).toBe(true)
      expect(await nselfStatus(sql)).toHaveLength(5)
    } finally {
      await sql.end()
    }
  })

  it('a ledger row that cannot be written fails its file in the same transaction: nothing of it stays', async () => {
    const db = await createV030Database()
    dbs.push(db)
    const sql = engineSql(db.name)
    try {
      await createNselfLedger(sql)
      await sql.unsafe(`alter table nself_ops.migrations add constraint no_015 check (id <> '015_voice_calls')`)
      await expect(migrateUp({log: silent, migrations: packaged(), sql})).rejects.toThrow(/015_voice_calls/)
      const [{calls}] = await sql<{calls: boolean}[]>`select to_regclass('public.nchat_calls') is not null as calls`
      expect(calls).toBe(false)
      // The run undid 013 and 014 too: nself's ledger lists none of them, and keeps their rows as rolled back.
      expect(await nselfStatus(sql)).toEqual(['001_nself_base.sql'])
      expect((await opsRows(sql)).map((r) => `${r.id}:${r.rolled}`)).toEqual(['013_e2ee_system:true', '014_e2ee_system:true'])
    } finally {
      await sql.end()
    }
  })

  it('a lock timeout on the ledger rows retries the whole file, and the retry creates schema_migrations again', async () => {
    // No schema_migrations yet: 013's transaction creates it, then times out on nself's ledger (held by another
    // session) and is rolled back with it. The retry must not take the rolled-back table for granted.
    const db = await createV030Database()
    dbs.push(db)
    const sql = engineSql(db.name)
    const holder = engineSql(db.name)
    try {
      await createNselfLedger(sql)
      await sql.unsafe('drop table schema_migrations')
      const logs: string[] = []
      let release = () => {}
      const held = new Promise<void>((resolve) => {
        release = resolve
      })
      const locked = new Promise<void>((resolve) => {
        void holder.begin(async (tx) => {
          await tx.unsafe('lock table np_common.schema_versions in access exclusive mode')
          resolve()
          await held
        })
      })
      await locked
      const run = migrateUp({lockTimeoutMs: 100, log: (l) => logs.push(l), migrations: packaged(), sql, to: 13})
      // Let the run meet the lock at least once, then let it through.
      for (let i = 0; i < 200 && !logs.some((l) => /retry 1 in/.test(l)); i++) await new Promise((r) => setTimeout(r, 25))
      release()
      const report = await run
      expect(logs.some((l) => /lock wait on the ledger exceeded 100 ms/.test(l))).toBe(true)
      expect(report.migrations.map((m) => m.name)).toEqual(['013_e2ee_system'])
      expect(report.migrations[0].lockRetries).toBeGreaterThan(0)
      const [{v}] = await sql<{v: number}[]>`select max(version)::int as v from schema_migrations`
      expect(v).toBe(13)
      expect(await nselfStatus(sql)).toEqual(['001_nself_base.sql', '013_e2ee_system.sql'])
    } finally {
      await holder.end()
      await sql.end()
    }
  })

  it("a database without nself's ledger gets none (only schema_migrations and our history)", async () => {
    const db = await createV030Database()
    dbs.push(db)
    const sql = engineSql(db.name)
    try {
      await migrateUp({log: silent, migrations: packaged(), sql, to: 13})
      const [{np, ops}] = await sql<{np: boolean; ops: boolean}[]>`
        select exists (select 1 from pg_namespace where nspname = 'np_common') as np, exists (select 1 from pg_namespace where nspname = 'nself_ops') as ops`
      expect({np, ops}).toEqual({np: false, ops: false})
    } finally {
      await sql.end()
    }
  })
})
