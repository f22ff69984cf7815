import {setTimeout as sleep} from 'node:timers/promises'

import {CancelledError, firstLine, UserError} from '../errors.js'
import {withSession, RUN_ID, type Sql} from '../connection/connect.js'
import {fitIdentifier, quoteIdent, validateIdentifier} from '../pg/identifiers.js'
import type {Target} from '../connection/target.js'
import type {PgTools} from '../connection/tools.js'
import {testPause} from '../test-pause.js'
import {createRunScope, type RunScope} from '../run/scope.js'
import type {Manifest} from '../archive/manifest.js'
import {restoreArchive, type RestoreProgress} from '../archive/restore.js'
import {readBackupToc} from '../archive/toc.js'
import {COMMENT_PREFIX, createDatabaseLike, describeDatabase, dropDatabase, freeDatabaseName, quoteLiteral, retryOnLostConnection} from '../pg/databases.js'
import {plural, redact, timestamp} from '../text.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.steps.restore')

/**
 * Rollback option 1 done safely (docs/deviations.md, D7). The guide drops the live database and then restores into an
 * empty one: a failed restore leaves no database at all. Here the backup is restored in full into a new
 * database `<db>_e2ee_restore_<ts>` (commented like the dry-run clones, so a leftover is swept), checked against
 * the backup's manifest, and only then swapped in under the live name, in one transaction (`swapDatabases`).
 * The replaced database stays, renamed `<db>_pre_rollback_<ts>`, until the operator drops it.
 */

export interface RestoreIntoNewDatabaseOptions {
  target: Target
  tools: PgTools
  /** Any connection to the server (the live database or a maintenance one). */
  admin: Sql
  backup: {file: string; manifest: Manifest}
  jobs?: number
  onProgress?: (progress: RestoreProgress) => void
  log?: (line: string) => void
}

export interface RestoredDatabase {
  name: string
  /** Drop the restored database (ending its sessions). Until then Ctrl+C drops it too. */
  drop(): Promise<void>
}

export async function restoreIntoNewDatabase(opts: RestoreIntoNewDatabaseOptions): Promise<RestoredDatabase> {
  const {admin, backup, log, target, tools} = opts
  // The run's scope travels with its tools: Ctrl+C stops pg_restore and drops the new database.
  const scope = tools.scope
  scope.throwIfCancelled(messages.getMessage('info.StepRestore'))
  const live = target.conn.database
  const file = backup.file
  const secret = target.conn.password
  validateIdentifier(live, 'database')
  if (backup.manifest.database && backup.manifest.database !== live) {
    throw new UserError(messages.getMessage('error.OtherDatabase', [file, backup.manifest.database, live]), {
      hint: messages.getMessage('error.OtherDatabase.hint'),
    })
  }

  const toc = await readBackupToc(tools, file, messages.getMessage('info.StepRestore'), secret)

  const like = await describeDatabase(admin, live)
  const name = await freeDatabaseName(admin, live, 'restore')
  const comment = `${COMMENT_PREFIX.restore}${live}, created ${new Date().toISOString()}, pid ${process.pid}, run ${RUN_ID}`

  let dropping: Promise<void> | undefined
  const dropOnce = () => {
    // Shared while in flight only: a drop that ran before CREATE DATABASE committed (Ctrl+C at that moment)
    // must be able to run again.
    dropping ??= dropDatabase(admin, name).finally(() => {
      dropping = undefined
    })
    return dropping
  }
  let unregister = scope.onCancel(() => dropOnce())

  try {
    // Same owner, encoding, locale, settings, grants and connection limit as the live database: after the swap
    // it is the live database.
    await createDatabaseLike(admin, name, like, comment, {connLimit: true, log})
    scope.throwIfCancelled(messages.getMessage('info.StepRestore'))
    log?.(messages.getMessage('info.Restoring', [file, name]))
    const started = Date.now()
    // Owners are always restored as dumped: this database becomes production. A user who may not assign them
    // gets pg_restore's error (and the live database stays as it is).
    await restoreArchive({database: name, file, jobs: opts.jobs, onProgress: opts.onProgress, target, tools, total: toc.entries.length})
    scope.throwIfCancelled(messages.getMessage('info.StepRestore'))
    log?.(messages.getMessage('info.Restored', [name, ((Date.now() - started) / 1000).toFixed(1)]))
    return {
      async drop() {
        unregister()
        unregister = () => true
        await dropOnce()
      },
      name,
    }
  } catch (error) {
    unregister()
    let dropFailure: string | undefined
    try {
      await dropOnce()
    } catch (dropError) {
      dropFailure = firstLine(dropError)
    }
    if (scope.cancelled || error instanceof CancelledError) throw new CancelledError(messages.getMessage('info.StepRestoreInto', [name]))
    const why = redact(firstLine(error), secret)
    throw new UserError(
      dropFailure === undefined
        ? messages.getMessage('error.RestoreFailed', [file, name, why])
        : messages.getMessage('error.RestoreFailedNotDropped', [file, name, why, name, dropFailure]),
      {
        cause: error,
        hint: messages.getMessage('error.RestoreFailed.hint', [live]),
      },
    )
  }
}

