// 015 voice calls and 016 live streaming: constraints, delete rules, indexes for every foreign key.
import {describe, expect, it} from 'vitest'
import postgres from 'postgres'
import {MIGRATIONS, applyFileAsEngine, connect, createV030Database, migrationFile} from '../helpers/fixture.js'

const T = 120_000

async function withAll(fn: (sql: postgres.Sql) => Promise<void>, schema: 'public' | 'nchat' = 'public') {
  const db = await createV030Database({schema, messages: 20})
  try {
    const applied: number[] = []
    for (const m of MIGRATIONS) {
      await applyFileAsEngine(db.name, migrationFile(m.version), {schema, appliedVersions: applied.join(',')})
      applied.push(m.version)
    }
    const sql = connect(db.name, {schema})
    try {
      await fn(sql)
    } finally {
      await sql.end()
    }
  } finally {
    await db.drop()
  }
}

const uid = async (sql: postgres.Sql, n: number) =>
  (await sql`SELECT id FROM nchat_users WHERE email = ${`user${n}@example.test`}`)[0].id as string
const cid = async (sql: postgres.Sql, n: number) =>
  (await sql`SELECT id FROM nchat_channels WHERE name = ${`channel-${n}`}`)[0].id as string
const HASH = 'a'.repeat(64)

