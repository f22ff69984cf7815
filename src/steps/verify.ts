/**
 * Verification after the upgrade, done right (docs/deviations.md, D8).
 *
 * The guide's verification queries mix AND/OR without parentheses and compare nothing precisely. Here every
 * object migrations 013..upTo create is checked by its exact name in the application schema against a
 * committed reference snapshot (src/migrations/expected-schema.json, generated from the catalogs of a fresh
 * v0.3.0 database migrated step by step to 016: `node scripts/expected-schema.mjs`): relations, columns
 * (type, nullability, default), indexes (table, definition, pg_index.indisvalid AND indisready), constraints
 * (definition, convalidated, delete rules), functions, sequences. The guide's materialized view, refresh
 * function and triggers (D2) must be gone. Then the data (invariants that hold on a database in use, row counts against the backup
 * manifest), the prekey bundle view against real rows inside a transaction that is always rolled back, and
 * the query plans of the guide's "Query Performance" table.
 */
import {createHash, randomBytes} from 'node:crypto'

import {toUserError, UserError} from '../errors.js'
import {type MigrationFile} from '../migrations/files.js'
import {migrateUp} from '../migrations/runner.js'
import {quoteIdent, validateIdentifier} from '../pg/identifiers.js'
import type {Querier, Sql} from '../target/connect.js'
import {escapeRegExp} from '../text.js'
import expectedJson from '../migrations/expected-schema.json' with {type: 'json'}

// ------------------------------------------------------------------------------------------------------------
// Public types
// ------------------------------------------------------------------------------------------------------------

export type CheckStatus = 'ok' | 'warn' | 'fail'

export interface VerifyCheck {
  name: string
  status: CheckStatus
  detail: string
}

export interface VerifyReport {
  ok: boolean
  checks: VerifyCheck[]
  /** One sentence per failed check, naming the object and what is wrong. */
  failures: string[]
}

export interface VerifyOptions {
  /** The application schema (where nchat_users lives). */
  schema: string
  /** Highest migration version expected applied (default: the newest in the snapshot, 16). */
  upTo?: number
  /** The backup manifest: its row counts of nchat_users, nchat_channels and nchat_messages are compared. */
  manifest?: {row_counts: Record<string, number>}
  /** true: a row count that differs from the manifest fails; false (live traffic): it warns with the delta. */
  exactCounts?: boolean
}

/** Tables whose row counts are compared with the backup manifest. */
export const ROW_COUNT_TABLES = ['nchat_users', 'nchat_channels', 'nchat_messages'] as const

// ------------------------------------------------------------------------------------------------------------
// Catalog model (normalised: no schema names, no OIDs)
// ------------------------------------------------------------------------------------------------------------

export type ObjectKind = 'table' | 'view' | 'matview' | 'sequence' | 'column' | 'index' | 'constraint' | 'function' | 'trigger'

export interface RelationDef {relkind: string; columns?: Array<{name: string; type: string}>; type?: string; ownedBy?: string | null}
export interface ColumnDef {type: string; notNull: boolean; default: string | null; identity?: string; generated?: string}
export interface IndexDef {table: string; unique: boolean; primary: boolean; definition: string}
export interface ConstraintDef {
  table: string
  type: string
  columns: string[]
  /** pg_get_constraintdef without NOT VALID (validation is checked on its own). */
  definition: string
  references?: {table: string; columns: string[]; onDelete: string; onUpdate: string; match: string}
  deferrable: boolean
  deferred: boolean
}
export interface FunctionDef {
  kind: string
  returns: string | null
  language: string
  volatility: string
  securityDefiner: boolean
  config: string[]
  bodySha256: string
}
export interface TriggerDef {table: string; function: string; definition: string}

export type ObjectDef = RelationDef | ColumnDef | IndexDef | ConstraintDef | FunctionDef | TriggerDef

export interface CatalogObject {
  key: string
  kind: ObjectKind
  name: string
  table?: string
  def: ObjectDef
  /** Live state, never part of the snapshot. */
  state?: {valid?: boolean; ready?: boolean; validated?: boolean}
}

export type Catalog = Map<string, CatalogObject>

export interface ExpectedObject {
  key: string
  kind: ObjectKind
  name: string
  table?: string
  /** The first migration version after which the object exists as `def` says (null: the migration drops it). */
  since: number
  def: ObjectDef | null
  /** Later migrations that change or drop it. */
  revisions?: Array<{from: number; def: ObjectDef | null}>
}

export interface ExpectedSchema {
  $comment?: string
  format: number
  /** Version → migration name, e.g. "14": "014_e2ee_system". */
  migrations: Record<string, string>
  objects: ExpectedObject[]
}

/** An identifier as the operator would type it: bare when that is safe, quoted otherwise. */
function displayIdent(name: string): string {
  return /^[a-z_][a-z0-9_$]*$/.test(name) ? name : quoteIdent(name)
}

function objectKey(kind: ObjectKind, name: string, table?: string): string {
  switch (kind) {
    case 'table':
    case 'view':
    case 'matview':
    case 'sequence':
      return `rel:${name}`
    case 'index':
      return `index:${name}`
    case 'function':
      return `function:${name}`
    default:
      return `${kind}:${table}.${name}`
  }
}

const RELKIND: Record<string, ObjectKind> = {S: 'sequence', f: 'table', m: 'matview', p: 'table', r: 'table', v: 'view'}
const RELKIND_TEXT: Record<string, string> = {S: 'a sequence', f: 'a foreign table', m: 'a materialized view', p: 'a partitioned table', r: 'a table', v: 'a view'}
const FK_RULE: Record<string, string> = {a: 'NO ACTION', c: 'CASCADE', d: 'SET DEFAULT', n: 'SET NULL', r: 'RESTRICT'}
const FK_MATCH: Record<string, string> = {f: 'FULL', p: 'PARTIAL', s: 'SIMPLE'}
const VOLATILITY: Record<string, string> = {i: 'immutable', s: 'stable', v: 'volatile'}
const CONSTRAINT_TYPE: Record<string, string> = {c: 'check constraint', f: 'foreign key', p: 'primary key', u: 'unique constraint', x: 'exclusion constraint'}

/** Tables of the migration machinery, not of nChat: never part of the snapshot. */
const MACHINERY_TABLES = new Set(['schema_migrations'])

/** Remove qualifications by the application schema (`nchat.x`, `"nchat".x`) from catalog text. */
export function unqualify(text: string, schema: string): string {
  const forms = [`"${schema.replaceAll('"', '""')}"`]
  if (/^[a-z_][a-z0-9_$]*$/.test(schema)) forms.push(schema)
  let out = text
  for (const f of forms) out = out.replace(new RegExp(`(^|[^A-Za-z0-9_$."])${escapeRegExp(f)}\\.`, 'g'), '$1')
  return out
}

