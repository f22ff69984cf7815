import {setTimeout as sleep} from 'node:timers/promises'

import {UserError} from '../errors.js'
import {backoffMs, isLockTimeout} from '../migrations/locks.js'
import {quoteIdent} from '../pg/identifiers.js'
import type {Querier, Sql} from '../connection/connect.js'
import {createRunScope, type RunScope} from '../run/scope.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.maintain.cleanup')

/**
 * The guide's "Set Up Automated Cleanup", done in small batches:
 *
 *   DELETE FROM nchat_e2ee_audit_log WHERE created_at < NOW() - INTERVAL '90 days';
 *   DELETE FROM nchat_one_time_prekeys WHERE is_consumed = TRUE AND consumed_at < NOW() - INTERVAL '30 days';
 *
 * Run as written on a large table, each DELETE is one transaction that holds the row lock of every row it
 * deletes until the end (a device deletion cascading to its prekeys, or a user deletion setting audit rows'
 * user_id to NULL, waits for all of it) and keeps the xmin horizon back, so nothing anywhere can be vacuumed.
 *
 * Here each batch is its own short transaction: it picks up to N primary keys through the index on the age
 * column (idx_e2ee_audit_log_created_at; the partial idx_one_time_prekeys_consumed), locks them with
 * `FOR UPDATE SKIP LOCKED` (a row a writer is changing is skipped, never waited for, and picked up by a later
 * batch or run), deletes them by primary key with the predicate checked again, and commits. Primary keys,
 * not ctid: a ctid changes when a row is updated, a primary key does not. The cutoff is fixed once per run
 * (`now()` on the server at the start), so a batch never reaches rows that became old during the run.
 *
 * A writer waits on our rows at most from the moment a batch locks one until the batch ends, so the batch is what
 * must stay under the lock timeout, not only its lock waits. Each batch is a single statement whose
 * statement_timeout is half the lock timeout (batchTimeoutMs): a batch that runs longer is cancelled and rolled
 * back, releasing its rows. Its commit does not wait for the WAL flush (synchronous_commit off, for this session
 * only), so the rows are released as soon as the statement ends, not after a disk flush on a busy machine; a crash
 * can only undo the last few batches, which the next run deletes again. The other half of the lock timeout is the
 * room for the commit, the rollback of a cancelled batch and scheduling. A batch slower than a quarter of the lock
 * timeout halves the next, so cancellations stay rare. Batches walk the age index forward from where the last one
 * ended (a keyset), so each does not step over the dead entries of all the batches before it.
 */

export interface CleanupTarget {
  key: 'audit_log' | 'one_time_prekeys'
  table: string
  ageColumn: string
  days: number
  /** The guide's predicate on rows named `alias` (or unqualified), with the cutoff as $1; NULL ages never match. */
  predicate: (alias?: string) => string
}

export function cleanupTargets(auditDays: number, prekeyDays: number): CleanupTarget[] {
  return [
    {
      ageColumn: 'created_at',
      days: auditDays,
      key: 'audit_log',
      predicate: (a = '') => `${a}created_at < $1`,
      table: 'nchat_e2ee_audit_log',
    },
    {
      // is_consumed = TRUE matches the partial index idx_one_time_prekeys_consumed; `consumed_at < $1` is NULL
      // (not true) for a NULL consumed_at, so a prekey without a consumption time is never deleted.
      ageColumn: 'consumed_at',
      days: prekeyDays,
      key: 'one_time_prekeys',
      predicate: (a = '') => `${a}is_consumed = TRUE AND ${a}consumed_at IS NOT NULL AND ${a}consumed_at < $1`,
      table: 'nchat_one_time_prekeys',
    },
  ]
}

export interface CleanupOptions {
  schema: string
  auditDays: number
  prekeyDays: number
  batchSize: number
  pauseMs: number
  lockTimeoutMs: number
  /** How long to keep retrying one batch that meets lock timeouts. */
  maxLockWaitMs: number
  dryRun: boolean
  /** Called before each batch; throws when the command lock was lost (see migrations/command-lock.ts). */
  assertHeld?: () => void
  onProgress?: (p: CleanupProgress) => void
  log?: (line: string) => void
  /** The run's scope: Ctrl+C stops after the running batch (which commits or rolls back whole). */
  scope?: RunScope
}

export interface CleanupProgress {
  table: string
  deleted: number
  estimated: number
  batchSize: number
}

