import {LEDGER_SCHEMA} from '../migrations/ledger.js'
import {quoteIdent} from '../pg/identifiers.js'
import type {Sql} from '../connection/connect.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.steps.loss')

/**
 * What a restore rollback would lose: every row inserted, updated or deleted since the backup, in every table
 * of the database (the swap replaces all of it, not only the app's schema).
 *
 * It compares the restored copy (which holds exactly what the backup holds: it was checked against the
 * manifest) with the live database, table by table, rather than reading pg_stat_user_tables counters saved at
 * backup time: those counters can be reset (pg_stat_reset, a crash, a failover), count the writes of aborted
 * transactions, and count the migrations' own writes; a comparison says what would really change.
 *
 * Per table, both sides hash each row's key (its primary key; the whole row without one) into one of 65,536
 * buckets and sum a hash of the row's content (the columns both sides have) per bucket. Buckets that agree hold
 * the same rows; only the rows of buckets that differ are fetched and matched by key, so the cost is two
 * sequential scans per table plus the rows that changed. When the differing buckets hold more than
 * `detailLimit` rows, the counts are taken from the row totals and marked inexact.
 */

export interface TableLoss {
  /** schema.table */
  table: string
  /** Rows in live that the backup does not have (inserted since the backup). */
  added: number
  /** Rows in both whose content differs (updated since the backup); 'yes' when it cannot be counted. */
  changed: number | 'yes'
  /** Rows in the backup that live no longer has (deleted since the backup). */
  removed: number
  /** False when the counts are lower bounds (too many rows differ to match them one by one, or no primary key). */
  exact: boolean
  note?: string
}

export interface CompareOptions {
  /** The live database. */
  live: Sql
  /** The restored copy of the backup. */
  backup: Sql
  /** Rows of differing buckets fetched per side and table, at most (default 200,000). */
  detailLimit?: number
}

const BUCKETS = 65_536
const SKIP_SCHEMAS = ['pg_catalog', 'information_schema', 'pg_toast', LEDGER_SCHEMA]

interface TableShape {
  schema: string
  name: string
  columns: string[]
  key: string[]
}

async function tables(sql: Sql): Promise<Map<string, TableShape>> {
  // Ordinary tables and partitions (a partitioned parent holds no rows of its own); the migration ledgers
  // (schema_migrations, nself_e2ee) record the migrations the rollback undoes, not data.
  const rows = await sql<{schema: string; name: string; columns: string[]; key: string[] | null}[]>`
    select n.nspname as schema, c.relname as name,
      array(select a.attname::text from pg_attribute a where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
            and a.attgenerated = '' order by a.attnum) as columns,
      (select array(select a.attname::text from unnest(i.indkey) with ordinality k(attnum, ord)
                    join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum order by k.ord)
       from pg_index i where i.indrelid = c.oid and i.indisprimary) as key
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.relkind = 'r' and n.nspname <> all(${SKIP_SCHEMAS}) and n.nspname not like 'pg\\_temp\\_%' and n.nspname not like 'pg\\_toast\\_temp\\_%'
      and c.relname <> 'schema_migrations'`
  return new Map(rows.map((r) => [`${r.schema}.${r.name}`, {columns: r.columns, key: r.key ?? [], name: r.name, schema: r.schema}]))
}

const rowOf = (cols: string[]) => `row(${cols.map(quoteIdent).join(', ')})::text`

async function buckets(sql: Sql, from: string, keyExpr: string, rowExpr: string): Promise<Map<string, {n: number; h: string}>> {
  const rows = await sql.unsafe<{b: string; n: string; h: string}[]>(
    `select (hashtextextended(${keyExpr}, 0) & ${BUCKETS - 1}) as b, count(*) as n, sum(hashtextextended(${rowExpr}, 1)::numeric)::text as h
     from ${from} group by 1`,
  )
  return new Map(rows.map((r) => [String(r.b), {h: r.h, n: Number(r.n)}]))
}

async function rowsIn(sql: Sql, from: string, keyExpr: string, rowExpr: string, which: string[]): Promise<Array<{k: string; h: string}>> {
  return sql.unsafe<{k: string; h: string}[]>(
    `select ${keyExpr} as k, hashtextextended(${rowExpr}, 1)::text as h from ${from}
     where (hashtextextended(${keyExpr}, 0) & ${BUCKETS - 1}) = any($1::bigint[])`,
    [which],
  )
}

async function count(sql: Sql, from: string): Promise<number> {
  const [{n}] = await sql.unsafe<{n: string}[]>(`select count(*) as n from ${from}`)
  return Number(n)
}

