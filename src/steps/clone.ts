import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import {createInterface} from 'node:readline'
import {setTimeout as sleep} from 'node:timers/promises'

import {isCancelled, onCancel, throwIfCancelled} from '../cancel.js'
import {CancelledError, firstLine, isConnectionLost, UserError} from '../errors.js'
import {quoteIdent, RUN_ID, type Sql} from '../target/connect.js'
import {fitIdentifier, validateIdentifier} from '../pg/identifiers.js'
import type {Target} from '../target/target.js'
import type {PgTools} from '../target/tools.js'
import {SENDS_TRANSACTION_TIMEOUT, TRANSACTION_TIMEOUT_ERROR} from '../target/versions.js'
import {type Manifest, nextSecond, readToc, redact, tableDataKey, timestamp, type Toc} from './backup.js'
import {plural} from '../text.js'

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
 * lock drops those of other runs (`sweepLeftovers` in leftovers.ts), never the ones marked ", kept".
 */

export interface RestoreProgress {
  /** Archive entries restored so far (of `total`). */
  done: number
  total: number
  item?: string
}

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
  jobs?: number
  /** Keep the clone after the run (and after a failure, for inspection): it is marked ", kept" and never swept. */
  keep?: boolean
  onProgress?: (progress: RestoreProgress) => void
  log?: (line: string) => void
}

export type NewDatabaseKind = 'dryrun' | 'restore'

export const COMMENT_PREFIX: Record<NewDatabaseKind, string> = {
  dryrun: 'nself-e2ee dryrun clone of ',
  restore: 'nself-e2ee restore of ',
}

/** `<db>_e2ee_<kind>_<YYYYMMDDHHMMSS>`, the db part cut so the whole fits PostgreSQL's 63 bytes. */
export function newDatabaseName(database: string, kind: NewDatabaseKind, date = new Date()): string {
  return fitIdentifier(database, `_e2ee_${kind}_${timestamp(date, '')}`)
}

export function quoteLiteral(value: string): string {
  const doubled = value.replaceAll("'", "''")
  return value.includes('\\') ? `E'${doubled.replaceAll('\\', '\\\\')}'` : `'${doubled}'`
}

// ---------------------------------------------------------------------------------------------------------
// The live database's properties, so a new database can be created like it

export interface DatabaseLike {
  name: string
  owner: string
  /** CREATE DATABASE options: encoding and locale, as the live database has them. */
  createOptions: string
  connLimit: number
  /** GRANT/REVOKE statements for the new database's ACL (none when the live one has the default ACL). */
  acl: {privilege: string; grantee: string | null; grantable: boolean}[] | null
  /** ALTER DATABASE … SET settings: role null for the whole database. Values are never logged. */
  settings: {role: string | null; name: string; value: string}[]
  comment: string | null
  serverVersionNum: number
  superuser: boolean
  currentUser: string
  /** The current user may create databases owned by `owner`. */
  canOwnAs: boolean
}

