import {CancelledError, firstLine, UserError} from '../errors.js'
import {RUN_ID, type Sql} from '../connection/connect.js'
import type {Target} from '../connection/target.js'
import type {PgTools} from '../connection/tools.js'
import {COMMENT_PREFIX, createDatabaseLike, describeDatabase, dropDatabase, freeDatabaseName} from '../pg/databases.js'
import {validateIdentifier} from '../pg/identifiers.js'
import {plural, redact} from '../text.js'
import type {Manifest} from '../archive/manifest.js'
import {type RestoreProgress, restoreArchive} from '../archive/restore.js'
import {readBackupToc, tableDataKey} from '../archive/toc.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.clone.clone')

/**
 * The dry-run clone (docs/deviations.md, D9): a new database restored from the backup just taken, with `pg_restore -j`
 * from the custom-format dump. Only the data of the tables the migration touches (and of the tables they
 * reference, or their foreign keys would not validate) is restored; every other object - schema, indexes,
 * constraints, sequences, comments, grants - is restored whole, so the migration meets the same catalog as in
 * production. `CREATE DATABASE … TEMPLATE <live>` is no option: it needs the live database without connections.
 *
 * Owners: when the restoring user is a superuser (nself's POSTGRES_USER is) owners and grants are restored as
 * dumped, so the migration on the clone hits the same permission problems it would hit in production. A
 * non-superuser cannot assign objects to other roles: the clone is then restored with --no-owner (everything
 * owned by that user) and the log says so.
 *
 * Leftovers are recognisable: the clone's name is `<db>_e2ee_dryrun_<YYYYMMDDHHMMSS>` and its comment starts
 * with `nself-e2ee dryrun clone of <db>,` and names the run; the next command that holds the database's command
 * lock drops those of other runs (`sweepLeftovers` in steps/leftovers.ts), never the ones marked ", kept".
 */

export interface Clone {
  name: string
  /** Tables whose data was not restored, with their row count in the backup when the manifest has it. */
  leftOut: {table: string; rows: number | null}[]
  restoreMs: number
  /** Drop the clone (ending every session on it). Until then Ctrl+C drops it too, unless it was kept. */
  drop(): Promise<void>
}

export interface CreateCloneOptions {
  target: Target
  tools: PgTools
  /** Connected to the live (target) database. */
  admin: Sql
  backup: {file: string; manifest: Manifest}
  /** Tables whose data is restored: the ones the migration touches ("table" in the backup's schema, or "schema.table"). */
  dataTables: string[]
  /** Restore the data of every table (`dryrun --full`, the guide's full restore); `dataTables` is then ignored. */
  allData?: boolean
  /**
   * Tables whose rows the archive itself left out (a rehearsal dump's `--exclude-table-data`, "schema.table"):
   * reported in `leftOut` like the rows the restore leaves out.
   */
  leftOutOfArchive?: string[]
  jobs?: number
  /** Keep the clone after the run (and after a failure, for inspection): it is marked ", kept" and never swept. */
  keep?: boolean
  onProgress?: (progress: RestoreProgress) => void
  log?: (line: string) => void
}

export interface KeptTable {
  schema: string
  name: string
}

function parseTableRef(ref: string, defaultSchema: string): KeptTable {
  const dot = ref.indexOf('.')
  const [schema, name] = dot === -1 ? [defaultSchema, ref] : [ref.slice(0, dot), ref.slice(dot + 1)]
  validateIdentifier(schema, 'schema')
  validateIdentifier(name, 'table')
  return {name, schema}
}

/**
 * The copy's rows, decided from production's catalog before anything is dumped (the rehearsal dump): the tables whose
 * rows are kept (`dataTables` and what their data needs) and every other table with rows of its own, whose data the
 * dump leaves out.
 */
