// A v0.3.0 nChat database, made set-based and deterministically (md5-derived ids, fixed timestamps): the schema
// from test/fixtures/v030_schema.sql, schema_migrations 1..12 in one of the shapes nself has used, and data.
// Shared by the tests (test/helpers/fixture.ts), the benchmarks (bench/run.js) and the demo (scripts/demo-db.mjs).
import {readFileSync} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

export const V030_SCHEMA_FILE = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'test', 'fixtures', 'v030_schema.sql')

/** Names of the 12 v0.3.0 migrations as recorded in the ledger shapes that store names. */
const V030_MIGRATION_NAMES = [
  'initial_schema',
  'users',
  'channels',
  'channel_members',
  'messages',
  'reactions',
  'read_receipts',
  'message_threads',
  'message_search',
  'message_edits',
  'soft_delete',
  'performance_indexes',
]

/** @param {'guide'|'varchar'|'bigint-name'|'none'} shape */
export function ledgerSql(shape) {
  const names = V030_MIGRATION_NAMES.map((n) => `'${n}'`).join(', ')
  switch (shape) {
    case 'none':
      return ''
    case 'guide':
      return `
CREATE TABLE schema_migrations (
    version INTEGER PRIMARY KEY,
    executed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (version, executed_at)
SELECT v, timestamptz '2025-06-01 00:00:00+00' + v * interval '1 day'
  FROM generate_series(1, 12) v;`
    case 'varchar':
      return `
CREATE TABLE schema_migrations (
    version VARCHAR(255) PRIMARY KEY,
    applied_at TIMESTAMP DEFAULT now()
);
INSERT INTO schema_migrations (version, applied_at)
SELECT lpad(v::text, 3, '0') || '_' || (ARRAY[${names}])[v],
       timestamp '2025-06-01 00:00:00' + v * interval '1 day'
  FROM generate_series(1, 12) v;`
    case 'bigint-name':
      return `
CREATE TABLE schema_migrations (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TIMESTAMPTZ DEFAULT now()
);
INSERT INTO schema_migrations (version, name, applied_at)
SELECT v, (ARRAY[${names}])[v], timestamptz '2025-06-01 00:00:00+00' + v * interval '1 day'
  FROM generate_series(1, 12) v;`
  }
}

/**
 * Set-based, deterministic data: ids are md5-derived UUIDs, timestamps are fixed offsets,
 * so two databases made with the same counts hold the same rows.
 */
