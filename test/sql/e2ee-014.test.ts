// 014: without 013, on top of 013, on a half-applied 014, on a database where the guide SQL was
// run by hand (converted), the guide names, and 014 down with and without 013 applied.
import {describe, expect, it} from 'vitest'
import {loadMigrations} from '../../src/migrations/files.js'
import {tablesCreatedBy} from '../../src/migrations/plan.js'
import {
  V030_TABLES,
  applyFileAsEngine,
  applyFileWithPsql,
  applyGuideByHand,
  connect,
  createV030Database,
  dataDigest,
  migrationFile,
  schemaDump,
  splitMigration,
} from '../helpers/fixture.js'
import {readFile, writeFile, mkdtemp, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import path from 'node:path'

const T = 120_000

/** The seven E2EE tables, as the engine derives them from 014. */
const E2EE_TABLES = tablesCreatedBy(loadMigrations().filter((m) => m.version === 14))

/** Every index and constraint the guide SQL writes (except the materialized view indexes). */
const GUIDE_INDEXES = [
  'idx_user_master_keys_user_id',
  'idx_identity_keys_user_id',
  'idx_identity_keys_device_id',
  'idx_signed_prekeys_device_id',
  'idx_signed_prekeys_active',
  'idx_signed_prekeys_rotation',
  'idx_one_time_prekeys_device_id',
  'idx_one_time_prekeys_available',
  'idx_one_time_prekeys_consumed',
  'idx_signal_sessions_device_id',
  'idx_signal_sessions_peer',
  'idx_signal_sessions_active',
  'idx_signal_sessions_last_message',
  'idx_safety_numbers_user_id',
  'idx_safety_numbers_peer_user_id',
  'idx_safety_numbers_verified',
  'idx_e2ee_audit_log_user_id',
  'idx_e2ee_audit_log_device_id',
  'idx_e2ee_audit_log_event_type',
  'idx_e2ee_audit_log_created_at',
  'idx_messages_encrypted',
  'idx_messages_sender_device',
  'idx_channels_enforce_encryption',
]

interface Catalog {
  indexes: Record<string, {def: string; valid: boolean}>
  constraints: Record<string, {def: string; validated: boolean}>
  relkinds: Record<string, string>
  functions: string[]
  triggers: string[]
}

async function catalog(db: string, schema = 'public'): Promise<Catalog> {
  // search_path = schema, so definitions print unqualified names whatever the schema.
  const sql = connect(db, {schema})
  try {
    const idx = await sql<{name: string; def: string; valid: boolean}[]>`
      SELECT i.relname AS name, pg_get_indexdef(x.indexrelid) AS def, x.indisvalid AS valid
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_namespace n ON n.oid = i.relnamespace
       WHERE n.nspname = ${schema}`
    const con = await sql<{name: string; def: string; validated: boolean}[]>`
      SELECT c.conname AS name, pg_get_constraintdef(c.oid) AS def, c.convalidated AS validated
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
       WHERE n.nspname = ${schema}`
    const rel = await sql<{relname: string; relkind: string}[]>`
      SELECT c.relname, c.relkind::text AS relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = ${schema} AND c.relkind IN ('r', 'v', 'm')`
    const fn = await sql<{proname: string}[]>`
      SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = ${schema}`
    const tg = await sql<{tgname: string}[]>`SELECT tgname FROM pg_trigger WHERE NOT tgisinternal`
    return {
      indexes: Object.fromEntries(idx.map((r) => [r.name, {def: r.def, valid: r.valid}])),
      constraints: Object.fromEntries(con.map((r) => [r.name, {def: r.def, validated: r.validated}])),
      relkinds: Object.fromEntries(rel.map((r) => [r.relname, r.relkind])),
      functions: fn.map((r) => r.proname).sort(),
      triggers: tg.map((r) => r.tgname).sort(),
    }
  } finally {
    await sql.end()
  }
}

/** Inserts one user device with keys; returns the device id. */
async function seedDevice(db: string, device: string, otps: number, schema = 'public') {
  const sql = connect(db, {schema})
  try {
    await sql`INSERT INTO nchat_identity_keys (device_id, user_id, identity_key_public, identity_key_private_encrypted)
              SELECT ${device}, id, '\\x01'::bytea, '\\x02'::bytea FROM nchat_users ORDER BY email LIMIT 1`
    await sql`INSERT INTO nchat_signed_prekeys (device_id, signed_prekey_id, signed_prekey_public, signed_prekey_private_encrypted, signature)
              VALUES (${device}, 1, '\\x03', '\\x04', '\\x05')`
    if (otps > 0)
      await sql`INSERT INTO nchat_one_time_prekeys (device_id, prekey_id, prekey_public, prekey_private_encrypted, created_at)
                SELECT ${device}, k, int4send(k), '\\x06', timestamptz '2026-01-01' + k * interval '1 second'
                  FROM generate_series(1, ${otps}) k`
  } finally {
    await sql.end()
  }
}

function expectFinal014(c: Catalog) {
  for (const t of E2EE_TABLES) expect(c.relkinds[t], t).toBe('r')
  expect(c.relkinds.nchat_prekey_bundles).toBe('v')
  for (const i of [...GUIDE_INDEXES, 'idx_signed_prekeys_newest', 'idx_one_time_prekeys_next']) {
    expect(c.indexes[i], i).toBeDefined()
    expect(c.indexes[i].valid, i).toBe(true)
  }
  expect(c.indexes.idx_prekey_bundles_device).toBeUndefined()
  expect(c.indexes.idx_prekey_bundles_user).toBeUndefined()
  const fk = c.constraints.fk_messages_sender_device
  expect(fk.def).toBe('FOREIGN KEY (sender_device_id) REFERENCES nchat_identity_keys(device_id) ON DELETE SET NULL')
  expect(fk.validated).toBe(true)
  expect(c.constraints.nchat_safety_numbers_verification_method_check.def).toBe(
    "CHECK (((verification_method IS NULL) OR (verification_method = ANY (ARRAY['manual'::text, 'qr_code'::text, 'out_of_band'::text]))))",
  )
  expect(c.constraints.nchat_safety_numbers_safety_number_check).toBeDefined()
  expect(c.constraints.nchat_e2ee_audit_log_event_type_check).toBeDefined()
  expect(c.functions).toContain('nchat_claim_prekey_bundle')
  expect(c.functions).not.toContain('refresh_prekey_bundles')
  expect(c.triggers.filter((t) => t.startsWith('refresh_prekey_bundles'))).toEqual([])
}

describe('014_e2ee_system', () => {
  it(
    'without 013, on top of 013 and after the guide by hand: the same final schema',
    async () => {
      const a = await createV030Database({messages: 200})
      const b = await createV030Database({messages: 200})
      const c = await createV030Database({messages: 200})
      try {
        await applyFileAsEngine(a.name, migrationFile(14))
        await applyFileAsEngine(b.name, migrationFile(13))
        await applyFileAsEngine(b.name, migrationFile(14), {appliedVersions: '13'})
        await applyGuideByHand(c.name)
        await applyFileAsEngine(c.name, migrationFile(14))

        const dumpA = await schemaDump(a.name)
        expect(await schemaDump(b.name)).toBe(dumpA)
        expect(await schemaDump(c.name)).toBe(dumpA)
        expectFinal014(await catalog(a.name))
        expectFinal014(await catalog(c.name))
      } finally {
        await Promise.all([a.drop(), b.drop(), c.drop()])
      }
    },
    T,
  )

  it(
    'every index and constraint the guide SQL writes exists after 014, with the guide definition (D1 excepted)',
    async () => {
      const guide = await createV030Database({messages: 10})
      const ours = await createV030Database({messages: 10})
      try {
        await applyGuideByHand(guide.name)
        await applyFileAsEngine(ours.name, migrationFile(14))
        const g = await catalog(guide.name)
        const o = await catalog(ours.name)
        // Sanity: the guide by hand really made the D2 objects.
        expect(g.relkinds.nchat_prekey_bundles).toBe('m')
        expect(g.triggers.filter((t) => t.startsWith('refresh_prekey_bundles'))).toHaveLength(3)
        expect(g.functions).toContain('refresh_prekey_bundles')
        for (const [name, {def}] of Object.entries(g.indexes)) {
          if (name.startsWith('idx_prekey_bundles_')) continue
          expect(o.indexes[name]?.def, name).toBe(def)
        }
        for (const [name, {def}] of Object.entries(g.constraints)) {
          if (name === 'nchat_safety_numbers_verification_method_check') {
            expect(def).toContain('NULL::text')
            expect(o.constraints[name].def).not.toBe(def)
            continue
          }
          expect(o.constraints[name]?.def, name).toBe(def)
        }
        // The columns too: same names, types, defaults, nullability, order. The application's columns
        // (NCHAT-APP.md) come after the guide's in each table; they are compared apart.
        const cols = async (db: string) => {
          const sql = connect(db)
          try {
            return await sql`SELECT table_name, column_name, data_type, column_default, is_nullable, ordinal_position
                               FROM information_schema.columns WHERE table_schema = 'public'
                                AND table_name <> 'nchat_prekey_bundles' ORDER BY 1, 6`
          } finally {
            await sql.end()
          }
        }
        const guideCols = await cols(guide.name)
        const key = (r: {table_name: string; column_name: string}) => `${r.table_name}.${r.column_name}`
        const guideKeys = new Set(guideCols.map(key))
        const ourCols = await cols(ours.name)
        expect(ourCols.filter((r) => guideKeys.has(key(r)))).toEqual(guideCols)
        // Every application column comes after all guide columns of its table.
        for (const r of ourCols.filter((c) => !guideKeys.has(key(c)))) {
          const last = Math.max(...guideCols.filter((g) => g.table_name === r.table_name).map((g) => g.ordinal_position))
          expect(r.ordinal_position, key(r)).toBeGreaterThan(last)
        }
        expect(ourCols.filter((r) => !guideKeys.has(key(r))).map(key)).toContain('nchat_signal_sessions.user_id')
      } finally {
        await Promise.all([guide.drop(), ours.drop()])
      }
    },
    T,
  )

  for (const schema of ['public', 'nchat'] as const) {
    it(
      `converts a hand-run guide database holding keys (schema ${schema}): no matview, triggers or refresh function, D1 fixed, view works`,
      async () => {
        const db = await createV030Database({messages: 100, schema})
        try {
          await applyGuideByHand(db.name, schema)
          await seedDevice(db.name, 'dev-a', 3, schema)
          const sql = connect(db.name, {schema})
          try {
            // The guide matview is refreshed by its triggers.
            const [mv] = await sql`SELECT count(*)::int AS n FROM nchat_prekey_bundles`
            expect(mv.n).toBe(1)
            // The D1 bug is present before the conversion.
            await sql`INSERT INTO nchat_safety_numbers (user_id, peer_user_id, safety_number, verification_method)
                    SELECT a.id, b.id, repeat('1', 60), NULL FROM nchat_users a, nchat_users b
                     WHERE a.email = 'user1@example.test' AND b.email = 'user2@example.test'`
          } finally {
            await sql.end()
          }

          await applyFileAsEngine(db.name, migrationFile(14), {schema})
          expectFinal014(await catalog(db.name, schema))
          if (schema === 'nchat') expect((await catalog(db.name, 'public')).relkinds).toEqual({})

          const s = connect(db.name, {schema})
          try {
            const rows = await s`SELECT device_id, signed_prekey_id, one_time_prekey_id FROM nchat_prekey_bundles`
            expect(rows).toEqual([{device_id: 'dev-a', signed_prekey_id: 1, one_time_prekey_id: 1}])
            await s`UPDATE nchat_one_time_prekeys SET is_consumed = TRUE, consumed_at = now() WHERE prekey_id = 1`
            const [r] = await s`SELECT one_time_prekey_id FROM nchat_prekey_bundles WHERE device_id = 'dev-a'`
            expect(r.one_time_prekey_id).toBe(2)
            await expect(s`UPDATE nchat_safety_numbers SET verification_method = 'telepathy'`).rejects.toThrow(/nchat_safety_numbers_verification_method_check/)
          } finally {
            await s.end()
          }

          // Idempotent on the converted state.
          const dump = await schemaDump(db.name)
          await applyFileAsEngine(db.name, migrationFile(14), {schema})
          expect(await schemaDump(db.name)).toBe(dump)
        } finally {
          await db.drop()
        }
      },
      T,
    )
  }

  it(
    'converts a database where the guide SQL was piped through psql without ON_ERROR_STOP on top of 013',
    async () => {
      const db = await createV030Database({messages: 50})
      const ref = await createV030Database({messages: 50})
      try {
        await applyFileAsEngine(db.name, migrationFile(13))
        // CREATE TABLE / CREATE INDEX fail (exist already), the matview, triggers, ALTERs go in.
        const {stderr} = await applyGuideByHand(db.name, 'public', {onErrorStop: false})
        expect(stderr).toMatch(/already exists/)
        const before = await catalog(db.name)
        expect(before.relkinds.nchat_prekey_bundles).toBe('m')
        await applyFileAsEngine(db.name, migrationFile(14), {appliedVersions: '13'})
        expectFinal014(await catalog(db.name))

        await applyFileAsEngine(ref.name, migrationFile(13))
        await applyFileAsEngine(ref.name, migrationFile(14), {appliedVersions: '13'})
        expect(await schemaDump(db.name)).toBe(await schemaDump(ref.name))
      } finally {
        await Promise.all([db.drop(), ref.drop()])
      }
    },
    T,
  )

  it(
    'refuses (and changes nothing) when the buggy D1 check let invalid values in',
    async () => {
      const db = await createV030Database({messages: 10})
      try {
        await applyGuideByHand(db.name)
        const sql = connect(db.name)
        try {
          await sql`INSERT INTO nchat_safety_numbers (user_id, peer_user_id, safety_number, verification_method)
                    SELECT a.id, b.id, repeat('1', 60), 'telepathy' FROM nchat_users a, nchat_users b
                     WHERE a.email = 'user1@example.test' AND b.email = 'user2@example.test'`
        } finally {
          await sql.end()
        }
        const before = await schemaDump(db.name)
        await expect(applyFileAsEngine(db.name, migrationFile(14))).rejects.toThrow(/invalid verification_method/)
        expect(await schemaDump(db.name)).toBe(before)
      } finally {
        await db.drop()
      }
    },
    T,
  )

  it(
    'completes a half-applied 014 (transaction committed, tail interrupted after its first statement)',
    async () => {
      const db = await createV030Database({messages: 300})
      const ref = await createV030Database({messages: 300})
      const dir = await mkdtemp(path.join(tmpdir(), 'e2ee-sql-'))
      try {
        const {transactional, tail} = splitMigration(await readFile(migrationFile(14), 'utf8'))
        const partial = path.join(dir, 'partial.sql')
        // Transactional part plus the first tail statement only, as if interrupted after it.
        await writeFile(partial, `${transactional}\n${tail[0]};\n`)
        await applyFileWithPsql(db.name, partial)
        const c = await catalog(db.name)
        expect(c.constraints.fk_messages_sender_device.validated).toBe(false)
        expect(c.indexes.idx_messages_sender_device).toBeUndefined()

        await applyFileAsEngine(db.name, migrationFile(14))
        await applyFileAsEngine(ref.name, migrationFile(14))
        expect(await schemaDump(db.name)).toBe(await schemaDump(ref.name))
        expectFinal014(await catalog(db.name))
      } finally {
        await rm(dir, {recursive: true, force: true})
        await Promise.all([db.drop(), ref.drop()])
      }
    },
    T,
  )

  it(
    'D4: an INVALID index left by an interrupted build is dropped and built again',
    async () => {
      const db = await createV030Database({messages: 300})
      try {
        await applyFileAsEngine(db.name, migrationFile(14))
        const good = (await catalog(db.name)).indexes.idx_messages_encrypted.def
        const sql = connect(db.name)
        try {
          await sql`DROP INDEX idx_messages_encrypted`
          // A failed build leaves an INVALID index under the name (duplicates break UNIQUE).
          await expect(sql`CREATE UNIQUE INDEX CONCURRENTLY idx_messages_encrypted ON nchat_messages(is_encrypted)`).rejects.toThrow(
            /could not create unique index/,
          )
        } finally {
          await sql.end()
        }
        const broken = (await catalog(db.name)).indexes.idx_messages_encrypted
        expect(broken.valid).toBe(false)

        await applyFileAsEngine(db.name, migrationFile(14))
        const fixed = (await catalog(db.name)).indexes.idx_messages_encrypted
        expect(fixed).toEqual({def: good, valid: true})
      } finally {
        await db.drop()
      }
    },
    T,
  )

  it(
    'the foreign key is added NOT VALID in the transaction and validated by the tail',
    async () => {
      const db = await createV030Database({messages: 100})
      try {
        const {transactional} = splitMigration(await readFile(migrationFile(14), 'utf8'))
        const sql = connect(db.name)
        try {
          await sql.begin(async (tx) => {
            await tx.unsafe(transactional)
            const [r] = await tx`SELECT convalidated FROM pg_constraint WHERE conname = 'fk_messages_sender_device'`
            expect(r.convalidated).toBe(false)
            // Still enforced for new rows.
            await expect(
              tx.savepoint((sp) => sp`UPDATE nchat_messages SET sender_device_id = 'nope' WHERE id = (SELECT id FROM nchat_messages ORDER BY id LIMIT 1)`),
            ).rejects.toThrow(/fk_messages_sender_device/)
          })
        } finally {
          await sql.end()
        }
        await applyFileAsEngine(db.name, migrationFile(14))
        const c = await catalog(db.name)
        expect(c.constraints.fk_messages_sender_device.validated).toBe(true)
      } finally {
        await db.drop()
      }
    },
    T,
  )

  it(
    'ON DELETE SET NULL on sender_device_id, and new columns default as the guide says',
    async () => {
      const db = await createV030Database({messages: 20})
      try {
        await applyFileAsEngine(db.name, migrationFile(14))
        await seedDevice(db.name, 'dev-x', 0)
        const sql = connect(db.name)
        try {
          await sql`UPDATE nchat_messages SET sender_device_id = 'dev-x', is_encrypted = TRUE, encrypted_payload = '\\xff'
                     WHERE id IN (SELECT id FROM nchat_messages ORDER BY id LIMIT 3)`
          const [a] = await sql`SELECT count(*)::int AS n FROM nchat_messages WHERE sender_device_id = 'dev-x'`
          expect(a.n).toBe(3)
          await sql`DELETE FROM nchat_identity_keys WHERE device_id = 'dev-x'`
          const [b] = await sql`SELECT count(*)::int AS n, count(sender_device_id)::int AS dev
                                  FROM nchat_messages WHERE is_encrypted`
          expect(b).toEqual({n: 3, dev: 0})
        } finally {
          await sql.end()
        }
      } finally {
        await db.drop()
      }
    },
    T,
  )

  describe('014 down', () => {
    it(
      'with 013 applied: keeps the seven tables (013 state); without: drops them (v0.3.0 state)',
      async () => {
        const db = await createV030Database({messages: 100})
        try {
          const v030 = await schemaDump(db.name)
          const data = await dataDigest(db.name, V030_TABLES)
          await applyFileAsEngine(db.name, migrationFile(13))
          const after013 = await schemaDump(db.name)
          await applyFileAsEngine(db.name, migrationFile(14), {appliedVersions: '13'})
          await seedDevice(db.name, 'dev-keep', 2)

          await applyFileAsEngine(db.name, migrationFile(14, 'down'), {appliedVersions: '13,14'})
          expect(await schemaDump(db.name)).toBe(after013)
          const sql = connect(db.name)
          try {
            const [r] = await sql`SELECT count(*)::int AS n FROM nchat_one_time_prekeys`
            expect(r.n).toBe(2)
          } finally {
            await sql.end()
          }

          // 014 again, then down with 013 not applied (unset setting): the tables go.
          await applyFileAsEngine(db.name, migrationFile(14), {appliedVersions: '13'})
          await applyFileWithPsql(db.name, migrationFile(14, 'down'))
          expect(await schemaDump(db.name)).toBe(v030)
          expect(await dataDigest(db.name, V030_TABLES)).toEqual(data)
        } finally {
          await db.drop()
        }
      },
      T,
    )

    it(
      'reads the applied versions list tolerantly (spaces, leading zeros) and exactly (113 is not 13)',
      async () => {
        const cases: Array<[string, boolean]> = [
          ['13,14', true],
          ['013, 014', true],
          ['14,113', false],
          ['', false],
          ['14', false],
        ]
        for (const [list, keeps] of cases) {
          const db = await createV030Database({messages: 0})
          try {
            await applyFileAsEngine(db.name, migrationFile(14))
            await applyFileAsEngine(db.name, migrationFile(14, 'down'), {appliedVersions: list})
            const c = await catalog(db.name)
            expect(c.relkinds.nchat_identity_keys === 'r', `list ${JSON.stringify(list)}`).toBe(keeps)
            expect(c.relkinds.nchat_prekey_bundles).toBeUndefined()
            expect(c.constraints.fk_messages_sender_device).toBeUndefined()
          } finally {
            await db.drop()
          }
        }
      },
      T,
    )

    it(
      'after converting a hand-run database, gives back v0.3.0',
      async () => {
        const db = await createV030Database({messages: 100})
        try {
          const v030 = await schemaDump(db.name)
          await applyGuideByHand(db.name)
          await applyFileAsEngine(db.name, migrationFile(14))
          await applyFileAsEngine(db.name, migrationFile(14, 'down'), {appliedVersions: '14'})
          expect(await schemaDump(db.name)).toBe(v030)
        } finally {
          await db.drop()
        }
      },
      T,
    )
  })
})
