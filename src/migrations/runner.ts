import path from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'

import {CancelledError, interrupted, interruption, isConnectionLost, toUserError, UserError} from '../errors.js'
import {withSession, type Querier, reopen, type Sql} from '../connection/connect.js'
import {quoteIdent} from '../pg/identifiers.js'
import type {MigrationFile} from './files.js'
import {
  ensureOwnLedger,
  ensureSchemaMigrations,
  insertLedgerRow,
  markFinished,
  markRolledBack,
  markRolledBackInNselfLedger,
  recordInNselfLedger,
  recordVersion,
  unrecordVersion,
} from './ledger.js'
import {
  acquireRunLock,
  backoffMs,
  describeHolder,
  isDeadlock,
  isLockConflict,
  type LockAttempts,
  lockWaitError,
  longLockHolders,
  type RunLock,
} from './locks.js'
import {assertCanMigrate, existingTables, type MigrationStatus, type Plan, readPlan} from './plan.js'
import {concurrentIndexName, referencedTables, type Statement} from './statements.js'
import {createRunScope, type RunScope} from '../run/scope.js'
import {plural} from '../text.js'

/** A run's lock settings, converted once from the flags (--lock-timeout, --max-lock-wait, --lock-wait) and passed as they are. */
export interface RunnerSettings {
  /** lock_timeout for statements that take strong locks on existing tables (a writer waits at most this). */
  lockTimeoutMs: number
  /** Total time to keep retrying lock timeouts and waiting for long transactions before giving up. */
  maxLockWaitMs: number
  /** How long to wait for another run (the command lock, and the advisory run lock). */
  runLockWaitMs: number
}

export interface RunnerOptions {
  sql: Sql
  migrations: MigrationFile[]
  schema?: string
  /** lock_timeout for statements that take strong locks on existing tables (a writer waits at most this). */
  lockTimeoutMs?: number
  /** Total time to keep retrying lock timeouts and waiting for long transactions before giving up. */
  maxLockWaitMs?: number
  /** How long a second run waits for the advisory lock. */
  runLockWaitMs?: number
  /** statement_timeout inside the transactions (DDL on new or small objects). */
  statementTimeoutMs?: number
  /** statement_timeout for index builds and constraint validation (0 = none). */
  buildTimeoutMs?: number
  /** Undo the migrations this run applied when it fails or is interrupted (default true). */
  revertOnFailure?: boolean
  /** Record the locks each transactional statement took (the dry run's report). */
  observeLocks?: boolean
  /**
   * Called on the very connection (or transaction) that is about to write, before it writes: the command's
   * check that the database was not replaced under it and that its command lock is still held.
   */
  beforeWrite?: (q: Querier) => Promise<void>
  /**
   * The run's scope: its cancellation stops the run at the next statement (and cancels the running one), and a
   * crash of the process runs this run's undo (src/last-resort.ts). Default: a scope nothing cancels.
   */
  scope?: RunScope
  log?: (line: string) => void
  progress?: (line: string) => void
}

export interface LockTaken {
  relation: string
  mode: string
}

export interface StatementReport {
  line: number
  summary: string
  mode: Statement['mode']
  durationMs: number
  locks?: LockTaken[]
}

export interface MigrationReport {
  version: number
  name: string
  direction: 'up' | 'down'
  durationMs: number
  lockRetries: number
  statements: StatementReport[]
}

export interface RunReport {
  before: number | null
  after: number | null
  appSchema: string
  migrations: MigrationReport[]
  reverted: number[]
}

const DEFAULTS = {buildTimeoutMs: 0, lockTimeoutMs: 200, maxLockWaitMs: 120_000, runLockWaitMs: 60_000, statementTimeoutMs: 60_000}

type Resolved = Required<Omit<RunnerOptions, 'schema' | 'log' | 'progress' | 'beforeWrite' | 'scope'>> &
  Pick<RunnerOptions, 'schema' | 'beforeWrite'> & {
    scope: RunScope
    log: (l: string) => void
    progress: (l: string) => void
    /** Set once the run lock is held: throws when its session was lost (another run could now start). */
    lockHeld?: (what: string) => void
  }