/** @param {number} u users @param {number} c channels @param {number} m messages */
export function dataSql(u, c, m) {
  return `
INSERT INTO nchat_users (id, email, username, display_name, created_at, updated_at)
SELECT md5('user:' || i)::uuid, 'user' || i || '@example.test', 'user' || i, 'User ' || i, ts, ts
  FROM generate_series(1, ${u}) i,
       LATERAL (SELECT timestamptz '2025-01-01 00:00:00+00' + i * interval '1 minute' AS ts) t;

INSERT INTO nchat_channels (id, name, description, type, created_by, is_private, created_at, updated_at)
SELECT md5('channel:' || i)::uuid, 'channel-' || i, 'Channel number ' || i,
       CASE WHEN i % 5 = 0 THEN 'private' WHEN i % 7 = 0 THEN 'group' ELSE 'public' END,
       md5('user:' || ((i - 1) % ${u} + 1))::uuid,
       i % 5 = 0, ts, ts
  FROM generate_series(1, ${c}) i,
       LATERAL (SELECT timestamptz '2025-01-02 00:00:00+00' + i * interval '1 minute' AS ts) t;

-- Up to 20 members a channel, the creator as owner.
INSERT INTO nchat_channel_members (channel_id, user_id, role, joined_at)
SELECT md5('channel:' || i)::uuid,
       md5('user:' || ((i - 1 + (k - 1) * 7) % ${u} + 1))::uuid,
       CASE WHEN k = 1 THEN 'owner' ELSE 'member' END,
       timestamptz '2025-01-03 00:00:00+00' + (i * 20 + k) * interval '1 second'
  FROM generate_series(1, ${c}) i, generate_series(1, ${Math.min(20, u)}) k
ON CONFLICT DO NOTHING;

-- Message i goes to channel (i-1) % c + 1. Every 10th message answers the message c before it
-- (same channel). Some are edited, some soft-deleted, some from deleted users (NULL).
INSERT INTO nchat_messages (id, channel_id, user_id, content, type, parent_id,
                            created_at, updated_at, edited_at, deleted_at)
SELECT md5('message:' || i)::uuid,
       md5('channel:' || ((i - 1) % ${c} + 1))::uuid,
       CASE WHEN i % 97 = 0 THEN NULL ELSE md5('user:' || ((i * 7 - 1) % ${u} + 1))::uuid END,
       CASE WHEN i % 50 = 0 THEN 'user' || ((i * 7 - 1) % ${u} + 1) || ' joined the channel'
            ELSE 'message ' || i || ' about ' || (ARRAY['deploy', 'lunch', 'release', 'bug', 'meeting', 'postgres', 'review'])[i % 7 + 1]
                 || ' ' || substr(md5(i::text), 1, 12) END,
       CASE WHEN i % 50 = 0 THEN 'system' WHEN i % 31 = 0 THEN 'file' ELSE 'text' END,
       CASE WHEN i % 10 = 0 AND i > ${c} THEN md5('message:' || (i - ${c}))::uuid END,
       ts,
       CASE WHEN i % 20 = 0 THEN ts + interval '5 minutes' ELSE ts END,
       CASE WHEN i % 20 = 0 THEN ts + interval '5 minutes' END,
       CASE WHEN i % 100 = 0 THEN ts + interval '1 hour' END
  FROM generate_series(1, ${m}) i,
       LATERAL (SELECT timestamptz '2025-02-01 00:00:00+00' + i * interval '1 second' AS ts) t;

INSERT INTO nchat_reactions (id, message_id, user_id, emoji, created_at)
SELECT md5('reaction:' || i)::uuid, md5('message:' || i)::uuid,
       md5('user:' || ((i * 3) % ${u} + 1))::uuid,
       (ARRAY['👍', '🎉', '❤️', '😂', '👀'])[i % 5 + 1],
       timestamptz '2025-02-01 00:00:00+00' + i * interval '1 second' + interval '30 seconds'
  FROM generate_series(5, ${m}, 5) i;

-- Each member has read up to the last message of the channel (or nothing yet).
INSERT INTO nchat_read_receipts (channel_id, user_id, last_read_message_id, read_at)
SELECT cm.channel_id, cm.user_id,
       CASE WHEN ch.i <= ${m} THEN md5('message:' || (ch.i + ${c} * ((${m} - ch.i) / ${c})))::uuid END,
       timestamptz '2025-03-01 00:00:00+00'
  FROM nchat_channel_members cm
  JOIN (SELECT i, md5('channel:' || i)::uuid AS id FROM generate_series(1, ${c}) i) ch ON ch.id = cm.channel_id;

ANALYZE;`
}

/**
 * Load the v0.3.0 schema, ledger and data into the (empty) database `sql` is connected to, whose search_path is
 * already the target schema. Big loads build the message indexes once after the data, not row by row.
 * @param {import('postgres').Sql} sql
 * @param {{ledger?: 'guide'|'varchar'|'bigint-name'|'none', users: number, channels: number, messages: number}} o
 */
export async function loadV030(sql, o) {
  await sql.unsafe(readFileSync(V030_SCHEMA_FILE, 'utf8'))
  const ledger = ledgerSql(o.ledger ?? 'guide')
  if (ledger) await sql.unsafe(ledger)
  if (o.messages <= 200_000) {
    await sql.unsafe(dataSql(o.users, o.channels, o.messages))
    return
  }
  const idx = await sql`
    SELECT i.relname AS name, pg_get_indexdef(x.indexrelid) AS def
      FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
     WHERE x.indrelid = 'nchat_messages'::regclass
       AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)`
  for (const i of idx) await sql.unsafe(`DROP INDEX "${i.name}"`)
  // The rows are consistent by construction: skip the per-row foreign key triggers too.
  await sql.unsafe('SET session_replication_role = replica')
  await sql.unsafe(dataSql(o.users, o.channels, o.messages))
  await sql.unsafe('SET session_replication_role = DEFAULT')
  await sql.unsafe("SET maintenance_work_mem = '256MB'")
  for (const i of idx) await sql.unsafe(i.def)
  await sql.unsafe('ANALYZE')
}

export const V030_REFERENCE_FILE = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'test', 'fixtures', 'v030_nchat_reference.sql')