export interface TableResult {
  table: string
  cutoff: string
  days: number
  /** Rows matching the guide's predicate when the run started. */
  matched: number
  deleted: number
  batches: number
  lockTimeouts: number
  /** Longest batch as the client saw it (the statement plus the round trip; rows are held only during the statement). */
  longestBatchMs: number
  /** Rows still matching at the end (rows a writer held when their batch came, left for the next run). */
  remaining: number
}

export interface CleanupReport {
  dryRun: boolean
  schema: string
  tables: TableResult[]
  deleted: number
  durationMs: number
  interrupted: boolean
}

/** The tables must be there: maintenance is for a database migration 014 was applied to. */
export async function assertTablesExist(sql: Querier, schema: string, tables: string[], what = 'clean up'): Promise<void> {
  const rows = await sql<{name: string}[]>`
    select c.relname as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = ${schema} and c.relname = any(${tables}) and c.relkind in ('r', 'p')`
  const missing = tables.filter((t) => !rows.some((r) => r.name === t))
  if (missing.length > 0) {
    throw new UserError(messages.getMessage('error.table-missing', [schema, missing[0], what]), {
      hint: messages.getMessage('hint.table-missing'),
    })
  }
}

async function countMatching(sql: Querier, schema: string, t: CleanupTarget, cutoff: Date): Promise<number> {
  const [row] = await sql.unsafe<{n: string}[]>(`select count(*) as n from ${quoteIdent(schema)}.${quoteIdent(t.table)} where ${t.predicate()}`, [cutoff])
  return Number(row.n)
}

/** Sweeps that find every remaining row held by a writer, before leaving those rows to the next run. */
const SWEEP_RETRIES = 8

/** Whether any row still matches (through the age index); a statement timeout counts as yes. */
async function anyMatching(sql: Querier, schema: string, t: CleanupTarget, cutoff: Date): Promise<boolean> {
  try {
    const [row] = await sql.unsafe<{any: boolean}[]>(
      `select exists (select 1 from ${quoteIdent(schema)}.${quoteIdent(t.table)} where ${t.predicate()}) as any`,
      [cutoff],
    )
    return row.any
  } catch (error) {
    if ((error as {code?: string}).code === '57014') return true
    throw error
  }
}

/**
 * One batch, one statement (so one transaction, autocommitted): the oldest matching rows from `$3` on (a keyset:
 * rows before it were deleted by earlier batches, and their dead index entries are not walked again), locked
 * without waiting, deleted by primary key with the predicate checked again. Returns the count and the newest age.
 */
function batchStatement(schema: string, t: CleanupTarget): string {
  const table = `${quoteIdent(schema)}.${quoteIdent(t.table)}`
  const age = quoteIdent(t.ageColumn)
  return `with batch as (
      select id from ${table} where ${t.predicate()} and ${age} >= coalesce($3::timestamptz, '-infinity') order by ${age} limit $2 for update skip locked
    ), gone as (
      delete from ${table} d using batch where d.id = batch.id and ${t.predicate('d.')} returning d.${age} as age
    )
    select count(*)::int as n, max(age) as last from gone`
}

