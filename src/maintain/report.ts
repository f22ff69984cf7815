import {alteredTable, tablesCreatedBy} from '../migrations/plan.js'
import {stripComments} from '../migrations/statements.js'
import type {MigrationFile} from '../migrations/files.js'
import {quoteIdent} from '../pg/identifiers.js'
import type {Querier} from '../connection/connect.js'
import {estimateIndexBloat, estimateTableBloat, type BloatRow} from './bloat.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.maintain.report')

/**
 * What the guide asks operators to watch after the upgrade ("Monitor Index Usage", key rotation, prekey stock,
 * "Vacuum and Analyze"), read-only, for monitoring.
 *
 * The guide's index-usage query is
 *   WHERE tablename LIKE '%e2ee%' OR tablename IN ('nchat_messages', 'nchat_channels')
 * which (D8) matches only one of the seven key tables (nchat_e2ee_audit_log), none of 015/016's, every index of
 * the two big tables whatever its age, and (no schema condition) any schema's tables of those names; and
 * pg_stat_user_indexes has no column `tablename` or `indexname` (they are relname and indexrelname). Here: the
 * tables 013-016 create, plus the indexes of the tables they alter that cover a column they added, in the app's
 * schema only, each condition parenthesized.
 */

export interface ReportOptions {
  schema: string
  migrations: MigrationFile[]
  rotationDays: number
  stockThreshold: number
  /** Devices listed per finding (all are counted). */
  listLimit: number
}

export interface IndexUsage {
  table: string
  index: string
  scans: number
  tuplesRead: number
  tuplesFetched: number
  bytes: number
  unused: boolean
  /** Unique or primary key: it enforces a constraint, so unused is no reason to drop it. */
  enforcesConstraint: boolean
  /** PostgreSQL 16+: the last scan's time. */
  lastScan: string | null
}

export interface TableMaintenance {
  table: string
  liveRows: number
  deadRows: number
  modifiedSinceAnalyze: number
  lastVacuum: string | null
  lastAutovacuum: string | null
  lastAnalyze: string | null
  lastAutoanalyze: string | null
}

export interface MaintenanceReport {
  schema: string
  generatedAt: string
  statistics: {
    /** pg_stat_database.stats_reset of this database (null: never reset). */
    resetAt: string | null
    serverStartedAt: string
    /** Since when the usage counters count: the reset, or (before PostgreSQL 15, where a restart clears them) the start. */
    since: string | null
    observedDays: number | null
  }
  tables: {created: string[]; altered: Record<string, string[]>}
  indexes: IndexUsage[]
  signedPrekeys: {rotationDays: number; staleDevices: number; devices: Array<{deviceId: string; userId: string; rotatedAt: string | null}>}
  prekeyStock: {threshold: number; lowDevices: number; devices: Array<{deviceId: string; userId: string; unconsumed: number}>}
  bloat: {method: 'pgstattuple' | 'estimate'; note: string; tables: BloatRow[]; indexes: BloatRow[]}
  maintenance: TableMaintenance[]
}

/** Columns the migrations add to tables they do not create: {table: [columns]}. */
export function addedColumns(migrations: MigrationFile[]): Record<string, string[]> {
  const created = new Set(tablesCreatedBy(migrations))
  const out: Record<string, Set<string>> = {}
  for (const m of migrations) {
    for (const s of m.statements) {
      const code = stripComments(s.sql)
      const table = alteredTable(code)
      if (!table || created.has(table)) continue
      for (const add of code.matchAll(/ADD\s+COLUMN\s+(?:IF\s+NOT\s+EXISTS\s+)?"?([A-Za-z_][A-Za-z0-9_]*)"?/gi)) {
        out[table] ??= new Set()
        out[table].add(add[1].toLowerCase())
      }
    }
  }
  return Object.fromEntries(Object.entries(out).map(([t, cols]) => [t, [...cols].sort()]))
}

const iso = (d: Date | string | null) => (d === null ? null : new Date(d).toISOString())