// ---------------------------------------------------------------------------------------------------------

/**
 * The restored database holds what the backup's manifest says: the exact row count of every counted table
 * (counted in the dump's own snapshot) and the same ledger version. Throws a UserError naming the first mismatch.
 */
export async function checkRestoredMatchesManifest(
  sql: Sql,
  manifest: Manifest,
  readLedgerVersion: (sql: Sql) => Promise<number | null>,
): Promise<{tables: number}> {
  const [{db}] = await sql<{db: string}[]>`select current_database() as db`
  const schema = manifest.schema
  for (const [table, expected] of Object.entries(manifest.row_counts).sort(([a], [b]) => a.localeCompare(b))) {
    validateIdentifier(table, 'table')
    const qualified = `${quoteIdent(schema)}.${quoteIdent(table)}`
    const [{exists}] = await sql<{exists: boolean}[]>`select to_regclass(${qualified}) is not null as exists`
    if (!exists) {
      throw new UserError(messages.getMessage('error.MissingTable', [db, schema, table, manifest.file]))
    }
    const [{n}] = await sql.unsafe<{n: string}[]>(`select count(*)::bigint as n from ${qualified}`)
    if (Number(n) !== expected) {
      throw new UserError(messages.getMessage('error.RowCount', [db, plural(Number(n), 'row'), schema, table, manifest.file, expected]))
    }
  }
  if (!manifest.synthesized) {
    const version = await readLedgerVersion(sql)
    if (version !== manifest.ledger_version) {
      throw new UserError(
        messages.getMessage('error.LedgerVersion', [
          db,
          version ?? messages.getMessage('info.none'),
          manifest.file,
          manifest.ledger_version ?? messages.getMessage('info.none'),
        ]),
      )
    }
  }
  return {tables: Object.keys(manifest.row_counts).length}
}

// ---------------------------------------------------------------------------------------------------------

/** `<db>_pre_rollback_<YYYYMMDD_HHMMSS>`, the db part cut so the whole fits PostgreSQL's 63 bytes. */
export function keptDatabaseName(database: string, date = new Date()): string {
  return fitIdentifier(database, `_pre_rollback_${timestamp(date)}`)
}

/** The swap reported an error although it committed: the restored database is live under the live name. */
export class SwapCommittedError extends UserError {}

export interface SwapOptions {
  /** A pool (at least 2 connections) on a maintenance database (e.g. "postgres"), neither `live` nor `replacement`. */
  admin: Sql
  live: string
  replacement: string
  /** `<db>_pre_rollback_<YYYYMMDD_HHMMSS>`: the name the replaced live database keeps. */
  keptName: string
  /** pg_database.oid of `live` when the command started: the swap refuses to replace any other database. */
  liveOid?: number
  /** lock_timeout for closing the replacement and for the renames (default 2000 ms). */
  lockTimeoutMs?: number
  /** Tries of the rename transaction when a session of live did not end in time (default 3). */
  attempts?: number
  /** The run's scope: its logger, and Ctrl+C before the commit rolls the swap back. */
  scope?: RunScope
}

