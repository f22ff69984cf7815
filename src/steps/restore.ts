import {isCancelled, onCancel, throwIfCancelled} from '../cancel.js'
import {CancelledError, UserError, toUserError} from '../errors.js'
import {quoteIdent, type Sql} from '../target/connect.js'
import {type Target, validateIdentifier} from '../target/target.js'
import type {PgTools} from '../target/tools.js'
import {type Manifest, readToc, redact, timestamp, type Toc} from './backup.js'
import {plural} from '../text.js'
import {
  COMMENT_PREFIX, createDatabaseLike, describeDatabase, dropDatabase, freeDatabaseName, quoteLiteral, restoreArchive,
  type RestoreProgress,
} from './clone.js'

/**
 * Rollback option 1 done safely (DESIGN-NOTES D7). The guide drops the live database and then restores into an
 * empty one: a failed restore leaves no database at all. Here the backup is restored in full into a new
 * database `<db>_e2ee_restore_<ts>` (commented like the dry-run clones, so a leftover is swept), checked against
 * the backup's manifest, and only then swapped in under the live name, in one transaction, after the live
 * database stopped accepting connections. The replaced database stays, renamed `<db>_pre_rollback_<ts>`, until
 * the operator drops it.
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
  throwIfCancelled('the restore')
  const live = target.conn.database
  const file = backup.file
  const secret = target.conn.password
  validateIdentifier(live, 'database')
  if (backup.manifest.database && backup.manifest.database !== live) {
    throw new UserError(`The backup ${file} is a backup of the database "${backup.manifest.database}", not of "${live}".`, {
      hint: 'Choose a backup of this database (nself db e2ee rollback lists them).',
    })
  }

  let toc: Toc
  try {
    toc = await readToc(tools, file)
  } catch (error) {
    if (isCancelled()) throw new CancelledError('the restore')
    throw new UserError(`The backup ${file} cannot be read by pg_restore: ${redact(messageOf(error), secret)}.`)
  }

  const like = await describeDatabase(admin, live)
  const name = await freeDatabaseName(admin, live, 'restore')
  const comment = `${COMMENT_PREFIX.restore}${live}, created ${new Date().toISOString()}, pid ${process.pid}`

  let dropping: Promise<void> | undefined
  const dropOnce = () => {
    // Shared while in flight only: a drop that ran before CREATE DATABASE committed (Ctrl+C at that moment)
    // must be able to run again.
    dropping ??= dropDatabase(admin, name).finally(() => {
      dropping = undefined
    })
    return dropping
  }
  let unregister = onCancel(() => dropOnce())

  try {
    // Same owner, encoding, locale, settings, grants and connection limit as the live database: after the swap
    // it is the live database.
    await createDatabaseLike(admin, name, like, comment, {connLimit: true, log})
    throwIfCancelled('the restore')
    log?.(`Restoring ${file} in full into ${name}.`)
    const started = Date.now()
    // Owners are always restored as dumped: this database becomes production. A user who may not assign them
    // gets pg_restore's error (and the live database stays as it is).
    await restoreArchive({database: name, file, jobs: opts.jobs, onProgress: opts.onProgress, target, tools, total: toc.entries.length})
    throwIfCancelled('the restore')
    log?.(`Restored ${name} in ${((Date.now() - started) / 1000).toFixed(1)} s.`)
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
    let dropNote = ''
    try {
      await dropOnce()
    } catch (dropError) {
      dropNote = ` The unfinished database ${name} could not be dropped (${messageOf(dropError)}); drop it with DROP DATABASE.`
    }
    if (isCancelled() || error instanceof CancelledError) throw new CancelledError(`the restore into ${name}`)
    throw new UserError(`Restoring ${file} into the new database ${name} failed: ${redact(messageOf(error), secret)}.${dropNote}`, {
      cause: error,
      hint: `The live database "${live}" was not touched.`,
    })
  }
}

function messageOf(error: unknown): string {
  if (error instanceof UserError) return error.message.replace(/\.$/, '')
  const e = error as {severity?: string; message?: string}
  if (e?.severity) return toUserError(error).message.replace(/\.$/, '')
  return String(e?.message ?? error).split('\n')[0].replace(/\.$/, '')
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
      throw new UserError(`The restored database ${db} has no table ${schema}.${table}, which the backup ${manifest.file} holds.`)
    }
    const [{n}] = await sql.unsafe<{n: string}[]>(`select count(*)::bigint as n from ${qualified}`)
    if (Number(n) !== expected) {
      throw new UserError(`The restored database ${db} has ${plural(Number(n), 'row')} in ${schema}.${table}, but the backup ${manifest.file} holds ${expected}.`)
    }
  }
  if (!manifest.synthesized) {
    const version = await readLedgerVersion(sql)
    if (version !== manifest.ledger_version) {
      throw new UserError(`The restored database ${db} is at migration ${version ?? 'none'}, but the backup ${manifest.file} was taken at ${manifest.ledger_version ?? 'none'}.`)
    }
  }
  return {tables: Object.keys(manifest.row_counts).length}
}

// ---------------------------------------------------------------------------------------------------------

/** `<db>_pre_rollback_<YYYYMMDD_HHMMSS>`, the db part cut so the whole fits PostgreSQL's 63 bytes. */
export function keptDatabaseName(database: string, date = new Date()): string {
  const suffix = `_pre_rollback_${timestamp(date)}`
  let head = ''
  for (const ch of database) {
    if (Buffer.byteLength(head + ch + suffix) > 63) break
    head += ch
  }
  return head + suffix
}

