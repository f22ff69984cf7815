import os from 'node:os'

import {UserError} from '../errors.js'
import {loadMessages} from '../messages.js'
import {quoteIdent} from '../pg/identifiers.js'
import type {Querier} from '../connection/connect.js'

const messages = loadMessages('lib.migrations.ledger')

/** Our own ledger, beside nself's `schema_migrations`: checksums, durations, who, and rollbacks. */
export const LEDGER_SCHEMA = 'nself_e2ee'
export const LEDGER_TABLE = `${LEDGER_SCHEMA}.migrations`

/** Where nChat's tables live: the schema holding nchat_users (public or nchat). */
export async function findAppSchema(sql: Querier, override?: string): Promise<string> {
  const rows = await sql<{schema: string}[]>`
    select n.nspname as schema from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.relname = 'nchat_users' and c.relkind in ('r', 'p') order by n.nspname`
  const schemas = rows.map((r) => r.schema)
  if (override) {
    if (!schemas.includes(override)) {
      throw new UserError(
        schemas.length
          ? messages.getMessage('error.SchemaOverrideMissingFoundIn', [override, schemas.join(', ')])
          : messages.getMessage('error.SchemaOverrideMissing', [override]),
      )
    }
    return override
  }
  if (schemas.length === 0) {
    const [{db}] = await sql<{db: string}[]>`select current_database() as db`
    throw new UserError(messages.getMessage('error.NotNchat', [db]), {
      hint: messages.getMessage('error.NotNchat.hint'),
    })
  }
  if (schemas.length > 1) {
    throw new UserError(messages.getMessage('error.SeveralSchemas', [schemas.join(', ')]), {hint: messages.getMessage('error.SeveralSchemas.hint')})
  }
  return schemas[0]
}

/** The shape of the schema_migrations table found in the database (the shapes: docs/deviations.md, Procedure). */
export interface LedgerShape {
  exists: boolean
  schema: string
  /** "int" for INTEGER/BIGINT versions, "text" for VARCHAR/TEXT ones. */
  versionType: 'int' | 'text'
  /** Text versions written as "014_e2ee_system" (true) or "14"/"014" (false). */
  textWithName: boolean
  /** Zero-padded text versions ("014"). */
  textPadded: boolean
  nameColumn?: string
  timeColumn?: string
  /** A timestamp column with no default, which we must fill. */
  timeNeedsValue: boolean
}

export async function detectShape(sql: Querier, appSchema: string): Promise<LedgerShape> {
  const tables = await sql<{schema: string}[]>`
    select n.nspname as schema from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.relname = 'schema_migrations' and c.relkind in ('r', 'p') and n.nspname = any(${[appSchema, 'public']})
    order by n.nspname = ${appSchema} desc limit 1`
  if (tables.length === 0) {
    return {exists: false, schema: appSchema, textPadded: false, textWithName: false, timeColumn: 'executed_at', timeNeedsValue: false, versionType: 'int'}
  }
  const schema = tables[0].schema
  const cols = await sql<{name: string; type: string; notnull: boolean; hasdefault: boolean}[]>`
    select a.attname as name, format_type(a.atttypid, a.atttypmod) as type, a.attnotnull as notnull, a.atthasdef as hasdefault
    from pg_attribute a where a.attrelid = ${`${quoteIdent(schema)}.schema_migrations`}::regclass and a.attnum > 0 and not a.attisdropped`
  const version = cols.find((c) => c.name === 'version')
  if (!version) throw new UserError(messages.getMessage('error.NoVersionColumn', [schema]))
  const versionType = /int|numeric/.test(version.type) ? 'int' : 'text'
  const nameColumn = cols.find((c) => c.name === 'name')?.name
  const time = cols.find((c) => ['executed_at', 'applied_at', 'run_at', 'created_at', 'installed_on'].includes(c.name))
  const known = new Set(['version', nameColumn, time?.name])
  const unfillable = cols.filter((c) => !known.has(c.name) && c.notnull && !c.hasdefault)
  if (unfillable.length > 0) {
    throw new UserError(messages.getMessage('error.UnfillableColumns', [schema, unfillable.map((c) => c.name).join(', ')]))
  }
  let textWithName = false
  let textPadded = false
  if (versionType === 'text') {
    const samples = await sql.unsafe<{version: string}[]>(`select version from ${quoteIdent(schema)}.schema_migrations order by version desc limit 20`)
    textWithName = samples.some((r) => /^\d+_/.test(r.version))
    textPadded = samples.some((r) => /^0\d/.test(r.version))
  }
  return {exists: true, nameColumn, schema, textPadded, textWithName, timeColumn: time?.name, timeNeedsValue: Boolean(time && !time.hasdefault), versionType}
}

export function versionNumber(raw: string | number): number | undefined {
  const m = /^0*(\d+)/.exec(String(raw).trim())
  return m ? Number(m[1]) : undefined
}

/** Versions recorded in schema_migrations (any shape), as numbers. */
export async function recordedVersions(sql: Querier, shape: LedgerShape): Promise<number[]> {
  if (!shape.exists) return []
  const rows = await sql.unsafe<{version: string}[]>(`select version::text as version from ${quoteIdent(shape.schema)}.schema_migrations`)
  return [...new Set(rows.map((r) => versionNumber(r.version)).filter((v): v is number => v !== undefined))].sort((a, b) => a - b)
}