export async function describeDatabase(sql: Sql, database: string): Promise<DatabaseLike> {
  const rows = await sql<{d: Record<string, unknown>; owner: string; enc: string; comment: string | null}[]>`
    select to_jsonb(d) as d, pg_get_userbyid(d.datdba) as owner, pg_encoding_to_char(d.encoding) as enc,
           shobj_description(d.oid, 'pg_database') as comment
    from pg_database d where d.datname = ${database}`
  if (rows.length === 0) throw new UserError(`The database "${database}" does not exist.`)
  const {comment, d, enc, owner} = rows[0]
  const [me] = await sql<{user: string; superuser: boolean; num: number; can_own: boolean}[]>`
    select current_user as user, r.rolsuper as superuser, current_setting('server_version_num')::int as num,
           pg_has_role(current_user, ${owner}::name, 'MEMBER') as can_own
    from pg_roles r where r.rolname = current_user`

  const opts: string[] = [`ENCODING ${quoteLiteral(enc)}`, `LC_COLLATE ${quoteLiteral(String(d.datcollate))}`, `LC_CTYPE ${quoteLiteral(String(d.datctype))}`]
  const provider = d.datlocprovider as string | undefined
  if (provider === 'i') {
    opts.push('LOCALE_PROVIDER icu', `ICU_LOCALE ${quoteLiteral(String(d.daticulocale ?? d.datlocale))}`)
    if (d.daticurules) opts.push(`ICU_RULES ${quoteLiteral(String(d.daticurules))}`)
  } else if (provider === 'b') {
    opts.push('LOCALE_PROVIDER builtin', `BUILTIN_LOCALE ${quoteLiteral(String(d.datlocale))}`)
  } else if (provider === 'c') {
    opts.push('LOCALE_PROVIDER libc')
  }

  const acl = d.datacl === null || d.datacl === undefined ? null : await sql<{privilege: string; grantee: string | null; grantable: boolean}[]>`
    select a.privilege_type as privilege, case when a.grantee = 0 then null else pg_get_userbyid(a.grantee) end as grantee,
           a.is_grantable as grantable
    from pg_database d cross join lateral aclexplode(d.datacl) a where d.datname = ${database}`
  const settingRows = await sql<{role: string | null; config: string[]}[]>`
    select case when s.setrole = 0 then null else pg_get_userbyid(s.setrole) end as role, s.setconfig as config
    from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase where d.datname = ${database}`
  const settings = settingRows.flatMap((r) => r.config.map((c) => {
    const i = c.indexOf('=')
    return {name: c.slice(0, i), role: r.role, value: c.slice(i + 1)}
  }))

  return {
    acl: acl ? [...acl] : null,
    canOwnAs: me.superuser || me.can_own,
    comment,
    connLimit: Number(d.datconnlimit ?? -1),
    createOptions: opts.join(' '),
    currentUser: me.user,
    name: database,
    owner,
    serverVersionNum: me.num,
    settings,
    superuser: me.superuser,
  }
}

/** GUCs whose values are lists of (possibly double-quoted) elements, as pg_dump's variable_is_guc_list_quote. */
const LIST_GUCS = new Set(['local_preload_libraries', 'search_path', 'session_preload_libraries', 'shared_preload_libraries', 'temp_tablespaces', 'unix_socket_directories'])

function splitGucList(value: string): string[] {
  const out: string[] = []
  let i = 0
  while (i < value.length) {
    while (value[i] === ' ') i++
    let item = ''
    if (value[i] === '"') {
      i++
      while (i < value.length) {
        if (value[i] === '"') {
          if (value[i + 1] === '"') {
            item += '"'
            i += 2
            continue
          }
          i++
          break
        }
        item += value[i++]
      }
    }
    while (i < value.length && value[i] !== ',') item += value[i++]
    out.push(item.trim())
    i++
  }
  return out
}

function settingSql(name: string, value: string): string {
  if (!/^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)*$/.test(name)) {
    throw new UserError(`The database setting name "${name}" cannot be copied.`)
  }
  const nameSql = name.split('.').map((p) => (/^[a-z_][a-z0-9_$]*$/.test(p) ? p : quoteIdent(p))).join('.')
  const valueSql = LIST_GUCS.has(name.toLowerCase()) ? splitGucList(value).map((v) => quoteLiteral(v)).join(', ') : quoteLiteral(value)
  return `${nameSql} TO ${valueSql}`
}

/**
 * CREATE DATABASE `name` like `live`: same owner (when the current user may assign it), encoding and locale,
 * from template0; then the comment, the database-level settings (ALTER DATABASE/ROLE … SET, e.g. search_path),
 * the database ACL and optionally the connection limit, none of which a dump restored without --create carries.
 */