function normaliseConfig(config: string[] | null, schema: string): string[] {
  return (config ?? []).map((entry) => {
    const m = /^search_path=(.*)$/.exec(entry)
    if (!m) return entry
    const parts = m[1].split(',').map((p) => p.trim()).map((p) => (p === schema || p === `"${schema.replaceAll('"', '""')}"` ? '$schema' : p))
    return `search_path=${parts.join(', ')}`
  }).sort()
}

/** Read every object of `schema` from the catalogs, normalised. */
export async function readCatalog(sql: Querier, schema: string): Promise<Catalog> {
  const catalog: Catalog = new Map()
  const ns = await sql<{oid: number}[]>`select oid::int8 as oid from pg_namespace where nspname = ${schema}`
  if (ns.length === 0) return catalog
  const oid = Number(ns[0].oid)
  const add = (o: Omit<CatalogObject, 'key'>) => catalog.set(objectKey(o.kind, o.name, o.table), {...o, key: objectKey(o.kind, o.name, o.table)})

  const rels = await sql<{name: string; kind: string}[]>`
    select c.relname as name, c.relkind::text as kind from pg_class c
    where c.relnamespace = ${oid}::oid and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')`
  const cols = await sql<{rel: string; relkind: string; name: string; type: string; not_null: boolean; dflt: string | null; identity: string; generated: string}[]>`
    select c.relname as rel, c.relkind::text as relkind, a.attname as name, format_type(a.atttypid, a.atttypmod) as type,
           a.attnotnull as not_null, pg_get_expr(d.adbin, d.adrelid) as dflt, a.attidentity::text as identity, a.attgenerated::text as generated
      from pg_attribute a
      join pg_class c on c.oid = a.attrelid
      left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
     where c.relnamespace = ${oid}::oid and c.relkind in ('r', 'p', 'v', 'm', 'f') and a.attnum > 0 and not a.attisdropped
     order by c.relname, a.attnum`
  const seqs = await sql<{name: string; type: string; owned_by: string | null}[]>`
    select c.relname as name, format_type(s.seqtypid, null) as type,
           (select t.relname || '.' || a.attname
              from pg_depend d
              join pg_class t on t.oid = d.refobjid
              join pg_attribute a on a.attrelid = d.refobjid and a.attnum = d.refobjsubid
             where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.refclassid = 'pg_class'::regclass
               and d.deptype in ('a', 'i')
             limit 1) as owned_by
      from pg_class c join pg_sequence s on s.seqrelid = c.oid
     where c.relnamespace = ${oid}::oid and c.relkind = 'S'`
  const seqMap = new Map(seqs.map((s) => [s.name, s]))

  const viewColumns = new Map<string, Array<{name: string; type: string}>>()
  for (const r of rels) {
    if (MACHINERY_TABLES.has(r.name)) continue
    const kind = RELKIND[r.kind]
    const def: RelationDef = {relkind: r.kind}
    if (kind === 'view' || kind === 'matview') {
      def.columns = []
      viewColumns.set(r.name, def.columns)
    }
    if (kind === 'sequence') {
      const s = seqMap.get(r.name)
      def.type = s?.type
      def.ownedBy = s?.owned_by ?? null
    }
    add({def, kind, name: r.name})
  }
  for (const c of cols) {
    if (MACHINERY_TABLES.has(c.rel)) continue
    const vc = viewColumns.get(c.rel)
    if (vc) {
      vc.push({name: c.name, type: c.type})
      continue
    }
    const def: ColumnDef = {default: c.dflt === null ? null : unqualify(c.dflt, schema), notNull: c.not_null, type: unqualify(c.type, schema)}
    if (c.identity) def.identity = c.identity
    if (c.generated) def.generated = c.generated
    add({def, kind: 'column', name: c.name, table: c.rel})
  }

  const idx = await sql<{name: string; table: string; def: string; unique: boolean; primary: boolean; valid: boolean; ready: boolean}[]>`
    select i.relname as name, t.relname as table, pg_get_indexdef(x.indexrelid) as def, x.indisunique as unique,
           x.indisprimary as primary, x.indisvalid as valid, x.indisready as ready
      from pg_index x join pg_class i on i.oid = x.indexrelid join pg_class t on t.oid = x.indrelid
     where t.relnamespace = ${oid}::oid`
  for (const i of idx) {
    if (MACHINERY_TABLES.has(i.table)) continue
    const at = i.def.indexOf(' USING ')
    const definition = unqualify(at >= 0 ? i.def.slice(at + 1) : i.def, schema)
    add({def: {definition, primary: i.primary, table: i.table, unique: i.unique}, kind: 'index', name: i.name, state: {ready: i.ready, valid: i.valid}, table: i.table})
  }

  const cons = await sql<{
    name: string; table: string; type: string; def: string; validated: boolean; deferrable: boolean; deferred: boolean
    columns: string[]; ref_table: string | null; ref_schema: string | null; ref_columns: string[]; on_delete: string; on_update: string; match: string
  }[]>`
    select con.conname as name, t.relname as table, con.contype::text as type, pg_get_constraintdef(con.oid) as def,
           con.convalidated as validated, con.condeferrable as deferrable, con.condeferred as deferred,
           coalesce((select array_agg(a.attname::text order by k.o) from unnest(con.conkey) with ordinality k(n, o)
                       join pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.n), '{}'::text[]) as columns,
           rt.relname::text as ref_table, rn.nspname::text as ref_schema,
           coalesce((select array_agg(a.attname::text order by k.o) from unnest(con.confkey) with ordinality k(n, o)
                       join pg_attribute a on a.attrelid = con.confrelid and a.attnum = k.n), '{}'::text[]) as ref_columns,
           con.confdeltype::text as on_delete, con.confupdtype::text as on_update, con.confmatchtype::text as match
      from pg_constraint con
      join pg_class t on t.oid = con.conrelid
      left join pg_class rt on rt.oid = con.confrelid
      left join pg_namespace rn on rn.oid = rt.relnamespace
     where t.relnamespace = ${oid}::oid and con.contype in ('p', 'u', 'f', 'c', 'x')`
  for (const c of cons) {
    if (MACHINERY_TABLES.has(c.table)) continue
    const def: ConstraintDef = {
      columns: c.columns,
      deferrable: c.deferrable,
      deferred: c.deferred,
      definition: unqualify(c.def.replace(/\s+NOT VALID$/, ''), schema),
      table: c.table,
      type: c.type,
    }
    if (c.type === 'f') {
      def.references = {
        columns: c.ref_columns,
        match: FK_MATCH[c.match] ?? c.match,
        onDelete: FK_RULE[c.on_delete] ?? c.on_delete,
        onUpdate: FK_RULE[c.on_update] ?? c.on_update,
        table: c.ref_schema === schema ? String(c.ref_table) : `${c.ref_schema}.${c.ref_table}`,
      }
    }
    add({def, kind: 'constraint', name: c.name, state: {validated: c.validated}, table: c.table})
  }

  const fns = await sql<{name: string; args: string; kind: string; returns: string | null; language: string; volatility: string; security_definer: boolean; config: string[] | null; src: string | null}[]>`
    select p.proname as name, oidvectortypes(p.proargtypes) as args, p.prokind::text as kind, pg_get_function_result(p.oid) as returns,
           l.lanname as language, p.provolatile::text as volatility, p.prosecdef as security_definer, p.proconfig as config, p.prosrc as src
      from pg_proc p join pg_language l on l.oid = p.prolang
     where p.pronamespace = ${oid}::oid
       and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')`
  for (const f of fns) {
    const def: FunctionDef = {
      bodySha256: createHash('sha256').update(f.src ?? '').digest('hex'),
      config: normaliseConfig(f.config, schema),
      kind: f.kind,
      language: f.language,
      returns: f.returns === null ? null : unqualify(f.returns, schema),
      securityDefiner: f.security_definer,
      volatility: VOLATILITY[f.volatility] ?? f.volatility,
    }
    add({def, kind: 'function', name: `${f.name}(${unqualify(f.args, schema)})`})
  }

  const trg = await sql<{name: string; table: string; def: string; function: string}[]>`
    select tg.tgname as name, t.relname as table, pg_get_triggerdef(tg.oid) as def, p.proname as function
      from pg_trigger tg join pg_class t on t.oid = tg.tgrelid join pg_proc p on p.oid = tg.tgfoid
     where t.relnamespace = ${oid}::oid and not tg.tgisinternal`
  for (const t of trg) {
    if (MACHINERY_TABLES.has(t.table)) continue
    add({def: {definition: unqualify(t.def, schema), function: t.function, table: t.table}, kind: 'trigger', name: t.name, table: t.table})
  }
  return catalog
}

