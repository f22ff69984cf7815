// 015 voice calls and 016 live streaming: constraints, delete rules, indexes for every foreign key.
import {describe, expect, it} from 'vitest'
import type postgres from 'postgres'
import {MIGRATIONS, applyFileAsEngine, connect, createV030Database, migrationFile} from '../helpers/fixture.js'
import {loadMigrations} from '../../src/migrations/files.js'
import {tablesCreatedBy} from '../../src/migrations/plan.js'

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

const uid = async (sql: postgres.Sql, n: number) => (await sql`SELECT id FROM nchat_users WHERE email = ${`user${n}@example.test`}`)[0].id as string
const cid = async (sql: postgres.Sql, n: number) => (await sql`SELECT id FROM nchat_channels WHERE name = ${`channel-${n}`}`)[0].id as string
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
             AND c.conrelid::regclass::text = ANY(${[...tablesCreatedBy(loadMigrations()), 'nchat_messages']})
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
             AND conrelid::regclass::text LIKE ANY (ARRAY['nchat_call%', 'nchat_stream%'])
           ORDER BY conname`
        expect(Object.fromEntries(rows.map((r) => [r.conname, r.confdeltype]))).toEqual({
          fk_call_events_call: 'c',
          fk_call_events_user: 'n',
          fk_call_participants_call: 'c',
          fk_call_participants_user: 'c',
          fk_calls_caller: 'n',
          fk_calls_channel: 'c',
          fk_stream_viewers_stream: 'c',
          fk_stream_viewers_user: 'n',
          fk_streams_broadcaster: 'c',
          fk_streams_channel: 'c',
        })
      })
    },
    T,
  )

  for (const schema of ['public', 'nchat'] as const) {
    it(
      `calls: keyed by the text call_id, checks, unique participant, delete rules (schema ${schema})`,
      async () => {
        await withAll(async (sql) => {
          const caller = await uid(sql, 1)
          const callee = await uid(sql, 2)
          const channel = await cid(sql, 1)
          const [call] = await sql`INSERT INTO nchat_calls (call_id, type, caller_id, channel_id)
                                   VALUES ('c-1', 'video', ${caller}, ${channel}) RETURNING id, call_id, status, created_at`
          expect(call.status).toBe('initiating')
          await expect(sql`INSERT INTO nchat_calls (call_id, caller_id) VALUES ('c-1', ${caller})`).rejects.toThrow(/nchat_calls_call_id_key/)
          await sql`INSERT INTO nchat_call_participants (call_id, user_id, joined_at) VALUES ('c-1', ${caller}, now()), ('c-1', ${callee}, NULL)`
          await expect(sql`INSERT INTO nchat_call_participants (call_id, user_id) VALUES ('c-1', ${callee})`).rejects.toThrow(
            /call_participants_call_user_unique/,
          )
          await expect(sql`INSERT INTO nchat_call_participants (call_id, user_id) VALUES ('no-such-call', ${callee})`).rejects.toThrow(
            /fk_call_participants_call/,
          )
          await sql`INSERT INTO nchat_call_events (call_id, user_id, event_type) VALUES ('c-1', ${caller}, 'call_started')`

          await expect(sql`INSERT INTO nchat_calls (call_id, type) VALUES ('c-2', 'hologram')`).rejects.toThrow(/chk_calls_type/)
          await expect(sql`INSERT INTO nchat_calls (call_id) VALUES ('')`).rejects.toThrow(/chk_calls_call_id/)
          await expect(sql`UPDATE nchat_calls SET status = 'paused'`).rejects.toThrow(/chk_calls_status/)
          for (const st of ['ringing', 'connecting', 'connected', 'reconnecting', 'declined', 'idle']) await sql`UPDATE nchat_calls SET status = ${st}`
          await sql`UPDATE nchat_calls SET started_at = now()`
          await expect(sql`UPDATE nchat_calls SET status = 'ended', ended_at = started_at - interval '1 second'`).rejects.toThrow(
            /chk_calls_ended_after_started/,
          )
          await expect(sql`UPDATE nchat_calls SET duration = -1`).rejects.toThrow(/chk_calls_duration/)
          await sql`UPDATE nchat_calls SET status = 'ended', ended_at = started_at + interval '90 seconds', duration = 90`
          await expect(sql`UPDATE nchat_call_participants SET joined_at = now(), left_at = now() - interval '1 minute'`).rejects.toThrow(
            /chk_call_participants_left_after_joined/,
          )
          await expect(sql`INSERT INTO nchat_call_events (call_id, event_type) VALUES ('c-1', 'exploded')`).rejects.toThrow(/chk_call_events_event_type/)

          // The client id may be corrected: participants and events follow it.
          await sql`UPDATE nchat_calls SET call_id = 'c-1b' WHERE call_id = 'c-1'`
          const [moved] = await sql`SELECT (SELECT count(*) FROM nchat_call_participants WHERE call_id = 'c-1b')::int AS p,
                                           (SELECT count(*) FROM nchat_call_events WHERE call_id = 'c-1b')::int AS e`
          expect(moved).toEqual({e: 1, p: 2})

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
      `streams: statuses, key unique, checks, viewers by session (schema ${schema})`,
      async () => {
        await withAll(async (sql) => {
          const host = await uid(sql, 3)
          const viewer = await uid(sql, 4)
          const channel = await cid(sql, 2)
          await expect(sql`INSERT INTO nchat_streams (broadcaster_id, title, stream_key) VALUES (${host}, 'x', 'short')`).rejects.toThrow(
            /chk_streams_stream_key/,
          )
          const [s] = await sql`INSERT INTO nchat_streams (broadcaster_id, channel_id, title, stream_key)
                                VALUES (${host}, ${channel}, 'Town hall', ${HASH})
                                RETURNING id, status, viewer_count, max_resolution, chat_mode`
          expect(s).toMatchObject({chat_mode: 'open', max_resolution: '1080p', status: 'preparing', viewer_count: 0})
          await expect(sql`INSERT INTO nchat_streams (broadcaster_id, title, stream_key) VALUES (${host}, 'dup', ${HASH})`).rejects.toThrow(
            /uq_streams_stream_key/,
          )
          await expect(sql`INSERT INTO nchat_streams (broadcaster_id, title, stream_key) VALUES (${host}, '  ', ${'b'.repeat(64)})`).rejects.toThrow(
            /chk_streams_title/,
          )
          await expect(sql`UPDATE nchat_streams SET status = 'paused'`).rejects.toThrow(/chk_streams_status/)
          await expect(sql`UPDATE nchat_streams SET status = 'live'`).rejects.toThrow(/chk_streams_live_started/)
          await expect(sql`UPDATE nchat_streams SET max_resolution = '4k'`).rejects.toThrow(/chk_streams_max_resolution/)
          await expect(sql`UPDATE nchat_streams SET chat_mode = 'shout'`).rejects.toThrow(/chk_streams_chat_mode/)
          await expect(sql`UPDATE nchat_streams SET total_reactions = -1`).rejects.toThrow(/chk_streams_counts/)
          for (const st of ['scheduled', 'cancelled', 'preparing']) await sql`UPDATE nchat_streams SET status = ${st}`
          await sql`UPDATE nchat_streams SET status = 'live', started_at = now()`
          await expect(sql`UPDATE nchat_streams SET status = 'ended', ended_at = started_at - interval '1 hour'`).rejects.toThrow(
            /chk_streams_ended_after_started/,
          )

          // Viewers: one row per session, anonymous allowed.
          await sql`INSERT INTO nchat_stream_viewers (stream_id, user_id, session_id, joined_at, left_at)
                    VALUES (${s.id}, ${viewer}, 's1', '2026-01-01 10:00', '2026-01-01 10:05'),
                           (${s.id}, ${viewer}, 's2', '2026-01-01 10:10', NULL),
                           (${s.id}, NULL, 'anon', '2026-01-01 10:11', NULL)`
          await expect(sql`INSERT INTO nchat_stream_viewers (stream_id, user_id, session_id) VALUES (${s.id}, ${viewer}, 's2')`).rejects.toThrow(
            /uq_stream_viewers_stream_session/,
          )
          await expect(
            sql`INSERT INTO nchat_stream_viewers (stream_id, session_id, joined_at, left_at) VALUES (${s.id}, 's3', '2026-01-01 10:10', '2026-01-01 09:00')`,
          ).rejects.toThrow(/chk_stream_viewers_left_after_joined/)
          await expect(sql`INSERT INTO nchat_stream_viewers (stream_id, session_id, selected_quality) VALUES (${s.id}, 's4', '8k')`).rejects.toThrow(
            /chk_stream_viewers_selected_quality/,
          )
          const [w] = await sql`SELECT count(*)::int AS n FROM nchat_stream_viewers WHERE stream_id = ${s.id} AND left_at IS NULL`
          expect(w.n).toBe(2)

          // The viewer account goes: its sessions stay, anonymous. The broadcaster goes: the stream goes.
          await sql`DELETE FROM nchat_users WHERE id = ${viewer}`
          const [v] = await sql`SELECT count(*)::int AS n, count(user_id)::int AS u FROM nchat_stream_viewers`
          expect(v).toEqual({n: 3, u: 0})
          await sql`DELETE FROM nchat_users WHERE id = ${host}`
          const [st] = await sql`SELECT (SELECT count(*) FROM nchat_streams)::int AS s, (SELECT count(*) FROM nchat_stream_viewers)::int AS v`
          expect(st).toEqual({s: 0, v: 0})
        }, schema)
      },
      T,
    )
  }
})
