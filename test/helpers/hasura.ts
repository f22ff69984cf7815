// Sends nChat's GraphQL operations to PostgreSQL the way Hasura compiles them, from the metadata this plugin
// writes (src/hasura/spec.ts): GraphQL field names mapped to columns (column_config), the insert permission's
// column list enforced, session presets (user_id = X-Hasura-User-Id) added, `on_conflict` turned into
// ON CONFLICT ON CONSTRAINT … DO UPDATE SET c = EXCLUDED.c (or DO NOTHING for update_columns: []), and the
// select permission's row filter on reads. There is no Hasura on these machines: this is the stand-in for
// the one piece the tests cannot run, kept to what Hasura documents.
import type postgres from 'postgres'

import {columnOf, SESSION_USER, TABLES, type TableSpec} from '../../src/hasura/spec.js'

export interface Session {
  userId: string
}

function spec(table: string): TableSpec {
  const t = TABLES.find((x) => x.name === table)
  if (!t) throw new Error(`table ${table} is not tracked in the Hasura metadata`)
  return t
}

const q = (name: string) => `"${name.replaceAll('"', '""')}"`

function fieldOf(t: TableSpec, column: string): string {
  return t.graphqlNames?.[column] ?? column
}

/** The session value of a preset or filter operand. */
function sessionValue(v: unknown, s: Session): unknown {
  return v === SESSION_USER ? s.userId : v
}

/** A row of the database mapped back to GraphQL field names, only the fields asked for. */
function project(t: TableSpec, row: Record<string, unknown>, fields: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const f of fields) out[f] = row[columnOf(t.name, f)]
  return out
}

/** insert_<table>_one / insert_<table>(objects) with an optional on_conflict. Returns the `returning` rows. */
export async function hasuraInsert(
  sql: postgres.Sql | postgres.TransactionSql,
  s: Session,
  table: string,
  objects: Array<Record<string, unknown>>,
  opts: {onConflict?: {constraint: string; updateColumns: string[]}; returning?: string[]} = {},
): Promise<Array<Record<string, unknown>>> {
  const t = spec(table)
  if (!t.insert) throw new Error(`role user has no insert permission on ${table}`)
  const allowed = t.insert.columns
  const rows = objects.map((o) => {
    const row: Record<string, unknown> = {}
    for (const [field, value] of Object.entries(o)) {
      const col = columnOf(table, field)
      if (allowed !== '*' && !allowed.includes(col)) throw new Error(`field ${field} of ${table} is not in the insert permission of role user`)
      row[col] = value === 'now()' ? new Date() : value
    }
    for (const [col, v] of Object.entries(t.insert!.set ?? {})) row[col] = sessionValue(v, s)
    return row
  })
  const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))]
  const params: unknown[] = []
  const values = rows.map((r) => `(${cols.map((c) => (c in r ? `$${params.push(r[c])}` : 'DEFAULT')).join(', ')})`)
  let text = `INSERT INTO ${q(table)} (${cols.map(q).join(', ')}) VALUES ${values.join(', ')}`
  if (opts.onConflict) {
    const upd = opts.onConflict.updateColumns.map((f) => columnOf(table, f))
    text += ` ON CONFLICT ON CONSTRAINT ${q(opts.onConflict.constraint)} `
    text += upd.length > 0 ? `DO UPDATE SET ${upd.map((c) => `${q(c)} = EXCLUDED.${q(c)}`).join(', ')}` : 'DO NOTHING'
  }
  text += ' RETURNING *'
  const out = await sql.unsafe<Record<string, unknown>[]>(text, params as never[])
  return out.map((r) => project(t, r, opts.returning ?? Object.keys(r).map((c) => fieldOf(t, c))))
}

/** update_<table>(where: {field: {_eq: v}, …}, _set: {…}) within the update permission. */
export async function hasuraUpdate(
  sql: postgres.Sql | postgres.TransactionSql,
  _s: Session,
  table: string,
  where: Record<string, unknown>,
  set: Record<string, unknown>,
  returning: string[] = [],
): Promise<Array<Record<string, unknown>>> {
  const t = spec(table)
  if (!t.update) throw new Error(`role user has no update permission on ${table}`)
  const params: unknown[] = []
  const sets = Object.entries(set).map(([f, v]) => {
    const col = columnOf(table, f)
    if (t.update!.columns !== '*' && !t.update!.columns.includes(col)) throw new Error(`field ${f} of ${table} is not in the update permission of role user`)
    return v === 'now()' ? `${q(col)} = now()` : `${q(col)} = $${params.push(v)}`
  })
  const conds = Object.entries(where).map(([f, v]) => `${q(columnOf(table, f))} = $${params.push(v)}`)
  const text = `UPDATE ${q(table)} SET ${sets.join(', ')} WHERE ${conds.join(' AND ') || 'TRUE'} RETURNING *`
  const out = await sql.unsafe<Record<string, unknown>[]>(text, params as never[])
  return out.map((r) => project(t, r, returning))
}

/** A query of `fields` with equality filters, as the select permission allows (own rows where it says so). */
export async function hasuraSelect(
  sql: postgres.Sql | postgres.TransactionSql,
  s: Session,
  table: string,
  where: Record<string, unknown>,
  fields: string[],
  orderBy?: string,
): Promise<Array<Record<string, unknown>>> {
  const t = spec(table)
  const params: unknown[] = []
  const conds = Object.entries(where).map(([f, v]) => `${q(columnOf(table, f))} = $${params.push(v)}`)
  const filter = t.select.filter as Record<string, unknown> | undefined
  if (filter && 'user_id' in filter) conds.push(`user_id = $${params.push(s.userId)}`)
  if (filter && 'broadcaster_id' in filter) conds.push(`broadcaster_id = $${params.push(s.userId)}`)
  const cols = fields.map((f) => `${q(columnOf(table, f))} AS ${q(f)}`).join(', ')
  const text = `SELECT ${cols} FROM ${q(table)} WHERE ${conds.join(' AND ') || 'TRUE'}${orderBy ? ` ORDER BY ${orderBy}` : ''}`
  return sql.unsafe<Record<string, unknown>[]>(text, params as never[])
}