/** JSON with sorted keys: two equal definitions always give the same text. */
function canonical(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value)
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`
  const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`
}

function sameDef(a: ObjectDef | null | undefined, b: ObjectDef | null | undefined): boolean {
  return canonical(a ?? null) === canonical(b ?? null)
}

/** Code-point order: the same on every machine, whatever the locale. */
function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

const KIND_ORDER: ObjectKind[] = ['table', 'view', 'matview', 'sequence', 'column', 'index', 'constraint', 'function', 'trigger']

/**
 * The reference snapshot: what each migration version creates, changes or drops, as the difference between the
 * catalog of the v0.3.0 baseline and the catalog after each version.
 */
export function buildExpectedSchema(baseline: Catalog, after: Array<{version: number; name: string; catalog: Catalog}>): ExpectedSchema {
  const steps = [...after].sort((a, b) => a.version - b.version)
  const keys = new Set<string>()
  for (const s of steps) for (const k of s.catalog.keys()) keys.add(k)
  for (const k of baseline.keys()) keys.add(k)
  const objects: ExpectedObject[] = []
  for (const key of keys) {
    const base = baseline.get(key)
    const states = steps.map((s) => s.catalog.get(key))
    const first = states.findIndex((o) => !sameDef(o?.def, base?.def))
    if (first < 0) continue
    const ref = states[first] ?? base!
    const entry: ExpectedObject = {def: states[first]?.def ?? null, key, kind: ref.kind, name: ref.name, since: steps[first].version}
    if (ref.table !== undefined) entry.table = ref.table
    const revisions: Array<{from: number; def: ObjectDef | null}> = []
    for (let i = first + 1; i < steps.length; i++) {
      if (!sameDef(states[i]?.def, states[i - 1]?.def)) revisions.push({def: states[i]?.def ?? null, from: steps[i].version})
    }
    if (revisions.length > 0) entry.revisions = revisions
    objects.push(entry)
  }
  objects.sort((a, b) => a.since - b.since || KIND_ORDER.indexOf(a.kind) - KIND_ORDER.indexOf(b.kind) || cmp(a.table ?? '', b.table ?? '') || cmp(a.name, b.name))
  return {
    $comment: 'Generated by `node scripts/expected-schema.mjs` from the catalogs of a fresh v0.3.0 database migrated step by step to the newest migration. Do not edit by hand; test/verify/expected-schema.test.ts fails when it is stale.',
    format: 1,
    migrations: Object.fromEntries(steps.map((s) => [String(s.version), s.name])),
    objects,
  }
}

export function serializeExpectedSchema(schema: ExpectedSchema): string {
  return JSON.stringify(schema, null, 2) + '\n'
}

/**
 * Generate the reference snapshot. `sql` is connected to a scratch database holding the v0.3.0 schema in `schema`
 * and nothing of 013+; each migration is applied with the real runner and the catalogs are read after each.
 */
export async function generateExpectedSchema(opts: {sql: Sql; migrations: MigrationFile[]; schema: string; log?: (line: string) => void}): Promise<ExpectedSchema> {
  validateIdentifier(opts.schema, 'schema')
  const baseline = await readCatalog(opts.sql, opts.schema)
  const after: Array<{version: number; name: string; catalog: Catalog}> = []
  for (const m of opts.migrations) {
    opts.log?.(`applying ${m.name}`)
    await migrateUp({migrations: opts.migrations, schema: opts.schema, sql: opts.sql, to: m.version})
    const catalog = await readCatalog(opts.sql, opts.schema)
    for (const o of catalog.values()) {
      if (o.state?.valid === false || o.state?.ready === false) throw new UserError(`After ${m.name}, index ${o.name} is invalid; the snapshot would be wrong.`)
      if (o.state?.validated === false) throw new UserError(`After ${m.name}, constraint ${o.name} is not validated; the snapshot would be wrong.`)
    }
    after.push({catalog, name: m.name, version: m.version})
  }
  return buildExpectedSchema(baseline, after)
}

export function loadExpectedSchema(): ExpectedSchema {
  return expectedJson as unknown as ExpectedSchema
}

/** The definition expected at `upTo`, or undefined when the object is not expected yet. */
export function expectedAt(o: ExpectedObject, upTo: number): {def: ObjectDef | null; version: number} | undefined {
  if (upTo < o.since) return undefined
  let def = o.def
  let version = o.since
  for (const r of o.revisions ?? []) {
    if (r.from <= upTo) {
      def = r.def
      version = r.from
    }
  }
  return {def, version}
}

// ------------------------------------------------------------------------------------------------------------
// Verification
// ------------------------------------------------------------------------------------------------------------

class Checks {
  readonly list: VerifyCheck[] = []
  add(name: string, status: CheckStatus, detail: string): void {
    const sentence = detail.trim().replace(/\s+/g, ' ')
    this.list.push({detail: /[.!?]$/.test(sentence) ? sentence : `${sentence}.`, name, status})
  }
  ok(name: string, detail: string): void { this.add(name, 'ok', detail) }
  warn(name: string, detail: string): void { this.add(name, 'warn', detail) }
  fail(name: string, detail: string): void { this.add(name, 'fail', detail) }
  report(): VerifyReport {
    const failures = this.list.filter((c) => c.status === 'fail').map((c) => c.detail)
    return {checks: this.list, failures, ok: failures.length === 0}
  }
}