describe('015 and 016 tables', () => {
  it(
    'every foreign key of every new table has an index led by its column(s)',
    async () => {
      await withAll(async (sql) => {
        const missing = await sql`
          SELECT c.conrelid::regclass::text AS tbl, c.conname
            FROM pg_constraint c
           WHERE c.contype = 'f'
             AND c.connamespace = current_schema()::text::regnamespace
             AND c.conrelid::regclass::text IN (
                 'nchat_calls', 'nchat_call_participants', 'nchat_call_events', 'nchat_streams',
                 'nchat_stream_viewers', 'nchat_identity_keys', 'nchat_signed_prekeys',
                 'nchat_one_time_prekeys', 'nchat_signal_sessions', 'nchat_safety_numbers',
                 'nchat_e2ee_audit_log', 'nchat_user_master_keys', 'nchat_messages')
             AND NOT EXISTS (
                 SELECT 1 FROM pg_index i
                  WHERE i.indrelid = c.conrelid
                    AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] = c.conkey)
           ORDER BY 1, 2`
        // The v0.3.0 fixture leaves nchat_messages.channel_id to idx_messages_channel_created: fine.
        expect(missing).toEqual([])
      })
    },
    T,
  )

  it(
    'foreign keys carry the documented delete rules',
    async () => {
      await withAll(async (sql) => {
        const rows = await sql`
          SELECT conname, confdeltype FROM pg_constraint
           WHERE contype = 'f' AND conname LIKE 'fk\\_%' AND conname <> 'fk_messages_sender_device'
           ORDER BY conname`
        expect(Object.fromEntries(rows.map((r) => [r.conname, r.confdeltype]))).toEqual({
          fk_call_events_call: 'c',
          fk_call_events_user: 'n',
          fk_call_participants_call: 'c',
          fk_call_participants_user: 'c',
          fk_calls_caller: 'n',
          fk_calls_channel: 'c',
          fk_stream_viewers_stream: 'c',
          fk_stream_viewers_user: 'c',
          fk_streams_broadcaster: 'c',
          fk_streams_channel: 'c',
        })
      })
    },
    T,
  )

  for (const schema of ['public', 'nchat'] as const) {
    it(
      `calls: lifecycle, checks, unique participant, delete rules (schema ${schema})`,
      async () => {
        await withAll(async (sql) => {
          const caller = await uid(sql, 1)
          const callee = await uid(sql, 2)
          const channel = await cid(sql, 1)
          const [call] = await sql`INSERT INTO nchat_calls (call_type, caller_id, channel_id)
                                   VALUES ('video', ${caller}, ${channel}) RETURNING id, status, created_at`
          expect(call.status).toBe('ringing')
          await sql`INSERT INTO nchat_call_participants (call_id, user_id, status) VALUES (${call.id}, ${caller}, 'joined'), (${call.id}, ${callee}, 'invited')`
          await expect(
            sql`INSERT INTO nchat_call_participants (call_id, user_id) VALUES (${call.id}, ${callee})`,
          ).rejects.toThrow(/uq_call_participants_call_user/)
          await sql`INSERT INTO nchat_call_events (call_id, user_id, event_type) VALUES (${call.id}, ${caller}, 'call_started')`

          await expect(sql`INSERT INTO nchat_calls (call_type) VALUES ('hologram')`).rejects.toThrow(/chk_calls_call_type/)
          await expect(sql`UPDATE nchat_calls SET status = 'paused'`).rejects.toThrow(/chk_calls_status/)
          await expect(sql`UPDATE nchat_calls SET status = 'active'`).rejects.toThrow(/chk_calls_active_started/)
          await sql`UPDATE nchat_calls SET status = 'active', started_at = now()`
          await expect(
            sql`UPDATE nchat_calls SET status = 'ended', ended_at = started_at - interval '1 second'`,
          ).rejects.toThrow(/chk_calls_ended_after_started/)
          await expect(sql`UPDATE nchat_calls SET duration_seconds = -1`).rejects.toThrow(/chk_calls_duration/)
          await sql`UPDATE nchat_calls SET status = 'ended', ended_at = started_at + interval '90 seconds',
                                           duration_seconds = 90, end_reason = 'completed'`
          await expect(
            sql`UPDATE nchat_call_participants SET joined_at = now(), left_at = now() - interval '1 minute'`,
          ).rejects.toThrow(/chk_call_participants_left_after_joined/)
          await expect(
            sql`INSERT INTO nchat_call_events (call_id, event_type) VALUES (${call.id}, 'exploded')`,
          ).rejects.toThrow(/chk_call_events_event_type/)

          // The caller account goes: the call history stays, caller and event author become NULL.
          await sql`DELETE FROM nchat_users WHERE id = ${caller}`
          const [after] = await sql`SELECT caller_id FROM nchat_calls WHERE id = ${call.id}`
          expect(after.caller_id).toBeNull()
          const [ev] = await sql`SELECT count(*)::int AS n, count(user_id)::int AS u FROM nchat_call_events`
          expect(ev).toEqual({n: 1, u: 0})
          const [p] = await sql`SELECT count(*)::int AS n FROM nchat_call_participants`
          expect(p.n).toBe(1)

          // The channel goes: its calls go with their participants and events.
          await sql`DELETE FROM nchat_channels WHERE id = ${channel}`
          const [left] = await sql`SELECT (SELECT count(*) FROM nchat_calls)::int AS c,
                                          (SELECT count(*) FROM nchat_call_participants)::int AS p,
                                          (SELECT count(*) FROM nchat_call_events)::int AS e`
          expect(left).toEqual({c: 0, p: 0, e: 0})
        }, schema)
      },
      T,
    )

    it(
      `streams: key stored only as a sha-256 hex hash, checks, viewers (schema ${schema})`,
      async () => {
        await withAll(async (sql) => {
          const host = await uid(sql, 3)
          const viewer = await uid(sql, 4)
          const channel = await cid(sql, 2)
          // No column can hold a clear stream key.
          const cols = await sql`SELECT column_name FROM information_schema.columns
                                  WHERE table_schema = current_schema() AND table_name = 'nchat_streams'`
          const names = cols.map((c) => c.column_name)
          expect(names).toContain('stream_key_hash')
          expect(names.filter((n) => /key/.test(n))).toEqual(['stream_key_hash'])

          await expect(
            sql`INSERT INTO nchat_streams (broadcaster_id, title, stream_key_hash) VALUES (${host}, 'x', 'live_sk_cleartext')`,
          ).rejects.toThrow(/chk_streams_stream_key_hash/)
          await expect(
            sql`INSERT INTO nchat_streams (broadcaster_id, title, stream_key_hash) VALUES (${host}, 'x', ${HASH.toUpperCase()})`,
          ).rejects.toThrow(/chk_streams_stream_key_hash/)
          const [s] = await sql`INSERT INTO nchat_streams (broadcaster_id, channel_id, title, stream_key_hash)
                                VALUES (${host}, ${channel}, 'Town hall', encode(sha256('secret-key'), 'hex'))
                                RETURNING id, status, viewer_count`
          expect(s).toMatchObject({status: 'scheduled', viewer_count: 0})
          await expect(
            sql`INSERT INTO nchat_streams (broadcaster_id, title, stream_key_hash) VALUES (${host}, 'dup', encode(sha256('secret-key'), 'hex'))`,
          ).rejects.toThrow(/uq_streams_stream_key_hash/)
          await expect(
            sql`INSERT INTO nchat_streams (broadcaster_id, title, stream_key_hash) VALUES (${host}, '  ', ${HASH})`,
          ).rejects.toThrow(/chk_streams_title/)

          await expect(sql`UPDATE nchat_streams SET status = 'paused'`).rejects.toThrow(/chk_streams_status/)
          await expect(sql`UPDATE nchat_streams SET status = 'live'`).rejects.toThrow(/chk_streams_live_started/)
          await expect(sql`UPDATE nchat_streams SET viewer_count = -1`).rejects.toThrow(/chk_streams_viewer_count/)
          await expect(sql`UPDATE nchat_streams SET peak_viewer_count = -1`).rejects.toThrow(/chk_streams_peak_viewer_count/)
          await sql`UPDATE nchat_streams SET status = 'live', started_at = now()`
          await expect(
            sql`UPDATE nchat_streams SET status = 'ended', ended_at = started_at - interval '1 hour'`,
          ).rejects.toThrow(/chk_streams_ended_after_started/)

          // Lookup by key hash uses the unique index.
          const [found] = await sql`SELECT id FROM nchat_streams WHERE stream_key_hash = encode(sha256('secret-key'), 'hex')`
          expect(found.id).toBe(s.id)

          // Viewers: leave and come back = two sessions, same join time twice = refused.
          await sql`INSERT INTO nchat_stream_viewers (stream_id, user_id, joined_at, left_at)
                    VALUES (${s.id}, ${viewer}, '2026-01-01 10:00', '2026-01-01 10:05'),
                           (${s.id}, ${viewer}, '2026-01-01 10:10', NULL)`
          await expect(
            sql`INSERT INTO nchat_stream_viewers (stream_id, user_id, joined_at) VALUES (${s.id}, ${viewer}, '2026-01-01 10:10')`,
          ).rejects.toThrow(/uq_stream_viewers_stream_user_joined/)
          await expect(
            sql`INSERT INTO nchat_stream_viewers (stream_id, user_id, joined_at, left_at) VALUES (${s.id}, ${host}, '2026-01-01 10:10', '2026-01-01 09:00')`,
          ).rejects.toThrow(/chk_stream_viewers_left_after_joined/)
          const [w] = await sql`SELECT count(*)::int AS n FROM nchat_stream_viewers WHERE stream_id = ${s.id} AND left_at IS NULL`
          expect(w.n).toBe(1)

          // The viewer account goes: its sessions go. The broadcaster goes: the stream goes.
          await sql`DELETE FROM nchat_users WHERE id = ${viewer}`
          const [v] = await sql`SELECT count(*)::int AS n FROM nchat_stream_viewers`
          expect(v.n).toBe(0)
          await sql`DELETE FROM nchat_users WHERE id = ${host}`
          const [st] = await sql`SELECT count(*)::int AS n FROM nchat_streams`
          expect(st.n).toBe(0)
        }, schema)
      },
      T,
    )
  }
})