/** Create the guide's shape when the database has none (never alter an existing one). */
export async function ensureSchemaMigrations(tx: Querier, shape: LedgerShape): Promise<LedgerShape> {
  if (shape.exists) return shape
  await tx.unsafe(`create table if not exists ${quoteIdent(shape.schema)}.schema_migrations (
    version integer primary key, executed_at timestamptz not null default now())`)
  return {...shape, exists: true}
}

function versionValue(shape: LedgerShape, version: number, name: string): string | number {
  if (shape.versionType === 'int') return version
  if (shape.textWithName) return name
  return shape.textPadded ? String(version).padStart(3, '0') : String(version)
}

export async function recordVersion(tx: Querier, shape: LedgerShape, version: number, name: string): Promise<void> {
  const table = `${quoteIdent(shape.schema)}.schema_migrations`
  const existing = await recordedVersions(tx, shape)
  if (existing.includes(version)) return
  const cols = ['version']
  const vals: Array<string | number> = [versionValue(shape, version, name)]
  if (shape.nameColumn) {
    cols.push(shape.nameColumn)
    vals.push(name)
  }
  if (shape.timeColumn && shape.timeNeedsValue) {
    cols.push(shape.timeColumn)
    vals.push(new Date().toISOString())
  }
  await tx.unsafe(`insert into ${table} (${cols.map(quoteIdent).join(', ')}) values (${vals.map((_, i) => `$${i + 1}`).join(', ')})`, vals)
}

export async function unrecordVersion(tx: Querier, shape: LedgerShape, version: number): Promise<void> {
  if (!shape.exists) return
  const table = `${quoteIdent(shape.schema)}.schema_migrations`
  const rows = await tx.unsafe<{v: string}[]>(`select version::text as v from ${table}`)
  const matching = rows.filter((r) => versionNumber(r.v) === version).map((r) => r.v)
  for (const v of matching) await tx.unsafe(`delete from ${table} where version::text = $1`, [v])
}

export interface LedgerRow {
  version: number
  name: string
  checksum: string
  app_schema: string
  applied_at: Date
  applied_by: string
  duration_ms: number | null
  /** Null while the statements that run outside the transaction (CONCURRENTLY, VALIDATE) are not done. */
  finished_at: Date | null
}

export async function ensureOwnLedger(sql: Querier): Promise<void> {
  // CREATE … IF NOT EXISTS checks the CREATE privilege before it looks: a role that may write the existing
  // ledger but not create schemas in the database must not be asked for it.
  if (await ownLedgerExists(sql)) return
  const [{has}] = await sql<{has: boolean}[]>`select exists (select 1 from pg_namespace where nspname = ${LEDGER_SCHEMA}) as has`
  if (!has) await sql.unsafe(`create schema if not exists ${LEDGER_SCHEMA}`)
  await sql.unsafe(`create table if not exists ${LEDGER_TABLE} (
    id bigint generated always as identity primary key,
    version integer not null,
    name text not null,
    checksum text not null,
    app_schema text not null,
    applied_at timestamptz not null default now(),
    applied_by text not null,
    duration_ms integer,
    finished_at timestamptz,
    rolled_back_at timestamptz,
    rolled_back_by text)`)
  await sql.unsafe(`create unique index if not exists migrations_active_version on ${LEDGER_TABLE} (version) where rolled_back_at is null`)
  await sql.unsafe(`comment on schema ${LEDGER_SCHEMA} is 'nself db e2ee: history of migrations 013-016 (checksums, durations, rollbacks)'`)
}

export async function ownLedgerExists(sql: Querier): Promise<boolean> {
  const [{ok}] = await sql<{ok: boolean}[]>`select to_regclass(${LEDGER_TABLE}) is not null as ok`
  return ok
}

/** Active (not rolled back) rows of our ledger, by version. */
export async function activeLedgerRows(sql: Querier): Promise<Map<number, LedgerRow>> {
  if (!(await ownLedgerExists(sql))) return new Map()
  const rows = await sql.unsafe<LedgerRow[]>(`select version, name, checksum, app_schema, applied_at, applied_by, duration_ms, finished_at
    from ${LEDGER_TABLE} where rolled_back_at is null order by version`)
  return new Map(rows.map((r) => [Number(r.version), r]))
}

export function whoRuns(): string {
  let user = 'unknown'
  try {
    user = os.userInfo().username
  } catch {}
  return `${user}@${os.hostname()} (nself db e2ee)`
}

export async function insertLedgerRow(
  tx: Querier,
  row: {version: number; name: string; checksum: string; appSchema: string; durationMs: number; finished: boolean},
): Promise<void> {
  await tx.unsafe(`update ${LEDGER_TABLE} set rolled_back_at = now(), rolled_back_by = 'superseded' where version = $1 and rolled_back_at is null`, [
    row.version,
  ])
  await tx.unsafe(
    `insert into ${LEDGER_TABLE} (version, name, checksum, app_schema, applied_by, duration_ms, finished_at)
    values ($1, $2, $3, $4, (current_user || ' / ' || $5), $6, ${row.finished ? 'now()' : 'null'})`,
    [row.version, row.name, row.checksum, row.appSchema, whoRuns(), row.durationMs],
  )
}