/** The guide's objects (D2) that must be gone once 014 is applied. */
export const GUIDE_LEFTOVERS = {
  functions: ['refresh_prekey_bundles'],
  indexes: ['idx_prekey_bundles_device', 'idx_prekey_bundles_user'],
  since: 14,
  triggers: [
    {name: 'refresh_prekey_bundles_on_identity_key', table: 'nchat_identity_keys'},
    {name: 'refresh_prekey_bundles_on_signed_prekey', table: 'nchat_signed_prekeys'},
    {name: 'refresh_prekey_bundles_on_one_time_prekey', table: 'nchat_one_time_prekeys'},
  ],
} as const

/** The guide's "Query Performance" table, with the tables whose indexes each query must use. */
export const PLAN_CHECKS = [
  {expectTables: ['nchat_identity_keys', 'nchat_signed_prekeys', 'nchat_one_time_prekeys'], guideIndex: 'idx_prekey_bundles_device', name: 'bundle fetch', param: 'device', relation: 'nchat_prekey_bundles', since: 14, where: 'device_id = $1'},
  {expectTables: ['nchat_signal_sessions'], guideIndex: 'idx_signal_sessions_active', name: 'session lookup', param: 'device', relation: 'nchat_signal_sessions', since: 13, where: 'device_id = $1 AND is_active = TRUE'},
  {expectTables: ['nchat_one_time_prekeys'], guideIndex: 'idx_one_time_prekeys_available', name: 'available prekeys', param: 'device', relation: 'nchat_one_time_prekeys', since: 13, where: 'device_id = $1 AND is_consumed = FALSE'},
  {expectTables: ['nchat_safety_numbers'], guideIndex: 'idx_safety_numbers_verified', name: 'verified safety numbers', param: 'uuid', relation: 'nchat_safety_numbers', since: 13, where: 'user_id = $1 AND verified_at IS NOT NULL'},
] as const

/**
 * Data that must hold on a database in use: encrypted messages, consumed prekeys and ended calls are normal
 * life. Each query counts the rows that break an invariant; the partial indexes keep them cheap.
 */
const DATA_CHECKS = [
  {columns: ['is_encrypted', 'encrypted_payload'], ok: 'every encrypted message carries its encrypted payload', query: 'is_encrypted = true and encrypted_payload is null', since: 14, table: 'nchat_messages', what: 'encrypted messages without an encrypted payload (unreadable)'},
  {columns: ['is_consumed', 'consumed_at'], ok: 'every consumed one-time prekey has its consumption time', query: 'is_consumed = true and consumed_at is null', since: 13, table: 'nchat_one_time_prekeys', what: 'one-time prekeys marked consumed without consumed_at'},
] as const

function migrationLabel(expected: ExpectedSchema, version: number): string {
  return expected.migrations[String(version)] ?? `migration ${version}`
}

function describeColumn(d: ColumnDef): string {
  return `${d.type}${d.notNull ? ' NOT NULL' : ' NULL'}${d.default === null ? ' without default' : ` DEFAULT ${d.default}`}${d.identity ? ` GENERATED (identity ${d.identity})` : ''}${d.generated ? ' GENERATED ALWAYS (stored)' : ''}`
}

/**
 * Check a database against migrations 013..upTo. Never changes anything: the functional checks run in a
 * transaction that is always rolled back.
 */
export async function verifyDatabase(sql: Querier, opts: VerifyOptions): Promise<VerifyReport> {
  const schema = validateIdentifier(opts.schema, 'schema')
  const expected = loadExpectedSchema()
  const versions = Object.keys(expected.migrations).map(Number)
  const upTo = opts.upTo ?? (versions.length > 0 ? Math.max(...versions) : 16)
  if (!Number.isInteger(upTo)) throw new UserError(`The version to verify up to (${upTo}) is not a whole number.`)
  const checks = new Checks()

  let live: Catalog
  try {
    const ns = await sql<{n: number}[]>`select count(*)::int as n from pg_namespace where nspname = ${schema}`
    if (ns[0].n === 0) {
      checks.fail(`schema ${schema}`, `schema ${schema} does not exist in this database`)
      return checks.report()
    }
    live = await readCatalog(sql, schema)
  } catch (error) {
    throw toUserError(error, `reading the catalogs of schema ${schema}`)
  }

  const brokenTables = checkObjects(checks, expected, live, upTo, schema)
  if (upTo >= GUIDE_LEFTOVERS.since) checkGuideLeftovers(checks, live)
  checkInvalidLeftovers(checks, expected, live, upTo)
  await checkData(checks, sql, schema, live, upTo)
  if (opts.manifest) await checkRowCounts(checks, sql, schema, live, opts.manifest, opts.exactCounts ?? false)
  await checkBehaviour(checks, sql, schema, live, upTo, brokenTables)
  return checks.report()
}

