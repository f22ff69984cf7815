import {createHash} from 'node:crypto'

import {quoteIdent} from '../pg/identifiers.js'
import type {Querier} from '../connection/connect.js'
import {escapeRegExp} from '../text.js'

/** The catalog model: the objects of one schema read from pg_catalog, normalised (no schema names, no OIDs). */

export type ObjectKind = 'table' | 'view' | 'matview' | 'sequence' | 'column' | 'index' | 'constraint' | 'function' | 'trigger'

export interface RelationDef {
  relkind: string
  columns?: Array<{name: string; type: string}>
  type?: string
  ownedBy?: string | null
}

export interface ColumnDef {
  type: string
  notNull: boolean
  default: string | null
  identity?: string
  generated?: string
}

export interface IndexDef {
  table: string
  unique: boolean
  primary: boolean
  definition: string
}

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

export interface TriggerDef {
  table: string
  function: string
  definition: string
}

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

/** An identifier as the operator would type it: bare when that is safe, quoted otherwise. */
export function displayIdent(name: string): string {
  return /^[a-z_][a-z0-9_$]*$/.test(name) ? name : quoteIdent(name)
}

export function objectKey(kind: ObjectKind, name: string, table?: string): string {
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

export const RELKIND_TEXT: Record<string, string> = {
  S: 'a sequence',
  f: 'a foreign table',
  m: 'a materialized view',
  p: 'a partitioned table',
  r: 'a table',
  v: 'a view',
}

const FK_RULE: Record<string, string> = {a: 'NO ACTION', c: 'CASCADE', d: 'SET DEFAULT', n: 'SET NULL', r: 'RESTRICT'}

const FK_MATCH: Record<string, string> = {f: 'FULL', p: 'PARTIAL', s: 'SIMPLE'}

const VOLATILITY: Record<string, string> = {i: 'immutable', s: 'stable', v: 'volatile'}

export const CONSTRAINT_TYPE: Record<string, string> = {
  c: 'check constraint',
  f: 'foreign key',
  p: 'primary key',
  u: 'unique constraint',
  x: 'exclusion constraint',
}

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
  return (config ?? [])
    .map((entry) => {
      const m = /^search_path=(.*)$/.exec(entry)
      if (!m) return entry
      const parts = m[1]
        .split(',')
        .map((p) => p.trim())
        .map((p) => (p === schema || p === `"${schema.replaceAll('"', '""')}"` ? '$schema' : p))
      return `search_path=${parts.join(', ')}`
    })
    .sort()
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
  const cols = await sql<
    {rel: string; relkind: string; name: string; type: string; not_null: boolean; dflt: string | null; identity: string; generated: string}[]
  >`
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
    add({
      def: {definition, primary: i.primary, table: i.table, unique: i.unique},
      kind: 'index',
      name: i.name,
      state: {ready: i.ready, valid: i.valid},
      table: i.table,
    })
  }

  const cons = await sql<
    {
      name: string
      table: string
      type: string
      def: string
      validated: boolean
      deferrable: boolean
      deferred: boolean
      columns: string[]
      ref_table: string | null
      ref_schema: string | null
      ref_columns: string[]
      on_delete: string
      on_update: string
      match: string
    }[]
  >`
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

  const fns = await sql<
    {
      name: string
      args: string
      kind: string
      returns: string | null
      language: string
      volatility: string
      security_definer: boolean
      config: string[] | null
      src: string | null
    }[]
  >`
    select p.proname as name, oidvectortypes(p.proargtypes) as args, p.prokind::text as kind, pg_get_function_result(p.oid) as returns,
           l.lanname as language, p.provolatile::text as volatility, p.prosecdef as security_definer, p.proconfig as config, p.prosrc as src
      from pg_proc p join pg_language l on l.oid = p.prolang
     where p.pronamespace = ${oid}::oid
       and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')`
  for (const f of fns) {
    const def: FunctionDef = {
      bodySha256: createHash('sha256')
        .update(f.src ?? '')
        .digest('hex'),
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
