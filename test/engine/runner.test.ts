import {readFileSync, writeFileSync} from 'node:fs'
import path from 'node:path'
import {afterEach, describe, expect, it} from 'vitest'

import {loadMigrations} from '../../src/migrations/files.js'
import {migrateDown, migrateUp} from '../../src/migrations/runner.js'
import {readPlan} from '../../src/migrations/plan.js'
import {applyGuideByHand, createV030Database, dataDigest, V030_TABLES, type V030Database} from '../helpers/fixture.js'
import {appSchemaDump, copyMigrations, engineSql, packaged, silent} from '../helpers/engine.js'

const dbs: V030Database[] = []
async function fresh(opts: Parameters<typeof createV030Database>[0] = {}) {
  const db = await createV030Database(opts)
  dbs.push(db)
  return db
}
afterEach(async () => {
  while (dbs.length) await dbs.pop()!.drop()
})

async function ledgerRows(sql: ReturnType<typeof engineSql>) {
  return sql<{version: number; finished: boolean; rolled: boolean}[]>`
    select version, finished_at is not null as finished, rolled_back_at is not null as rolled from nself_e2ee.migrations order by id`
}

describe('migrateUp / migrateDown on a real v0.3.0 database', () => {
  it('applies 013-016, records them, and a second run changes nothing', async () => {
    const db = await fresh()
    const sql = engineSql(db.name)
    try {
      const r = await migrateUp({log: silent, migrations: packaged(), sql})
      expect(r.migrations.map((m) => m.version)).toEqual([13, 14, 15, 16])
      expect(r.after).toBe(16)
      const versions = await sql<{version: number}[]>`select version from schema_migrations order by version`
      expect(versions.map((v) => v.version)).toEqual([...Array.from({length: 16}, (_, i) => i + 1)])
      expect((await ledgerRows(sql)).filter((r) => r.finished && !r.rolled).map((r) => r.version)).toEqual([13, 14, 15, 16])
      const before = await appSchemaDump(db.name)
      const again = await migrateUp({log: silent, migrations: packaged(), sql})
      expect(again.migrations).toEqual([])
      expect(await appSchemaDump(db.name)).toBe(before)
      expect((await ledgerRows(sql)).length).toBe(4)
    } finally {
      await sql.end()
    }
  })

  it('--to 14 stops after 014', async () => {
    const db = await fresh()
    const sql = engineSql(db.name)
    try {
      const r = await migrateUp({log: silent, migrations: packaged(), sql, to: 14})
      expect(r.migrations.map((m) => m.version)).toEqual([13, 14])
      const plan = await readPlan(sql, packaged())
      expect(plan.migrations.map((m) => m.state)).toEqual(['applied', 'applied', 'pending', 'pending'])
      const [{n}] = await sql`select count(*)::int as n from pg_class where relname in ('nchat_calls', 'nchat_streams')`
      expect(n).toBe(0)
    } finally {
      await sql.end()
    }
  })

  it('down to 012 gives back the v0.3.0 schema and data', async () => {
    const db = await fresh()
    const schemaBefore = await appSchemaDump(db.name)
    const dataBefore = await dataDigest(db.name, [...V030_TABLES])
    const sql = engineSql(db.name)
    try {
      await migrateUp({log: silent, migrations: packaged(), sql})
      expect(await appSchemaDump(db.name)).not.toBe(schemaBefore)
      const d = await migrateDown({log: silent, migrations: packaged(), sql, to: 12})
      expect(d.reverted).toEqual([16, 15, 14, 13])
      expect(d.after).toBe(12)
      expect(await appSchemaDump(db.name)).toBe(schemaBefore)
      expect(await dataDigest(db.name, [...V030_TABLES])).toEqual(dataBefore)
      expect((await ledgerRows(sql)).every((r) => r.rolled)).toBe(true)
    } finally {
      await sql.end()
    }
  })

  it('a statement failing in the middle of a file leaves nothing of that file and no ledger row', async () => {
    const db = await fresh()
    const copy = copyMigrations()
    const file = path.join(copy.dir, '015_voice_calls.sql')
    const text = readFileSync(file, 'utf8')
    const cut = text.indexOf(';', text.search(/CREATE TABLE/i)) + 1
    writeFileSync(file, `${text.slice(0, cut)}\nSELECT 1 / 0;\n${text.slice(cut)}`)
    const sql = engineSql(db.name)
    try {
      const err = await migrateUp({log: silent, migrations: loadMigrations(copy.dir), revertOnFailure: false, sql}).catch((e) => e)
      expect(err.message).toMatch(/015_voice_calls failed at line \d+ \(SELECT 1 \/ 0\).*division by zero/)
      const [{n}] = await sql`select count(*)::int as n from pg_class where relname like 'nchat_call%'`
      expect(n).toBe(0)
      const versions = (await sql<{version: number}[]>`select version from schema_migrations`).map((r) => r.version)
      expect(versions).toContain(14)
      expect(versions).not.toContain(15)
      expect((await ledgerRows(sql)).map((r) => r.version)).toEqual([13, 14])
    } finally {
      await sql.end()
      copy.cleanup()
    }
  })

  it('by default a failure undoes what the run applied, leaving the database as before', async () => {
    const db = await fresh()
    const schemaBefore = await appSchemaDump(db.name)
    const copy = copyMigrations()
    const file = path.join(copy.dir, '016_live_streaming.sql')
    writeFileSync(file, `${readFileSync(file, 'utf8')}\nSELECT no_such_function();\n`)
    const sql = engineSql(db.name)
    try {
      const err = await migrateUp({log: silent, migrations: loadMigrations(copy.dir), sql}).catch((e) => e)
      expect(err.message).toMatch(/016_live_streaming failed at line \d+.*no_such_function.*undone, so the database is as it was before/)
      expect(await appSchemaDump(db.name)).toBe(schemaBefore)
      const versions = await sql<{version: number}[]>`select max(version)::int as version from schema_migrations`
      expect(versions[0].version).toBe(12)
    } finally {
      await sql.end()
      copy.cleanup()
    }
  })

  it('refuses an applied migration whose file changed (checksum drift), naming it, and runs nothing', async () => {
    const db = await fresh()
    const sql = engineSql(db.name)
    const copy = copyMigrations()
    try {
      await migrateUp({log: silent, migrations: packaged(), sql, to: 13})
      const file = path.join(copy.dir, '013_e2ee_system.sql')
      writeFileSync(file, `${readFileSync(file, 'utf8')}\n-- edited\n`)
      const err = await migrateUp({log: silent, migrations: loadMigrations(copy.dir), sql}).catch((e) => e)
      expect(err.message).toMatch(/013_e2ee_system was applied with a different file/)
      const [{n}] = await sql`select count(*)::int as n from pg_class where relname = 'nchat_prekey_bundles'`
      expect(n).toBe(0)
    } finally {
      await sql.end()
      copy.cleanup()
    }
  })

  it('refuses a packaged migration file that no longer matches SHA256SUMS', () => {
    const copy = copyMigrations(true)
    try {
      const file = path.join(copy.dir, '014_e2ee_system.sql')
      writeFileSync(file, readFileSync(file, 'utf8').replace('nchat_prekey_bundles', 'nchat_prekey_bundlez'))
      expect(() => loadMigrations(copy.dir)).toThrow(/014_e2ee_system\.sql was modified/)
    } finally {
      copy.cleanup()
    }
  })

  it('two runs at once apply each file once', async () => {
    const db = await fresh()
    const a = engineSql(db.name)
    const b = engineSql(db.name)
    try {
      const [ra, rb] = await Promise.all([migrateUp({log: silent, migrations: packaged(), sql: a}), migrateUp({log: silent, migrations: packaged(), sql: b})])
      expect([...ra.migrations, ...rb.migrations].map((m) => m.version).sort()).toEqual([13, 14, 15, 16])
      expect((await ledgerRows(a)).length).toBe(4)
    } finally {
      await a.end()
      await b.end()
    }
  })

  for (const ledger of ['guide', 'varchar', 'bigint-name', 'none'] as const) {
    it(`writes schema_migrations in its existing shape (${ledger})`, async () => {
      const db = await fresh({ledger})
      const sql = engineSql(db.name)
      try {
        await migrateUp({log: silent, migrations: packaged(), sql})
        const rows = await sql.unsafe<Record<string, unknown>[]>('select * from schema_migrations order by version')
        const versions = rows.map((r) => String(r.version))
        if (ledger === 'varchar') expect(versions.slice(-4)).toEqual(['013_e2ee_system', '014_e2ee_system', '015_voice_calls', '016_live_streaming'])
        else expect(versions.slice(-4)).toEqual(['13', '14', '15', '16'])
        if (ledger === 'bigint-name') expect(rows.at(-1)!.name).toBe('016_live_streaming')
        if (ledger === 'none') expect(rows.length).toBe(4)
        const plan = await readPlan(sql, packaged())
        expect(plan.current).toBe(16)
        expect(plan.toApply).toEqual([])
        await migrateDown({log: silent, migrations: packaged(), sql, to: 12})
        const left = await sql.unsafe<{version: string}[]>('select version::text from schema_migrations')
        expect(left.length).toBe(ledger === 'none' ? 0 : 12)
      } finally {
        await sql.end()
      }
    })
  }

  it('runs in schema nchat when the tables live there', async () => {
    const db = await fresh({schema: 'nchat'})
    const sql = engineSql(db.name)
    try {
      const r = await migrateUp({log: silent, migrations: packaged(), sql})
      expect(r.appSchema).toBe('nchat')
      const rows = await sql<
        {schema: string}[]
      >`select distinct n.nspname as schema from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.relname in ('nchat_identity_keys', 'nchat_prekey_bundles', 'nchat_calls', 'nchat_streams')`
      expect(rows.map((x) => x.schema)).toEqual(['nchat'])
      const [{n}] =
        await sql`select count(*)::int as n from information_schema.columns where table_schema = 'nchat' and table_name = 'nchat_messages' and column_name = 'is_encrypted'`
      expect(n).toBe(1)
    } finally {
      await sql.end()
    }
  })

  it("converts a database where the guide's SQL was run by hand, and never drops its pre-existing tables on failure", async () => {
    const db = await fresh()
    await applyGuideByHand(db.name, db.schema)
    const sql = engineSql(db.name)
    try {
      const plan = await readPlan(sql, packaged())
      expect(plan.migrations.find((m) => m.version === 14)!.preexisting).toContain('nchat_identity_keys')
      await migrateUp({log: silent, migrations: packaged(), sql})
      const [kinds] = await sql`select
        (select relkind from pg_class where relname = 'nchat_prekey_bundles') as kind,
        (select count(*)::int from pg_trigger where tgname like 'refresh_prekey_bundles%') as triggers,
        (select count(*)::int from pg_proc where proname = 'refresh_prekey_bundles') as funcs`
      expect(kinds).toEqual({funcs: 0, kind: 'v', triggers: 0})
    } finally {
      await sql.end()
    }
  })
})

