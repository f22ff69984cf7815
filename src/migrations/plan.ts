import {UserError} from '../errors.js'
import {loadMessages} from '../messages.js'
import type {Querier} from '../connection/connect.js'
import type {MigrationFile} from './files.js'
import {activeLedgerRows, detectShape, findAppSchema, type LedgerRow, type LedgerShape, recordedVersions} from './ledger.js'
import {concurrentIndexName, stripComments, validatedConstraintName} from './statements.js'
import {plural} from '../text.js'

const messages = loadMessages('lib.migrations.plan')

export type MigrationState =
  /** In our ledger with the same checksum, every statement done. */
  | 'applied'
  /** Not applied. */
  | 'pending'
  /** Its transaction committed but a statement that runs alone (CONCURRENTLY, VALIDATE) did not finish. */
  | 'partial'
  /** Applied with a different file: refused. */
  | 'drifted'
  /** In schema_migrations but not in our ledger (applied by hand or by another tool): re-run idempotently. */
  | 'recorded-elsewhere'

export interface MigrationStatus {
  version: number
  name: string
  state: MigrationState
  checksum: string
  ledger?: Pick<LedgerRow, 'applied_at' | 'applied_by' | 'checksum' | 'duration_ms' | 'finished_at'>
  /** Tables its up file creates that exist already (a hand-run of the guide): never dropped automatically. */
  preexisting: string[]
}

export interface Plan {
  appSchema: string
  shape: LedgerShape
  recorded: number[]
  /** Highest version in schema_migrations, or null when it is empty or missing. */
  current: number | null
  migrations: MigrationStatus[]
  /** What `migrate` would run, in order (pending, partial and recorded-elsewhere ones up to --to). */
  toApply: MigrationFile[]
  /** Recorded versions higher than the newest packaged migration. */
  ahead: number[]
}

export function createdTables(m: MigrationFile): string[] {
  const names = new Set<string>()
  for (const s of m.statements) {
    const match = /^\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?"?([A-Za-z_][A-Za-z0-9_]*)"?/i.exec(stripComments(s.sql))
    if (match) names.add(match[1].toLowerCase())
  }
  return [...names]
}

/** The tables `migrations` create, each once (013 and 014 create the same seven), in the order they appear. */
export function tablesCreatedBy(migrations: readonly MigrationFile[]): string[] {
  return [...new Set(migrations.flatMap(createdTables))]
}

/** The table an `ALTER TABLE` statement (comments stripped) alters, lower-cased; undefined for any other statement. */
export function alteredTable(code: string): string | undefined {
  return /^\s*ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?"?([A-Za-z_][A-Za-z0-9_]*)"?/i.exec(code)?.[1].toLowerCase()
}

/** One line per migration for a confirmation: what it creates and which existing tables it alters. */
export function describeChanges(m: MigrationFile): string {
  const created = createdTables(m)
  const altered = new Set<string>()
  let views = 0
  let functions = 0
  let online = 0
  for (const s of m.statements) {
    const code = stripComments(s.sql)
    const table = alteredTable(code)
    if (table && !created.includes(table)) altered.add(table)
    if (/^\s*CREATE\s+(?:OR\s+REPLACE\s+)?VIEW/i.test(code)) views++
    if (/^\s*CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION/i.test(code)) functions++
    if (s.mode === 'concurrent') online++
  }
  const parts = [
    created.length ? messages.getMessage('info.Creates', [created.join(', ')]) : '',
    views ? plural(views, 'view') : '',
    functions ? plural(functions, 'function') : '',
    altered.size ? messages.getMessage('info.Alters', [[...altered].join(', ')]) : '',
    online ? messages.getMessage('info.BuildsOnline', [plural(online, 'index', 'indexes')]) : '',
  ].filter(Boolean)
  return `${m.name}: ${parts.join('; ')}`
}

/** Which of these names are tables (plain or partitioned) in the schema. */
export async function existingTables(sql: Querier, schema: string, names: string[]): Promise<string[]> {
  if (names.length === 0) return []
  const rows = await sql<{name: string}[]>`
    select c.relname as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = ${schema} and c.relname = any(${names}) and c.relkind in ('r', 'p')`
  return rows.map((r) => r.name)
}

/**
 * The statements that run alone can be undone behind the ledger's back (an index rebuilt and interrupted, a
 * constraint re-added NOT VALID): a migration whose online parts are not valid is `partial`, and migrate redoes them.
 */