/** Deterministic data in the layout of nChat's own v0.3.0 reference (schema nchat, qualified names). */
/** @param {number} u users @param {number} c channels @param {number} m messages */
export function referenceDataSql(u, c, m) {
  return `
INSERT INTO auth.users (id, email, created_at)
SELECT md5('auth:' || i)::uuid, 'user' || i || '@example.test', timestamptz '2025-01-01 00:00:00+00'
  FROM generate_series(1, ${u}) i;
INSERT INTO nchat.nchat_users (id, auth_user_id, username, display_name, email, role, status, created_at, updated_at)
SELECT md5('user:' || i)::uuid, md5('auth:' || i)::uuid, 'user' || i, 'User ' || i, 'user' || i || '@example.test',
       CASE WHEN i = 1 THEN 'owner' ELSE 'member' END, 'offline', ts, ts
  FROM generate_series(1, ${u}) i,
       LATERAL (SELECT timestamptz '2025-01-01 00:00:00+00' + i * interval '1 minute' AS ts) t;
INSERT INTO nchat.nchat_channels (id, name, slug, description, type, creator_id, created_at, updated_at)
SELECT md5('channel:' || i)::uuid, 'channel-' || i, 'channel-' || i, 'Channel number ' || i,
       CASE WHEN i % 5 = 0 THEN 'private' ELSE 'public' END, md5('user:' || ((i - 1) % ${u} + 1))::uuid, ts, ts
  FROM generate_series(1, ${c}) i,
       LATERAL (SELECT timestamptz '2025-01-02 00:00:00+00' + i * interval '1 minute' AS ts) t;
INSERT INTO nchat.nchat_channel_members (channel_id, user_id, role, joined_at)
SELECT md5('channel:' || i)::uuid, md5('user:' || ((i - 1 + (k - 1) * 7) % ${u} + 1))::uuid,
       CASE WHEN k = 1 THEN 'owner' ELSE 'member' END, timestamptz '2025-01-03 00:00:00+00'
  FROM generate_series(1, ${c}) i, generate_series(1, ${Math.min(20, u)}) k
ON CONFLICT DO NOTHING;
INSERT INTO nchat.nchat_messages (id, channel_id, user_id, content, type, parent_id, created_at, updated_at)
SELECT md5('message:' || i)::uuid, md5('channel:' || ((i - 1) % ${c} + 1))::uuid,
       md5('user:' || ((i * 7 - 1) % ${u} + 1))::uuid, 'message ' || i || ' ' || substr(md5(i::text), 1, 12),
       CASE WHEN i % 50 = 0 THEN 'system' ELSE 'text' END,
       CASE WHEN i % 10 = 0 AND i > ${c} THEN md5('message:' || (i - ${c}))::uuid END, ts, ts
  FROM generate_series(1, ${m}) i,
       LATERAL (SELECT timestamptz '2025-02-01 00:00:00+00' + i * interval '1 second' AS ts) t;
INSERT INTO nchat.nchat_reactions (message_id, user_id, emoji, created_at)
SELECT md5('message:' || i)::uuid, md5('user:' || ((i * 3) % ${u} + 1))::uuid, '👍', timestamptz '2025-02-02 00:00:00+00'
  FROM generate_series(5, ${m}, 5) i;
INSERT INTO nchat.nchat_read_receipts (channel_id, user_id, last_read_at)
SELECT channel_id, user_id, timestamptz '2025-03-01 00:00:00+00' FROM nchat.nchat_channel_members;
INSERT INTO nchat.nchat_settings (key, value) VALUES ('site_name', '"nChat"');
ANALYZE;`
}

/**
 * Load nChat's documented v0.3.0 layout (schema nchat, public.schema_migrations version BIGINT + name) into an
 * empty database. With `rls`, the existing nchat tables use row-level security (as some deployments do).
 * @param {import('postgres').Sql} sql
 * @param {{users: number, channels: number, messages: number, rls?: boolean}} o
 */
export async function loadV030Reference(sql, o) {
  await sql.unsafe('SET search_path = public')
  await sql.unsafe(readFileSync(V030_REFERENCE_FILE, 'utf8'))
  await sql.unsafe(`SET search_path = public; ${ledgerSql('bigint-name')}`)
  await sql.unsafe(referenceDataSql(o.users, o.channels, o.messages))
  if (o.rls) {
    for (const t of ['nchat_users', 'nchat_channels', 'nchat_channel_members', 'nchat_messages']) {
      await sql.unsafe(`ALTER TABLE nchat.${t} ENABLE ROW LEVEL SECURITY`)
    }
  }
}
