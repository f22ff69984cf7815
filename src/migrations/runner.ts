import path from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'

import {CancelledError, interrupted, interruption, isConnectionLost, toUserError, UserError} from '../errors.js'
import {withSession, type Querier, reopen, type Sql} from '../connection/connect.js'
import {loadMessages} from '../messages.js'
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

const messages = loadMessages('lib.migrations.runner')

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
      throw new RunLockLost(messages.getMessage('error.RunLockLost', [what]), {
        hint: messages.getMessage('error.RunLockLost.hint'),
      })
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
  const tokens = [m.name, s.line, s.summary, inner.message.replace(/\.$/, '')]
  const message = direction === 'down' ? messages.getMessage('error.DownStatementFailed', tokens) : messages.getMessage('error.UpStatementFailed', tokens)
  return new UserError(message, {cause: error, hint: inner.hint})
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
    let at = messages.getMessage('info.TheMigrations')
    try {
      for (const m of plan.toApply) {
        at = messages.getMessage('info.Migration', [m.name])
        checkpoint(o, at)
        const status = statusOf(plan, m)
        o.log(
          status.state === 'partial'
            ? messages.getMessage('info.ApplyingPartial', [m.name])
            : status.state === 'recorded-elsewhere'
              ? messages.getMessage('info.ApplyingRecordedElsewhere', [m.name])
              : messages.getMessage('info.Applying', [m.name]),
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
        o.log(messages.getMessage('info.Applied', [m.name, mr.durationMs]))
      }
    } catch (error) {
      const unchanged = messages.getMessage('info.Unchanged', [plan.current ?? messages.getMessage('info.NoMigration')])
      if (error instanceof RunLockLost && committed.length === 0) {
        throw new RunLockLost(`${error.message.replace(/\.$/, '')}; ${unchanged}.`, {hint: error.hint})
      }
      if (committed.length === 0 && !(error instanceof UserError)) {
        // A server gone between statements (a restart while the run waited): name the migration and the state.
        const inner = toUserError(error)
        throw new UserError(messages.getMessage('error.ApplyingStopped', [at, inner.message.replace(/\.$/, ''), unchanged]), {cause: error, hint: inner.hint})
      }
      if (!o.revertOnFailure || committed.length === 0) throw error
      const reason = error instanceof UserError ? error : toUserError(error)
      o.log(messages.getMessage('info.Undoing', [committed.map((m) => m.name).join(', ')]))
      const outcome = await undo()
      if (reason instanceof CancelledError) {
        throw interrupted(messages.getMessage('error.MigrationInterrupted', [interruption().by, outcome.sentence]), outcome.hint)
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
    if (drifted) throw new UserError(messages.getMessage('error.DownDrifted', [drifted.name]))
    const applied = new Set(plan.migrations.filter((m) => m.state !== 'pending').map((m) => m.version))
    const targets = o.migrations.filter((m) => m.version > options.to && applied.has(m.version)).reverse()
    const report: RunReport = {after: plan.current, appSchema: plan.appSchema, before: plan.current, migrations: [], reverted: []}
    try {
      report.migrations = await runDown(o, plan, targets, applied)
    } catch (error) {
      const state = await describeState(o, plan)
      const hint = messages.getMessage('error.RollbackStopped.hint', [options.to])
      if (error instanceof CancelledError) {
        throw interrupted(messages.getMessage('error.RollbackInterrupted', [interruption().by, state]), hint)
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
  if (newestFirst.length === 0) return {ok: true, sentence: messages.getMessage('info.UndoNothingCommitted')}
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
      const undone = [plural(newestFirst.length, 'migration'), names, plan.current ?? messages.getMessage('info.NoMigration')]
      return {
        ok: true,
        sentence: newestFirst.length === 1 ? messages.getMessage('info.UndoneOne', undone) : messages.getMessage('info.UndoneMany', undone),
      }
    } catch (error) {
      const state = await describeState({...o, sql: fresh}, plan)
      const hint = messages.getMessage('info.UndoFailed.hint', [plan.current ?? 0])
      if (error instanceof CancelledError) return {hint, ok: false, sentence: messages.getMessage('info.UndoAbandoned', [interruption().by, state])}
      return {
        hint,
        ok: false,
        sentence: messages.getMessage('info.UndoFailed', [names, toUserError(error).message.replace(/\.$/, ''), state]),
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
        log(messages.getMessage('info.ServerNotAccepting', [toUserError(error).message.replace(/\.$/, ''), waitMs / 1000]))
        told = true
      }
      scope.throwIfCancelled(messages.getMessage('info.WaitingForServerToUndo'))
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
    const list = done.map((m) => (m.state === 'partial' ? messages.getMessage('info.StatePartial', [m.name]) : `${m.name} ${m.state}`))
    const nowAt = now.current ?? messages.getMessage('info.NoMigration')
    const beforeAt = before.current ?? messages.getMessage('info.NoMigration')
    return list.length
      ? messages.getMessage('info.StateLeftAtWith', [nowAt, list.join(', '), beforeAt])
      : messages.getMessage('info.StateLeftAt', [nowAt, beforeAt])
  } catch (error) {
    return messages.getMessage('info.StateUnreadable', [toUserError(error).message.replace(/\.$/, '')])
  }
}

async function runDown(o: Resolved, plan: Plan, newestFirst: MigrationFile[], appliedNow: Set<number>): Promise<MigrationReport[]> {
  const reports: MigrationReport[] = []
  const applied = new Set(appliedNow)
  for (const m of newestFirst) {
    o.log(messages.getMessage('info.Reverting', [m.name]))
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
    o.log(messages.getMessage('info.Reverted', [m.name, mr.durationMs]))
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
          checkpoint(o, messages.getMessage('info.Migration', [m.name]))
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
      if (o.scope.cancelled) throw new CancelledError(messages.getMessage('info.Migration', [m.name]))
      // A deadlock is a lock wait lost as well: the server rolled our transaction back and the writers went on.
      if (isLockConflict(error)) {
        const where = current ? current.summary : messages.getMessage('info.TheLedger')
        if (isDeadlock(error)) lost.deadlocks++
        else lost.timeouts++
        lost.at = where
        if (Date.now() - started < o.maxLockWaitMs) {
          lockRetries++
          const wait = backoffMs(attempt)
          o.log(
            isDeadlock(error)
              ? messages.getMessage('info.DeadlockRetry', [where, attempt + 1, wait])
              : messages.getMessage('info.LockTimeoutRetry', [where, o.lockTimeoutMs, attempt + 1, wait]),
          )
          await sleep(wait)
          continue
        }
        throw await lockWaitError(o.sql, appSchema, tables, {lockTimeoutMs: o.lockTimeoutMs, migration: m.name, waitedMs: Date.now() - started}, lost)
      }
      if (current) throw statementError(m, current, error, direction)
      throw toUserError(error, messages.getMessage('info.RecordingInLedger', [m.name]))
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
      o.log(messages.getMessage('info.WaitingForLongHolder', [describeHolder(holders[0])]))
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
        checkpoint(o, messages.getMessage('info.Migration', [m.name]))
        if (indexName) await dropInvalidIndex(conn, schema, indexName, o.log, messages.getMessage('info.InvalidIndexRebuilt', [indexName]))
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
            if (indexName) await dropInvalidIndex(conn, schema, indexName, o.log, messages.getMessage('info.InvalidIndexDropped', [indexName])).catch(() => {})
            throw new CancelledError(messages.getMessage('info.Migration', [m.name]))
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
async function dropInvalidIndex(conn: Querier, schema: string, name: string, log: (l: string) => void, line: string): Promise<void> {
  const rows = await conn<{valid: boolean}[]>`
    select i.indisvalid as valid from pg_index i join pg_class c on c.oid = i.indexrelid join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = ${schema} and c.relname = ${name}`
  if (rows.length === 1 && !rows[0].valid) {
    log(line)
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
        o.progress(
          Number(p.blocks_total) > 0
            ? messages.getMessage('info.BuildProgress', [name, p.phase, Math.round((100 * Number(p.blocks_done)) / Number(p.blocks_total)), p.blocks_total])
            : messages.getMessage('info.BuildPhase', [name, p.phase]),
        )
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