export async function maintenanceReport(sql: Querier, o: ReportOptions): Promise<MaintenanceReport> {
  const created = tablesCreatedBy(o.migrations).sort()
  const altered = addedColumns(o.migrations)
  const alteredTables = Object.keys(altered)
  const addedCols = [...new Set(Object.values(altered).flat())]
  const s = quoteIdent(o.schema)

  const [stats] = await sql<{reset: Date | null; start: Date; num: number}[]>`
    select d.stats_reset as reset, pg_postmaster_start_time() as start, current_setting('server_version_num')::int as num
    from pg_stat_database d where d.datname = current_database()`
  const since = stats.reset ?? (stats.num < 150_000 ? stats.start : null)

  const hasLastScan = stats.num >= 160_000
  const indexes = await sql.unsafe<
    Array<{table: string; index: string; scans: string; read: string; fetched: string; bytes: string; constraint: boolean; last: Date | null}>
  >(
    `
    select s.relname as table, s.indexrelname as index, s.idx_scan as scans, s.idx_tup_read as read, s.idx_tup_fetch as fetched,
           pg_relation_size(s.indexrelid) as bytes, (i.indisunique or i.indisprimary) as constraint,
           ${hasLastScan ? 's.last_idx_scan' : 'null::timestamptz'} as last
    from pg_stat_user_indexes s
    join pg_index i on i.indexrelid = s.indexrelid
    where s.schemaname = $1
      and (
        s.relname = any($2::text[])
        or (
          s.relname = any($3::text[])
          and (
            exists (select 1 from pg_attribute a where a.attrelid = i.indrelid and a.attnum = any(i.indkey) and a.attname = any($4::text[]))
            or pg_get_expr(i.indpred, i.indrelid) ~ ('\\m(' || array_to_string($4::text[], '|') || ')\\M')
            or pg_get_expr(i.indexprs, i.indrelid) ~ ('\\m(' || array_to_string($4::text[], '|') || ')\\M')
          )
        )
      )
    order by s.idx_scan desc, s.relname, s.indexrelname`,
    [o.schema, created, alteredTables, addedCols.length > 0 ? addedCols : ['-']],
  )

  const [stale] = await sql.unsafe<Array<{n: string}>>(
    `
    select count(*) as n from ${s}.nchat_identity_keys ik
    where not exists (select 1 from ${s}.nchat_signed_prekeys sp
                      where sp.device_id = ik.device_id and sp.is_active and sp.rotation_date >= now() - make_interval(days => $1))`,
    [o.rotationDays],
  )
  const staleList = await sql.unsafe<Array<{deviceId: string; userId: string; rotatedAt: Date | null}>>(
    `
    select ik.device_id as "deviceId", ik.user_id::text as "userId", sp.rotated as "rotatedAt"
    from ${s}.nchat_identity_keys ik
    left join lateral (select max(rotation_date) as rotated from ${s}.nchat_signed_prekeys x where x.device_id = ik.device_id and x.is_active) sp on true
    where sp.rotated is null or sp.rotated < now() - make_interval(days => $1)
    order by sp.rotated nulls first, ik.device_id limit $2`,
    [o.rotationDays, o.listLimit],
  )

  const [low] = await sql.unsafe<Array<{n: string}>>(
    `
    select count(*) as n from ${s}.nchat_identity_keys ik
    where (select count(*) from (select 1 from ${s}.nchat_one_time_prekeys p where p.device_id = ik.device_id and p.is_consumed = false limit $1) x) < $1`,
    [o.stockThreshold],
  )
  const lowList = await sql.unsafe<Array<{deviceId: string; userId: string; unconsumed: string}>>(
    `
    select ik.device_id as "deviceId", ik.user_id::text as "userId", c.n as unconsumed
    from ${s}.nchat_identity_keys ik
    cross join lateral (select count(*) as n from (select 1 from ${s}.nchat_one_time_prekeys p where p.device_id = ik.device_id and p.is_consumed = false limit $1) x) c
    where c.n < $1 order by c.n, ik.device_id limit $2`,
    [o.stockThreshold, o.listLimit],
  )

  const watched = [...created, ...alteredTables]
  const maintenance = await sql<
    Array<{table: string; live: string; dead: string; mod: string; lv: Date | null; lav: Date | null; la: Date | null; laa: Date | null}>
  >`
    select relname as table, n_live_tup as live, n_dead_tup as dead, n_mod_since_analyze as mod,
           last_vacuum as lv, last_autovacuum as lav, last_analyze as la, last_autoanalyze as laa
    from pg_stat_user_tables where schemaname = ${o.schema} and relname = any(${watched}) order by relname`

  const [{installed}] = await sql<{installed: boolean}[]>`
    select exists (select 1 from pg_extension where extname = 'pgstattuple') and has_function_privilege('pgstattuple_approx(regclass)', 'execute') as installed`
  const bloat = installed
    ? {
        indexes: await pgstattupleIndexes(sql, o.schema, watched),
        method: 'pgstattuple' as const,
        note: messages.getMessage('bloat.pgstattuple'),
        tables: await pgstattupleTables(sql, o.schema, watched),
      }
    : {
        indexes: await estimateIndexBloat(sql, o.schema, watched),
        method: 'estimate' as const,
        note: messages.getMessage('bloat.estimate'),
        tables: await estimateTableBloat(sql, o.schema, watched),
      }

  const observedDays = since ? (Date.now() - new Date(since).getTime()) / 86_400_000 : null
  return {
    bloat,
    generatedAt: new Date().toISOString(),
    indexes: indexes.map((r) => ({
      bytes: Number(r.bytes),
      enforcesConstraint: r.constraint,
      index: r.index,
      lastScan: iso(r.last),
      scans: Number(r.scans),
      table: r.table,
      tuplesFetched: Number(r.fetched),
      tuplesRead: Number(r.read),
      unused: Number(r.scans) === 0,
    })),
    maintenance: maintenance.map((r) => ({
      deadRows: Number(r.dead),
      lastAnalyze: iso(r.la),
      lastAutoanalyze: iso(r.laa),
      lastAutovacuum: iso(r.lav),
      lastVacuum: iso(r.lv),
      liveRows: Number(r.live),
      modifiedSinceAnalyze: Number(r.mod),
      table: r.table,
    })),
    prekeyStock: {devices: lowList.map((r) => ({...r, unconsumed: Number(r.unconsumed)})), lowDevices: Number(low.n), threshold: o.stockThreshold},
    schema: o.schema,
    signedPrekeys: {devices: staleList.map((r) => ({...r, rotatedAt: iso(r.rotatedAt)})), rotationDays: o.rotationDays, staleDevices: Number(stale.n)},
    statistics: {
      observedDays: observedDays === null ? null : Math.round(observedDays * 10) / 10,
      resetAt: iso(stats.reset),
      serverStartedAt: new Date(stats.start).toISOString(),
      since: iso(since),
    },
    tables: {altered, created},
  }
}