/** Where a run may stop: Ctrl+C, or the run lock gone with its session. */
function checkpoint(o: Resolved, what: string): void {
  o.scope.throwIfCancelled(what)
  o.lockHeld?.(what)
}

class RunLockLost extends UserError {}

function watchRunLock(o: Resolved, lock: RunLock): void {
  o.lockHeld = (what) => {
    if (lock.lost()) {
      throw new RunLockLost(
        `The session holding this run's lock on the database was ended (by the server, a restart or pg_terminate_backend), so the run stopped at ${what}: another run could start beside it.`,
        {
          hint: 'Check the server, then run the same command again; `nself db e2ee status` shows where the database stands.',
        },
      )
    }
  }
}

function resolve(o: RunnerOptions): Resolved {
  return {
    ...DEFAULTS,
    observeLocks: false,
    revertOnFailure: true,
    ...Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)),
    log: o.log ?? (() => {}),
    progress: o.progress ?? o.log ?? (() => {}),
    scope: o.scope ?? createRunScope(),
  } as Resolved
}

function statementError(m: MigrationFile | {name: string; file: string}, s: Statement, error: unknown, direction: 'up' | 'down'): UserError {
  if (error instanceof CancelledError || error instanceof RunLockLost) return error
  const inner = toUserError(error)
  const file = direction === 'down' ? `down file of ${m.name}` : `migration ${m.name}`
  return new UserError(`The ${file} failed at line ${s.line} (${s.summary}): ${inner.message.replace(/\.$/, '')}.`, {cause: error, hint: inner.hint})
}

/** Where `m` stood when the plan was read (the plan has a status for every file it lists to apply). */
function statusOf(plan: Plan, m: MigrationFile): MigrationStatus {
  const status = plan.migrations.find((s) => s.version === m.version)
  if (!status) throw new Error(`The plan has no status for ${m.name}.`)
  return status
}

/**
 * Apply the pending migrations. Per file: the transactional statements and the ledger rows in one transaction
 * (all or nothing), retried as a whole on lock timeouts; then each CONCURRENTLY / VALIDATE statement alone.
 */