async function onlinePartsDone(sql: Querier, schema: string, m: MigrationFile): Promise<boolean> {
  const indexes = m.statements.map(concurrentIndexName).filter((n): n is string => Boolean(n))
  const constraints = m.statements.map(validatedConstraintName).filter((n): n is string => Boolean(n))
  if (indexes.length === 0 && constraints.length === 0) return true
  const [row] = await sql<{indexes: number; constraints: number}[]>`
    select
      (select count(*)::int from pg_index i join pg_class c on c.oid = i.indexrelid join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = ${schema} and c.relname = any(${indexes}) and i.indisvalid and i.indisready) as indexes,
      (select count(*)::int from pg_constraint k join pg_namespace n on n.oid = k.connamespace
        where n.nspname = ${schema} and k.conname = any(${constraints}) and k.convalidated) as constraints`
  return row.indexes === indexes.length && row.constraints === constraints.length
}

export async function readPlan(sql: Querier, migrations: MigrationFile[], options: {schema?: string; to?: number} = {}): Promise<Plan> {
  const appSchema = await findAppSchema(sql, options.schema)
  const shape = await detectShape(sql, appSchema)
  const recorded = await recordedVersions(sql, shape)
  const ledger = await activeLedgerRows(sql)
  const last = migrations.at(-1)
  if (!last) throw new Error('readPlan needs the migration files (none were given).')
  const newest = last.version

  const statuses: MigrationStatus[] = []
  for (const m of migrations) {
    const row = ledger.get(m.version)
    let state: MigrationState
    if (row) state = row.checksum === m.checksum ? (row.finished_at && (await onlinePartsDone(sql, appSchema, m)) ? 'applied' : 'partial') : 'drifted'
    else state = recorded.includes(m.version) ? 'recorded-elsewhere' : 'pending'
    const preexisting = state === 'applied' ? [] : await existingTables(sql, appSchema, createdTables(m))
    statuses.push({
      checksum: m.checksum,
      ledger: row && {
        applied_at: row.applied_at,
        applied_by: row.applied_by,
        checksum: row.checksum,
        duration_ms: row.duration_ms,
        finished_at: row.finished_at,
      },
      name: m.name,
      preexisting,
      state,
      version: m.version,
    })
  }

  if (options.to !== undefined && !migrations.some((m) => m.version === options.to)) {
    throw new UserError(messages.getMessage('error.UnknownTo', [options.to, migrations.map((m) => m.version).join(', ')]))
  }
  const limit = options.to ?? newest
  const toApply = migrations.filter((m, i) => m.version <= limit && statuses[i].state !== 'applied')
  return {
    ahead: recorded.filter((v) => v > newest),
    appSchema,
    current: recorded.at(-1) ?? null,
    migrations: statuses,
    recorded,
    shape,
    toApply,
  }
}

/** Refuse, by name, what must never be run over: drift, a ledger ahead of us, --to below what is applied. */
export function assertCanMigrate(plan: Plan, to?: number): void {
  // A drifted file is one whose ledger row holds another checksum: it always has its row.
  const d = plan.migrations.find(
    (m): m is MigrationStatus & {ledger: NonNullable<MigrationStatus['ledger']>} => m.state === 'drifted' && m.ledger !== undefined,
  )
  if (d) {
    throw new UserError(messages.getMessage('error.Drifted', [d.name, d.ledger.checksum.slice(0, 12), d.checksum.slice(0, 12)]), {
      hint: messages.getMessage('error.Drifted.hint'),
    })
  }
  if (plan.ahead.length > 0) {
    throw new UserError(messages.getMessage('error.LedgerAhead', [String(plan.ahead.at(-1)), Math.max(...plan.migrations.map((m) => m.version))]), {
      hint: messages.getMessage('error.LedgerAhead.hint'),
    })
  }
  if (to !== undefined) {
    const highest = plan.migrations.filter((m) => m.version > to && m.state !== 'pending').at(-1)
    if (highest) {
      throw new UserError(messages.getMessage('error.ToBelowApplied', [to, highest.version]), {
        hint: messages.getMessage('error.ToBelowApplied.hint'),
      })
    }
  }
}

export async function serverVersionNum(sql: Querier): Promise<{num: number; text: string}> {
  const [row] = await sql<{num: string; text: string}[]>`select current_setting('server_version_num') as num, current_setting('server_version') as text`
  return {num: Number(row.num), text: row.text}
}

export function assertServerSupported(v: {num: number; text: string}): void {
  if (v.num < 140_000) {
    throw new UserError(messages.getMessage('error.OldServer', [v.text]), {
      hint: messages.getMessage('error.OldServer.hint'),
    })
  }
}