/** Compare every expected object; returns the tables that are missing or not tables (their parts are not listed). */
function checkObjects(checks: Checks, expected: ExpectedSchema, live: Catalog, upTo: number, schema: string): Set<string> {
  const q = (name: string) => `${displayIdent(schema)}.${displayIdent(name)}`
  const wanted = expected.objects
    .map((o) => ({at: expectedAt(o, upTo), o}))
    .filter((x): x is {at: {def: ObjectDef | null; version: number}; o: ExpectedObject} => x.at !== undefined)
  const broken = new Set<string>()
  const suppressed = new Map<string, number>()

  for (const {at, o} of wanted) {
    const by = migrationLabel(expected, at.version)
    const name = o.kind === 'column' || o.kind === 'trigger' ? `${o.kind} ${o.table}.${o.name}` : `${o.kind} ${o.name}`
    const cur = live.get(o.key)

    if (at.def === null) {
      // The migration drops it.
      if (cur) checks.fail(name, `${o.kind} ${o.name}${o.table ? ` on ${o.table}` : ''} still exists; ${by} removes it`)
      else checks.ok(name, `absent, as ${by} leaves it`)
      continue
    }
    if (o.table && broken.has(o.table)) {
      suppressed.set(o.table, (suppressed.get(o.table) ?? 0) + 1)
      continue
    }

    switch (o.kind) {
      case 'table':
      case 'view':
      case 'matview':
      case 'sequence': {
        const def = at.def as RelationDef
        if (!cur) {
          checks.fail(name, `${o.kind} ${o.name} is missing (${by} creates it)`)
          if (o.kind === 'table') broken.add(o.name)
          break
        }
        const have = cur.def as RelationDef
        if (have.relkind !== def.relkind) {
          const d2 = o.name === 'nchat_prekey_bundles' && have.relkind === 'm'
            ? ' (the guide\'s materialized view, defect D2: refreshed on every key write); run nself db e2ee migrate to convert it into the plain view'
            : ''
          checks.fail(name, `${o.kind} ${o.name} is ${RELKIND_TEXT[have.relkind] ?? have.relkind}, expected ${RELKIND_TEXT[def.relkind] ?? def.relkind}${d2}`)
          if (o.kind === 'table') broken.add(o.name)
          break
        }
        if (def.columns) {
          const want = def.columns.map((c) => `${c.name} ${c.type}`)
          const got = (have.columns ?? []).map((c) => `${c.name} ${c.type}`)
          if (want.join(', ') !== got.join(', ')) {
            checks.fail(name, `${o.kind} ${o.name} has the columns (${got.join(', ')}), expected (${want.join(', ')}) in this order`)
            break
          }
          checks.ok(name, `${def.columns.length} columns in the expected order (${by})`)
          break
        }
        if (o.kind === 'sequence' && (have.ownedBy !== def.ownedBy || have.type !== def.type)) {
          checks.fail(name, `sequence ${o.name} is ${have.type ?? '?'} owned by ${have.ownedBy ?? 'nothing'}, expected ${def.type ?? '?'} owned by ${def.ownedBy ?? 'nothing'}`)
          break
        }
        checks.ok(name, `exists (${by})`)
        break
      }

      case 'column': {
        const def = at.def as ColumnDef
        if (!cur) {
          checks.fail(name, `column ${o.table}.${o.name} is missing (${by} adds it as ${describeColumn(def)})`)
          break
        }
        const have = cur.def as ColumnDef
        const diffs: string[] = []
        if (have.type !== def.type) diffs.push(`its type is ${have.type}, expected ${def.type}`)
        if (have.notNull !== def.notNull) diffs.push(def.notNull ? 'it is nullable, expected NOT NULL' : 'it is NOT NULL, expected nullable')
        if ((have.default ?? null) !== (def.default ?? null)) diffs.push(`its default is ${have.default ?? 'none'}, expected ${def.default ?? 'none'}`)
        if ((have.identity ?? '') !== (def.identity ?? '') || (have.generated ?? '') !== (def.generated ?? '')) diffs.push('its identity/generated property differs')
        if (diffs.length > 0) checks.fail(name, `column ${o.table}.${o.name} differs from ${by}: ${diffs.join('; ')}`)
        else checks.ok(name, `${describeColumn(def)} (${by})`)
        break
      }

      case 'index': {
        const def = at.def as IndexDef
        if (!cur) {
          const twin = [...live.values()].find((x) => x.kind === 'index' && sameDef(x.def, def))
          if (twin) checks.warn(name, `index ${o.name} on ${def.table} is missing by name, but ${twin.name} has the same definition (${def.definition})`)
          else checks.fail(name, `index ${o.name} on ${def.table} is missing (${by} creates it: ${def.unique ? 'UNIQUE ' : ''}${def.definition})`)
          break
        }
        const have = cur.def as IndexDef
        if (have.table !== def.table) {
          checks.fail(name, `index ${o.name} is on ${have.table}, expected on ${def.table}`)
          break
        }
        if (have.definition !== def.definition || have.unique !== def.unique || have.primary !== def.primary) {
          checks.fail(name, `index ${o.name} on ${def.table} is ${have.unique ? 'UNIQUE ' : ''}${have.definition}, expected ${def.unique ? 'UNIQUE ' : ''}${def.definition} (${by})`)
          break
        }
        if (cur.state?.valid === false || cur.state?.ready === false) {
          checks.fail(name, `index ${o.name} on ${def.table} is INVALID (an interrupted CREATE INDEX CONCURRENTLY build), so no query uses it: run nself db e2ee migrate again to rebuild it, or REINDEX INDEX CONCURRENTLY ${q(o.name)}`)
          break
        }
        checks.ok(name, `on ${def.table}, valid: ${def.unique ? 'UNIQUE ' : ''}${def.definition}`)
        break
      }

      case 'constraint':
        checkConstraint(checks, name, o, at.def as ConstraintDef, cur, live, by, q)
        break

      case 'function': {
        const def = at.def as FunctionDef
        if (!cur) {
          const base = o.name.replace(/\(.*$/, '')
          const other = [...live.values()].filter((x) => x.kind === 'function' && x.name.startsWith(`${base}(`)).map((x) => x.name)
          checks.fail(name, `function ${o.name} is missing (${by} creates it)${other.length ? `; found only ${other.join(', ')}` : ''}`)
          break
        }
        const have = cur.def as FunctionDef
        const diffs: string[] = []
        if (have.returns !== def.returns) diffs.push(`it returns ${have.returns}, expected ${def.returns}`)
        if (have.language !== def.language) diffs.push(`its language is ${have.language}, expected ${def.language}`)
        if (have.volatility !== def.volatility) diffs.push(`it is ${have.volatility}, expected ${def.volatility}`)
        if (have.securityDefiner !== def.securityDefiner) diffs.push(def.securityDefiner ? 'it is not SECURITY DEFINER' : 'it is SECURITY DEFINER')
        if (canonical(have.config) !== canonical(def.config)) diffs.push(`its settings are [${have.config.join(', ')}], expected [${def.config.join(', ')}]`)
        if (have.bodySha256 !== def.bodySha256) diffs.push('its body is not the one the migration defines')
        if (diffs.length > 0) checks.fail(name, `function ${o.name} differs from ${by}: ${diffs.join('; ')}`)
        else checks.ok(name, `exists as ${by} defines it`)
        break
      }

      case 'trigger': {
        const def = at.def as TriggerDef
        if (!cur) checks.fail(name, `trigger ${o.name} on ${o.table} is missing (${by} creates it)`)
        else if ((cur.def as TriggerDef).definition !== def.definition) checks.fail(name, `trigger ${o.name} on ${o.table} differs from ${by}: ${(cur.def as TriggerDef).definition}`)
        else checks.ok(name, `exists (${by})`)
        break
      }
    }
  }

  for (const [table, n] of suppressed) {
    const c = checks.list.find((x) => x.status === 'fail' && x.name === `table ${table}`)
    if (c) c.detail = c.detail.replace(/\.$/, ` (with its ${n} columns, indexes and constraints).`)
  }
  return broken
}

function describeFk(d: ConstraintDef): string {
  const r = d.references!
  return `(${d.columns.join(', ')}) → ${r.table}(${r.columns.join(', ')}) ON DELETE ${r.onDelete}`
}

function checkConstraint(checks: Checks, name: string, o: ExpectedObject, def: ConstraintDef, cur: CatalogObject | undefined, live: Catalog, by: string, q: (name: string) => string): void {
  const what = CONSTRAINT_TYPE[def.type] ?? 'constraint'
  name = `${what} ${o.name}`
  let found = cur
  let renamed = false
  if (!found) {
    // Not by name: look for the same constraint under another name (table, columns → referenced table; or definition).
    const candidates = [...live.values()].filter((x) => x.kind === 'constraint' && (x.def as ConstraintDef).table === def.table && (x.def as ConstraintDef).type === def.type)
    const cdef = (x: CatalogObject) => x.def as ConstraintDef
    found = def.type === 'f'
      ? candidates.find((x) => canonical(cdef(x).columns) === canonical(def.columns) && cdef(x).references?.table === def.references?.table)
      : def.type === 'c'
        // A check by its definition, else a check on the same columns (compared below: the D1 variant).
        ? candidates.find((x) => cdef(x).definition === def.definition) ?? (def.columns.length > 0 ? candidates.find((x) => canonical(cdef(x).columns) === canonical(def.columns)) : undefined)
        : candidates.find((x) => canonical(cdef(x).columns) === canonical(def.columns))
    if (!found) {
      checks.fail(name, `${what} ${o.name} on ${def.table} is missing (${by} creates it: ${def.type === 'f' ? describeFk(def) : def.definition})`)
      return
    }
    renamed = true
  }
  const have = found.def as ConstraintDef
  const label = `${what} ${found.name}${renamed ? ` (expected as ${o.name})` : ''} on ${def.table}`
  if (have.type !== def.type) {
    checks.fail(name, `${label} is a ${CONSTRAINT_TYPE[have.type] ?? have.type}, expected a ${what}`)
    return
  }
  if (def.type === 'f' && have.references && def.references) {
    const diffs: string[] = []
    if (canonical(have.columns) !== canonical(def.columns)) diffs.push(`it is on (${have.columns.join(', ')}), expected (${def.columns.join(', ')})`)
    if (have.references.table !== def.references.table || canonical(have.references.columns) !== canonical(def.references.columns)) {
      diffs.push(`it references ${have.references.table}(${have.references.columns.join(', ')}), expected ${def.references.table}(${def.references.columns.join(', ')})`)
    }
    if (have.references.onDelete !== def.references.onDelete) diffs.push(`it has ON DELETE ${have.references.onDelete}, expected ON DELETE ${def.references.onDelete}`)
    if (have.references.onUpdate !== def.references.onUpdate) diffs.push(`it has ON UPDATE ${have.references.onUpdate}, expected ON UPDATE ${def.references.onUpdate}`)
    if (diffs.length > 0) {
      checks.fail(name, `${label} differs from ${by}: ${diffs.join('; ')}`)
      return
    }
  }
  if (have.definition !== def.definition) {
    const d1 = def.type === 'c' && /verification_method/.test(def.definition) && !/IS NULL/.test(have.definition)
      ? ' — the guide\'s IN (…, NULL) check (defect D1), which accepts any value'
      : ''
    checks.fail(name, `${label} is ${have.definition}, expected ${def.definition}${d1}`)
    return
  }
  if (have.deferrable !== def.deferrable || have.deferred !== def.deferred) {
    checks.fail(name, `${label} is ${have.deferrable ? 'DEFERRABLE' : 'NOT DEFERRABLE'}${have.deferred ? ' INITIALLY DEFERRED' : ''}, unlike ${by}`)
    return
  }
  if (found.state?.validated === false) {
    checks.fail(name, `${label} is NOT VALID (never validated, existing rows were not checked): run ALTER TABLE ${q(def.table)} VALIDATE CONSTRAINT ${displayIdent(found.name)}`)
    return
  }
  const summary = def.type === 'f' ? `${describeFk(def)}, validated` : def.definition
  if (renamed) checks.warn(name, `${label} is found under another name: ${summary}`)
  else checks.ok(name, `on ${def.table}: ${summary}`)
}

function checkGuideLeftovers(checks: Checks, live: Catalog): void {
  for (const f of GUIDE_LEFTOVERS.functions) {
    const found = [...live.values()].filter((x) => x.kind === 'function' && x.name.startsWith(`${f}(`))
    if (found.length > 0) checks.fail(`absent: function ${f}`, `function ${found[0].name} (the guide's refresh of the materialized view, defect D2) still exists; 014 removes it`)
    else checks.ok(`absent: function ${f}`, 'the guide\'s refresh function is gone')
  }
  const triggers = [...live.values()].filter((x) => x.kind === 'trigger')
  for (const t of GUIDE_LEFTOVERS.triggers) {
    const found = triggers.find((x) => x.table === t.table && x.name === t.name)
    if (found) checks.fail(`absent: trigger ${t.name}`, `trigger ${t.name} on ${t.table} (the guide's refresh on every key write, defect D2) still exists; 014 removes it`)
    else checks.ok(`absent: trigger ${t.name}`, 'the guide\'s refresh trigger is gone')
  }
  for (const t of triggers) {
    const d = t.def as TriggerDef
    if (GUIDE_LEFTOVERS.functions.includes(d.function as (typeof GUIDE_LEFTOVERS.functions)[number]) && !GUIDE_LEFTOVERS.triggers.some((g) => g.name === t.name && g.table === t.table)) {
      checks.fail(`absent: trigger ${t.name}`, `trigger ${t.name} on ${t.table} still runs ${d.function}() (the guide's materialized view refresh, defect D2)`)
    }
  }
  for (const i of GUIDE_LEFTOVERS.indexes) {
    const found = live.get(`index:${i}`)
    if (found) checks.fail(`absent: index ${i}`, `index ${i} on ${found.table} (of the guide's materialized view) still exists`)
    else checks.ok(`absent: index ${i}`, 'the guide\'s materialized view index is gone')
  }
}

/** Invalid indexes that are not ours, on the tables we touch (e.g. leftovers of REINDEX CONCURRENTLY). */
function checkInvalidLeftovers(checks: Checks, expected: ExpectedSchema, live: Catalog, upTo: number): void {
  const tables = new Set(expected.objects.filter((o) => o.since <= upTo && o.table).map((o) => o.table!))
  const ours = new Set(expected.objects.filter((o) => o.kind === 'index').map((o) => o.name))
  for (const o of live.values()) {
    if (o.kind !== 'index' || ours.has(o.name) || !o.table || !tables.has(o.table)) continue
    if (o.state?.valid === false || o.state?.ready === false) {
      checks.warn(`index ${o.name}`, `index ${o.name} on ${o.table} is INVALID (an interrupted concurrent build); it slows every write and serves no query: drop it with DROP INDEX CONCURRENTLY ${o.name}`)
    }
  }
}

function hasColumn(live: Catalog, table: string, column: string): boolean {
  return live.has(`column:${table}.${column}`)
}

async function checkData(checks: Checks, sql: Querier, schema: string, live: Catalog, upTo: number): Promise<void> {
  for (const d of DATA_CHECKS) {
    if (upTo < d.since) continue
    const name = `data ${d.table}`
    if (!d.columns.every((c) => hasColumn(live, d.table, c))) continue // reported by the column checks
    try {
      const [row] = await sql.unsafe<{bad: string}[]>(
        `select count(*)::bigint as bad from ${quoteIdent(schema)}.${quoteIdent(d.table)} where ${d.query}`)
      const bad = Number(row.bad)
      if (bad > 0) checks.fail(name, `${d.table} has ${bad} ${d.what}`)
      else checks.ok(name, d.ok)
    } catch (error) {
      checks.fail(name, `checking ${d.table} failed: ${toUserError(error).message}`)
    }
  }
}

async function checkRowCounts(checks: Checks, sql: Querier, schema: string, live: Catalog, manifest: {row_counts: Record<string, number>}, exact: boolean): Promise<void> {
  for (const table of ROW_COUNT_TABLES) {
    const before = manifest.row_counts?.[table]
    if (typeof before !== 'number') continue
    const name = `row count ${table}`
    if (!live.has(`rel:${table}`)) {
      checks.fail(name, `table ${table}, counted in the backup manifest, does not exist`)
      continue
    }
    try {
      const [{n}] = await sql.unsafe<{n: string}[]>(`select count(*)::bigint as n from ${quoteIdent(schema)}.${quoteIdent(table)}`)
      const now = Number(n)
      const delta = now - before
      if (delta === 0) checks.ok(name, `${now} rows, as in the backup manifest`)
      else {
        const text = `${table} has ${now} rows, the backup manifest counted ${before} (${delta > 0 ? '+' : ''}${delta})`
        if (exact) checks.fail(name, `${text}; nothing may have changed them`)
        else checks.warn(name, `${text}, which live traffic can explain`)
      }
    } catch (error) {
      checks.fail(name, `counting the rows of ${table} failed: ${toUserError(error).message}`)
    }
  }
}

// ------------------------------------------------------------------------------------------------------------
// Functional checks in a transaction that is always rolled back
// ------------------------------------------------------------------------------------------------------------

const ROLLBACK = Symbol('verify-rollback')

type Tx = Querier

/** Run `fn` in a transaction (or savepoint) that is rolled back whatever happens. */
async function rolledBack<T>(sql: Querier, fn: (tx: Tx) => Promise<T>): Promise<T> {
  let result: T | undefined
  const body = async (tx: Tx) => {
    result = await fn(tx)
    throw ROLLBACK
  }
  try {
    if ('savepoint' in sql && typeof sql.savepoint === 'function') {
      await sql.savepoint(body)
    } else if ('release' in sql && typeof (sql as {release?: unknown}).release === 'function') {
      // A reserved connection has no begin(): drive the transaction by hand.
      await sql.unsafe('begin')
      try {
        await body(sql)
      } finally {
        await sql.unsafe('rollback')
      }
    } else {
      await (sql as Sql).begin(body)
    }
  } catch (error) {
    if (error !== ROLLBACK) throw error
  }
  return result as T
}

/** A savepoint inside `tx`, rolled back when `fn` fails, so the transaction can go on. */
async function attempt<T>(tx: Tx, fn: (q: Tx) => Promise<T>): Promise<{ok: true; value: T} | {ok: false; error: unknown}> {
  if ('savepoint' in tx && typeof tx.savepoint === 'function') {
    try {
      return {ok: true, value: (await tx.savepoint(fn)) as T}
    } catch (error) {
      return {error, ok: false}
    }
  }
  await tx.unsafe('savepoint nself_verify_attempt')
  try {
    const value = await fn(tx)
    await tx.unsafe('release savepoint nself_verify_attempt')
    return {ok: true, value}
  } catch (error) {
    await tx.unsafe('rollback to savepoint nself_verify_attempt')
    return {error, ok: false}
  }
}

async function limits(tx: Tx): Promise<void> {
  await tx.unsafe("set local statement_timeout = '30s'")
  await tx.unsafe("set local lock_timeout = '5s'")
  await tx.unsafe("set local idle_in_transaction_session_timeout = '60s'")
}

async function checkBehaviour(checks: Checks, sql: Querier, schema: string, live: Catalog, upTo: number, broken: Set<string>): Promise<void> {
  const needs = (names: string[]) => names.filter((n) => !live.has(n.startsWith('function:') ? n : `rel:${n}`))
  if (upTo >= 14) {
    const missing = needs(['nchat_users', 'nchat_identity_keys', 'nchat_signed_prekeys', 'nchat_one_time_prekeys', 'nchat_prekey_bundles', 'function:nchat_claim_prekey_bundle(text)'])
    if (missing.length > 0) checks.warn('bundle view freshness', `not run: ${missing.map((m) => m.replace(/^function:/, '')).join(', ')} missing (reported above)`)
    else await checkBundles(checks, sql, schema)
  }
  const plans = PLAN_CHECKS.filter((p) => upTo >= p.since)
  if (plans.length > 0) await checkPlans(checks, sql, schema, live, plans, broken)
}

interface BundleRow {
  user_id: string
  device_id: string
  identity_key_public: Buffer
  signed_prekey_id: number
  one_time_prekey_id: number | null
}

async function checkBundles(checks: Checks, sql: Querier, schema: string): Promise<void> {
  const name = 'bundle view freshness'
  const s = quoteIdent(schema)
  try {
    const problems = await rolledBack(sql, async (tx) => {
      await limits(tx)
      const tag = randomBytes(8).toString('hex')
      const device = `nself-verify-${tag}`
      // A throwaway user; production may have extra required columns, then any existing user will do.
      const made = await attempt(tx, (q) => q.unsafe<{id: string}[]>(`insert into ${s}.nchat_users (email, username) values ($1, $2) returning id`, [`nself-verify-${tag}@example.invalid`, `nself_verify_${tag}`]))
      let userId: string
      if (made.ok) userId = made.value[0].id
      else {
        const any = await tx.unsafe<{id: string}[]>(`select id from ${s}.nchat_users limit 1`)
        if (any.length === 0) throw new UserError(`no user could be created in nchat_users for the test (${toUserError(made.error).message.replace(/\.$/, '')}) and none exists`)
        userId = any[0].id
      }
      await tx.unsafe(`insert into ${s}.nchat_identity_keys (device_id, user_id, identity_key_public, identity_key_private_encrypted)
        values ($1, $2, decode(md5($1), 'hex'), decode(md5($1 || ':private'), 'hex'))`, [device, userId])
      // Two active signed prekeys (a rotation in progress): the older one has the higher id on purpose.
      await tx.unsafe(`insert into ${s}.nchat_signed_prekeys (device_id, signed_prekey_id, signed_prekey_public, signed_prekey_private_encrypted, signature, rotation_date, is_active, created_at)
        values ($1, 2, decode(md5('old'), 'hex'), decode(md5('old:p'), 'hex'), decode(md5('old:s'), 'hex'), now() - interval '7 days', true, now() - interval '7 days'),
               ($1, 1, decode(md5('new'), 'hex'), decode(md5('new:p'), 'hex'), decode(md5('new:s'), 'hex'), now(), true, now())`, [device])
      // Two unconsumed one-time prekeys: the older one has the higher id on purpose.
      await tx.unsafe(`insert into ${s}.nchat_one_time_prekeys (device_id, prekey_id, prekey_public, prekey_private_encrypted, is_consumed, created_at)
        values ($1, 20, decode(md5('otp20'), 'hex'), decode(md5('otp20:p'), 'hex'), false, now() - interval '1 hour'),
               ($1, 10, decode(md5('otp10'), 'hex'), decode(md5('otp10:p'), 'hex'), false, now())`, [device])

      const out: string[] = []
      const view = () => tx.unsafe<BundleRow[]>(`select * from ${s}.nchat_prekey_bundles where device_id = $1`, [device])
      const first = await view()
      if (first.length !== 1) out.push(`view nchat_prekey_bundles returned ${first.length} rows for a device with two active signed prekeys, expected exactly one`)
      else {
        const b = first[0]
        if (b.user_id !== userId) out.push(`view nchat_prekey_bundles returned user ${b.user_id} for the test device, expected ${userId}`)
        if (Number(b.signed_prekey_id) !== 1) out.push(`view nchat_prekey_bundles offered signed prekey ${b.signed_prekey_id}, expected the newest active one (1)`)
        if (Number(b.one_time_prekey_id) !== 20) out.push(`view nchat_prekey_bundles offered one-time prekey ${b.one_time_prekey_id ?? 'none'} right after the insert, expected the oldest unconsumed one (20): the view is not fresh`)
      }
      if (out.length > 0) return out

      const claimed = await tx.unsafe<BundleRow[]>(`select * from ${s}.nchat_claim_prekey_bundle($1)`, [device])
      if (claimed.length !== 1) return [`function nchat_claim_prekey_bundle(text) returned ${claimed.length} rows for a device with a bundle, expected one`]
      if (Number(claimed[0].one_time_prekey_id) !== 20) out.push(`function nchat_claim_prekey_bundle(text) handed out one-time prekey ${claimed[0].one_time_prekey_id ?? 'none'}, expected the oldest unconsumed one (20)`)
      if (Number(claimed[0].signed_prekey_id) !== 1) out.push(`function nchat_claim_prekey_bundle(text) returned signed prekey ${claimed[0].signed_prekey_id}, expected the newest active one (1)`)
      const [consumed] = await tx.unsafe<{is_consumed: boolean; consumed_at: Date | null}[]>(
        `select is_consumed, consumed_at from ${s}.nchat_one_time_prekeys where device_id = $1 and prekey_id = 20`, [device])
      if (!consumed?.is_consumed || !consumed.consumed_at) out.push('function nchat_claim_prekey_bundle(text) did not mark the one-time prekey it handed out as consumed')
      const next = await view()
      if (next.length !== 1 || Number(next[0].one_time_prekey_id) !== 10) {
        out.push(`after a claim, view nchat_prekey_bundles offers one-time prekey ${next[0]?.one_time_prekey_id ?? 'none'}, expected the next one (10): the view is not fresh`)
      }
      return out
    })
    if (problems.length === 0) checks.ok(name, 'nchat_prekey_bundles offers the newest signed prekey and the oldest one-time prekey at once, and nchat_claim_prekey_bundle hands it out and moves to the next (test rows rolled back)')
    else for (const p of problems) checks.fail(name, p)
  } catch (error) {
    checks.fail(name, `the prekey bundle test could not run: ${toUserError(error).message}`)
  }
}

interface PlanNode {
  'Node Type'?: string
  'Index Name'?: string
  'Relation Name'?: string
  Plans?: PlanNode[]
}

/** Every "Index Name" in a plan tree, and the relations read by sequential scans. */
export function planIndexes(plan: PlanNode): {indexes: string[]; seqScans: string[]} {
  const indexes: string[] = []
  const seqScans: string[] = []
  const walk = (n: PlanNode) => {
    if (n['Index Name']) indexes.push(n['Index Name'])
    if (n['Node Type'] === 'Seq Scan' && n['Relation Name']) seqScans.push(n['Relation Name'])
    for (const c of n.Plans ?? []) walk(c)
  }
  walk(plan)
  return {indexes, seqScans}
}

async function checkPlans(checks: Checks, sql: Querier, schema: string, live: Catalog, plans: ReadonlyArray<(typeof PLAN_CHECKS)[number]>, broken: Set<string>): Promise<void> {
  const s = quoteIdent(schema)
  const runnable = plans.filter((p) => {
    const missing = [p.relation, ...p.expectTables].filter((t) => !live.has(`rel:${t}`) || broken.has(t))
    if (missing.length > 0) checks.warn(`query plan: ${p.name}`, `not run: ${[...new Set(missing)].join(', ')} missing (reported above)`)
    return missing.length === 0
  })
  if (runnable.length === 0) return
  try {
    const results = await rolledBack(sql, async (tx) => {
      await limits(tx)
      await tx.unsafe('set local enable_seqscan = off')
      const out: Array<{p: (typeof runnable)[number]; indexes: string[]; seqScans: string[]; error?: unknown}> = []
      for (const p of runnable) {
        const param = p.param === 'uuid' ? '00000000-0000-0000-0000-000000000000' : `nself-verify-${randomBytes(4).toString('hex')}`
        const r = await attempt(tx, (q) => q.unsafe<Array<{'QUERY PLAN': unknown}>>(`explain (format json) select * from ${s}.${quoteIdent(p.relation)} where ${p.where}`, [param]))
        if (!r.ok) {
          out.push({error: r.error, indexes: [], p, seqScans: []})
          continue
        }
        const raw = r.value[0]['QUERY PLAN']
        const doc = (typeof raw === 'string' ? JSON.parse(raw) : raw) as Array<{Plan: PlanNode}>
        out.push({p, ...planIndexes(doc[0].Plan)})
      }
      return out
    })
    for (const r of results) {
      const name = `query plan: ${r.p.name}`
      const query = `SELECT * FROM ${r.p.relation} WHERE ${r.p.where}`
      if (r.error) {
        checks.fail(name, `EXPLAIN of the ${r.p.name} query (${query}) failed: ${toUserError(r.error).message}`)
        continue
      }
      const used = r.indexes.map((i) => ({index: i, table: live.get(`index:${i}`)?.table ?? '?'}))
      const lacking = r.p.expectTables.filter((t) => !used.some((u) => u.table === t))
      const usedText = used.map((u) => `${u.index} on ${u.table}`).join(', ')
      if (used.length === 0) {
        checks.fail(name, `the ${r.p.name} query (${query}) uses no index even with sequential scans disabled${r.seqScans.length ? ` (sequential scan of ${r.seqScans.join(', ')})` : ''}`)
      } else if (lacking.length > 0) {
        checks.fail(name, `the ${r.p.name} query (${query}) uses no index of ${lacking.join(', ')} (it uses ${usedText})`)
      } else {
        const guide = used.some((u) => u.index === r.p.guideIndex) ? '' : ` (the guide's table names ${r.p.guideIndex})`
        checks.ok(name, `uses ${usedText}${guide}`)
      }
    }
  } catch (error) {
    checks.fail('query plans', `the EXPLAIN checks could not run: ${toUserError(error).message}`)
  }
}