export async function migrateUp(options: RunnerOptions & {to?: number}): Promise<RunReport> {
  const o = resolve(options)
  const release = await acquireRunLock(o.sql, o.runLockWaitMs, o.log, o.scope.signal)
  watchRunLock(o, release)
  try {
    // Read the plan under the lock: a run that waited must see what the other one applied.
    const plan = await readPlan(o.sql, o.migrations, {schema: o.schema, to: options.to})
    assertCanMigrate(plan, options.to)
    const report: RunReport = {after: plan.current, appSchema: plan.appSchema, before: plan.current, migrations: [], reverted: []}
    const committed: MigrationFile[] = []
    let applied = new Set(plan.migrations.filter((m) => m.state !== 'pending').map((m) => m.version))
    // schema_migrations as it stands after the files this run committed (the first one may have created it).
    let shape = plan.shape
    // The undo of what this run committed runs once, whoever asks first: this function's catch, or the
    // last-resort handler when a lost connection crashed the process (src/last-resort.ts).
    let undoing: Promise<UndoOutcome> | undefined
    const undo = () => (undoing ??= undoCommitted(o, {...plan, shape}, [...committed].reverse(), applied))
    const unregister = o.revertOnFailure ? o.scope.registerCrashUndo(async () => (await undo()).sentence) : () => {}
    let at = 'the migrations'
    try {
      for (const m of plan.toApply) {
        at = `migration ${m.name}`
        checkpoint(o, `migration ${m.name}`)
        const status = statusOf(plan, m)
        o.log(
          `applying ${m.name}${status.state === 'partial' ? ' (finishing an interrupted run)' : status.state === 'recorded-elsewhere' ? ' (recorded by another tool: re-checking every object)' : ''}`,
        )
        const t0 = Date.now()
        const inTx = m.statements.filter((s) => s.mode === 'transaction')
        const alone = m.statements.filter((s) => s.mode !== 'transaction')
        const withNew = new Set([...applied, m.version])
        const ledgerShape = shape
        const inTransaction = await runTransaction(o, {
          appSchema: plan.appSchema,
          appliedVersions: withNew,
          direction: 'up',
          ledger: async (tx) => {
            const created = await ensureSchemaMigrations(tx, ledgerShape)
            await recordVersion(tx, created, m.version, m.name)
            await ensureOwnLedger(tx)
            await insertLedgerRow(tx, {
              appSchema: plan.appSchema,
              checksum: m.checksum,
              durationMs: Date.now() - t0,
              finished: alone.length === 0,
              name: m.name,
              version: m.version,
            })
            await recordInNselfLedger(tx, {checksum: m.checksum, fileName: path.basename(m.file)}, Date.now() - t0)
          },
          migration: m,
          statements: inTx,
        })
        // Only now that the transaction committed does schema_migrations exist for sure (a rolled-back attempt
        // that created it left nothing behind).
        shape = {...shape, exists: true}
        if (status.preexisting.length === 0 && status.state === 'pending') committed.push(m)
        applied = withNew
        const t1 = Date.now()
        const outside: StatementRun[] = []
        for (const s of alone) outside.push(await runAlone(o, plan.appSchema, m, s))
        if (alone.length > 0) {
          await o.beforeWrite?.(o.sql)
          await markFinished(o.sql, m.version, Date.now() - t1)
        }
        const mr: MigrationReport = {
          direction: 'up',
          durationMs: Date.now() - t0,
          lockRetries: inTransaction.lockRetries + outside.reduce((n, r) => n + r.lockRetries, 0),
          name: m.name,
          statements: [...inTransaction.statements, ...outside.flatMap((r) => r.statements)],
          version: m.version,
        }
        report.migrations.push(mr)
        report.after = Math.max(report.after ?? 0, m.version)
        o.log(`applied ${m.name} in ${mr.durationMs} ms`)
      }
    } catch (error) {
      const unchanged = `nothing this run applied had committed, so the database is as it was before (at ${plan.current ?? 'no migration'})`
      if (error instanceof RunLockLost && committed.length === 0) {
        throw new RunLockLost(`${error.message.replace(/\.$/, '')}; ${unchanged}.`, {hint: error.hint})
      }
      if (committed.length === 0 && !(error instanceof UserError)) {
        // A server gone between statements (a restart while the run waited): name the migration and the state.
        const inner = toUserError(error)
        throw new UserError(`Applying ${at} stopped: ${inner.message.replace(/\.$/, '')}; ${unchanged}.`, {cause: error, hint: inner.hint})
      }
      if (!o.revertOnFailure || committed.length === 0) throw error
      const reason = error instanceof UserError ? error : toUserError(error)
      o.log(`undoing what this run applied (${committed.map((m) => m.name).join(', ')})…`)
      const outcome = await undo()
      if (reason instanceof CancelledError) {
        throw interrupted(`Interrupted by ${interruption().by}: the migration was stopped, and ${outcome.sentence}.`, outcome.hint)
      }
      throw new UserError(`${reason.message.replace(/\.$/, '')}; ${outcome.sentence}.`, {
        cause: error,
        exitCode: reason.exitCode,
        hint: outcome.hint ?? reason.hint,
      })
    } finally {
      unregister()
    }
    return report
  } finally {
    await release()
  }
}

