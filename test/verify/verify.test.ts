// verifyDatabase against real databases: a clean 016 (public and nchat), each kind of sabotage, data and row
// counts, upTo, and that it leaves nothing behind. Every test makes and drops its own database.
import {describe, expect, it} from 'vitest'

import type {VerifyReport} from '../../src/verify/report.js'
import {verifyDatabase} from '../../src/verify/verify-database.js'
import {loadMigrations} from '../../src/migrations/files.js'
import {migrateUp} from '../../src/migrations/runner.js'
import {applyGuideByHand, createV030Database} from '../helpers/fixture.js'
import {migratedDatabase, pool, T} from './_db.js'

function failuresMatching(report: VerifyReport, re: RegExp): string[] {
  return report.failures.filter((f) => re.test(f))
}

function show(report: VerifyReport): string {
  return JSON.stringify(
    report.checks.filter((c) => c.status !== 'ok'),
    null,
    2,
  )
}

describe('verifyDatabase', () => {
  for (const schema of ['public', 'nchat'] as const) {
    it(
      `a fresh database migrated to 016 in schema ${schema} passes with no failure and no warning`,
      async () => {
        const m = await migratedDatabase(16, {schema})
        try {
          const report = await verifyDatabase(m.sql, {schema: m.schema})
          expect(report.failures, show(report)).toEqual([])
          expect(report.ok).toBe(true)
          expect(
            report.checks.filter((c) => c.status !== 'ok'),
            show(report),
          ).toEqual([])
          const byName = new Map(report.checks.map((c) => [c.name, c]))
          for (const name of [
            'table nchat_calls',
            'table nchat_stream_viewers',
            'view nchat_prekey_bundles',
            'index idx_signal_sessions_peer',
            'index idx_messages_encrypted',
            'foreign key fk_messages_sender_device',
            'check constraint nchat_safety_numbers_verification_method_check',
            'function nchat_claim_prekey_bundle(text)',
            'column nchat_messages.is_encrypted',
            'absent: function refresh_prekey_bundles',
            'absent: trigger refresh_prekey_bundles_on_signed_prekey',
            'data nchat_messages',
            'data nchat_one_time_prekeys',
            'bundle view freshness',
            'query plan: bundle fetch',
            'query plan: session lookup',
            'query plan: available prekeys',
            'query plan: verified safety numbers',
          ]) {
            expect(byName.get(name)?.status, name).toBe('ok')
          }
          expect(byName.get('foreign key fk_messages_sender_device')!.detail).toMatch(/ON DELETE SET NULL, validated/)
          expect(byName.get('query plan: session lookup')!.detail).toMatch(/idx_signal_sessions_\w+ on nchat_signal_sessions/)
          expect(byName.get('query plan: bundle fetch')!.detail).toMatch(/on nchat_identity_keys.*on nchat_signed_prekeys.*on nchat_one_time_prekeys/)
          // Every check is one sentence.
          for (const c of report.checks) expect(c.detail).toMatch(/^[^\n]+[.!?]$/)
        } finally {
          await m.done()
        }
      },
      T,
    )
  }

  it(
    'a dropped index fails, naming it',
    async () => {
      const m = await migratedDatabase(16)
      try {
        await m.sql.unsafe('DROP INDEX idx_signal_sessions_peer')
        const report = await verifyDatabase(m.sql, {schema: m.schema})
        expect(report.ok).toBe(false)
        expect(report.failures, show(report)).toHaveLength(1)
        expect(report.failures[0]).toMatch(/^index idx_signal_sessions_peer on nchat_signal_sessions is missing \(013_e2ee_system creates it/)
      } finally {
        await m.done()
      }
    },
    T,
  )

  it(
    'an INVALID index (interrupted CONCURRENTLY build) fails, naming it as invalid',
    async () => {
      const m = await migratedDatabase(16)
      try {
        await m.sql.unsafe(`UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'idx_messages_encrypted'::regclass`)
        const report = await verifyDatabase(m.sql, {schema: m.schema})
        expect(report.ok).toBe(false)
        expect(report.failures, show(report)).toHaveLength(1)
        expect(report.failures[0]).toMatch(/^index idx_messages_encrypted on nchat_messages is INVALID \(an interrupted CREATE INDEX CONCURRENTLY build\)/)
        expect(report.failures[0]).toMatch(/nself db e2ee migrate again to rebuild it, or REINDEX INDEX CONCURRENTLY public\.idx_messages_encrypted\.$/)
      } finally {
        await m.done()
      }
    },
    T,
  )

  it(
    'a foreign key left NOT VALID fails, saying it is not validated',
    async () => {
      const m = await migratedDatabase(16)
      try {
        await m.sql.unsafe('ALTER TABLE nchat_messages DROP CONSTRAINT fk_messages_sender_device')
        await m.sql.unsafe(
          'ALTER TABLE nchat_messages ADD CONSTRAINT fk_messages_sender_device FOREIGN KEY (sender_device_id) REFERENCES nchat_identity_keys(device_id) ON DELETE SET NULL NOT VALID',
        )
        const report = await verifyDatabase(m.sql, {schema: m.schema})
        expect(report.ok).toBe(false)
        expect(report.failures, show(report)).toHaveLength(1)
        expect(report.failures[0]).toMatch(/^foreign key fk_messages_sender_device on nchat_messages is NOT VALID \(never validated/)
        expect(report.failures[0]).toMatch(/VALIDATE CONSTRAINT fk_messages_sender_device/)
      } finally {
        await m.done()
      }
    },
    T,
  )

  it(
    'a foreign key with the wrong delete rule fails, naming both rules',
    async () => {
      const m = await migratedDatabase(16)
      try {
        await m.sql.unsafe('ALTER TABLE nchat_messages DROP CONSTRAINT fk_messages_sender_device')
        await m.sql.unsafe(
          'ALTER TABLE nchat_messages ADD CONSTRAINT fk_messages_sender_device FOREIGN KEY (sender_device_id) REFERENCES nchat_identity_keys(device_id) ON DELETE CASCADE',
        )
        const report = await verifyDatabase(m.sql, {schema: m.schema})
        expect(report.ok).toBe(false)
        expect(report.failures, show(report)).toHaveLength(1)
        expect(report.failures[0]).toMatch(
          /^foreign key fk_messages_sender_device on nchat_messages differs from 014_e2ee_system: it has ON DELETE CASCADE, expected ON DELETE SET NULL\.$/,
        )
      } finally {
        await m.done()
      }
    },
    T,
  )

  it(
    'an unnamed foreign key of a new table with the wrong rule is found by (table, columns) and fails',
    async () => {
      const m = await migratedDatabase(16)
      try {
        await m.sql.unsafe('ALTER TABLE nchat_signed_prekeys DROP CONSTRAINT nchat_signed_prekeys_device_id_fkey')
        await m.sql.unsafe(
          'ALTER TABLE nchat_signed_prekeys ADD CONSTRAINT spk_dev FOREIGN KEY (device_id) REFERENCES nchat_identity_keys(device_id) ON DELETE RESTRICT',
        )
        const report = await verifyDatabase(m.sql, {schema: m.schema})
        expect(report.ok).toBe(false)
        expect(report.failures, show(report)).toHaveLength(1)
        expect(report.failures[0]).toMatch(
          /^foreign key spk_dev \(expected as nchat_signed_prekeys_device_id_fkey\) on nchat_signed_prekeys differs from 013_e2ee_system: it has ON DELETE RESTRICT, expected ON DELETE CASCADE/,
        )
      } finally {
        await m.done()
      }
    },
    T,
  )

  it(
    "the guide's buggy verification_method check (D1) fails, naming the constraint",
    async () => {
      const m = await migratedDatabase(16)
      try {
        await m.sql.unsafe('ALTER TABLE nchat_safety_numbers DROP CONSTRAINT nchat_safety_numbers_verification_method_check')
        await m.sql.unsafe(`ALTER TABLE nchat_safety_numbers ADD CHECK (verification_method IN ('manual', 'qr_code', 'out_of_band', NULL))`)
        const report = await verifyDatabase(m.sql, {schema: m.schema})
        expect(report.ok).toBe(false)
        expect(report.failures, show(report)).toHaveLength(1)
        expect(report.failures[0]).toMatch(
          /^check constraint nchat_safety_numbers_verification_method_check on nchat_safety_numbers is CHECK .*NULL::text.*expected CHECK \(\(\(verification_method IS NULL\) OR/,
        )
        expect(report.failures[0]).toMatch(/defect D1/)

        // The same buggy check under another name is found by its column and named.
        await m.sql.unsafe('ALTER TABLE nchat_safety_numbers DROP CONSTRAINT nchat_safety_numbers_verification_method_check')
        await m.sql.unsafe(`ALTER TABLE nchat_safety_numbers ADD CONSTRAINT chk_vm CHECK (verification_method IN ('manual', 'qr_code', 'out_of_band', NULL))`)
        const renamed = await verifyDatabase(m.sql, {schema: m.schema})
        expect(renamed.failures, show(renamed)).toHaveLength(1)
        expect(renamed.failures[0]).toMatch(
          /^check constraint chk_vm \(expected as nchat_safety_numbers_verification_method_check\) on nchat_safety_numbers is CHECK .*defect D1/,
        )
      } finally {
        await m.done()
      }
    },
    T,
  )

  it(
    "the guide's refresh function and trigger left behind fail, naming them",
    async () => {
      const m = await migratedDatabase(16)
      try {
        await m.sql.unsafe(`CREATE FUNCTION refresh_prekey_bundles() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$`)
        await m.sql.unsafe(
          'CREATE TRIGGER refresh_prekey_bundles_on_signed_prekey AFTER INSERT OR UPDATE OR DELETE ON nchat_signed_prekeys FOR EACH STATEMENT EXECUTE FUNCTION refresh_prekey_bundles()',
        )
        const report = await verifyDatabase(m.sql, {schema: m.schema})
        expect(report.ok).toBe(false)
        expect(failuresMatching(report, /^function refresh_prekey_bundles\(\) .*defect D2/), show(report)).toHaveLength(1)
        expect(failuresMatching(report, /^trigger refresh_prekey_bundles_on_signed_prekey on nchat_signed_prekeys .*still exists/)).toHaveLength(1)
        expect(report.failures).toHaveLength(2)
      } finally {
        await m.done()
      }
    },
    T,
  )

  it(
    "a bundle view that is not the migration's (two rows during rotation) fails the freshness check",
    async () => {
      const m = await migratedDatabase(16)
      try {
        // The guide's join: one row per active signed prekey. Same columns, so only the functional check sees it.
        await m.sql.unsafe(`CREATE OR REPLACE VIEW nchat_prekey_bundles AS
        SELECT ik.user_id, ik.device_id, ik.identity_key_public, sp.signed_prekey_id, sp.signed_prekey_public, sp.signature,
               otp.prekey_id AS one_time_prekey_id, otp.prekey_public AS one_time_prekey_public,
               ik.registration_id, sp.signature AS signed_prekey_signature, ik.last_used_at, ik.created_at
          FROM nchat_identity_keys ik
          JOIN nchat_signed_prekeys sp ON ik.device_id = sp.device_id AND sp.is_active = TRUE
          LEFT JOIN LATERAL (SELECT prekey_id, prekey_public FROM nchat_one_time_prekeys
                              WHERE device_id = ik.device_id AND is_consumed = FALSE ORDER BY created_at ASC LIMIT 1) otp ON TRUE`)
        const report = await verifyDatabase(m.sql, {schema: m.schema})
        expect(report.ok).toBe(false)
        expect(report.failures, show(report)).toEqual([
          'view nchat_prekey_bundles returned 2 rows for a device with two active signed prekeys, expected exactly one.',
        ])
      } finally {
        await m.done()
      }
    },
    T,
  )

  it(
    'a query that can no longer use an index fails its plan check, naming the query',
    async () => {
      const m = await migratedDatabase(16)
      try {
        for (const stmt of [
          'DROP INDEX idx_signal_sessions_device_id',
          'DROP INDEX idx_signal_sessions_active',
          'DROP INDEX idx_signal_sessions_last_message',
          'ALTER TABLE nchat_signal_sessions DROP CONSTRAINT nchat_signal_sessions_device_id_peer_user_id_peer_device_id_key',
          'ALTER TABLE nchat_signal_sessions DROP CONSTRAINT nchat_signal_sessions_user_id_device_id_peer_user_id_peer_key',
        ])
          await m.sql.unsafe(stmt)
        const report = await verifyDatabase(m.sql, {schema: m.schema})
        expect(report.ok).toBe(false)
        const plan = report.checks.find((c) => c.name === 'query plan: session lookup')!
        expect(plan.status, show(report)).toBe('fail')
        expect(plan.detail).toMatch(
          /^the session lookup query \(SELECT \* FROM nchat_signal_sessions WHERE device_id = \$1 AND is_active = TRUE\) uses no index/,
        )
        expect(report.checks.find((c) => c.name === 'query plan: available prekeys')!.status).toBe('ok')
      } finally {
        await m.done()
      }
    },
    T,
  )

  it(
    'a database in use passes: encrypted messages, enforcing channels, consumed prekeys, ended calls; an unreadable encrypted message fails naming the table',
    async () => {
      const m = await migratedDatabase(16)
      try {
        const [u] = await m.sql.unsafe<{id: string}[]>('SELECT id FROM nchat_users ORDER BY id LIMIT 1')
        await m.sql.unsafe(
          `INSERT INTO nchat_identity_keys (device_id, user_id, identity_key_public, identity_key_private_encrypted, registration_id)
                          VALUES ('in-use', $1, '\\x01', '\\x02', 7)`,
          [u.id],
        )
        await m.sql.unsafe(`INSERT INTO nchat_signed_prekeys (device_id, key_id, public_key, private_key_encrypted, signature, expires_at)
                          VALUES ('in-use', 1, '\\x03', '\\x04', '\\x05', now() + interval '7 days')`)
        await m.sql.unsafe(
          `INSERT INTO nchat_one_time_prekeys (device_id, key_id, public_key, private_key_encrypted) VALUES ('in-use', 1, '\\x06', '\\x07'), ('in-use', 2, '\\x08', '\\x09')`,
        )
        await m.sql.unsafe(`SELECT * FROM nchat_claim_prekey_bundle('in-use')`)
        await m.sql.unsafe(`UPDATE nchat_messages SET is_encrypted = true, encrypted_payload = '\\xdead', sender_device_id = 'in-use', encryption_version = 1
                           WHERE id IN (SELECT id FROM nchat_messages ORDER BY id LIMIT 5)`)
        await m.sql.unsafe('UPDATE nchat_channels SET enforce_encryption = true')
        await m.sql.unsafe(
          `INSERT INTO nchat_calls (call_id, type, status, caller_id, started_at, ended_at, duration)
                          VALUES ('ended-call', 'voice', 'ended', $1, now() - interval '1 minute', now(), 60)`,
          [u.id],
        )
        let report = await verifyDatabase(m.sql, {schema: m.schema})
        expect(report.failures, show(report)).toEqual([])
        expect(report.ok).toBe(true)

        await m.sql.unsafe(
          'UPDATE nchat_messages SET encrypted_payload = NULL WHERE id = (SELECT id FROM nchat_messages WHERE is_encrypted ORDER BY id LIMIT 1)',
        )
        report = await verifyDatabase(m.sql, {schema: m.schema})
        expect(report.failures, show(report)).toEqual(['nchat_messages has 1 encrypted messages without an encrypted payload (unreadable).'])
      } finally {
        await m.done()
      }
    },
    T,
  )

  it(
    'row counts different from the manifest fail with exactCounts and warn without',
    async () => {
      const m = await migratedDatabase(16)
      try {
        const [{users}] = await m.sql<{users: number}[]>`select count(*)::int as users from nchat_users`
        const [{channels}] = await m.sql<{channels: number}[]>`select count(*)::int as channels from nchat_channels`
        const [{messages}] = await m.sql<{messages: number}[]>`select count(*)::int as messages from nchat_messages`
        const same = {row_counts: {nchat_channels: channels, nchat_messages: messages, nchat_users: users, schema_migrations: 12}}
        const exactSame = await verifyDatabase(m.sql, {exactCounts: true, manifest: same, schema: m.schema})
        expect(exactSame.ok, show(exactSame)).toBe(true)
        expect(exactSame.checks.find((c) => c.name === 'row count nchat_messages')).toMatchObject({status: 'ok'})

        const manifest = {row_counts: {...same.row_counts, nchat_messages: messages - 5}}
        const exact = await verifyDatabase(m.sql, {exactCounts: true, manifest, schema: m.schema})
        expect(exact.ok).toBe(false)
        expect(exact.failures, show(exact)).toEqual([
          `nchat_messages has ${messages} rows, the backup manifest counted ${messages - 5} (+5); nothing may have changed them.`,
        ])

        const live = await verifyDatabase(m.sql, {exactCounts: false, manifest, schema: m.schema})
        expect(live.ok, show(live)).toBe(true)
        expect(live.checks.find((c) => c.name === 'row count nchat_messages')).toEqual({
          detail: `nchat_messages has ${messages} rows, the backup manifest counted ${messages - 5} (+5), which live traffic can explain.`,
          name: 'row count nchat_messages',
          status: 'warn',
        })
      } finally {
        await m.done()
      }
    },
    T,
  )

  it(
    "a database where the guide's SQL was run by hand fails naming the D1 check, the materialized view and its triggers, and passes once migrated",
    async () => {
      const db = await createV030Database({messages: 100})
      const sql = pool(db.name)
      try {
        await applyGuideByHand(db.name)
        const before = await verifyDatabase(sql, {schema: db.schema, upTo: 14})
        expect(before.ok).toBe(false)
        for (const re of [
          /^check constraint nchat_safety_numbers_verification_method_check on nchat_safety_numbers is .*defect D1/,
          /^view nchat_prekey_bundles is a materialized view, expected a view \(the guide's materialized view, defect D2/,
          /^function refresh_prekey_bundles\(\) /,
          /^trigger refresh_prekey_bundles_on_identity_key on nchat_identity_keys /,
          /^trigger refresh_prekey_bundles_on_signed_prekey on nchat_signed_prekeys /,
          /^trigger refresh_prekey_bundles_on_one_time_prekey on nchat_one_time_prekeys /,
          /^function nchat_claim_prekey_bundle\(text\) is missing/,
          /^index idx_signed_prekeys_newest on nchat_signed_prekeys is missing/,
        ])
          expect(failuresMatching(before, re), `${re}\n${show(before)}`).toHaveLength(1)

        await migrateUp({migrations: loadMigrations(), schema: db.schema, sql})
        const after = await verifyDatabase(sql, {schema: db.schema})
        expect(after.failures, show(after)).toEqual([])
      } finally {
        await sql.end({timeout: 5})
        await db.drop()
      }
    },
    T,
  )

  it(
    'upTo=14 on a database migrated to 014 passes; upTo=16 there fails naming the 015 and 016 tables',
    async () => {
      const m = await migratedDatabase(14)
      try {
        const at14 = await verifyDatabase(m.sql, {schema: m.schema, upTo: 14})
        expect(at14.failures, show(at14)).toEqual([])
        expect(at14.checks.some((c) => c.name === 'table nchat_calls')).toBe(false)
        expect(at14.checks.find((c) => c.name === 'bundle view freshness')?.status).toBe('ok')
        const at16 = await verifyDatabase(m.sql, {schema: m.schema, upTo: 16})
        expect(at16.ok).toBe(false)
        expect(
          failuresMatching(at16, /^table nchat_calls is missing \(015_voice_calls creates it\) \(with its \d+ columns, indexes and constraints\)\.$/),
          show(at16),
        ).toHaveLength(1)
        expect(failuresMatching(at16, /^table nchat_streams is missing \(016_live_streaming/)).toHaveLength(1)
        expect(at16.failures).toHaveLength(5)
      } finally {
        await m.done()
      }
    },
    T,
  )

  it(
    "upTo=13 on a database migrated to 013 checks 013's own objects only",
    async () => {
      const m = await migratedDatabase(13)
      try {
        const at13 = await verifyDatabase(m.sql, {schema: m.schema, upTo: 13})
        expect(at13.failures, show(at13)).toEqual([])
        expect(at13.checks.some((c) => c.name === 'view nchat_prekey_bundles' || c.name === 'column nchat_messages.is_encrypted')).toBe(false)
        expect(at13.checks.find((c) => c.name === 'query plan: session lookup')?.status).toBe('ok')
        const at14 = await verifyDatabase(m.sql, {schema: m.schema, upTo: 14})
        expect(failuresMatching(at14, /^view nchat_prekey_bundles is missing \(014_e2ee_system creates it\)\.$/), show(at14)).toHaveLength(1)
        expect(failuresMatching(at14, /^index idx_messages_encrypted on nchat_messages is missing/)).toHaveLength(1)
      } finally {
        await m.done()
      }
    },
    T,
  )

  it(
    'leaves no rows behind, on a pool, a reserved connection and inside a caller transaction',
    async () => {
      const m = await migratedDatabase(16)
      try {
        const tables = ['nchat_users', 'nchat_identity_keys', 'nchat_signed_prekeys', 'nchat_one_time_prekeys', 'nchat_messages']
        const counts = async () => {
          const out: Record<string, number> = {}
          for (const t of tables) out[t] = (await m.sql.unsafe<{n: number}[]>(`select count(*)::int as n from ${t}`))[0].n
          const [{consumed}] = await m.sql<{consumed: number}[]>`select count(*)::int as consumed from nchat_one_time_prekeys where is_consumed`
          out.consumed = consumed
          return out
        }
        const before = await counts()
        expect(before.nchat_identity_keys).toBe(0)

        const onPool = await verifyDatabase(m.sql, {schema: m.schema})
        expect(onPool.ok, show(onPool)).toBe(true)
        expect(await counts()).toEqual(before)

        const reserved = await m.sql.reserve()
        try {
          const onReserved = await verifyDatabase(reserved, {schema: m.schema})
          expect(onReserved.ok, show(onReserved)).toBe(true)
          // The reserved session is not left inside a transaction.
          const [{pid}] = await reserved<{pid: number}[]>`select pg_backend_pid() as pid`
          const [{state}] = await m.sql<{state: string}[]>`select state from pg_stat_activity where pid = ${pid}`
          expect(state).toBe('idle')
        } finally {
          reserved.release()
        }
        expect(await counts()).toEqual(before)

        await m.sql.begin(async (tx) => {
          const inTx = await verifyDatabase(tx, {schema: m.schema})
          expect(inTx.ok, show(inTx)).toBe(true)
          const [{n}] = await tx<{n: number}[]>`select count(*)::int as n from nchat_identity_keys`
          expect(n).toBe(0)
          const [{setting}] = await tx<{setting: string}[]>`select current_setting('enable_seqscan') as setting`
          expect(setting).toBe('on')
        })
        expect(await counts()).toEqual(before)
        const [{users}] = await m.sql<{users: number}[]>`select count(*)::int as users from nchat_users where email like 'nself-verify-%'`
        expect(users).toBe(0)
      } finally {
        await m.done()
      }
    },
    T,
  )

  it(
    'a schema that does not exist is one failure naming it, and an unsafe schema name is refused',
    async () => {
      const m = await migratedDatabase(16)
      try {
        const report = await verifyDatabase(m.sql, {schema: 'nope'})
        expect(report).toEqual({
          checks: [{detail: 'schema nope does not exist in this database.', name: 'schema nope', status: 'fail'}],
          failures: ['schema nope does not exist in this database.'],
          ok: false,
        })
        await expect(verifyDatabase(m.sql, {schema: 'x"; drop table nchat_users; --'})).rejects.toThrow(/is not a valid PostgreSQL identifier/)
      } finally {
        await m.done()
      }
    },
    T,
  )
})
