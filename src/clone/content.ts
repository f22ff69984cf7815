import type {Plan} from '../migrations/plan.js'
import type {Sql} from '../connection/connect.js'

/**
 * What the dry-run clone holds (issue 11). The whole schema is always restored: every table, column, index,
 * constraint, trigger, policy, function, view, sequence, extension and grant, so 013-016 meet the catalog
 * production has. Rows are restored only where a statement of 013-016 reads or validates them:
 *
 * - tables no statement of 013-016 names (e.g. reactions, read receipts): nothing reads them;
 * - the big tables 014 only alters (ALTERED_ONLY below): their rows are left out when production's catalog
 *   proves that no statement reads a value in them. Their indexes and foreign keys are still restored, on an
 *   empty table, which is why they cost nothing. The time of the statements that scan them (index builds,
 *   the validation) is measured on a sample of production's rows and scaled by the table's size (forecast.ts).
 *
 * Everything else the migration reads keeps its rows: nchat_users (the new tables' foreign keys, validated
 * when a table that already has rows gets one), the ledgers, and tables a hand-run of the guide already made.
 */

export interface AlteredOnly {
  table: string
  /** The migration that alters it. */
  version: number
  /** Columns that migration adds. One that production already has is read (validated, indexed): rows kept. */
  addsColumns: string[]
  /** Constraints and indexes it creates on the table. One that exists already is validated as it is: rows kept. */
  names: string[]
  /** Why leaving out the rows cannot change the outcome, for the README, the log and each report. */
  why: string
}

/** Read from migrations/014_e2ee_system.sql part 4 and 5; 013, 015 and 016 do not touch these tables. */
export const ALTERED_ONLY: AlteredOnly[] = [
  {
    addsColumns: ['is_encrypted', 'encrypted_payload', 'sender_device_id', 'encryption_version'],
    names: ['fk_messages_sender_device', 'idx_messages_encrypted', 'idx_messages_sender_device'],
    table: 'nchat_messages',
    version: 14,
    why:
      '014 only alters it: ADD COLUMN with constant defaults (a catalog change, no row is read or rewritten); '
      + 'fk_messages_sender_device added NOT VALID, then VALIDATE, which checks only rows whose sender_device_id is not NULL, '
      + 'a column production does not have yet (checked in its catalog), so NULL in every row; '
      + "two non-unique partial indexes, which no row can make fail. Their build and the validation scan are timed on a sample of production's rows and scaled by the table's size",
  },
  {
    addsColumns: ['enforce_encryption'],
    names: ['idx_channels_enforce_encryption'],
    table: 'nchat_channels',
    version: 14,
    why:
      '014 only adds enforce_encryption with a constant default (a catalog change, no row is read or rewritten) and a non-unique partial index on it, which no row can make fail; '
      + "the index build is timed on a sample of production's rows and scaled by the table's size",
  },
]

export interface SlimTable {
  schema: string
  table: string
  why: string
}

export interface KeptAltered {
  table: string
  /** Why its rows are restored after all (a statement reads them in this database). */
  why: string
}

export interface CloneContent {
  /** Tables whose rows are restored ("schema.table"); their foreign-key targets follow (clone.ts). */
  dataTables: string[]
  /** Tables 014 only alters whose rows are left out, each with the proof. */
  slim: SlimTable[]
  /** Tables of ALTERED_ONLY whose rows are kept, and why. */
  keptAltered: KeptAltered[]
}

/**
 * Decide the clone's rows from production's catalog (read only). `required`: the tables whose rows a
 * statement reads (the migration's and ledgers'), as "schema.table".
 */
export async function cloneContent(sql: Sql, plan: Plan, required: string[]): Promise<CloneContent> {
  const schema = plan.appSchema
  const applying = new Set(plan.toApply.map((m) => m.version))
  const slim: SlimTable[] = []
  const keptAltered: KeptAltered[] = []
  for (const a of ALTERED_ONLY) {
    const key = `${schema}.${a.table}`
    if (!required.includes(key)) continue
    if (!applying.has(a.version)) {
      slim.push({schema, table: a.table, why: `no statement of the migrations to apply (${plan.toApply.map((m) => m.name).join(', ')}) reads or alters it`})
      continue
    }
    const reason = await readsRows(sql, schema, a)
    if (reason) keptAltered.push({table: a.table, why: reason})
    else slim.push({schema, table: a.table, why: a.why})
  }
  const slimKeys = new Set(slim.map((s) => `${s.schema}.${s.table}`))
  return {dataTables: required.filter((t) => !slimKeys.has(t)), keptAltered, slim}
}

/** Why a statement of the migration reads the rows of `a` in this database, or null when none does. */
async function readsRows(sql: Sql, schema: string, a: AlteredOnly): Promise<string | null> {
  const rows = await sql<{kind: string; name: string}[]>`
    select 'column' as kind, a.attname as name
      from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = ${schema} and c.relname = ${a.table} and a.attnum > 0 and not a.attisdropped and a.attname = any(${a.addsColumns})
    union all
    select 'constraint', con.conname
      from pg_constraint con join pg_class c on c.oid = con.conrelid join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = ${schema} and c.relname = ${a.table} and con.conname = any(${a.names})
    union all
    select 'index', i.relname
      from pg_index x join pg_class i on i.oid = x.indexrelid join pg_class c on c.oid = x.indrelid join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = ${schema} and c.relname = ${a.table} and i.relname = any(${a.names})
    union all
    select 'kind', c.relkind::text
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = ${schema} and c.relname = ${a.table} and c.relkind <> 'r'`
  if (rows.length === 0) return null
  const what = rows.map((r) => (r.kind === 'kind' ? `it is not a plain table (relkind ${r.name})` : `${r.kind} ${r.name} exists already`)).join(', ')
  return `${what} in production (a run that stopped, or the guide's SQL run by hand), so ${a.version.toString().padStart(3, '0')}'s statements read its rows: restored whole`
}