/** Run down files, newest first, each with its ledger rows in one transaction, down to version `to`. */
export async function migrateDown(options: RunnerOptions & {to: number}): Promise<RunReport> {
  const o = resolve(options)
  const release = await acquireRunLock(o.sql, o.runLockWaitMs, o.log, o.scope.signal)
  watchRunLock(o, release)
  try {
    const plan = await readPlan(o.sql, o.migrations, {schema: o.schema})
    const drifted = plan.migrations.find((m) => m.state === 'drifted' && m.version > options.to)
    if (drifted) throw new UserError(`Migration ${drifted.name} was applied with a different file; its down file may not match, refusing to roll it back.`)
    const applied = new Set(plan.migrations.filter((m) => m.state !== 'pending').map((m) => m.version))
    const targets = o.migrations.filter((m) => m.version > options.to && applied.has(m.version)).reverse()
    const report: RunReport = {after: plan.current, appSchema: plan.appSchema, before: plan.current, migrations: [], reverted: []}
    try {
      report.migrations = await runDown(o, plan, targets, applied)
    } catch (error) {
      const state = await describeState(o, plan)
      const hint = `\`nself db e2ee rollback --strategy down --to ${options.to}\` continues the rollback; \`nself db e2ee migrate\` re-applies what was reverted.`
      if (error instanceof CancelledError) {
        throw interrupted(`Interrupted by ${interruption().by}: the rollback was stopped; ${state}.`, hint)
      }
      const reason = toUserError(error)
      throw new UserError(`${reason.message.replace(/\.$/, '')}; ${state}.`, {cause: error, exitCode: reason.exitCode, hint})
    }
    const remaining = plan.recorded.filter((v) => v <= options.to || !o.migrations.some((m) => m.version === v))
    report.after = remaining.length > 0 ? Math.max(...remaining) : null
    report.reverted = targets.map((m) => m.version)
    return report
  } finally {
    await release()
  }
}

interface UndoOutcome {
  ok: boolean
  /** What is true afterwards, as a clause of the final sentence. */
  sentence: string
  hint?: string
}

/**
 * Undo what this run committed: the down files, newest first, on a pool of their own (the run's connections
 * may be the ones that died), under an undo scope that the first Ctrl+C does not cut short; a second one does.
 */
async function undoCommitted(o: Resolved, plan: Plan, newestFirst: MigrationFile[], applied: Set<number>): Promise<UndoOutcome> {
  if (newestFirst.length === 0) return {ok: true, sentence: 'nothing this run applied had committed, so the database is as it was before'}
  const names = newestFirst
    .map((m) => m.name)
    .reverse()
    .join(', ')
  return o.scope.underUndo(async (undo) => {
    const fresh = freshPool(o.sql)
    if (fresh !== o.sql) undo.own(fresh)
    try {
      // The undo does not stop for a lost run lock: leaving half a migration behind would be worse.
      await serverBack(fresh, o.log, undo)
      await runDown({...o, lockHeld: undefined, scope: undo, sql: fresh}, plan, newestFirst, applied)
      return {
        ok: true,
        sentence: `${plural(newestFirst.length, 'migration')} this run applied (${names}) ${newestFirst.length === 1 ? 'was' : 'were'} undone, so the database is as it was before (at ${plan.current ?? 'no migration'})`,
      }
    } catch (error) {
      const state = await describeState({...o, sql: fresh}, plan)
      const hint = `\`nself db e2ee migrate\` finishes the migration; \`nself db e2ee rollback --strategy down --to ${plan.current ?? 0}\` undoes it.`
      if (error instanceof CancelledError)
        return {hint, ok: false, sentence: `undoing what it applied was abandoned by a second ${interruption().by}: ${state}`}
      return {
        hint,
        ok: false,
        sentence: `undoing the migrations this run applied (${names}) also failed (${toUserError(error).message.replace(/\.$/, '')}): ${state}`,
      }
    }
  })
}

/** After a server restart, wait (bounded; a second Ctrl+C stops it) until it accepts connections again. */
async function serverBack(sql: Sql, log: (line: string) => void, scope: RunScope, waitMs = 60_000): Promise<void> {
  const started = Date.now()
  let told = false
  for (;;) {
    try {
      await sql`select 1`
      return
    } catch (error) {
      const code = (error as {code?: string}).code ?? ''
      const transient = isConnectionLost(error) || ['ECONNREFUSED', 'CONNECT_TIMEOUT', '57P03'].includes(code)
      if (!transient || Date.now() - started > waitMs) throw error
      if (!told) {
        log(
          `the server is not accepting connections (${toUserError(error).message.replace(/\.$/, '')}); waiting up to ${waitMs / 1000} s for it to undo what this run applied`,
        )
        told = true
      }
      scope.throwIfCancelled('waiting for the server to undo what this run applied')
      await sleep(500)
    }
  }
}