export async function createDatabaseLike(admin: Sql, name: string, live: DatabaseLike, comment: string, options: {connLimit?: boolean; log?: (line: string) => void} = {}): Promise<void> {
  const owner = live.canOwnAs ? ` OWNER ${quoteIdent(live.owner)}` : ''
  if (!live.canOwnAs) options.log?.(`${live.currentUser} cannot create databases owned by ${live.owner}; ${name} is owned by ${live.currentUser}.`)
  await admin.unsafe(`CREATE DATABASE ${quoteIdent(name)}${owner} TEMPLATE template0 ${live.createOptions}`)
  const q = quoteIdent(name)
  await admin.unsafe(`COMMENT ON DATABASE ${q} IS ${quoteLiteral(comment)}`)
  for (const s of live.settings) {
    const target = s.role === null ? `DATABASE ${q}` : `ROLE ${quoteIdent(s.role)} IN DATABASE ${q}`
    await admin.unsafe(`ALTER ${target} SET ${settingSql(s.name, s.value)}`)
  }
  if (live.acl) {
    await admin.unsafe(`REVOKE ALL ON DATABASE ${q} FROM PUBLIC`)
    for (const a of live.acl) {
      const grantee = a.grantee === null ? 'PUBLIC' : quoteIdent(a.grantee)
      await admin.unsafe(`GRANT ${a.privilege} ON DATABASE ${q} TO ${grantee}${a.grantable ? ' WITH GRANT OPTION' : ''}`)
    }
  }
  if (options.connLimit && live.connLimit !== -1) {
    await admin.unsafe(`ALTER DATABASE ${q} WITH CONNECTION LIMIT ${Number(live.connLimit)}`)
  }
}

/** End every session on `name` and drop it (WITH (FORCE) from PostgreSQL 13). */
export async function dropDatabase(admin: Sql, name: string): Promise<void> {
  validateIdentifier(name, 'database')
  for (let attempt = 1; ; attempt++) {
    try {
      const [{num}] = await admin<{num: number}[]>`select current_setting('server_version_num')::int as num`
      await admin`select pg_terminate_backend(pid) from pg_stat_activity where datname = ${name} and pid <> pg_backend_pid()`
      await admin.unsafe(`DROP DATABASE IF EXISTS ${quoteIdent(name)}${num >= 130_000 ? ' WITH (FORCE)' : ''}`)
      return
    } catch (error) {
      // The server ended admin's sessions too (the pool learns it only when it next writes): a new connection.
      if (attempt >= 3 || !isConnectionLost(error)) throw error
      await sleep(50 * attempt)
    }
  }
}

/** A name of this kind that no database has yet (waits for the next second when taken). */
export async function freeDatabaseName(admin: Sql, database: string, kind: NewDatabaseKind): Promise<string> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const name = newDatabaseName(database, kind)
    const rows = await admin`select 1 from pg_database where datname = ${name}`
    if (rows.length === 0) return name
    await nextSecond()
  }
  throw new UserError(`Cannot find a free name for a new ${kind} database of "${database}".`)
}

// ---------------------------------------------------------------------------------------------------------
// pg_restore

export interface RestoreArchiveOptions {
  tools: PgTools
  target: Target
  database: string
  file: string
  /** A filtered `pg_restore --list` to restore only those entries. */
  listText?: string
  jobs?: number
  /** Extra pg_restore options (e.g. --no-owner, --no-subscriptions). */
  extraArgs?: string[]
  /** Number of entries the restore will process, for progress. */
  total: number
  onProgress?: (progress: RestoreProgress) => void
}

export function defaultJobs(): number {
  return Math.max(1, Math.min(4, os.availableParallelism()))
}

/**
 * pg_restore -j into `database`, stopping at the first error. In docker mode the dump and the list are copied
 * into the container first (a parallel restore needs a seekable file, not stdin). Throws an Error whose message
 * is pg_restore's own error line (the caller names the database and the file).
 */