export async function copyRows(admin: Sql, dataTables: string[], defaultSchema: string): Promise<{keep: KeptTable[]; exclude: KeptTable[]}> {
  // `keep`: the plain tables among them, the ones with rows (TABLE DATA) of their own.
  const keep = await tablesWithDependencies(
    admin,
    dataTables.map((t) => parseTableRef(t, defaultSchema)),
  )
  const keys = new Set(keep.map((t) => `${t.schema}.${t.name}`))
  // Plain tables hold the rows (a partitioned parent's are in its partitions); the system's own are never dumped.
  const all = await admin<KeptTable[]>`
    select n.nspname as schema, c.relname as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
    order by 1, 2`
  return {exclude: all.filter((t) => !keys.has(`${t.schema}.${t.name}`)), keep: all.filter((t) => keys.has(`${t.schema}.${t.name}`))}
}

/** The requested tables plus what their data needs: referenced tables (foreign keys) and partitions, recursively. */
async function tablesWithDependencies(admin: Sql, requested: KeptTable[]): Promise<KeptTable[]> {
  if (requested.length === 0) return []
  const keys = requested.map((t) => `${t.schema}.${t.name}`)
  const rows = await admin<KeptTable[]>`
    with recursive kept(oid) as (
      select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname || '.' || c.relname = any(${keys})
      union
      select x.oid from kept k cross join lateral (
        select confrelid as oid from pg_constraint where contype = 'f' and conrelid = k.oid
        union all
        select inhrelid from pg_inherits where inhparent = k.oid
      ) x
    )
    select n.nspname as schema, c.relname as name from kept k join pg_class c on c.oid = k.oid
    join pg_namespace n on n.oid = c.relnamespace`
  const out = [...requested]
  for (const r of rows) if (!out.some((t) => t.schema === r.schema && t.name === r.name)) out.push({name: r.name, schema: r.schema})
  return out
}