async function pgstattupleTables(sql: Querier, schema: string, tables: string[]): Promise<BloatRow[]> {
  const rows = await sql<Array<{name: string; bytes: string; wasted: string}>>`
    select c.relname as name, t.table_len as bytes, (t.approx_free_space + t.dead_tuple_len) as wasted
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    cross join lateral pgstattuple_approx(c.oid) t
    where n.nspname = ${schema} and c.relname = any(${tables}) and c.relkind = 'r' order by c.relname`
  return rows.map((r) => bloatRow(r.name, null, Number(r.bytes), Number(r.wasted)))
}

async function pgstattupleIndexes(sql: Querier, schema: string, tables: string[]): Promise<BloatRow[]> {
  const rows = await sql<Array<{name: string; table: string; bytes: string; density: number}>>`
    select ic.relname as name, tc.relname as table, pg_relation_size(ic.oid) as bytes, s.avg_leaf_density as density
    from pg_index i join pg_class ic on ic.oid = i.indexrelid join pg_class tc on tc.oid = i.indrelid
    join pg_namespace n on n.oid = tc.relnamespace join pg_am am on am.oid = ic.relam
    cross join lateral pgstatindex(ic.oid) s
    where n.nspname = ${schema} and tc.relname = any(${tables}) and am.amname = 'btree' order by tc.relname, ic.relname`
  // A fresh btree fills leaves to 90 %; what is below that is space a REINDEX would give back.
  return rows.map((r) =>
    bloatRow(r.name, r.table, Number(r.bytes), Number.isNaN(Number(r.density)) ? 0 : Math.max(0, (90 - Number(r.density)) / 100) * Number(r.bytes)),
  )
}

export function bloatRow(name: string, table: string | null, bytes: number, wasted: number): BloatRow {
  const w = Math.max(0, Math.round(wasted))
  return {bytes, name, percent: bytes > 0 ? Math.round((1000 * w) / bytes) / 10 : 0, table, wastedBytes: w}
}