export async function restoreArchive(opts: RestoreArchiveOptions): Promise<void> {
  const {tools} = opts
  const cleanups: Array<() => Promise<void>> = []
  let tmpDir: string | undefined
  try {
    const dump = await tools.provide(opts.file)
    cleanups.push(dump.cleanup)
    // pg_restore 17+ sends `SET transaction_timeout = 0` on each connection, which servers 16 and older reject
    // (src/target/versions.ts): it runs without --exit-on-error, accepts exactly that error, and is stopped
    // here at the first other one, as --exit-on-error would.
    const tolerant = (await tools.toolMajor('pg_restore')) >= SENDS_TRANSACTION_TIMEOUT
    const args = [...(tolerant ? [] : ['--exit-on-error']), '--verbose', `--jobs=${Math.max(1, Math.floor(opts.jobs ?? defaultJobs()))}`, '--no-password', ...(opts.extraArgs ?? [])]
    if (opts.listText !== undefined) {
      tmpDir = await fs.mkdtemp(path.join(os.tmpdir(), 'nself-e2ee-'))
      const listPath = path.join(tmpDir, 'restore.list')
      await fs.writeFile(listPath, opts.listText, {mode: 0o600})
      const list = await tools.provide(listPath)
      cleanups.push(list.cleanup)
      args.push(`--use-list=${list.path}`)
    }
    args.push(dump.path)
    throwIfCancelled()

    const child = tools.run('pg_restore', args, opts.database, {buffer: false, stdin: 'ignore', stdout: 'ignore'})
    child.catch(() => {})
    const errors: string[] = []
    let done = 0
    let parallel = false
    let accepted = false
    let stopped = false
    const lines = createInterface({crlfDelay: Infinity, input: child.stderr!})
    lines.on('line', (raw) => {
      const line = raw.replace(/^pg_restore: /, '')
      if (tolerant) {
        if (/error:/.test(line) && TRANSACTION_TIMEOUT_ERROR.test(line)) {
          accepted = true
          return
        }
        if ((accepted && /^Command was: SET transaction_timeout = 0;?$/.test(line)) || /^warning: errors ignored on restore: \d+$/.test(line)) return
        if (/error:/.test(line) && !stopped) {
          stopped = true
          child.kill('SIGTERM')
        }
      }
      if (/^(error|warning|FATAL|ERROR|DETAIL|HINT|Command was)/i.test(line) || /error:/.test(line)) {
        if (errors.length < 20) errors.push(line)
        return
      }
      if (line.startsWith('entering main parallel loop')) parallel = true
      else if (line.startsWith('finished main parallel loop')) parallel = false
      const counts = parallel ? line.startsWith('finished item') : /^(creating|processing data for|executing|restoring)/.test(line)
      if (counts) {
        done = Math.min(done + 1, opts.total)
        opts.onProgress?.({done, item: line, total: opts.total})
      }
    })
    try {
      await child.catch((error) => {
        // Exit status 1 with no error but the accepted one: pg_restore counted those, all else was restored.
        if (tolerant && !stopped && (error as {exitCode?: number}).exitCode === 1 && !errors.some((l) => /error:/i.test(l))) return
        throw error
      })
    } catch (error) {
      if (isCancelled()) throw new CancelledError()
      const first = errors.find((l) => /error:/i.test(l)) ?? errors[0] ?? (error as {shortMessage?: string}).shortMessage ?? String(error)
      const cmd = errors.find((l) => l.startsWith('Command was'))
      const detail = first.replace(/^error: /, '').replace(/^(could not execute query: )?ERROR:\s+/, '').replace(/\.$/, '')
      // A failing command may carry connection options (CREATE SUBSCRIPTION / USER MAPPING): never echo passwords.
      const shown = cmd?.replace(/\s+/g, ' ').replace(/(password\s*(=|\s)\s*)('[^']*'|\S+)/gi, '$1***').slice(0, 200).replace(/\.$/, '')
      throw new Error(shown ? `${detail} (${shown})` : detail)
    } finally {
      lines.close()
    }
    opts.onProgress?.({done: opts.total, total: opts.total})
  } finally {
    for (const c of cleanups.reverse()) await c().catch(() => {})
    if (tmpDir) await fs.rm(tmpDir, {force: true, recursive: true}).catch(() => {})
  }
}

// ---------------------------------------------------------------------------------------------------------
// createClone

interface KeptTable {
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
  const started = Date.now()
  throwIfCancelled('the dry run')
  const file = backup.file
  const secret = target.conn.password

  const [{db}] = await admin<{db: string}[]>`select current_database() as db`
  validateIdentifier(db, 'database')
  const defaultSchema = backup.manifest.schema || target.schema || 'public'

  let toc: Toc
  try {
    toc = await readToc(tools, file)
  } catch (error) {
    if (isCancelled()) throw new CancelledError('the dry run')
    throw new UserError(`The backup ${file} cannot be read by pg_restore: ${redact(firstLine(error), secret)}.`)
  }

  const tocTables = new Set(toc.entries.filter((e) => e.desc === 'TABLE').map((e) => tableDataKey(e.schema, e.name)))
  const requested = opts.allData ? [] : opts.dataTables.map((t) => parseTableRef(t, defaultSchema))
  for (const t of requested) {
    if (!tocTables.has(tableDataKey(t.schema, t.name))) {
      throw new UserError(`The table ${t.schema}.${t.name} is not in the backup ${file}.`, {
        hint: 'The dry run restores the data of the tables the migration touches; take a new backup of the current database.',
      })
    }
  }
  const kept = await tablesWithDependencies(admin, requested)
  const added = kept.slice(requested.length)
  if (added.length > 0) {
    log?.(`Also restoring the data of ${added.map((t) => `${t.schema}.${t.name}`).join(', ')} (referenced by foreign keys or partitions of the migrated tables).`)
  }
  const keptKeys = new Set(kept.map((t) => tableDataKey(t.schema, t.name)))

  const leftOut: Clone['leftOut'] = []
  const listLines: string[] = []
  const byLine = new Map(toc.entries.map((e) => [e.line, e]))
  let total = 0
  for (const line of toc.text.split('\n')) {
    const entry = byLine.get(line)
    if (entry && entry.desc === 'TABLE DATA' && !opts.allData && !keptKeys.has(tableDataKey(entry.schema, entry.name))) {
      const inSchema = entry.schema === backup.manifest.schema
      const table = inSchema ? entry.name : `${entry.schema ?? ''}.${entry.name}`
      const rows = inSchema ? backup.manifest.row_counts[entry.name] : undefined
      leftOut.push({rows: rows ?? null, table})
      listLines.push(';' + line)
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
  let unregister = onCancel(async () => {
    if (!opts.keep) await dropOnce()
  })

  try {
    await createDatabaseLike(admin, name, live, comment, {log})
    throwIfCancelled('the dry run')
    log?.(`Restoring ${file} into ${name} (${opts.allData ? 'every table with its data' : `${plural(requested.length + added.length, 'table')} with data, ${leftOut.length} without`}).`)
    const extraArgs = ['--no-subscriptions']
    if (!live.superuser) {
      extraArgs.push('--no-owner')
      log?.(`${live.currentUser} is not a superuser: the clone's objects are owned by ${live.currentUser} (--no-owner), so ownership problems will not show in the dry run.`)
    }
    const restoreStarted = Date.now()
    await restoreArchive({
      database: name, extraArgs, file, jobs: opts.jobs, listText: listLines.join('\n'), onProgress: opts.onProgress, target, tools, total,
    })
    const restoreMs = Date.now() - restoreStarted
    throwIfCancelled('the dry run')
    log?.(`Clone ${name} restored in ${(restoreMs / 1000).toFixed(1)} s (${((Date.now() - started) / 1000).toFixed(1)} s in all).`)
    if (opts.keep) {
      unregister()
      unregister = () => true
    }
    return {
      async drop() {
        unregister()
        await dropOnce()
        log?.(`Dropped the dry-run clone ${name}.`)
      },
      leftOut,
      name,
      restoreMs,
    }
  } catch (error) {
    unregister()
    let dropNote = ''
    if (opts.keep) {
      dropNote = ` The clone ${name} was kept for inspection.`
    } else {
      try {
        await dropOnce()
      } catch (dropError) {
        dropNote = ` The clone ${name} could not be dropped (${firstLine(dropError)}); drop it with DROP DATABASE.`
      }
    }
    if (isCancelled() || error instanceof CancelledError) throw new CancelledError(`the dry run (clone ${name})`)
    if (error instanceof UserError) {
      throw new UserError(error.message + dropNote, {cause: error, hint: error.hint})
    }
    const cause = redact(firstLine(error), secret)
    // A full disk on the server is no fault of the backup: say where space is missing.
    const diskFull = /No space left on device|could not extend file|disk full|53100/i.test(cause)
    throw new UserError(`Restoring the dry-run clone ${name} from ${file} failed${diskFull ? ' because the database server\'s disk is full' : ''}: ${cause}.${dropNote}`, {
      cause: error,
      hint: diskFull
        ? 'The live database was not touched. Free space on the database server (the dry run needs room for a copy of the tables the migration touches), or run with --skip-dryrun.'
        : 'The live database was not touched. Check the backup with `nself db e2ee verify`, or re-run with a fresh backup.',
    })
  }
}