export async function createClone(opts: CreateCloneOptions): Promise<Clone> {
  const {admin, backup, log, target, tools} = opts
  // The run's scope travels with its tools: Ctrl+C kills the restore and drops the clone.
  const scope = tools.scope
  const started = Date.now()
  scope.throwIfCancelled('the dry run')
  const file = backup.file
  const secret = target.conn.password

  const [{db}] = await admin<{db: string}[]>`select current_database() as db`
  validateIdentifier(db, 'database')
  const defaultSchema = backup.manifest.schema || target.schema || 'public'

  const toc = await readBackupToc(tools, file, 'the dry run', secret)

  const tocTables = new Set(toc.entries.filter((e) => e.desc === 'TABLE').map((e) => tableDataKey(e.schema, e.name)))
  const requested = opts.allData ? [] : opts.dataTables.map((t) => parseTableRef(t, defaultSchema))
  for (const t of requested) {
    if (!tocTables.has(tableDataKey(t.schema, t.name))) {
      throw new UserError(messages.getMessage('error.table-missing', [t.schema, t.name, file]), {
        hint: messages.getMessage('hint.table-missing'),
      })
    }
  }
  const kept = await tablesWithDependencies(admin, requested)
  const added = kept.slice(requested.length)
  if (added.length > 0) {
    log?.(messages.getMessage('log.also-restoring', [added.map((t) => `${t.schema}.${t.name}`).join(', ')]))
  }
  const keptKeys = new Set(kept.map((t) => tableDataKey(t.schema, t.name)))

  const leftOut: Clone['leftOut'] = []
  const rowsOf = (schema: string | null, table: string) => {
    const inSchema = schema === backup.manifest.schema
    return {rows: (inSchema ? backup.manifest.row_counts[table] : undefined) ?? null, table: inSchema ? table : `${schema ?? ''}.${table}`}
  }
  const outOfArchive = new Set(opts.leftOutOfArchive ?? [])
  for (const e of toc.entries) {
    if (e.desc === 'TABLE' && outOfArchive.has(tableDataKey(e.schema, e.name))) leftOut.push(rowsOf(e.schema, e.name))
  }
  const listLines: string[] = []
  const byLine = new Map(toc.entries.map((e) => [e.line, e]))
  let total = 0
  for (const line of toc.text.split('\n')) {
    const entry = byLine.get(line)
    if (entry && entry.desc === 'TABLE DATA' && !opts.allData && !keptKeys.has(tableDataKey(entry.schema, entry.name))) {
      if (!outOfArchive.has(tableDataKey(entry.schema, entry.name))) leftOut.push(rowsOf(entry.schema, entry.name))
      listLines.push(`;${line}`)
      continue
    }
    if (entry) total++
    listLines.push(line)
  }

  const live = await describeDatabase(admin, db)
  const name = await freeDatabaseName(admin, db, 'dryrun')
  const comment = `${COMMENT_PREFIX.dryrun}${db}, created ${new Date().toISOString()}, pid ${process.pid}, run ${RUN_ID}${opts.keep ? ', kept' : ''}`

  let dropping: Promise<void> | undefined
  const dropOnce = () => {
    // Shared while in flight only: a drop that ran before CREATE DATABASE committed (Ctrl+C at that moment)
    // must be able to run again.
    dropping ??= dropDatabase(admin, name).finally(() => {
      dropping = undefined
    })
    return dropping
  }
  let unregister = scope.onCancel(async () => {
    if (!opts.keep) await dropOnce()
  })

  try {
    await createDatabaseLike(admin, name, live, comment, {log})
    scope.throwIfCancelled('the dry run')
    log?.(
      opts.allData
        ? messages.getMessage('log.restoring-all', [file, name])
        : messages.getMessage('log.restoring-some', [file, name, plural(requested.length + added.length, 'table'), leftOut.length]),
    )
    const extraArgs = ['--no-subscriptions']
    if (!live.superuser) {
      extraArgs.push('--no-owner')
      log?.(messages.getMessage('log.not-superuser', [live.currentUser, live.currentUser]))
    }
    const restoreStarted = Date.now()
    await restoreArchive({
      database: name,
      extraArgs,
      file,
      jobs: opts.jobs,
      listText: listLines.join('\n'),
      onProgress: opts.onProgress,
      target,
      tools,
      total,
    })
    const restoreMs = Date.now() - restoreStarted
    scope.throwIfCancelled('the dry run')
    log?.(messages.getMessage('log.restored', [name, (restoreMs / 1000).toFixed(1), ((Date.now() - started) / 1000).toFixed(1)]))
    if (opts.keep) {
      unregister()
      unregister = () => true
    }
    return {
      async drop() {
        unregister()
        await dropOnce()
        log?.(messages.getMessage('log.dropped', [name]))
      },
      leftOut,
      name,
      restoreMs,
    }
  } catch (error) {
    unregister()
    let dropNote = ''
    if (opts.keep) {
      dropNote = ` ${messages.getMessage('note.kept', [name])}`
    } else {
      try {
        await dropOnce()
      } catch (dropError) {
        dropNote = ` ${messages.getMessage('note.not-dropped', [name, firstLine(dropError)])}`
      }
    }
    if (scope.cancelled || error instanceof CancelledError) throw new CancelledError(`the dry run (clone ${name})`)
    if (error instanceof UserError) {
      throw new UserError(error.message + dropNote, {cause: error, hint: error.hint})
    }
    const cause = redact(firstLine(error), secret)
    // A full disk on the server is no fault of the backup: say where space is missing.
    const diskFull = /No space left on device|could not extend file|disk full|53100/i.test(cause)
    const sentence = diskFull
      ? messages.getMessage('error.restore-failed.disk-full', [name, file, cause])
      : messages.getMessage('error.restore-failed', [name, file, cause])
    throw new UserError(sentence + dropNote, {
      cause: error,
      hint: diskFull ? messages.getMessage('hint.restore-failed.disk-full') : messages.getMessage('hint.restore-failed'),
    })
  }
}