/** Every table whose rows differ between the live database and the backup's restored copy; unchanged tables are left out. */
export async function compareWithBackup(o: CompareOptions): Promise<TableLoss[]> {
  const limit = o.detailLimit ?? 200_000
  const [liveTables, backupTables] = await Promise.all([tables(o.live), tables(o.backup)])
  const out: TableLoss[] = []
  for (const [id, live] of [...liveTables].sort(([a], [b]) => a.localeCompare(b))) {
    const from = `${quoteIdent(live.schema)}.${quoteIdent(live.name)}`
    const old = backupTables.get(id)
    if (!old) {
      const n = await count(o.live, from)
      if (n > 0) out.push({added: n, changed: 0, exact: true, note: messages.getMessage('note.CreatedAfter'), removed: 0, table: id})
      continue
    }
    // Compare what both have: columns a migration added since the backup are not part of the backup's rows.
    // Generated columns are left out: they follow from the others, and hashing a tsvector is costly.
    const columns = old.columns.filter((c) => live.columns.includes(c))
    const keyed = old.key.length > 0 && old.key.every((c) => columns.includes(c)) && old.key.join() === live.key.join()
    const rowExpr = rowOf(columns)
    const keyExpr = keyed ? rowOf(old.key) : rowExpr
    const [a, b] = await Promise.all([buckets(o.backup, from, keyExpr, rowExpr), buckets(o.live, from, keyExpr, rowExpr)])
    const differing = [...new Set([...a.keys(), ...b.keys()])].filter((k) => a.get(k)?.n !== b.get(k)?.n || a.get(k)?.h !== b.get(k)?.h)
    if (differing.length === 0) continue
    const fetch = (m: Map<string, {n: number}>) => differing.reduce((s, k) => s + (m.get(k)?.n ?? 0), 0)
    if (fetch(a) > limit || fetch(b) > limit) {
      const total = (m: Map<string, {n: number}>) => [...m.values()].reduce((s, x) => s + x.n, 0)
      const delta = total(b) - total(a)
      out.push({
        added: Math.max(0, delta),
        changed: 'yes',
        exact: false,
        note: messages.getMessage('note.TooManyDiffer', [limit.toLocaleString('en-US')]),
        removed: Math.max(0, -delta),
        table: id,
      })
      continue
    }
    const [before, now] = await Promise.all([rowsIn(o.backup, from, keyExpr, rowExpr, differing), rowsIn(o.live, from, keyExpr, rowExpr, differing)])
    if (keyed) {
      const was = new Map(before.map((r) => [r.k, r.h]))
      let added = 0
      let changed = 0
      for (const r of now) {
        const h = was.get(r.k)
        if (h === undefined) added++
        else if (h !== r.h) changed++
        was.delete(r.k)
      }
      out.push({added, changed, exact: true, removed: was.size, table: id})
    } else {
      // Without a primary key a row is its content: an updated row shows as one removed and one added.
      const tally = new Map<string, number>()
      for (const r of before) tally.set(r.k, (tally.get(r.k) ?? 0) + 1)
      for (const r of now) tally.set(r.k, (tally.get(r.k) ?? 0) - 1)
      const added = [...tally.values()].reduce((s, n) => s + Math.max(0, -n), 0)
      const removed = [...tally.values()].reduce((s, n) => s + Math.max(0, n), 0)
      const maybeUpdated = added > 0 && removed > 0
      out.push({
        added,
        changed: maybeUpdated ? 'yes' : 0,
        exact: true,
        removed,
        table: id,
        ...(maybeUpdated ? {note: messages.getMessage('note.NoPrimaryKey')} : {}),
      })
    }
  }
  for (const [id, old] of [...backupTables].sort(([a], [b]) => a.localeCompare(b))) {
    if (liveTables.has(id)) continue
    const n = await count(o.backup, `${quoteIdent(old.schema)}.${quoteIdent(old.name)}`)
    if (n > 0) out.push({added: 0, changed: 0, exact: true, note: messages.getMessage('note.DroppedAfter'), removed: n, table: id})
  }
  return out.sort((a, b) => a.table.localeCompare(b.table))
}

/** "1 row", "2,000 rows". */
export function rows(n: number): string {
  return `${n.toLocaleString('en-US')} ${n === 1 ? 'row' : 'rows'}`
}

/** One line per table: "public.nchat_reactions: 1,000 rows added, 100 rows changed, 1 row removed". */
export function describeLoss(l: TableLoss): string {
  const parts: string[] = []
  if (l.added > 0) parts.push(l.exact ? messages.getMessage('part.Added', [rows(l.added)]) : messages.getMessage('part.AddedAtLeast', [rows(l.added)]))
  if (l.changed === 'yes') parts.push(messages.getMessage('part.ChangedYes'))
  else if (l.changed > 0) parts.push(messages.getMessage('part.Changed', [rows(l.changed)]))
  if (l.removed > 0)
    parts.push(l.exact ? messages.getMessage('part.Removed', [rows(l.removed)]) : messages.getMessage('part.RemovedAtLeast', [rows(l.removed)]))
  if (parts.length === 0) parts.push(messages.getMessage('part.RowsDiffer'))
  return `${l.table}: ${parts.join(', ')}${l.note ? ` (${l.note})` : ''}`
}
