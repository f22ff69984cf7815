// D1 check, the plain view nchat_prekey_bundles (rotation, freshness, plan) and the atomic
// claim function nchat_claim_prekey_bundle (semantics, 32 concurrent claims), in public and nchat.
import {describe, expect, it} from 'vitest'
import type postgres from 'postgres'
import {applyFileAsEngine, connect, createV030Database, migrationFile} from '../helpers/fixture.js'

const T = 120_000

async function withE2ee(schema: 'public' | 'nchat', fn: (db: string, sql: postgres.Sql) => Promise<void>, migrations: Array<13 | 14> = [14]) {
  const db = await createV030Database({schema, messages: 50})
  try {
    for (const v of migrations) await applyFileAsEngine(db.name, migrationFile(v), {schema})
    const sql = connect(db.name, {schema})
    try {
      await fn(db.name, sql)
    } finally {
      await sql.end()
    }
  } finally {
    await db.drop()
  }
}

async function userId(sql: postgres.Sql, n = 1): Promise<string> {
  const [u] = await sql`SELECT id FROM nchat_users WHERE email = ${`user${n}@example.test`}`
  return u.id
}

async function addDevice(sql: postgres.Sql, device: string, opts: {otps?: number; user?: number} = {}) {
  const uid = await userId(sql, opts.user ?? 1)
  await sql`INSERT INTO nchat_identity_keys (device_id, user_id, identity_key_public, identity_key_private_encrypted)
            VALUES (${device}, ${uid}, decode(md5(${device}), 'hex'), '\\x00')`
  await sql`INSERT INTO nchat_signed_prekeys (device_id, signed_prekey_id, signed_prekey_public,
                                              signed_prekey_private_encrypted, signature, created_at)
            VALUES (${device}, 1, '\\x11', '\\x00', '\\x51', '2026-01-01')`
  if (opts.otps)
    await sql`INSERT INTO nchat_one_time_prekeys (device_id, prekey_id, prekey_public, prekey_private_encrypted, created_at)
              SELECT ${device}, k, int4send(k), '\\x00', timestamptz '2026-01-01' + k * interval '1 second'
                FROM generate_series(1, ${opts.otps}::int) k`
}

async function safetyInsert(sql: postgres.Sql, method: string | null, peer: number) {
  const a = await userId(sql, 1)
  const b = await userId(sql, peer)
  await sql`INSERT INTO nchat_safety_numbers (user_id, peer_user_id, safety_number, verification_method)
            VALUES (${a}, ${b}, ${'7'.repeat(60)}, ${method})`
}

describe('D1: verification_method check', () => {
  for (const v of [13, 14] as const) {
    it(
      `after ${v}: telepathy fails, NULL and qr_code pass`,
      async () => {
        await withE2ee(
          'public',
          async (_db, sql) => {
            await expect(safetyInsert(sql, 'telepathy', 2)).rejects.toThrow(/nchat_safety_numbers_verification_method_check/)
            await safetyInsert(sql, null, 3)
            await safetyInsert(sql, 'qr_code', 4)
            await safetyInsert(sql, 'manual', 5)
            await safetyInsert(sql, 'out_of_band', 6)
            await expect(safetyInsert(sql, 'QR_CODE', 7)).rejects.toThrow(/verification_method_check/)
            await expect(safetyInsert(sql, '', 8)).rejects.toThrow(/verification_method_check/)
            const [r] = await sql`SELECT count(*)::int AS n FROM nchat_safety_numbers`
            expect(r.n).toBe(4)
            // The guide length check is still there.
            const a = await userId(sql, 1)
            const b = await userId(sql, 9)
            await expect(sql`INSERT INTO nchat_safety_numbers (user_id, peer_user_id, safety_number) VALUES (${a}, ${b}, '123')`).rejects.toThrow(
              /nchat_safety_numbers_safety_number_check/,
            )
          },
          [v],
        )
      },
      T,
    )
  }

  it(
    'audit log event_type check keeps its guide name',
    async () => {
      await withE2ee('public', async (_db, sql) => {
        await sql`INSERT INTO nchat_e2ee_audit_log (event_type) VALUES ('session_established')`
        await expect(sql`INSERT INTO nchat_e2ee_audit_log (event_type) VALUES ('nope')`).rejects.toThrow(/nchat_e2ee_audit_log_event_type_check/)
      })
    },
    T,
  )
})