function freshPool(sql: Sql): Sql {
  try {
    return reopen(sql, 2)
  } catch {
    return sql
  }
}

/** Where the ledger stands now, read afresh: "the database is at 14: 013_e2ee_system applied, 014_e2ee_system partial". */
async function describeState(o: Resolved, before: Plan): Promise<string> {
  try {
    const now = await readPlan(o.sql, o.migrations, {schema: o.schema})
    const done = now.migrations.filter((m) => m.state !== 'pending')
    const list = done.map((m) => `${m.name} ${m.state === 'partial' ? 'partial (its online index builds or validation did not finish)' : m.state}`)
    return `the database is left at ${now.current ?? 'no migration'}${list.length ? ` (${list.join(', ')})` : ''}, it was at ${before.current ?? 'no migration'} before`
  } catch (error) {
    return `where the database stands could not be read (${toUserError(error).message.replace(/\.$/, '')}); \`nself db e2ee status\` shows it`
  }
}

async function runDown(o: Resolved, plan: Plan, newestFirst: MigrationFile[], appliedNow: Set<number>): Promise<MigrationReport[]> {
  const reports: MigrationReport[] = []
  const applied = new Set(appliedNow)
  for (const m of newestFirst) {
    o.log(`reverting ${m.name}`)
    const t0 = Date.now()
    const {lockRetries, statements} = await runTransaction(o, {
      appSchema: plan.appSchema,
      appliedVersions: applied,
      direction: 'down',
      ledger: async (tx) => {
        await unrecordVersion(tx, plan.shape, m.version)
        await markRolledBack(tx, m.version)
        await markRolledBackInNselfLedger(tx, path.basename(m.file))
      },
      migration: m,
      statements: m.down.statements,
    })
    applied.delete(m.version)
    const mr: MigrationReport = {direction: 'down', durationMs: Date.now() - t0, lockRetries, name: m.name, statements, version: m.version}
    reports.push(mr)
    o.log(`reverted ${m.name} in ${mr.durationMs} ms`)
  }
  return reports
}

/** One transaction's work: a file's transactional statements (up or down) and its ledger rows. */
interface TransactionWork {
  migration: MigrationFile
  statements: Statement[]
  direction: 'up' | 'down'
  appSchema: string
  /** The versions applied once this transaction commits (what 014's guarded blocks read). */
  appliedVersions: Set<number>
  /** The ledger rows, written in the same transaction. */
  ledger: (tx: Querier) => Promise<void>
}

/** What ran: each statement's report, and how often a lock wait made the whole transaction start again. */
interface StatementRun {
  statements: StatementReport[]
  lockRetries: number
}

