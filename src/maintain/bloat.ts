import type {Querier} from '../connection/connect.js'

/**
 * Bloat estimates without extensions, after the well-known pgsql-bloat-estimation queries (ioguix): the size a
 * table (or btree index) would have if packed, from the planner's row count (reltuples) and each column's
 * average width and null fraction (pg_stats), compared with its actual pages. Only as good as the last ANALYZE;
 * a relation without statistics is reported with `estimated: false`.
 */

export interface BloatRow {
  name: string
  /** For an index: its table. */
  table: string | null
  bytes: number
  wastedBytes: number
  percent: number
  /** False when the statistics needed are missing (never analyzed, or an expression index). */
  estimated?: boolean
}

const PAGE_HEADER = 24
const BTREE_SPECIAL = 16
const ITEM_ID = 4
const MAXALIGN = 8

const alignUp = (n: number, a = MAXALIGN) => Math.ceil(n / a) * a

interface RelStats {
  name: string
  table: string | null
  pages: number
  tuples: number
  toastPages: number
  toastTuples: number
  fillfactor: number | null
  blockSize: number
  /** Columns of the row (table) or key (index), with statistics where ANALYZE made them. */
  columns: Array<{width: number | null; nullFrac: number | null}>
}

/** Estimated packed size of a heap: tuple header + null bitmap + aligned data, per page at the fillfactor. */
export function tableBloat(r: RelStats): BloatRow {
  const bytes = (r.pages + r.toastPages) * r.blockSize
  const known = r.columns.every((c) => c.width !== null) && r.tuples >= 0
  if (!known) return {bytes, estimated: false, name: r.name, percent: 0, table: r.table, wastedBytes: 0}
  const anyNull = r.columns.some((c) => (c.nullFrac ?? 0) > 0)
  const header = alignUp(23 + (anyNull ? Math.ceil(r.columns.length / 8) : 0))
  const data = r.columns.reduce((s, c) => s + (1 - (c.nullFrac ?? 0)) * (c.width ?? 0), 0)
  const tuple = ITEM_ID + header + alignUp(data)
  const perPage = Math.max(1, Math.floor(((r.blockSize - PAGE_HEADER) * (r.fillfactor ?? 100)) / 100 / tuple))
  const expectedPages = Math.ceil(r.tuples / perPage) + Math.ceil(r.toastTuples / 4)
  const wastedPages = Math.max(0, r.pages + r.toastPages - expectedPages)
  return finish(r, bytes, wastedPages * r.blockSize)
}

/** Estimated packed size of a btree: index tuple header (8) + null bitmap + aligned key, at the fillfactor, plus the meta page. */
export function btreeBloat(r: RelStats): BloatRow {
  const bytes = r.pages * r.blockSize
  const known = r.columns.length > 0 && r.columns.every((c) => c.width !== null) && r.tuples >= 0
  if (!known) return {bytes, estimated: false, name: r.name, percent: 0, table: r.table, wastedBytes: 0}
  const anyNull = r.columns.some((c) => (c.nullFrac ?? 0) > 0)
  const key = r.columns.reduce((s, c) => s + (1 - (c.nullFrac ?? 0)) * (c.width ?? 0), 0)
  const tuple = ITEM_ID + alignUp(8 + (anyNull ? 4 : 0) + key)
  const perPage = Math.max(1, Math.floor(((r.blockSize - PAGE_HEADER - BTREE_SPECIAL) * (r.fillfactor ?? 90)) / 100 / tuple))
  const expectedPages = 1 + Math.ceil(r.tuples / perPage)
  return finish(r, bytes, Math.max(0, r.pages - expectedPages) * r.blockSize)
}

function finish(r: RelStats, bytes: number, wasted: number): BloatRow {
  return {bytes, estimated: true, name: r.name, percent: bytes > 0 ? Math.round((1000 * wasted) / bytes) / 10 : 0, table: r.table, wastedBytes: wasted}
}

function fillfactorOf(options: string[] | null): number | null {
  const m = /fillfactor=(\d+)/.exec((options ?? []).join(' '))
  return m ? Number(m[1]) : null
}

export async function estimateTableBloat(sql: Querier, schema: string, tables: string[]): Promise<BloatRow[]> {
  const rows = await sql<
    Array<{
      name: string
      pages: number
      tuples: number
      toastPages: number
      toastTuples: number
      options: string[] | null
      bs: number
      columns: Array<{width: number | null; nullFrac: number | null}>
    }>
  >`
    select c.relname as name, c.relpages as pages, c.reltuples::float8 as tuples,
           coalesce(t.relpages, 0) as "toastPages", coalesce(t.reltuples, 0)::float8 as "toastTuples", c.reloptions as options,
           current_setting('block_size')::int as bs,
           (select coalesce(json_agg(json_build_object('width', s.avg_width, 'nullFrac', s.null_frac) order by a.attnum), '[]')
              from pg_attribute a
              left join pg_stats s on s.schemaname = n.nspname and s.tablename = c.relname and s.attname = a.attname and not s.inherited
             where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped) as columns
    from pg_class c join pg_namespace n on n.oid = c.relnamespace left join pg_class t on t.oid = c.reltoastrelid
    where n.nspname = ${schema} and c.relname = any(${tables}) and c.relkind = 'r' order by c.relname`
  return rows.map((r) =>
    tableBloat({
      blockSize: r.bs,
      columns: r.columns,
      fillfactor: fillfactorOf(r.options),
      name: r.name,
      pages: r.pages,
      table: null,
      toastPages: r.toastPages,
      toastTuples: Math.max(0, r.toastTuples),
      tuples: r.tuples,
    }),
  )
}

export async function estimateIndexBloat(sql: Querier, schema: string, tables: string[]): Promise<BloatRow[]> {
  const rows = await sql<
    Array<{
      name: string
      table: string
      pages: number
      tuples: number
      options: string[] | null
      bs: number
      columns: Array<{width: number | null; nullFrac: number | null}>
    }>
  >`
    select ic.relname as name, tc.relname as table, ic.relpages as pages, ic.reltuples::float8 as tuples, ic.reloptions as options,
           current_setting('block_size')::int as bs,
           (select coalesce(json_agg(json_build_object('width', s.avg_width, 'nullFrac', s.null_frac) order by k.ord), '[]')
              from unnest(i.indkey::int2[]) with ordinality k(attnum, ord)
              left join pg_attribute a on a.attrelid = tc.oid and a.attnum = k.attnum
              left join pg_stats s on s.schemaname = n.nspname and s.tablename = tc.relname and s.attname = a.attname and not s.inherited) as columns
    from pg_index i join pg_class ic on ic.oid = i.indexrelid join pg_class tc on tc.oid = i.indrelid
    join pg_namespace n on n.oid = tc.relnamespace join pg_am am on am.oid = ic.relam
    where n.nspname = ${schema} and tc.relname = any(${tables}) and am.amname = 'btree' order by tc.relname, ic.relname`
  return rows.map((r) =>
    btreeBloat({
      blockSize: r.bs,
      columns: r.columns,
      fillfactor: fillfactorOf(r.options),
      name: r.name,
      pages: r.pages,
      table: r.table,
      toastPages: 0,
      toastTuples: 0,
      tuples: r.tuples,
    }),
  )
}