export async function markFinished(sql: Querier, version: number, durationMs: number): Promise<void> {
  await sql.unsafe(
    `update ${LEDGER_TABLE} set finished_at = now(), duration_ms = coalesce(duration_ms, 0) + $2 where version = $1 and rolled_back_at is null`,
    [version, durationMs],
  )
}

export async function markRolledBack(tx: Querier, version: number): Promise<void> {
  if (!(await ownLedgerExists(tx))) return
  await tx.unsafe(
    `update ${LEDGER_TABLE} set rolled_back_at = now(), rolled_back_by = current_user || ' / ' || $2 where version = $1 and rolled_back_at is null`,
    [version, whoRuns()],
  )
}

/** The highest version in schema_migrations of the database `sql` is connected to (null when none). */
export async function readLedgerVersion(sql: Querier, schema?: string): Promise<number | null> {
  const appSchema = await findAppSchema(sql, schema)
  const versions = await recordedVersions(sql, await detectShape(sql, appSchema))
  return versions.length > 0 ? versions[versions.length - 1] : null
}

// ---------------------------------------------------------------------------------------------------------
// nself's own ledger (np_common.schema_versions, nself_ops.migrations), written where it exists so that
// `nself db migrate status` lists 013–016. nself keys a flat migration file by its file name in
// schema_versions.name and by the name without ".sql" in nself_ops.migrations.id, with the file's sha256.

export const NSELF_SCHEMA_VERSIONS = 'np_common.schema_versions'
export const NSELF_OPS_MIGRATIONS = 'nself_ops.migrations'

export interface NselfLedgerEntry {
  /** The migration file's name, e.g. "014_e2ee_system.sql" (nself's schema_versions.name). */
  fileName: string
  checksum: string
}

export function nselfLedgerId(fileName: string): string {
  return fileName.replace(/\.sql$/, '')
}

async function nselfTables(tx: Querier): Promise<{versions: boolean; ops: boolean}> {
  const [row] = await tx<{versions: boolean; ops: boolean}[]>`
    select to_regclass(${NSELF_SCHEMA_VERSIONS}) is not null as versions, to_regclass(${NSELF_OPS_MIGRATIONS}) is not null as ops`
  return row
}

/** Record a migration in nself's ledger tables that exist (never creates them); inside the file's transaction. */
export async function recordInNselfLedger(tx: Querier, entry: NselfLedgerEntry, durationMs: number): Promise<void> {
  const {versions, ops} = await nselfTables(tx)
  if (versions) {
    await tx.unsafe(
      `insert into ${NSELF_SCHEMA_VERSIONS} (name) select $1::text
      where not exists (select 1 from ${NSELF_SCHEMA_VERSIONS} where name = $1::text)`,
      [entry.fileName],
    )
  }
  if (ops) {
    // nself's apply: one row per id; a re-apply refreshes checksum and time and clears rolled_back_at.
    const id = nselfLedgerId(entry.fileName)
    const updated = await tx.unsafe(
      `update ${NSELF_OPS_MIGRATIONS} set name = $2, checksum = $3, applied_at = now(),
      applied_by = current_user || ' (nself nchat-upgrade)', duration_ms = $4, rolled_back_at = null where id = $1`,
      [id, entry.fileName, entry.checksum, durationMs],
    )
    if (updated.count === 0) {
      await tx.unsafe(
        `insert into ${NSELF_OPS_MIGRATIONS} (id, name, checksum, applied_by, duration_ms)
        values ($1, $2, $3, current_user || ' (nself nchat-upgrade)', $4)`,
        [id, entry.fileName, entry.checksum, durationMs],
      )
    }
  }
}

/**
 * A rollback in nself's ledger: the schema_versions row goes (so nself counts the file as not applied) and the
 * nself_ops.migrations row is kept with rolled_back_at set, the column nself has for it (its next apply clears it).
 */
export async function markRolledBackInNselfLedger(tx: Querier, fileName: string): Promise<void> {
  const {versions, ops} = await nselfTables(tx)
  if (versions) await tx.unsafe(`delete from ${NSELF_SCHEMA_VERSIONS} where name = $1`, [fileName])
  if (ops) await tx.unsafe(`update ${NSELF_OPS_MIGRATIONS} set rolled_back_at = now() where id = $1 and rolled_back_at is null`, [nselfLedgerId(fileName)])
}

/** Which of 013–016 nself's ledger lists as applied (for `status`); null when the database has no nself ledger. */
export async function nselfLedgerApplied(sql: Querier, fileNames: string[]): Promise<string[] | null> {
  const {versions} = await nselfTables(sql)
  if (!versions) return null
  const rows = await sql.unsafe<{name: string}[]>(`select name from ${NSELF_SCHEMA_VERSIONS} where name = any($1::text[]) order by name`, [fileNames])
  return rows.map((r) => r.name)
}
