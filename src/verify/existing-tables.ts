/**
 * A table that 013-016 would create, already there in another shape, is found before anything runs.
 * `CREATE TABLE IF NOT EXISTS` would keep it silently, and the application would then fail on it (nChat's own
 * later calls migration makes an nchat_calls with initiator_id and no call_id). The shape a table must have is
 * the one the migration that creates it gives (verify's reference, src/migrations/expected-schema.json); columns
 * later migrations add to it (014 on 013's tables) may be there already, with their own type.
 */
import type {Plan} from '../migrations/plan.js'
import type {Querier} from '../connection/connect.js'
import type {ColumnDef} from './catalog.js'
import {loadExpectedSchema} from './expected.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.verify.existing-tables')

export interface ShapeCheck {
  name: string
  status: 'ok' | 'fail'
  detail: string
  fix?: string
}

interface Wanted {
  table: string
  since: number
  columns: Map<string, {type: string; since: number}>
}

function wantedTables(): Wanted[] {
  const expected = loadExpectedSchema()
  const tables = new Map<string, Wanted>()
  for (const o of expected.objects) {
    if (o.kind === 'table') tables.set(o.name, {columns: new Map(), since: o.since, table: o.name})
  }
  for (const o of expected.objects) {
    if (o.kind !== 'column' || !o.table || !o.def) continue
    const t = tables.get(o.table)
    if (t) t.columns.set(o.name, {since: o.since, type: (o.def as ColumnDef).type})
  }
  return [...tables.values()]
}

/** One check per table the pending migrations create that exists already: ok when its shape is ours. */
export async function existingTableShapes(sql: Querier, plan: Plan): Promise<ShapeCheck[]> {
  const pending = new Set(plan.toApply.map((m) => m.version))
  const wanted = wantedTables().filter((t) => pending.has(t.since))
  if (wanted.length === 0) return []
  const rows = await sql<{table: string; column: string; type: string}[]>`
    select c.relname as table, a.attname as column, format_type(a.atttypid, a.atttypmod) as type
      from pg_class c
      join pg_namespace n on n.oid = c.relnamespace
      join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
     where n.nspname = ${plan.appSchema} and c.relkind in ('r', 'p')
       and c.relname = any(${wanted.map((t) => t.table)}::text[])`
  const live = new Map<string, Map<string, string>>()
  for (const r of rows) {
    const columns = live.get(r.table) ?? new Map<string, string>()
    live.set(r.table, columns)
    columns.set(r.column, r.type)
  }
  const checks: ShapeCheck[] = []
  for (const t of wanted) {
    const have = live.get(t.table)
    if (!have) continue
    const missing = [...t.columns].filter(([c, d]) => d.since === t.since && !have.has(c)).map(([c]) => c)
    const retyped = [...have].flatMap(([c, type]) => {
      const want = t.columns.get(c)
      return want && want.type !== type ? [messages.getMessage('difference.retyped', [c, type, want.type])] : []
    })
    const extra = [...have.keys()].filter((c) => !t.columns.has(c))
    const differences = [
      missing.length > 0 ? messages.getMessage('difference.missing', [missing.join(', ')]) : '',
      retyped.join(', '),
      extra.length > 0 ? messages.getMessage('difference.extra', [extra.join(', '), t.since]) : '',
    ].filter(Boolean)
    const name = `existing ${t.table}`
    if (differences.length === 0) checks.push({detail: messages.getMessage('ok.same-shape', [plan.appSchema, t.table, t.since]), name, status: 'ok'})
    else {
      checks.push({
        detail: messages.getMessage('fail.other-shape', [plan.appSchema, t.table, differences.join('; '), t.since]),
        fix: messages.getMessage('fix.other-shape', [t.table, t.table]),
        name,
        status: 'fail',
      })
    }
  }
  return checks
}