for (const schema of ['public', 'nchat'] as const) {
  describe(`nchat_prekey_bundles view (schema ${schema})`, () => {
    it(
      'has the guide columns in the guide order',
      async () => {
        await withE2ee(schema, async (_db, sql) => {
          const cols = await sql`SELECT column_name, data_type FROM information_schema.columns
                                  WHERE table_schema = ${schema} AND table_name = 'nchat_prekey_bundles'
                                  ORDER BY ordinal_position`
          expect(cols.map((c) => `${c.column_name}:${c.data_type}`)).toEqual([
            'user_id:uuid',
            'device_id:text',
            'identity_key_public:bytea',
            'signed_prekey_id:integer',
            'signed_prekey_public:bytea',
            'signature:bytea',
            'one_time_prekey_id:integer',
            'one_time_prekey_public:bytea',
            // then what nChat's GetPreKeyBundle reads besides (NCHAT-APP.md)
            'registration_id:integer',
            'signed_prekey_signature:bytea',
            'last_used_at:timestamp with time zone',
            'created_at:timestamp with time zone',
          ])
        })
      },
      T,
    )

    it(
      'rotation: a device with two active signed prekeys appears once, with the newest',
      async () => {
        await withE2ee(schema, async (_db, sql) => {
          await addDevice(sql, 'rot', {otps: 1})
          await addDevice(sql, 'other', {otps: 0, user: 2})
          await sql`INSERT INTO nchat_signed_prekeys (device_id, signed_prekey_id, signed_prekey_public,
                                                      signed_prekey_private_encrypted, signature, created_at)
                    VALUES ('rot', 2, '\\x22', '\\x00', '\\x52', '2026-01-08')`
          let rows = await sql`SELECT device_id, signed_prekey_id, signed_prekey_public, signature
                                 FROM nchat_prekey_bundles ORDER BY device_id`
          expect(rows).toHaveLength(2)
          expect(rows[1]).toMatchObject({device_id: 'rot', signed_prekey_id: 2})
          expect(Buffer.from(rows[1].signed_prekey_public).toString('hex')).toBe('22')
          expect(Buffer.from(rows[1].signature).toString('hex')).toBe('52')

          // A third one with the same created_at: ties go to the highest signed_prekey_id.
          await sql`INSERT INTO nchat_signed_prekeys (device_id, signed_prekey_id, signed_prekey_public,
                                                      signed_prekey_private_encrypted, signature, created_at)
                    VALUES ('rot', 3, '\\x33', '\\x00', '\\x53', '2026-01-08')`
          rows = await sql`SELECT signed_prekey_id FROM nchat_prekey_bundles WHERE device_id = 'rot'`
          expect(rows).toEqual([{signed_prekey_id: 3}])

          // Deactivated keys do not count, an older active one is used.
          await sql`UPDATE nchat_signed_prekeys SET is_active = FALSE WHERE device_id = 'rot' AND signed_prekey_id IN (2, 3)`
          rows = await sql`SELECT signed_prekey_id FROM nchat_prekey_bundles WHERE device_id = 'rot'`
          expect(rows).toEqual([{signed_prekey_id: 1}])

          // No active signed prekey: no bundle.
          await sql`UPDATE nchat_signed_prekeys SET is_active = FALSE WHERE device_id = 'rot'`
          rows = await sql`SELECT device_id FROM nchat_prekey_bundles`
          expect(rows).toEqual([{device_id: 'other'}])
        })
      },
      T,
    )

    it(
      'freshness: inserting or consuming a one-time prekey shows at once, oldest first',
      async () => {
        await withE2ee(schema, async (_db, sql) => {
          await addDevice(sql, 'fresh')
          const otp = async () => (await sql`SELECT one_time_prekey_id, one_time_prekey_public FROM nchat_prekey_bundles WHERE device_id = 'fresh'`)[0]
          expect(await otp()).toEqual({one_time_prekey_id: null, one_time_prekey_public: null})

          await sql`INSERT INTO nchat_one_time_prekeys (device_id, prekey_id, prekey_public, prekey_private_encrypted, created_at)
                    VALUES ('fresh', 10, '\\x0a', '\\x00', '2026-02-01'), ('fresh', 5, '\\x05', '\\x00', '2026-02-02'),
                           ('fresh', 7, '\\x07', '\\x00', '2026-02-01')`
          // Oldest created_at wins, ties by prekey_id: 7 before 10.
          expect((await otp()).one_time_prekey_id).toBe(7)
          expect(Buffer.from((await otp()).one_time_prekey_public).toString('hex')).toBe('07')

          await sql`UPDATE nchat_one_time_prekeys SET is_consumed = TRUE, consumed_at = now() WHERE prekey_id = 7`
          expect((await otp()).one_time_prekey_id).toBe(10)
          await sql`DELETE FROM nchat_one_time_prekeys WHERE prekey_id = 10`
          expect((await otp()).one_time_prekey_id).toBe(5)
          await sql`UPDATE nchat_one_time_prekeys SET is_consumed = TRUE WHERE prekey_id = 5`
          expect((await otp()).one_time_prekey_id).toBeNull()

          // Within a transaction the writer sees its own change (no refresh step anywhere).
          await sql.begin(async (tx) => {
            await tx`INSERT INTO nchat_one_time_prekeys (device_id, prekey_id, prekey_public, prekey_private_encrypted)
                     VALUES ('fresh', 99, '\\x63', '\\x00')`
            const [r] = await tx`SELECT one_time_prekey_id FROM nchat_prekey_bundles WHERE device_id = 'fresh'`
            expect(r.one_time_prekey_id).toBe(99)
          })
        })
      },
      T,
    )

    it(
      'claim: consumes the oldest one-time prekey, NULL when none left, no row for an unknown device',
      async () => {
        await withE2ee(schema, async (_db, sql) => {
          await addDevice(sql, 'c1', {otps: 2})
          const uid = await userId(sql, 1)
          const claim = (d: string) => sql`SELECT * FROM nchat_claim_prekey_bundle(${d})`

          const [a] = await claim('c1')
          expect(Object.keys(a)).toEqual([
            'user_id',
            'device_id',
            'identity_key_public',
            'signed_prekey_id',
            'signed_prekey_public',
            'signature',
            'one_time_prekey_id',
            'one_time_prekey_public',
            'registration_id',
            'signed_prekey_signature',
            'last_used_at',
            'created_at',
          ])
          expect(a).toMatchObject({user_id: uid, device_id: 'c1', signed_prekey_id: 1, one_time_prekey_id: 1})
          expect(Buffer.from(a.one_time_prekey_public).readInt32BE(0)).toBe(1)
          const [b] = await claim('c1')
          expect(b.one_time_prekey_id).toBe(2)
          const [c] = await claim('c1')
          expect(c).toMatchObject({device_id: 'c1', signed_prekey_id: 1, one_time_prekey_id: null, one_time_prekey_public: null})

          const consumed = await sql`SELECT prekey_id, is_consumed, consumed_at IS NOT NULL AS stamped
                                       FROM nchat_one_time_prekeys ORDER BY prekey_id`
          expect(consumed).toEqual([
            {prekey_id: 1, is_consumed: true, stamped: true},
            {prekey_id: 2, is_consumed: true, stamped: true},
          ])

          expect(await claim('nobody')).toHaveLength(0)
          // A device without an active signed prekey has no bundle: nothing is consumed.
          await sql`INSERT INTO nchat_one_time_prekeys (device_id, prekey_id, prekey_public, prekey_private_encrypted)
                    VALUES ('c1', 3, '\\x03', '\\x00')`
          await sql`UPDATE nchat_signed_prekeys SET is_active = FALSE WHERE device_id = 'c1'`
          expect(await claim('c1')).toHaveLength(0)
          const [left] = await sql`SELECT count(*)::int AS n FROM nchat_one_time_prekeys WHERE NOT is_consumed`
          expect(left.n).toBe(1)
        })
      },
      T,
    )

    it(
      'claim works from a session whose search_path is another schema (SET search_path FROM CURRENT)',
      async () => {
        await withE2ee(schema, async (db, sql) => {
          await addDevice(sql, 'sp', {otps: 1})
          const other = connect(db, {schema: 'pg_catalog'})
          try {
            const rows = await other.unsafe(`SELECT one_time_prekey_id FROM "${schema}".nchat_claim_prekey_bundle('sp')`)
            expect(rows).toEqual([{one_time_prekey_id: 1}])
          } finally {
            await other.end()
          }
        })
      },
      T,
    )

    it(
      '32 concurrent claims on one device with 40 prekeys get 32 distinct one-time prekeys',
      async () => {
        await withE2ee(schema, async (db, sql) => {
          await addDevice(sql, 'hot', {otps: 40})
          await addDevice(sql, 'cold', {otps: 5, user: 2})
          const clients = Array.from({length: 32}, () => connect(db, {schema}))
          try {
            // Open all 32 connections first so the claims really overlap.
            const pids = await Promise.all(clients.map(async (c) => (await c`SELECT pg_backend_pid() AS pid`)[0].pid))
            expect(new Set(pids).size).toBe(32)
            const results = await Promise.all(clients.map((c) => c`SELECT * FROM nchat_claim_prekey_bundle('hot')`))
            const ids = results.map((r) => {
              expect(r).toHaveLength(1)
              return r[0].one_time_prekey_id as number | null
            })
            expect(ids.every((i) => i !== null)).toBe(true)
            expect(new Set(ids).size).toBe(32)
          } finally {
            await Promise.all(clients.map((c) => c.end()))
          }
          const [r] = await sql`SELECT count(*) FILTER (WHERE is_consumed)::int AS consumed,
                                       count(*) FILTER (WHERE NOT is_consumed)::int AS left
                                  FROM nchat_one_time_prekeys WHERE device_id = 'hot'`
          expect(r).toEqual({consumed: 32, left: 8})
          // The oldest 32 went first.
          const [m] = await sql`SELECT max(prekey_id)::int AS m FROM nchat_one_time_prekeys WHERE device_id = 'hot' AND is_consumed`
          expect(m.m).toBe(32)
          const [cold] = await sql`SELECT count(*) FILTER (WHERE is_consumed)::int AS n FROM nchat_one_time_prekeys WHERE device_id = 'cold'`
          expect(cold.n).toBe(0)
        })
      },
      T,
    )

    it(
      'claims inside open transactions do not wait on each other (SKIP LOCKED) and never share a key',
      async () => {
        await withE2ee(schema, async (db, sql) => {
          await addDevice(sql, 'tx', {otps: 40})
          const clients = Array.from({length: 32}, () => connect(db, {schema}))
          try {
            await Promise.all(clients.map((c) => c`SELECT 1`))
            // Every claimer keeps its transaction (and its row lock) open until all 32 have claimed. A claim that
            // waited for another's row lock would wait for a transaction that waits for it: lock_timeout turns that
            // into an error (55P03) instead of a hang. SKIP LOCKED claims never wait, however slow the machine.
            let claimed = 0
            let allClaimed!: () => void
            const barrier = new Promise<void>((resolve) => {
              allClaimed = resolve
            })
            const results = await Promise.all(
              clients.map((c) =>
                c.begin(async (tx) => {
                  await tx`SET LOCAL lock_timeout = '2s'`
                  const r = await tx`SELECT one_time_prekey_id FROM nchat_claim_prekey_bundle('tx')`
                  if (++claimed === clients.length) allClaimed()
                  await barrier
                  return r[0].one_time_prekey_id as number | null
                }),
              ),
            )
            expect(results.every((i) => i !== null)).toBe(true)
            expect(new Set(results).size).toBe(32)
          } finally {
            await Promise.all(clients.map((c) => c.end()))
          }
        })
      },
      T,
    )

    it(
      'more claimers than keys: every key claimed exactly once, the rest get NULL',
      async () => {
        await withE2ee(schema, async (db, sql) => {
          await addDevice(sql, 'few', {otps: 10})
          const clients = Array.from({length: 24}, () => connect(db, {schema}))
          try {
            await Promise.all(clients.map((c) => c`SELECT 1`))
            const results = await Promise.all(clients.map(async (c) => (await c`SELECT one_time_prekey_id FROM nchat_claim_prekey_bundle('few')`)[0]))
            expect(results).toHaveLength(24)
            const ids = results.map((r) => r.one_time_prekey_id).filter((i) => i !== null)
            expect(ids.sort((x, y) => x - y)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
          } finally {
            await Promise.all(clients.map((c) => c.end()))
          }
        })
      },
      T,
    )
  })
}

describe('nchat_prekey_bundles plan', () => {
  it(
    'one device costs one probe of each partial index (20,000 devices)',
    async () => {
      await withE2ee('public', async (_db, sql) => {
        await sql`INSERT INTO nchat_identity_keys (device_id, user_id, identity_key_public, identity_key_private_encrypted)
                  SELECT 'd' || i, u.id, '\\x01', '\\x00' FROM generate_series(1, 20000) i,
                         LATERAL (SELECT id FROM nchat_users ORDER BY email OFFSET (i % 50) LIMIT 1) u`
        await sql`INSERT INTO nchat_signed_prekeys (device_id, signed_prekey_id, signed_prekey_public,
                                                    signed_prekey_private_encrypted, signature, is_active)
                  SELECT 'd' || i, k, '\\x01', '\\x00', '\\x02', k = 2 FROM generate_series(1, 20000) i, generate_series(1, 2) k`
        await sql`INSERT INTO nchat_one_time_prekeys (device_id, prekey_id, prekey_public, prekey_private_encrypted, is_consumed)
                  SELECT 'd' || i, k, '\\x01', '\\x00', k <= 5 FROM generate_series(1, 20000) i, generate_series(1, 8) k`
        await sql`ANALYZE nchat_identity_keys, nchat_signed_prekeys, nchat_one_time_prekeys`
        const plan = (await sql.unsafe(`EXPLAIN (FORMAT TEXT) SELECT * FROM nchat_prekey_bundles WHERE device_id = 'd12345'`))
          .map((r: Record<string, string>) => r['QUERY PLAN'])
          .join('\n')
        expect(plan).toMatch(/idx_signed_prekeys_newest/)
        expect(plan).toMatch(/idx_one_time_prekeys_next/)
        expect(plan).not.toMatch(/Seq Scan|Sort/)

        for (let i = 0; i < 200; i++) {
          const [r] = await sql`SELECT one_time_prekey_id FROM nchat_prekey_bundles WHERE device_id = ${`d${i * 97 + 1}`}`
          expect(r.one_time_prekey_id).toBe(6)
        }
        // The cost of one lookup in pages touched, which no machine load changes: a handful of index probes
        // (identity key, newest signed prekey, oldest unconsumed one-time prekey), not a scan of 20,000 devices.
        const [{'QUERY PLAN': analyzed}] = await sql.unsafe(
          `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM nchat_prekey_bundles WHERE device_id = 'd4321'`,
        )
        const top = (analyzed as Array<{Plan: Record<string, number>}>)[0].Plan
        const pages = (top['Shared Hit Blocks'] ?? 0) + (top['Shared Read Blocks'] ?? 0)
        expect(pages).toBeGreaterThan(0)
        expect(pages).toBeLessThan(40)
      })
    },
    // Loading 200,000 key rows goes through the name-sync triggers and FK checks: generous on a busy machine.
    4 * T,
  )
})
