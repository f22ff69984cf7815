// 013..016 up on a fresh v0.3.0 database, idempotency, and the down files giving back v0.3.0.
import {describe, expect, it} from 'vitest'

import {loadMigrations} from '../../src/migrations/files.js'
import {tablesCreatedBy} from '../../src/migrations/plan.js'
import {
  MIGRATIONS,
  V030_TABLES,
  applyFileAsEngine,
  applyFileWithPsql,
  connect,
  createV030Database,
  dataDigest,
  migrationFile,
  schemaDump,
} from '../helpers/fixture.js'

const T = 120_000

/** The tables 013-016 create, as the engine derives them from the files (checked against the database below). */
const NEW_TABLES = tablesCreatedBy(loadMigrations())

type Runner = 'psql' | 'engine'

async function upAll(db: string, schema: string, runner: Runner) {
  const applied: number[] = []
  for (const m of MIGRATIONS) {
    const opts = {schema, appliedVersions: applied.join(',')}
    if (runner === 'psql') await applyFileWithPsql(db, migrationFile(m.version), opts)
    else await applyFileAsEngine(db, migrationFile(m.version), opts)
    applied.push(m.version)
  }
}

async function downAll(db: string, schema: string, runner: Runner) {
  const applied = MIGRATIONS.map((m) => m.version as number)
  for (const m of [...MIGRATIONS].reverse()) {
    // The engine publishes what is applied while the down file runs (the version itself included).
    const opts = {schema, appliedVersions: applied.join(',')}
    if (runner === 'psql') await applyFileWithPsql(db, migrationFile(m.version, 'down'), opts)
    else await applyFileAsEngine(db, migrationFile(m.version, 'down'), opts)
    applied.pop()
  }
}

async function relations(db: string, schema: string) {
  const sql = connect(db)
  try {
    const rows = await sql<{relname: string; relkind: string}[]>`
      SELECT c.relname, c.relkind::text AS relkind
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = ${schema} AND c.relkind IN ('r', 'v', 'm')
       ORDER BY c.relname`
    return Object.fromEntries(rows.map((r) => [r.relname, r.relkind]))
  } finally {
    await sql.end()
  }
}

describe('013..016 up and down', () => {
  for (const schema of ['public', 'nchat'] as const) {
    for (const runner of ['engine', 'psql'] as const) {
      it(
        `schema ${schema}, ${runner}: up, up again, down in reverse order gives back v0.3.0 schema and data`,
        async () => {
          const db = await createV030Database({schema})
          try {
            const relsBefore = await relations(db.name, schema)
            const dumpBefore = await schemaDump(db.name)
            const dataBefore = await dataDigest(db.name, V030_TABLES)
            expect(dumpBefore).toContain(`CREATE TABLE ${schema}.nchat_messages`)
            expect(Number(dataBefore.nchat_messages.split(':')[0])).toBe(2000)

            await upAll(db.name, schema, runner)
            const rels = await relations(db.name, schema)
            for (const t of NEW_TABLES) expect(rels[t], t).toBe('r')
            // The derived list is exactly what the files made: no table more, none missing.
            const made = Object.keys(rels).filter((t) => rels[t] === 'r' && !(t in relsBefore) && t !== 'schema_migrations')
            expect(made.sort()).toEqual([...NEW_TABLES].sort())
            expect(rels.nchat_prekey_bundles).toBe('v')
            const dumpUp = await schemaDump(db.name)
            expect(dumpUp).not.toBe(dumpBefore)
            // Nothing leaked into another schema.
            if (schema === 'nchat') {
              const pub = await relations(db.name, 'public')
              expect(Object.keys(pub)).toEqual([])
            }

            // Idempotent: the whole chain again changes nothing.
            await upAll(db.name, schema, runner)
            expect(await schemaDump(db.name)).toBe(dumpUp)

            // v0.3.0 data untouched by the upgrade, new columns at their defaults.
            expect(await dataDigest(db.name, V030_TABLES)).toEqual(dataBefore)
            const sql = connect(db.name, {schema})
            try {
              const [m] = await sql`SELECT count(*)::int AS n, count(*) FILTER (WHERE is_encrypted)::int AS enc,
                                           count(sender_device_id)::int AS dev FROM nchat_messages`
              expect(m).toEqual({n: 2000, enc: 0, dev: 0})
              const [c] = await sql`SELECT count(*) FILTER (WHERE enforce_encryption)::int AS n FROM nchat_channels`
              expect(c.n).toBe(0)
            } finally {
              await sql.end()
            }

            await downAll(db.name, schema, runner)
            expect(await schemaDump(db.name)).toBe(dumpBefore)
            expect(await dataDigest(db.name, V030_TABLES)).toEqual(dataBefore)

            // Down files are idempotent too.
            await downAll(db.name, schema, runner)
            expect(await schemaDump(db.name)).toBe(dumpBefore)
          } finally {
            await db.drop()
          }
        },
        T,
      )
    }
  }

  it(
    'every ledger shape is left alone by the files (the engine writes it)',
    async () => {
      for (const ledger of ['guide', 'varchar', 'bigint-name', 'none'] as const) {
        const db = await createV030Database({ledger, messages: 100})
        try {
          const before = await dataDigest(db.name, ledger === 'none' ? [] : ['schema_migrations'])
          await upAll(db.name, 'public', 'engine')
          expect(await dataDigest(db.name, ledger === 'none' ? [] : ['schema_migrations'])).toEqual(before)
          const sql = connect(db.name)
          try {
            const [r] = await sql`SELECT to_regclass('schema_migrations') IS NOT NULL AS present`
            expect(r.present).toBe(ledger !== 'none')
            if (ledger !== 'none') {
              const [n] = await sql`SELECT count(*)::int AS n FROM schema_migrations`
              expect(n.n).toBe(12)
            }
          } finally {
            await sql.end()
          }
        } finally {
          await db.drop()
        }
      }
    },
    T,
  )

  it(
    'a failing statement in the transactional part leaves nothing behind (engine path)',
    async () => {
      const db = await createV030Database({messages: 10})
      try {
        const before = await schemaDump(db.name)
        // A table squatting on the view name makes 014 fail after it created the seven tables.
        const sql = connect(db.name)
        await sql`CREATE TABLE nchat_prekey_bundles (x int)`
        await sql.end()
        const broken = await schemaDump(db.name)
        await expect(applyFileAsEngine(db.name, migrationFile(14))).rejects.toThrow(/nchat_prekey_bundles/)
        expect(await schemaDump(db.name)).toBe(broken)
        expect(broken).not.toBe(before)
      } finally {
        await db.drop()
      }
    },
    T,
  )
})
