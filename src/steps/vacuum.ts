/**
 * Post-migration maintenance (the guide's "Vacuum and Analyze"): VACUUM (ANALYZE) of the new tables and of the
 * two tables 014 alters, so the planner has statistics for the new indexes at once. Each VACUUM runs alone,
 * outside any transaction (VACUUM cannot run inside one): a single statement on the pool is autocommitted.
 * The guide's last step, REFRESH MATERIALIZED VIEW CONCURRENTLY nchat_prekey_bundles, is gone with the
 * materialized view (D2): the plain view is always fresh.
 */
import {CancelledError, toUserError, UserError} from '../errors.js'
import {quoteIdent, validateIdentifier} from '../pg/identifiers.js'
import type {Querier, Sql} from '../connection/connect.js'
import {loadMessages} from '../messages.js'
import {createRunScope, type RunScope} from '../run/scope.js'

const messages = loadMessages('lib.steps.vacuum')

/** What is true when the vacuum is interrupted: it only refreshes statistics, nothing is undone. */
const VACUUM_OUTCOME = messages.getMessage('info.Outcome')

/**
 * `VACUUM (ANALYZE) schema.table` for each of `tables` that exists (others are skipped silently: a database
 * migrated only to 014 has no call tables). Returns what was vacuumed with its duration.
 */
export async function vacuumTables(
  sql: Sql,
  schema: string,
  tables: readonly string[],
  scope: RunScope = createRunScope(),
): Promise<Array<{table: string; ms: number}>> {
  const progress = (line: string) => scope.log.progress(line)
  validateIdentifier(schema, 'schema')
  for (const t of tables) validateIdentifier(t, 'table')
  let existing: string[]
  try {
    const rows = await sql<{name: string}[]>`
      select c.relname as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
       where n.nspname = ${schema} and c.relname = any(${[...tables]}) and c.relkind in ('r', 'p', 'm')`
    const found = new Set(rows.map((r) => r.name))
    existing = tables.filter((t) => found.has(t))
  } catch (error) {
    throw toUserError(error, messages.getMessage('info.FindingTables', [schema]))
  }

  const done: Array<{table: string; ms: number}> = []
  for (const [i, table] of existing.entries()) {
    if (scope.cancelled) throw new CancelledError(messages.getMessage('info.Step'), VACUUM_OUTCOME)
    const statement = `VACUUM (ANALYZE) ${quoteIdent(schema)}.${quoteIdent(table)}`
    progress(messages.getMessage('info.Progress', [table, i + 1, existing.length]))
    const started = Date.now()
    const q = sql.unsafe(statement)
    const dispose = scope.onCancel(() => q.cancel())
    try {
      await q
    } catch (error) {
      if (scope.cancelled) throw new CancelledError(messages.getMessage('info.StepOf', [table]), VACUUM_OUTCOME)
      const inner = toUserError(error)
      throw new UserError(messages.getMessage('error.Failed', [schema, table, inner.message.replace(/\.$/, '')]), {
        cause: error,
        hint: inner.hint ?? messages.getMessage('error.Failed.hint'),
      })
    } finally {
      dispose()
    }
    const ms = Date.now() - started
    done.push({ms, table})
    progress(messages.getMessage('info.Done', [table, ms]))
  }
  return done
}

export interface VacuumStats {
  lastVacuum: Date | null
  lastAnalyze: Date | null
  lastAutovacuum: Date | null
  lastAutoanalyze: Date | null
}

/** pg_stat_user_tables' vacuum and analyze times of `tables` (tables that do not exist are left out). */
export async function lastVacuumed(sql: Querier, schema: string, tables: readonly string[]): Promise<Record<string, VacuumStats>> {
  validateIdentifier(schema, 'schema')
  // The statistics snapshot of this session may be cached: read fresh values.
  await sql`select pg_stat_clear_snapshot()`
  const rows = await sql<{name: string; last_vacuum: Date | null; last_analyze: Date | null; last_autovacuum: Date | null; last_autoanalyze: Date | null}[]>`
    select relname as name, last_vacuum, last_analyze, last_autovacuum, last_autoanalyze
      from pg_stat_user_tables where schemaname = ${schema} and relname = any(${[...tables]})`
  const out: Record<string, VacuumStats> = {}
  for (const r of rows) {
    out[r.name] = {lastAnalyze: r.last_analyze, lastAutoanalyze: r.last_autoanalyze, lastAutovacuum: r.last_autovacuum, lastVacuum: r.last_vacuum}
  }
  return out
}
