import {randomBytes} from 'node:crypto'

import {toUserError, UserError} from '../errors.js'
import {DATA_CHECKS, PLAN_CHECKS} from '../nchat/guide.js'
import {ROW_COUNT_TABLES} from '../nchat/tables.js'
import {quoteIdent} from '../pg/identifiers.js'
import {attempt, limits, rolledBack} from '../pg/transactions.js'
import type {Querier} from '../connection/connect.js'
import type {Catalog} from './catalog.js'
import {hasColumn} from './compare.js'
import type {Checks} from './report.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.verify.functional')

/**
 * Functional checks: data invariants, row counts against the backup manifest, the prekey bundle view against
 * real rows in a transaction that is always rolled back, and the query plans of the guide's "Query Performance" table.
 */

export async function checkData(checks: Checks, sql: Querier, schema: string, live: Catalog, upTo: number): Promise<void> {
  for (const d of DATA_CHECKS) {
    if (upTo < d.since) continue
    const name = `data ${d.table}`
    if (!d.columns.every((c) => hasColumn(live, d.table, c))) continue // reported by the column checks
    try {
      const [row] = await sql.unsafe<{bad: string}[]>(`select count(*)::bigint as bad from ${quoteIdent(schema)}.${quoteIdent(d.table)} where ${d.query}`)
      const bad = Number(row.bad)
      if (bad > 0) checks.fail(name, messages.getMessage('data.bad-rows', [d.table, bad, d.what]))
      else checks.ok(name, d.ok)
    } catch (error) {
      checks.fail(name, messages.getMessage('data.error', [d.table, toUserError(error).message]))
    }
  }
}

export async function checkRowCounts(
  checks: Checks,
  sql: Querier,
  schema: string,
  live: Catalog,
  manifest: {row_counts: Record<string, number>},
  exact: boolean,
): Promise<void> {
  for (const table of ROW_COUNT_TABLES) {
    const before = manifest.row_counts?.[table]
    if (typeof before !== 'number') continue
    const name = `row count ${table}`
    if (!live.has(`rel:${table}`)) {
      checks.fail(name, messages.getMessage('rows.no-table', [table]))
      continue
    }
    try {
      const [{n}] = await sql.unsafe<{n: string}[]>(`select count(*)::bigint as n from ${quoteIdent(schema)}.${quoteIdent(table)}`)
      const now = Number(n)
      const delta = now - before
      if (delta === 0) checks.ok(name, messages.getMessage('rows.same', [now]))
      else {
        const values = [table, now, before, `${delta > 0 ? '+' : ''}${delta}`]
        if (exact) checks.fail(name, messages.getMessage('rows.differ-exact', values))
        else checks.warn(name, messages.getMessage('rows.differ-live', values))
      }
    } catch (error) {
      checks.fail(name, messages.getMessage('rows.error', [table, toUserError(error).message]))
    }
  }
}