export interface SwapOptions {
  /** Connected to a maintenance database (e.g. "postgres"), neither `live` nor `replacement`. */
  admin: Sql
  live: string
  replacement: string
  /** `<db>_pre_rollback_<YYYYMMDD_HHMMSS>`: the name the replaced live database keeps. */
  keptName: string
  /** lock_timeout for the renames (default 5000 ms). */
  lockTimeoutMs?: number
  /** How long to wait for the live database's sessions to end (default 15000 ms). */
  drainTimeoutMs?: number
  log?: (line: string) => void
}

const sleep = (ms: number) => new Promise((resolve) => {
  setTimeout(resolve, ms)
})

/**
 * Put `replacement` in place of `live`. The live database stops accepting connections, its sessions are
 * ended, then both renames commit in ONE transaction (ALTER DATABASE … RENAME is transactional), together
 * with re-allowing connections on both: there is no moment where the live name is missing or points to a
 * half-restored database. The window is the time between refusing connections on live and that commit.
 */
export async function swapDatabases(opts: SwapOptions): Promise<{keptName: string; windowMs: number}> {
  const {admin, keptName, live, log, replacement} = opts
  for (const [n, what] of [[live, 'live database'], [replacement, 'replacement database'], [keptName, 'kept database']] as const) {
    validateIdentifier(n, what)
  }
  if (new Set([live, replacement, keptName]).size !== 3) {
    throw new UserError(`Cannot swap: the live (${live}), replacement (${replacement}) and kept (${keptName}) names must all differ.`)
  }
  const untouched = `the live database ${live} is untouched`
  const [{db}] = await admin<{db: string}[]>`select current_database() as db`
  if (db === live || db === replacement) {
    throw new UserError(`Cannot swap databases over a connection to ${db}; ${untouched}.`, {hint: 'Connect to a maintenance database such as "postgres".'})
  }
  const present = await admin<{name: string; comment: string | null}[]>`
    select datname as name, shobj_description(oid, 'pg_database') as comment from pg_database
    where datname = any(${[live, replacement, keptName]})`
  const has = (n: string) => present.some((p) => p.name === n)
  if (!has(live)) throw new UserError(`Cannot swap: the live database ${live} does not exist.`)
  if (!has(replacement)) throw new UserError(`Cannot swap: the replacement database ${replacement} does not exist; ${untouched}.`)
  if (has(keptName)) throw new UserError(`Cannot swap: a database named ${keptName} already exists; ${untouched}.`)
  const liveComment = present.find((p) => p.name === live)!.comment
  const q = {kept: quoteIdent(keptName), live: quoteIdent(live), replacement: quoteIdent(replacement)}
  const lockTimeout = Math.max(100, Math.floor(opts.lockTimeoutMs ?? 5000))
  const drainTimeout = opts.drainTimeoutMs ?? 15_000

  // Not pg_terminate_backend(pid, timeout): it checks every 100 ms; polling every 10 ms keeps the window short.
  const terminate = (name: string) => admin`
    select pg_terminate_backend(pid) from pg_stat_activity where datname = ${name} and pid <> pg_backend_pid()`
  const sessions = async (name: string) => {
    const [{n}] = await admin<{n: number}[]>`select count(*)::int as n from pg_stat_activity where datname = ${name} and pid <> pg_backend_pid()`
    return n
  }
  const drain = async (name: string) => {
    const deadline = Date.now() + drainTimeout
    for (;;) {
      await terminate(name)
      const n = await sessions(name)
      if (n === 0) return
      if (Date.now() > deadline) throw new Error(`${plural(n, 'session')} on ${name} did not end within ${Math.round(drainTimeout / 1000)} s`)
      await sleep(10)
    }
  }

  let refusing = false
  let t0 = 0
  try {
    // Nobody but us should be on the replacement (a check's pool, a leftover session): end them first.
    await drain(replacement)
    throwIfCancelled('the swap')
    await admin.unsafe(`ALTER DATABASE ${q.live} WITH ALLOW_CONNECTIONS false`)
    refusing = true
    t0 = performance.now()
    log?.(`${live} refuses new connections; ending its sessions.`)
    for (let attempt = 1; ; attempt++) {
      await drain(live)
      await drain(replacement)
      try {
        await admin.begin(async (tx) => {
          await tx.unsafe(`SET LOCAL lock_timeout = ${lockTimeout}`)
          await tx.unsafe(`ALTER DATABASE ${q.live} RENAME TO ${q.kept}`)
          await tx.unsafe(`ALTER DATABASE ${q.replacement} RENAME TO ${q.live}`)
          await tx.unsafe(`ALTER DATABASE ${q.live} WITH ALLOW_CONNECTIONS true`)
          await tx.unsafe(`ALTER DATABASE ${q.kept} WITH ALLOW_CONNECTIONS true`)
          await tx.unsafe(`COMMENT ON DATABASE ${q.live} IS ${liveComment === null ? 'NULL' : quoteLiteral(liveComment)}`)
        })
        break
      } catch (error) {
        // 55006: a session got in between the drain and the rename (e.g. a superuser's reserved slot); again.
        if ((error as {code?: string}).code === '55006' && attempt < 3 && !isCancelled()) continue
        throw error
      }
    }
    const windowMs = Math.round(performance.now() - t0)
    refusing = false
    log?.(`Swapped: ${live} now holds the restored data; the replaced database is kept as ${keptName} (${windowMs} ms without connections).`)
    return {keptName, windowMs}
  } catch (error) {
    const cause = messageOf(error)
    // Where do the names point now? The transaction either committed or did not; look before saying so.
    let names: string[] | undefined
    try {
      names = (await admin<{name: string}[]>`select datname as name from pg_database where datname = any(${[live, replacement, keptName]})`).map((r) => r.name)
    } catch {
      names = undefined
    }
    if (names && names.includes(keptName) && names.includes(live) && !names.includes(replacement)) {
      // The commit went through although the client saw an error (e.g. the connection broke on COMMIT).
      throw new UserError(`The swap committed but reported an error (${cause}): ${live} now holds the restored data and ${keptName} holds the replaced one.`, {
        cause: error, hint: `Check that both accept connections: ALTER DATABASE ${q.live} WITH ALLOW_CONNECTIONS true.`,
      })
    }
    if (names && names.includes(live) && names.includes(replacement) && !names.includes(keptName)) {
      let reopen = ''
      if (refusing) {
        try {
          await admin.unsafe(`ALTER DATABASE ${q.live} WITH ALLOW_CONNECTIONS true`)
        } catch (reopenError) {
          reopen = ` but it still refuses connections (${messageOf(reopenError)}); run ALTER DATABASE ${q.live} WITH ALLOW_CONNECTIONS true`
        }
      }
      if (isCancelled()) throw new CancelledError(`the swap (${untouched}${reopen})`)
      throw new UserError(`Swapping ${replacement} in for ${live} failed before renaming (${cause}); ${untouched}${reopen}.`, {
        cause: error,
        hint: `The restored copy is still available as ${replacement}.`,
      })
    }
    throw new UserError(`Swapping ${replacement} in for ${live} failed half-way (${cause}): the databases are now ${names ? names.join(', ') : 'unknown'}; ${keptName} (if present) holds the data from before the rollback, ${replacement} (if present) the restored data.`, {
      cause: error,
      hint: `Rename them by hand with ALTER DATABASE … RENAME TO so that ${live} holds the data you want, and allow connections on it.`,
    })
  }
}