export async function runCleanup(sql: Sql, opts: CleanupOptions): Promise<CleanupReport> {
  const started = Date.now()
  const targets = cleanupTargets(opts.auditDays, opts.prekeyDays)
  await assertTablesExist(
    sql,
    opts.schema,
    targets.map((t) => t.table),
  )

  let stop = false
  const scope = opts.scope ?? createRunScope()
  const unregister = scope.onCancel(() => {
    stop = true
  })
  const results: TableResult[] = []
  // Each result with the target it counts, for the recount at the end.
  const counted: Array<{result: TableResult; target: CleanupTarget}> = []
  const conn = await sql.reserve()
  try {
    // Session settings on the connection the batches run on: every batch statement is its own transaction.
    const budgetMs = batchTimeoutMs(opts.lockTimeoutMs)
    await conn.unsafe(`set lock_timeout = ${Math.round(opts.lockTimeoutMs)}; set statement_timeout = ${budgetMs}; set synchronous_commit = off`)
    for (const t of targets) {
      const [{cutoff}] = await sql<{cutoff: Date}[]>`select now() - make_interval(days => ${t.days}) as cutoff`
      const matched = await countMatching(sql, opts.schema, t, cutoff)
      const r: TableResult = {
        batches: 0,
        cutoff: cutoff.toISOString(),
        days: t.days,
        deleted: 0,
        lockTimeouts: 0,
        longestBatchMs: 0,
        matched,
        remaining: matched,
        table: t.table,
      }
      results.push(r)
      counted.push({result: r, target: t})
      if (opts.dryRun || matched === 0) continue
      opts.onProgress?.({batchSize: opts.batchSize, deleted: 0, estimated: matched, table: t.table})
      const statement = batchStatement(opts.schema, t)
      let size = opts.batchSize
      let lockWaitStarted: number | undefined
      let attempt = 0
      // From the oldest row on; when a pass finds nothing more, one sweep from the start picks up rows a writer
      // held when their batch came (SKIP LOCKED passed them by).
      let from: Date | null = null
      let sweeping = false
      let emptySweeps = 0
      while (!stop && !scope.cancelled) {
        opts.assertHeld?.()
        const t0 = performance.now()
        let n: number
        let last: Date | null
        try {
          ;[{last, n}] = await conn.unsafe<{n: number; last: Date | null}[]>(statement, [cutoff, size, from])
        } catch (error) {
          if (!isLockTimeout(error) && (error as {code?: string}).code !== '57014') throw error
          if (scope.cancelled || stop) break
          // A lock timeout (the table is locked by DDL) or our own statement timeout: back off and retry, smaller.
          r.lockTimeouts++
          lockWaitStarted ??= Date.now()
          if (Date.now() - lockWaitStarted > opts.maxLockWaitMs) {
            throw new UserError(
              messages.getMessage('error.lock-wait', [
                opts.schema,
                t.table,
                Math.round(opts.maxLockWaitMs / 1000),
                opts.lockTimeoutMs,
                r.lockTimeouts,
                r.deleted,
              ]),
              {
                cause: error,
                hint: messages.getMessage('hint.lock-wait'),
              },
            )
          }
          size = Math.max(1, Math.floor(size / 2))
          await sleep(backoffMs(attempt++))
          continue
        }
        const ms = performance.now() - t0
        lockWaitStarted = undefined
        attempt = 0
        r.batches++
        r.deleted += n
        r.longestBatchMs = Math.max(r.longestBatchMs, ms)
        opts.onProgress?.({batchSize: size, deleted: r.deleted, estimated: Math.max(matched, r.deleted), table: t.table})
        if (n === 0) {
          if (sweeping) {
            // A row a writer keeps touching (the oldest one is the next any batch takes) can be held at every
            // sweep: look again a few times after a short pause before leaving it for the next run.
            if (++emptySweeps > SWEEP_RETRIES || !(await anyMatching(conn, opts.schema, t, cutoff))) break
            await sleep(backoffMs(emptySweeps, 20, 200))
          }
          sweeping = true
          from = null
          continue
        }
        sweeping = false
        from = last ?? from
        // Keep each batch well inside its statement_timeout (half the lock timeout), so cancelled batches stay rare.
        if (ms > budgetMs / 2) size = Math.max(1, Math.floor(size / 2))
        else if (ms < budgetMs / 4 && size < opts.batchSize) size = Math.min(opts.batchSize, size * 2)
        if (opts.pauseMs > 0) await sleep(opts.pauseMs)
      }
      if (stop || scope.cancelled) break
    }
    for (const {result: r, target: t} of counted) {
      if (opts.dryRun) continue
      r.remaining = await countMatching(sql, opts.schema, t, new Date(r.cutoff))
    }
  } finally {
    unregister()
    await conn.unsafe('reset lock_timeout; reset statement_timeout; reset synchronous_commit').catch(() => {})
    conn.release()
  }
  const interrupted = stop || scope.cancelled
  return {
    deleted: results.reduce((s, r) => s + r.deleted, 0),
    dryRun: opts.dryRun,
    durationMs: Date.now() - started,
    interrupted,
    schema: opts.schema,
    tables: results,
  }
}

/**
 * Each batch's statement_timeout: the longest a batch may hold its rows, half the lock timeout so that with the
 * commit and a cancelled batch's rollback a writer still never waits on our rows longer than the lock timeout.
 */
export function batchTimeoutMs(lockTimeoutMs: number): number {
  return Math.max(1, Math.floor(lockTimeoutMs / 2))
}