export async function checkBehaviour(checks: Checks, sql: Querier, schema: string, live: Catalog, upTo: number, broken: Set<string>): Promise<void> {
  const needs = (names: string[]) => names.filter((n) => !live.has(n.startsWith('function:') ? n : `rel:${n}`))
  if (upTo >= 14) {
    const missing = needs([
      'nchat_users',
      'nchat_identity_keys',
      'nchat_signed_prekeys',
      'nchat_one_time_prekeys',
      'nchat_prekey_bundles',
      'function:nchat_claim_prekey_bundle(text)',
    ])
    if (missing.length > 0) checks.warn('bundle view freshness', messages.getMessage('not-run', [missing.map((m) => m.replace(/^function:/, '')).join(', ')]))
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
      const made = await attempt(tx, (q) =>
        q.unsafe<{id: string}[]>(`insert into ${s}.nchat_users (email, username) values ($1, $2) returning id`, [
          `nself-verify-${tag}@example.invalid`,
          `nself_verify_${tag}`,
        ]),
      )
      let userId: string
      if (made.ok) userId = made.value[0].id
      else {
        const any = await tx.unsafe<{id: string}[]>(`select id from ${s}.nchat_users limit 1`)
        if (any.length === 0) throw new UserError(messages.getMessage('bundle.no-user', [toUserError(made.error).message.replace(/\.$/, '')]))
        userId = any[0].id
      }
      await tx.unsafe(
        `insert into ${s}.nchat_identity_keys (device_id, user_id, identity_key_public, identity_key_private_encrypted)
        values ($1, $2, decode(md5($1), 'hex'), decode(md5($1 || ':private'), 'hex'))`,
        [device, userId],
      )
      // Two active signed prekeys (a rotation in progress): the older one has the higher id on purpose.
      await tx.unsafe(
        `insert into ${s}.nchat_signed_prekeys (device_id, signed_prekey_id, signed_prekey_public, signed_prekey_private_encrypted, signature, rotation_date, is_active, created_at)
        values ($1, 2, decode(md5('old'), 'hex'), decode(md5('old:p'), 'hex'), decode(md5('old:s'), 'hex'), now() - interval '7 days', true, now() - interval '7 days'),
               ($1, 1, decode(md5('new'), 'hex'), decode(md5('new:p'), 'hex'), decode(md5('new:s'), 'hex'), now(), true, now())`,
        [device],
      )
      // Two unconsumed one-time prekeys: the older one has the higher id on purpose.
      await tx.unsafe(
        `insert into ${s}.nchat_one_time_prekeys (device_id, prekey_id, prekey_public, prekey_private_encrypted, is_consumed, created_at)
        values ($1, 20, decode(md5('otp20'), 'hex'), decode(md5('otp20:p'), 'hex'), false, now() - interval '1 hour'),
               ($1, 10, decode(md5('otp10'), 'hex'), decode(md5('otp10:p'), 'hex'), false, now())`,
        [device],
      )

      const out: string[] = []
      const view = () => tx.unsafe<BundleRow[]>(`select * from ${s}.nchat_prekey_bundles where device_id = $1`, [device])
      const first = await view()
      if (first.length !== 1) out.push(messages.getMessage('bundle.view-rows', [first.length]))
      else {
        const b = first[0]
        if (b.user_id !== userId) out.push(messages.getMessage('bundle.view-user', [b.user_id, userId]))
        if (Number(b.signed_prekey_id) !== 1) out.push(messages.getMessage('bundle.view-signed', [b.signed_prekey_id]))
        if (Number(b.one_time_prekey_id) !== 20) out.push(messages.getMessage('bundle.view-one-time', [b.one_time_prekey_id ?? messages.getMessage('none')]))
      }
      if (out.length > 0) return out

      const claimed = await tx.unsafe<BundleRow[]>(`select * from ${s}.nchat_claim_prekey_bundle($1)`, [device])
      if (claimed.length !== 1) return [messages.getMessage('bundle.claim-rows', [claimed.length])]
      if (Number(claimed[0].one_time_prekey_id) !== 20)
        out.push(messages.getMessage('bundle.claim-one-time', [claimed[0].one_time_prekey_id ?? messages.getMessage('none')]))
      if (Number(claimed[0].signed_prekey_id) !== 1) out.push(messages.getMessage('bundle.claim-signed', [claimed[0].signed_prekey_id]))
      const [consumed] = await tx.unsafe<{is_consumed: boolean; consumed_at: Date | null}[]>(
        `select is_consumed, consumed_at from ${s}.nchat_one_time_prekeys where device_id = $1 and prekey_id = 20`,
        [device],
      )
      if (!consumed?.is_consumed || !consumed.consumed_at) out.push(messages.getMessage('bundle.claim-not-consumed'))
      const next = await view()
      if (next.length !== 1 || Number(next[0].one_time_prekey_id) !== 10) {
        out.push(messages.getMessage('bundle.after-claim', [next[0]?.one_time_prekey_id ?? messages.getMessage('none')]))
      }
      return out
    })
    if (problems.length === 0) checks.ok(name, messages.getMessage('bundle.ok'))
    else for (const p of problems) checks.fail(name, p)
  } catch (error) {
    checks.fail(name, messages.getMessage('bundle.error', [toUserError(error).message]))
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

async function checkPlans(
  checks: Checks,
  sql: Querier,
  schema: string,
  live: Catalog,
  plans: ReadonlyArray<(typeof PLAN_CHECKS)[number]>,
  broken: Set<string>,
): Promise<void> {
  const s = quoteIdent(schema)
  const runnable = plans.filter((p) => {
    const missing = [p.relation, ...p.expectTables].filter((t) => !live.has(`rel:${t}`) || broken.has(t))
    if (missing.length > 0) checks.warn(`query plan: ${p.name}`, messages.getMessage('not-run', [[...new Set(missing)].join(', ')]))
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
        const r = await attempt(tx, (q) =>
          q.unsafe<Array<{'QUERY PLAN': unknown}>>(`explain (format json) select * from ${s}.${quoteIdent(p.relation)} where ${p.where}`, [param]),
        )
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
        checks.fail(name, messages.getMessage('plan.error', [r.p.name, query, toUserError(r.error).message]))
        continue
      }
      const used = r.indexes.map((i) => ({index: i, table: live.get(`index:${i}`)?.table ?? '?'}))
      const lacking = r.p.expectTables.filter((t) => !used.some((u) => u.table === t))
      const usedText = used.map((u) => messages.getMessage('plan.index-on', [u.index, u.table])).join(', ')
      if (used.length === 0) {
        checks.fail(
          name,
          r.seqScans.length
            ? messages.getMessage('plan.no-index.seq-scan', [r.p.name, query, r.seqScans.join(', ')])
            : messages.getMessage('plan.no-index', [r.p.name, query]),
        )
      } else if (lacking.length > 0) {
        checks.fail(name, messages.getMessage('plan.lacking', [r.p.name, query, lacking.join(', '), usedText]))
      } else {
        const guide = used.some((u) => u.index === r.p.guideIndex)
        checks.ok(name, guide ? messages.getMessage('plan.ok', [usedText]) : messages.getMessage('plan.ok.not-guide-index', [usedText, r.p.guideIndex]))
      }
    }
  } catch (error) {
    checks.fail('query plans', messages.getMessage('plans.error', [toUserError(error).message]))
  }
}