/** The statements and the ledger rows in one transaction, retried as a whole on lock timeouts and deadlocks. */
async function runTransaction(o: Resolved, w: TransactionWork): Promise<StatementRun> {
  const {appSchema, appliedVersions, direction, ledger, statements} = w
  const m = w.migration
  const tables = await existingTables(o.sql, appSchema, [...new Set(statements.flatMap((s) => referencedTables(s.sql)))])
  const started = Date.now()
  const lost: LockAttempts = {deadlocks: 0, timeouts: 0}
  let lockRetries = 0
  for (let attempt = 0; ; attempt++) {
    await waitForLongHolders(o, appSchema, tables, started, m.name, lost)
    let current: Statement | undefined
    let running: {cancel: () => void} | undefined
    const dispose = o.scope.onCancel(() => running?.cancel())
    const reports: StatementReport[] = []
    try {
      await o.sql.begin(async (tx) => {
        await tx.unsafe(`set local lock_timeout = ${Math.max(1, Math.round(o.lockTimeoutMs))}`)
        await tx.unsafe(`set local statement_timeout = ${Math.round(o.statementTimeoutMs)}`)
        await tx.unsafe(`set local search_path to ${quoteIdent(appSchema)}`)
        await tx`select set_config('nself_e2ee.applied_versions', ${[...appliedVersions].sort((a, b) => a - b).join(',')}, true)`
        await o.beforeWrite?.(tx)
        let seen = new Map<string, string>()
        for (const s of statements) {
          current = s
          checkpoint(o, `migration ${m.name}`)
          const t = Date.now()
          const q = tx.unsafe(s.sql)
          running = q
          await q
          running = undefined
          const rep: StatementReport = {durationMs: Date.now() - t, line: s.line, mode: s.mode, summary: s.summary}
          if (o.observeLocks) {
            const now = await heldLocks(tx)
            rep.locks = [...now].filter(([k, v]) => seen.get(k) !== v).map(([relation, mode]) => ({mode, relation}))
            seen = now
          }
          reports.push(rep)
        }
        current = undefined
        await ledger(tx)
      })
      return {lockRetries, statements: reports}
    } catch (error) {
      if (o.scope.cancelled) throw new CancelledError(`migration ${m.name}`)
      // A deadlock is a lock wait lost as well: the server rolled our transaction back and the writers went on.
      if (isLockConflict(error)) {
        const where = current ? current.summary : 'the ledger'
        if (isDeadlock(error)) lost.deadlocks++
        else lost.timeouts++
        lost.at = where
        if (Date.now() - started < o.maxLockWaitMs) {
          lockRetries++
          const wait = backoffMs(attempt)
          o.log(
            `${isDeadlock(error) ? `lock cycle (deadlock) with another session on ${where}; this attempt was rolled back` : `lock wait on ${where} exceeded ${o.lockTimeoutMs} ms`} (writers were let through); retry ${attempt + 1} in ${wait} ms`,
          )
          await sleep(wait)
          continue
        }
        throw await lockWaitError(o.sql, appSchema, tables, {lockTimeoutMs: o.lockTimeoutMs, migration: m.name, waitedMs: Date.now() - started}, lost)
      }
      if (current) throw statementError(m, current, error, direction)
      throw toUserError(error, `recording ${m.name} in the ledger`)
    } finally {
      dispose()
    }
  }
}

async function heldLocks(tx: Querier): Promise<Map<string, string>> {
  const rows = await tx<{relation: string; mode: string}[]>`
    select c.relname as relation, string_agg(l.mode, '+' order by l.mode) as mode
    from pg_locks l join pg_class c on c.oid = l.relation
    where l.pid = pg_backend_pid() and l.locktype = 'relation' and c.relkind in ('r', 'p', 'v', 'm')
      and c.relnamespace <> 'pg_catalog'::regnamespace
    group by c.relname`
  return new Map(rows.map((r) => [r.relation, r.mode]))
}

/** Do not request a lock while an old transaction holds one on these tables: we would queue writers behind it. */
async function waitForLongHolders(o: Resolved, schema: string, tables: string[], started: number, what: string, lost: LockAttempts): Promise<void> {
  let told = false
  for (;;) {
    const holders = await longLockHolders(o.sql, schema, tables, o.lockTimeoutMs)
    if (holders.length === 0) return
    if (Date.now() - started >= o.maxLockWaitMs) {
      throw await lockWaitError(o.sql, schema, tables, {lockTimeoutMs: o.lockTimeoutMs, migration: what, waitedMs: Date.now() - started}, lost)
    }
    if (!told) {
      o.log(`waiting, without taking any lock, for ${describeHolder(holders[0])} to finish`)
      told = true
    }
    checkpoint(o, what)
    await sleep(250)
  }
}