describe('the online parts (CONCURRENTLY, VALIDATE) undone behind the ledger', () => {
  it('an applied migration whose concurrent index became INVALID is partial, and migrate rebuilds it', async () => {
    const db = await fresh()
    const sql = engineSql(db.name)
    try {
      await migrateUp({log: silent, migrations: packaged(), sql})
      await sql`update pg_index set indisvalid = false where indexrelid = 'idx_messages_encrypted'::regclass`
      await sql`alter table nchat_messages drop constraint fk_messages_sender_device`
      await sql`alter table nchat_messages add constraint fk_messages_sender_device foreign key (sender_device_id) references nchat_identity_keys(device_id) on delete set null not valid`
      const plan = await readPlan(sql, packaged())
      expect(plan.migrations.find((m) => m.version === 14)!.state).toBe('partial')
      const logs: string[] = []
      const r = await migrateUp({log: (l) => logs.push(l), migrations: packaged(), sql})
      expect(r.migrations.map((m) => m.version)).toEqual([14])
      const [row] = await sql`select
        (select indisvalid from pg_index where indexrelid = 'idx_messages_encrypted'::regclass) as valid,
        (select convalidated from pg_constraint where conname = 'fk_messages_sender_device') as validated`
      expect(row).toEqual({valid: true, validated: true})
      expect((await readPlan(sql, packaged())).toApply).toEqual([])
    } finally {
      await sql.end()
    }
  })
})