/**
 * Put `replacement` in place of `live` in ONE transaction: rename live to `keptName`, rename the replacement to
 * live, allow connections on it, keep live's comment. The live database never refuses connections: the first
 * rename holds its database lock, so a client connecting meanwhile waits (PostgreSQL's own DROP DATABASE
 * protocol) and then gets the restored database, or "just renamed" and reconnects. Live's sessions are ended
 * from a second connection while the rename waits for them (the server waits at most 5 s per try).
 *
 * Why not ALLOW_CONNECTIONS false first (as before): that commits a closed production database, and a kill -9
 * or server restart before the renames left it refusing every connection. Here a kill -9, a crash or a restart
 * at any moment rolls the transaction back: live stays as it was, open; at most the restored copy is left,
 * which the next command removes (leftovers.ts).
 */
export async function swapDatabases(opts: SwapOptions): Promise<{keptName: string; windowMs: number}> {
  const {admin, keptName, live, replacement} = opts
  const scope = opts.scope ?? createRunScope()
  const log = (line: string) => scope.log.info(line)
  for (const [n, what] of [
    [live, 'live database'],
    [replacement, 'replacement database'],
    [keptName, 'kept database'],
  ] as const) {
    validateIdentifier(n, what)
  }
  if (new Set([live, replacement, keptName]).size !== 3) {
    throw new UserError(messages.getMessage('error.NamesMustDiffer', [live, replacement, keptName]))
  }
  const [{db}] = await admin<{db: string}[]>`select current_database() as db`
  if (db === live || db === replacement) {
    throw new UserError(messages.getMessage('error.OverConnection', [db, live]), {hint: messages.getMessage('error.OverConnection.hint')})
  }
  const present = await admin<{name: string; comment: string | null; oid: string}[]>`
    select datname as name, shobj_description(oid, 'pg_database') as comment, oid::int8::text as oid from pg_database
    where datname = any(${[live, replacement, keptName]})`
  const has = (n: string) => present.some((p) => p.name === n)
  const liveRow = present.find((p) => p.name === live)
  if (!liveRow) throw new UserError(messages.getMessage('error.LiveMissing', [live]))
  if (!has(replacement)) throw new UserError(messages.getMessage('error.ReplacementMissing', [replacement, live]))
  if (has(keptName)) throw new UserError(messages.getMessage('error.KeptExists', [keptName, live]))
  if (opts.liveOid !== undefined && Number(liveRow.oid) !== opts.liveOid) {
    throw new UserError(messages.getMessage('error.LiveReplaced', [live, opts.liveOid, liveRow.oid]))
  }
  const liveComment = liveRow.comment
  const q = {kept: quoteIdent(keptName), live: quoteIdent(live), replacement: quoteIdent(replacement)}
  const lockTimeout = Math.max(100, Math.floor(opts.lockTimeoutMs ?? 2000))
  const attempts = Math.max(1, opts.attempts ?? 3)

  const terminate = (name: string, except: number) =>
    retryOnLostConnection(
      () => admin`
    select pg_terminate_backend(pid) from pg_stat_activity where datname = ${name} and pid <> pg_backend_pid() and pid <> ${except}`,
    )

  const sessionsOn = (name: string) =>
    retryOnLostConnection(async () => {
      const [{n}] = await admin<{n: number}[]>`select count(*)::int as n from pg_stat_activity where datname = ${name} and pid <> pg_backend_pid()`
      return n
    })

  // Read with a retry: admin's connections may be the ones the server just ended (the pool reconnects).
  const namesNow = () =>
    retryOnLostConnection(async () =>
      (await admin<{name: string}[]>`select datname as name from pg_database where datname = any(${[live, replacement, keptName]})`).map((r) => r.name),
    )

  let t0 = 0
  // The swap's own session (a one-connection pool, not admin.begin): postgres.js crashes the process when a
  // transaction's connection dies and the transaction goes on (porsager/postgres 1208); here every statement
  // first checks that the session is still there, and a session that was lost is never written to again.
  return withSession(admin, async (session) => {
    const run = async <T extends object[] = object[]>(statement: string): Promise<T> => {
      if (session.lost) throw connectionLost()
      return session.sql.unsafe<T>(statement)
    }
    try {
      // The replacement is ours: close it for good (nobody but a stray check should be on it) and end its sessions.
      await run(`SET lock_timeout = ${lockTimeout}`)
      await run(`ALTER DATABASE ${q.replacement} WITH ALLOW_CONNECTIONS false`)
      await terminate(replacement, 0)
      scope.throwIfCancelled(messages.getMessage('info.StepSwap'))
      const [{pid}] = await run<{pid: number}[]>('select pg_backend_pid() as pid')
      for (let attempt = 1; ; attempt++) {
        // End them before the transaction and let them exit (bounded), so the rename rarely has to wait: the
        // server re-checks only every 100 ms while new connections wait on it.
        await terminate(live, 0)
        for (let i = 0; i < 100 && (await sessionsOn(live)) > 0; i++) {
          await sleep(5)
        }
        let done = false
        // Ends live's sessions until the transaction is over: the ones there now, and any that got in before the
        // rename took the database lock. Nothing new gets in after that.
        const terminator = (async () => {
          while (!done) {
            await terminate(live, pid).catch(() => {})
            await sleep(10)
          }
        })()
        t0 = performance.now()
        try {
          await run('BEGIN')
          try {
            await run('SET LOCAL statement_timeout = 15000')
            await run(`ALTER DATABASE ${q.live} RENAME TO ${q.kept}`)
            if (opts.liveOid !== undefined) {
              const [{oid}] = await run<{oid: string}[]>(`select oid::int8::text as oid from pg_database where datname = ${quoteLiteral(keptName)}`)
              if (Number(oid) !== opts.liveOid) throw new UserError(messages.getMessage('error.LiveReplacedDuringSwap', [live]))
            }
            await run(`ALTER DATABASE ${q.replacement} RENAME TO ${q.live}`)
            await run(`ALTER DATABASE ${q.live} WITH ALLOW_CONNECTIONS true`)
            await run(`COMMENT ON DATABASE ${q.live} IS ${liveComment === null ? 'NULL' : quoteLiteral(liveComment)}`)
            await testPause('swap:renamed', scope.signal)
            // Ctrl+C or SIGTERM during the swap: nothing is committed yet, so the swap is rolled back.
            scope.throwIfCancelled(messages.getMessage('info.StepSwap'))
            await run('COMMIT')
          } catch (error) {
            if (!session.lost) await session.sql.unsafe('ROLLBACK').catch(() => {})
            throw error
          }
          // A COMMIT sent as the session died may have reached a new connection instead: believe the catalog.
          const names = await namesNow()
          if (!(names.includes(keptName) && names.includes(live) && !names.includes(replacement))) {
            throw connectionLost()
          }
          break
        } catch (error) {
          // 55006: a session of live did not end within the server's 5 s; try again (bounded).
          if ((error as {code?: string}).code === '55006' && attempt < attempts && !scope.cancelled && !session.lost) {
            log(messages.getMessage('info.SwapRetry', [live, attempt + 1, attempts]))
            continue
          }
          throw error
        } finally {
          done = true
          await terminator
        }
      }
      const windowMs = Math.round(performance.now() - t0)
      log(messages.getMessage('info.Swapped', [live, keptName, windowMs]))
      return {keptName, windowMs}
    } catch (error) {
      const cause = firstLine(error)
      // Where do the names point now? The transaction either committed or did not; look before saying so.
      const names = await namesNow().catch(() => undefined)
      if (names?.includes(keptName) && names.includes(live) && !names.includes(replacement)) {
        // The commit went through although the client saw an error (e.g. the connection broke on COMMIT).
        throw new SwapCommittedError(messages.getMessage('error.SwapCommitted', [cause, live, keptName]), {cause: error})
      }
      // Not committed: no kept database (the replacement may be gone already, dropped by a Ctrl+C handler).
      if (names?.includes(live) && !names.includes(keptName)) {
        if (scope.cancelled) throw new CancelledError(messages.getMessage('info.StepSwap'), messages.getMessage('info.SwapRolledBack', [live]))
        throw new UserError(messages.getMessage('error.SwapNotCommitted', [replacement, live, cause, live]), {cause: error})
      }
      throw new UserError(messages.getMessage('error.SwapUnknown', [replacement, live, cause, live]), {cause: error})
    }
  })
}

/** The error a statement gets when its session was lost before it was sent (never written to a dead socket). */
function connectionLost(): Error {
  return Object.assign(new Error(messages.getMessage('error.ConnectionLost')), {code: 'CONNECTION_CLOSED'})
}