/** A statement that cannot run in a transaction (or needs its own): on a session of its own, alone. */
async function runAlone(o: Resolved, schema: string, m: MigrationFile, s: Statement): Promise<StatementRun> {
  return withSession(o.sql, async (session) => {
    const conn = session.sql
    let running: {cancel: () => void} | undefined
    const dispose = o.scope.onCancel(() => running?.cancel())
    const started = Date.now()
    let lockRetries = 0
    try {
      // These take SHARE UPDATE EXCLUSIVE, which writers do not queue behind; the long lock_timeout only
      // bounds the wait for old snapshots to end.
      await conn.unsafe(`set lock_timeout = ${Math.max(1000, o.maxLockWaitMs)}`)
      await conn.unsafe(`set statement_timeout = ${Math.round(o.buildTimeoutMs)}`)
      await conn.unsafe(`set search_path to ${quoteIdent(schema)}`)
      const [{pid}] = await conn<{pid: number}[]>`select pg_backend_pid() as pid`
      await o.beforeWrite?.(conn)
      const indexName = concurrentIndexName(s)
      for (let attempt = 0; ; attempt++) {
        checkpoint(o, `migration ${m.name}`)
        if (indexName) await dropInvalidIndex(conn, schema, indexName, o.log, 'left invalid by an interrupted build; rebuilding it')
        const stopProgress = indexName ? watchIndexBuild(o, pid, indexName) : () => {}
        try {
          const q = conn.unsafe(s.sql)
          running = q
          await q
          break
        } catch (error) {
          // A session the server ended is never queried again; an index it left INVALID goes with the undo
          // (the down file drops it) or is rebuilt by the next run.
          if (session.lost || isConnectionLost(error)) throw statementError(m, s, error, 'up')
          if (o.scope.cancelled) {
            if (indexName) await dropInvalidIndex(conn, schema, indexName, o.log, 'left invalid by the cancelled build; dropping it').catch(() => {})
            throw new CancelledError(`migration ${m.name}`)
          }
          if (isLockConflict(error) && Date.now() - started < o.maxLockWaitMs) {
            lockRetries++
            await sleep(backoffMs(attempt))
            continue
          }
          throw statementError(m, s, error, 'up')
        } finally {
          running = undefined
          stopProgress()
        }
      }
      const report: StatementReport = {
        durationMs: Date.now() - started,
        line: s.line,
        mode: s.mode,
        summary: s.summary,
        ...(o.observeLocks ? {locks: [{mode: 'ShareUpdateExclusiveLock', relation: referencedTables(s.sql)[0] ?? '?'}]} : {}),
      }
      return {lockRetries, statements: [report]}
    } finally {
      dispose()
    }
  })
}

/** An index left INVALID by an interrupted CONCURRENTLY build is dropped (so it can be built again). */
async function dropInvalidIndex(conn: Querier, schema: string, name: string, log: (l: string) => void, why: string): Promise<void> {
  const rows = await conn<{valid: boolean}[]>`
    select i.indisvalid as valid from pg_index i join pg_class c on c.oid = i.indexrelid join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = ${schema} and c.relname = ${name}`
  if (rows.length === 1 && !rows[0].valid) {
    log(`index ${name} was ${why}`)
    await conn.unsafe(`drop index concurrently if exists ${quoteIdent(schema)}.${quoteIdent(name)}`)
  }
}

function watchIndexBuild(o: Resolved, pid: number, name: string): () => void {
  let stopped = false
  const timer = setInterval(async () => {
    if (stopped) return
    try {
      const [p] = await o.sql<{phase: string; blocks_done: string; blocks_total: string; tuples_done: string; tuples_total: string}[]>`
        select phase, blocks_done, blocks_total, tuples_done, tuples_total from pg_stat_progress_create_index where pid = ${pid}`
      if (p && !stopped) {
        const pct = Number(p.blocks_total) > 0 ? ` ${Math.round((100 * Number(p.blocks_done)) / Number(p.blocks_total))}% of ${p.blocks_total} blocks` : ''
        o.progress(`${name}: ${p.phase}${pct}`)
      }
    } catch {
      // Progress is cosmetic.
    }
  }, 1000)
  return () => {
    stopped = true
    clearInterval(timer)
  }
}
