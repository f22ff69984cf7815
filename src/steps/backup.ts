import {createHash} from 'node:crypto'
import type {Stats} from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'

import {
  ensureSidecarDir,
  findManifestFor,
  manifestPathFor,
  rehearsalPathFor,
  type BackupInfo,
  type BackupPurpose,
  type Manifest,
  MANIFEST_FORMAT,
  readManifest,
  sha256File,
  synthesizeManifest,
  writeManifest,
} from '../archive/manifest.js'
import {ensureBackupDir, exists, fsErrorSentence, fsyncDir, publish, removeQuietly, reserveFileName} from '../archive/store.js'
import {missingTableData, readToc, tableDataKey, type Toc, tocHeader} from '../archive/toc.js'
import {CancelledError, firstLine, UserError, toUserError} from '../errors.js'
import {readLedgerVersion} from '../migrations/ledger.js'
import {APP_NAME, withSession, type Sql} from '../connection/connect.js'
import {quoteIdent} from '../pg/identifiers.js'
import {terminateSessions} from '../pg/databases.js'
import {testPause} from '../test-pause.js'
import type {RunScope} from '../run/scope.js'
import type {Target} from '../connection/target.js'
import type {PgTools} from '../connection/tools.js'
import {judgeTools, olderRestoreSentence} from '../connection/versions.js'
import {copyRows} from '../clone/clone.js'
import {fmtBytes, plural, redact} from '../text.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.steps.backup')

/**
 * Backups in nself's own layout (README, "Shared with nself's ledger and backups"): `pg_dump -Fc` through
 * `docker exec -i` (or locally), written to `<backupDir>/<PROJECT>_<YYYYMMDD_HHMMSS>.dump` with mode 0600 in a
 * 0700 folder, so `nself db restore` reads ours and we read theirs. For each dump a manifest
 * (`.nself-e2ee/<file>.manifest.json`, src/archive/manifest.ts) records what the dump holds: checksum, size, server version,
 * ledger version and the exact row counts of the app's tables, counted in the very snapshot pg_dump dumps
 * (exported with pg_export_snapshot, passed with --snapshot), so a restore can be checked against it to the row
 * even while the app keeps writing during the backup.
 */

export interface TakeBackupOptions {
  target: Target
  tools: PgTools
  /** Connected to the target database (the one dumped). */
  sql: Sql
  /** The app's schema: where `tables` live. */
  schema: string
  ledgerVersion: number | null
  /** Tables (in `schema`) whose rows are counted into the manifest and whose data the dump must hold. */
  tables: string[]
  dir?: string
  purpose?: BackupPurpose | string
  onProgress?: (bytes: number) => void
  log?: (line: string) => void
}

// ---------------------------------------------------------------------------------------------------------
// takeBackup

/**
 * pg_dump 16+ can compress with zstd: level 1 writes archives about a third smaller than gzip level 1 in about
 * the same time, while lz4 writes them half again as large (docs/benchmarks-compression.md, servers 14 to 18).
 * A pg_dump built without zstd falls back to gzip level 1, the only method before 16.
 */
function compressionFor(major: number): {args: string[]; label: string; fallback?: {args: string[]; label: string}} {
  if (major >= 16) {
    return {args: ['--compress=zstd:1'], fallback: {args: ['--compress=gzip:1'], label: '--compress=gzip:1'}, label: '--compress=zstd:1'}
  }
  return {args: ['-Z', '1'], label: '-Z 1'}
}

interface DumpResult {
  bytes: number
  sha256: string
}

interface InSnapshot {
  result: DumpResult
  rowCounts: Record<string, number>
  ledger: number | null
  snapshotAt: string
}

/**
 * What every dump starts with: the run's scope (it travels with the tools: Ctrl+C stops pg_dump and removes what it
 * wrote), the server and tools checked, the backup folder ready.
 */
async function beginDump(
  opts: Pick<TakeBackupOptions, 'dir' | 'log' | 'sql' | 'target' | 'tools'>,
  what: DumpKind,
): Promise<{dir: string; scope: RunScope; setting: DumpSetting; started: number}> {
  const scope = opts.tools.scope
  const started = Date.now()
  const dir = path.resolve(opts.dir ?? opts.target.backupDir)
  scope.throwIfCancelled(what === 'backup' ? messages.getMessage('step.Backup') : messages.getMessage('step.Rehearsal'))
  const setting = await prepareDump(opts, dir, what)
  await ensureBackupDir(dir, opts.log)
  return {dir, scope, setting, started}
}

/** Checked before anything is written: the connection is to the database dumped, and the client tools fit the server. */
async function prepareDump(opts: Pick<TakeBackupOptions, 'sql' | 'target' | 'tools'>, dir: string, what: DumpKind): Promise<DumpSetting> {
  const {sql, target, tools} = opts
  const database = target.conn.database
  const [{db}] = await sql<{db: string}[]>`select current_database() as db`
  if (db !== database) {
    throw new UserError(
      what === 'backup'
        ? messages.getMessage('error.WrongConnection.Backup', [database, db])
        : messages.getMessage('error.WrongConnection.Rehearsal', [database, db]),
    )
  }
  const [server] = await sql<{version: string; num: number; size: string}[]>`
    select current_setting('server_version') as version, current_setting('server_version_num')::int as num,
           pg_database_size(current_database())::text as size`
  const pgDumpMajor = await tools.toolMajor('pg_dump')
  // Before anything is written: pg_dump must dump this server and pg_restore must read back what it writes.
  const toolCheck = judgeTools(
    Math.floor(server.num / 10_000),
    {pg_dump: pgDumpMajor, pg_restore: await tools.toolMajor('pg_restore')},
    tools.container ? messages.getMessage('info.ToolsInContainer', [tools.container]) : messages.getMessage('info.ToolsLocal'),
    {dumps: true, local: !tools.container},
  )
  if (toolCheck.status === 'fail') {
    throw new UserError(
      what === 'backup'
        ? messages.getMessage('error.NotTaken.Backup', [toolCheck.detail])
        : messages.getMessage('error.NotTaken.Rehearsal', [toolCheck.detail]),
      {hint: toolCheck.fix},
    )
  }
  return {dir, pgDumpMajor, server: {num: server.num, size: Number(server.size), version: server.version}}
}

/** Which dump: the names the sentences about it use follow from it. */
type DumpKind = 'backup' | 'rehearsal dump'

interface DumpSetting {
  dir: string
  pgDumpMajor: number
  server: {version: string; num: number; size: number}
}

/** Plain and partitioned tables of `tables` that exist in `schema`; only plain ones have TABLE DATA of their own. */
async function existingTablesIn(sql: Sql, schema: string, tables: string[]): Promise<{existing: string[]; plain: string[]}> {
  const relations =
    tables.length === 0
      ? []
      : await sql<{name: string; kind: string}[]>`
    select c.relname as name, c.relkind as kind from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = ${schema} and c.relname = any(${tables}) and c.relkind in ('r', 'p')`
  const existing = tables.filter((t) => relations.some((r) => r.name === t))
  // Partitioned parents hold no data of their own: their partitions have the TABLE DATA entries.
  return {existing, plain: existing.filter((t) => relations.some((r) => r.name === t && r.kind === 'r'))}
}

export async function takeBackup(opts: TakeBackupOptions): Promise<BackupInfo> {
  const {log, sql, target} = opts
  const database = target.conn.database
  const purpose = opts.purpose ?? 'pre-migration'
  const {dir, scope, setting, started} = await beginDump(opts, 'backup')
  const project = (target.projectName || database).replaceAll(/[^A-Za-z0-9_.-]/g, '_')
  const {existing, plain} = await existingTablesIn(sql, opts.schema, opts.tables)

  await ensureSidecarDir(dir)
  const {final, partial} = await reserveFileName(dir, project)
  const manifestFile = manifestPathFor(final)

  try {
    const dump = await dumpChecked(opts, setting, {
      count: existing,
      extraArgs: [],
      file: partial,
      name: messages.getMessage('step.BackupTo', [final]),
      requireData: [{schema: opts.schema, tables: plain}],
      shown: final,
      what: 'backup',
    })
    scope.throwIfCancelled(messages.getMessage('step.BackupTo', [final]))
    await testPause('backup:partial-written', scope.signal)

    const manifest = manifestOf(dump, setting, {database, file: final, project: target.projectName, purpose, schema: opts.schema, started})
    try {
      await publish(partial, final)
    } catch (error) {
      if (error instanceof UserError) throw error
      throw fsErrorSentence(error, messages.getMessage('subject.WritingBackup'), final)
    }
    try {
      await writeManifest(manifestFile, manifest)
      await fsyncDir(dir)
    } catch (error) {
      await removeQuietly(final)
      await removeQuietly(manifestFile)
      throw fsErrorSentence(error, messages.getMessage('subject.WritingBackup'), final)
    }
    log?.(messages.getMessage('info.BackupWritten', [final, fmtBytes(dump.result.bytes), dump.toc.entries.length, dump.result.sha256.slice(0, 12)]))
    return {bytes: dump.result.bytes, durationMs: Date.now() - started, file: final, manifest, manifestFile}
  } catch (error) {
    await removeQuietly(partial)
    await removeQuietly(manifestFile)
    if (scope.cancelled || error instanceof CancelledError) throw new CancelledError(messages.getMessage('step.BackupTo', [final]))
    if (error instanceof UserError) throw error
    const e = toUserError(error, messages.getMessage('error.Failed.Backup', [final]))
    throw new UserError(redact(e.message, target.conn.password), {cause: error, hint: e.hint})
  }
}

// ---------------------------------------------------------------------------------------------------------
// takeRehearsalDump

export interface RehearsalDumpOptions extends Omit<TakeBackupOptions, 'dir' | 'purpose'> {
  /** Where the backups go: the dump is written into its sidecar folder, never into it. */
  dir?: string
  /**
   * The tables whose rows the copy restores ("schema.table", as decided from production's catalog): their rows and
   * those of the tables they need (foreign keys, partitions) are dumped, every other table's are left out
   * (`--exclude-table-data`).
   */
  dataTables: string[]
}

export interface RehearsalDump {
  file: string
  bytes: number
  /** What the copy is checked against: the row counts of the kept tables of the app's schema, in the dump's snapshot. */
  manifest: Manifest
  /** Tables whose data the dump holds ("schema.table"). */
  tablesWithData: string[]
  /** Tables whose data it left out ("schema.table"). */
  leftOut: string[]
  durationMs: number
  /** Delete the file (idempotent); true when it is gone. Until then Ctrl+C and SIGTERM delete it too. */
  remove(): Promise<boolean>
}

/**
 * The standalone dry run's dump (README, "What the dry run restores"): the whole schema and the rows of the tables
 * the copy restores, nothing else, taken like a backup (same pg_dump, same snapshot, read back) but NOT a backup:
 * it is written into the sidecar folder (nself's `backup list`/`restore latest` skip folders), as
 * `rehearsal_<db>.<run>.dump` (mode 0600; the run id lets the next command remove one a kill -9 left,
 * steps/leftovers.ts), and deleted when the dry run ends, however it ends.
 */
export async function takeRehearsalDump(opts: RehearsalDumpOptions): Promise<RehearsalDump> {
  const {log, sql, target} = opts
  const database = target.conn.database
  const {dir, scope, setting, started} = await beginDump(opts, 'rehearsal dump')
  await ensureSidecarDir(dir)
  const file = rehearsalPathFor(dir, database)
  const {exclude, keep} = await copyRows(sql, opts.dataTables, opts.schema)
  // Counted (as a backup counts them) only where the dump holds their rows: the copy is checked against these.
  const kept = new Set(keep.filter((t) => t.schema === opts.schema).map((t) => t.name))
  const {existing} = await existingTablesIn(
    sql,
    opts.schema,
    opts.tables.filter((t) => kept.has(t)),
  )
  const bySchema = new Map<string, string[]>()
  for (const t of keep) bySchema.set(t.schema, [...(bySchema.get(t.schema) ?? []), t.name])

  let removed = false
  const remove = async () => {
    if (removed) return
    await removeQuietly(file)
    removed = !(await exists(file))
  }
  const unregister = scope.onCancel(remove)
  try {
    const fh = await fs.open(file, 'wx', 0o600).catch((error) => {
      throw fsErrorSentence(error, messages.getMessage('subject.WritingRehearsal'), file)
    })
    await fh.close()
    const dump = await dumpChecked(opts, setting, {
      count: existing,
      extraArgs: exclude.map((t) => `--exclude-table-data=${dumpPattern(t.schema, t.name)}`),
      file,
      name: messages.getMessage('step.RehearsalDump', [file]),
      requireData: [...bySchema].map(([schema, tables]) => ({schema, tables})),
      shown: file,
      what: 'rehearsal dump',
    })
    // pg_dump's patterns are quoted exactly, so a table left out must have no data in it: say so if one has.
    const excluded = new Set(exclude.map((t) => tableDataKey(t.schema, t.name)))
    const stray = dump.toc.entries.filter((e) => e.desc === 'TABLE DATA' && excluded.has(tableDataKey(e.schema, e.name)))
    if (stray.length > 0) log?.(messages.getMessage('info.RehearsalStray', [stray.map((e) => `${e.schema}.${e.name}`).join(', ')]))
    scope.throwIfCancelled(messages.getMessage('step.RehearsalDump', [file]))
    await testPause('dryrun:dump-written', scope.signal)
    scope.throwIfCancelled(messages.getMessage('step.RehearsalDump', [file]))
    const manifest = manifestOf(dump, setting, {database, file, project: target.projectName, purpose: 'rehearsal', schema: opts.schema, started})
    const tablesWithData = dump.toc.entries.filter((e) => e.desc === 'TABLE DATA').map((e) => `${e.schema ?? ''}.${e.name}`)
    log?.(messages.getMessage('info.RehearsalWritten', [file, fmtBytes(dump.result.bytes), plural(tablesWithData.length, 'table')]))
    return {
      bytes: dump.result.bytes,
      durationMs: Date.now() - started,
      file,
      leftOut: [...excluded],
      manifest,
      async remove() {
        unregister()
        await remove()
        return removed
      },
      tablesWithData,
    }
  } catch (error) {
    unregister()
    await remove()
    if (scope.cancelled || error instanceof CancelledError)
      throw new CancelledError(messages.getMessage('step.RehearsalDump', [file]), messages.getMessage('info.RehearsalCancelled'))
    throw error
  }
}

/** What a checked dump holds, as its manifest says it (written beside a backup; kept in memory for a rehearsal dump). */
function manifestOf(
  dump: CheckedDump,
  setting: DumpSetting,
  o: {database: string; file: string; project?: string; purpose: BackupPurpose | string; schema: string; started: number},
): Manifest {
  return {
    compression: dump.compression,
    created_at: new Date(o.started).toISOString(),
    database: o.database,
    file: path.basename(o.file),
    format: MANIFEST_FORMAT,
    ledger_version: dump.ledger,
    pg_dump_major: setting.pgDumpMajor,
    project: o.project,
    purpose: o.purpose,
    row_counts: dump.rowCounts,
    schema: o.schema,
    server_version: setting.server.version,
    server_version_num: setting.server.num,
    sha256: dump.result.sha256,
    size: dump.result.bytes,
    snapshot_at: dump.snapshotAt,
    toc_entries: dump.toc.entries.length,
  }
}

/** `"schema"."table"` as pg_dump's patterns match it literally (inside double quotes `*`, `?`, `.` and `$` are plain characters). */
export function dumpPattern(schema: string, table: string): string {
  const q = (s: string) => `"${s.replaceAll('"', '""')}"`
  return `${q(schema)}.${q(table)}`
}

// ---------------------------------------------------------------------------------------------------------
// dumpChecked: what a backup and the rehearsal dump share

interface DumpTarget {
  /** Where the bytes go (created by the caller). */
  file: string
  /** The file as messages name it, and the phrase for the whole operation ("the backup to X"). */
  shown: string
  name: string
  what: DumpKind
  /** Tables (in the options' schema) counted in the dump's snapshot. */
  count: string[]
  /** Tables whose data the dump must hold, per schema. */
  requireData: Array<{schema: string; tables: string[]}>
  extraArgs: string[]
}

interface CheckedDump extends InSnapshot {
  toc: Toc
  compression: string
}

/**
 * pg_dump in a snapshot of our own (the row counts and ledger version read in it), with the compression pg_dump
 * supports, then read back: pg_restore must list it and find the data of every table required. A failure
 * removes nothing but stops pg_dump; it is one sentence naming the file (the password redacted).
 */
async function dumpChecked(
  opts: Pick<TakeBackupOptions, 'ledgerVersion' | 'onProgress' | 'log' | 'schema' | 'sql' | 'target' | 'tools'>,
  setting: DumpSetting,
  d: DumpTarget,
): Promise<CheckedDump> {
  const {log, sql, target, tools} = opts
  const scope = tools.scope
  const database = target.conn.database
  const secret = target.conn.password
  const backup = d.what === 'backup'
  // "The backup to X failed: …", "The rehearsal dump X failed: …"
  const opening = backup ? messages.getMessage('subject.BackupTo') : messages.getMessage('subject.Rehearsal')
  // A full backup can be large: warn when the folder has less room than the database takes (the rehearsal dump
  // holds the schema and a few tables' rows).
  if (d.what === 'backup') {
    try {
      const stat = await fs.statfs(setting.dir)
      const free = Number(stat.bavail) * Number(stat.bsize)
      if (free < setting.server.size) {
        log?.(messages.getMessage('warning.LowSpace', [setting.dir, fmtBytes(free), fmtBytes(setting.server.size)]))
      }
    } catch {
      // statfs is advisory.
    }
  }
  const dumpAppName = `${APP_NAME}-dump`
  let compression = compressionFor(setting.pgDumpMajor)
  let stopDump: (() => Promise<void>) | undefined
  const unregister = scope.onCancel(async () => {
    await stopDump?.()
  })

  try {
    let out: InSnapshot
    for (;;) {
      try {
        out = await dumpInSnapshot([...compression.args, ...d.extraArgs])
        break
      } catch (error) {
        if (compression.fallback && !scope.cancelled && /zstd|not built with|not supported/i.test(firstLine(error))) {
          log?.(messages.getMessage('info.NoZstd', [setting.pgDumpMajor, firstLine(error)]))
          compression = {args: compression.fallback.args, label: compression.fallback.label}
          continue
        }
        throw error
      }
    }

    // Check what was written before it is used: pg_restore must read its table of contents and find the data of
    // every table required.
    let toc: Toc
    try {
      toc = await readToc(tools, d.file)
    } catch (error) {
      if (scope.cancelled) throw error
      const why = redact(firstLine(error), secret)
      throw new UserError(
        backup ? messages.getMessage('error.ReadBack.Backup', [d.shown, why]) : messages.getMessage('error.ReadBack.Rehearsal', [d.shown, why]),
        {cause: error},
      )
    }
    for (const r of d.requireData) {
      const missing = missingTableData(toc, r.schema, r.tables)
      if (missing) {
        throw new UserError(
          backup
            ? messages.getMessage('error.NoData.Backup', [d.shown, r.schema, missing])
            : messages.getMessage('error.NoData.Rehearsal', [d.shown, r.schema, missing]),
          {
            hint: messages.getMessage('error.NoData.hint'),
          },
        )
      }
    }
    return {...out, compression: compression.label, toc}
  } catch (error) {
    await stopDump?.()
    if (scope.cancelled || error instanceof CancelledError) throw new CancelledError(d.name)
    if (error instanceof UserError) throw error
    const e = toUserError(error, backup ? messages.getMessage('error.Failed.Backup', [d.shown]) : messages.getMessage('error.Failed.Rehearsal', [d.shown]))
    throw new UserError(redact(e.message, secret), {cause: error, hint: e.hint})
  } finally {
    unregister()
  }

  /**
   * pg_dump in a snapshot exported by our own REPEATABLE READ transaction; the same transaction counts the
   * rows, so the counts are exactly what the dump holds, whatever the app writes meanwhile.
   */
  async function dumpInSnapshot(dumpArgs: string[]): Promise<InSnapshot> {
    // A session of its own, not sql.begin: postgres.js crashes the process when a transaction's connection dies
    // and the transaction goes on (porsager/postgres 1208). A lost session is never written to again.
    return withSession(sql, async (session) => {
      const tx = session.sql
      const alive = () => {
        if (session.lost) throw Object.assign(new Error(messages.getMessage('error.ConnectionLost')), {code: 'CONNECTION_CLOSED'})
      }
      await tx.unsafe('begin isolation level repeatable read read only')
      try {
        alive()
        const [{snapshot, pid, at}] = await tx<{snapshot: string; pid: number; at: number}[]>`
          select pg_export_snapshot() as snapshot, pg_backend_pid() as pid, extract(epoch from now())::float8 as at`
        const dump = streamDump([...dumpArgs, `--snapshot=${snapshot}`])
        let stop = false
        let counting: Promise<void> = Promise.resolve()
        // A failed or cancelled dump stops the count on the server: postgres.js's own query.cancel() on a query
        // still queued in a transaction can leave the transaction's ROLLBACK waiting forever.
        dump.catch(async () => {
          stop = true
          await sql`select pg_cancel_backend(${pid})`.catch(() => {})
        })
        const counts: Record<string, number> = {}
        // The ledger version too: another run may have applied a migration since the caller read it.
        let ledger = opts.ledgerVersion
        counting = (async () => {
          for (const table of d.count) {
            if (stop) return
            alive()
            const [{n}] = await tx.unsafe<{n: string}[]>(`select count(*)::bigint as n from ${quoteIdent(opts.schema)}.${quoteIdent(table)}`)
            counts[table] = Number(n)
          }
          alive()
          if (!stop) ledger = await readLedgerVersion(tx, opts.schema)
        })()
        counting.catch(() => {})
        let result: DumpResult
        try {
          result = await dump
        } catch (error) {
          // Let the (cancelled) count settle before the transaction ends, so its ROLLBACK is not queued behind it.
          await counting.catch(() => {})
          throw error
        }
        await counting
        alive()
        await tx.unsafe('commit')
        return {ledger, result, rowCounts: counts, snapshotAt: new Date(Number(at) * 1000).toISOString()}
      } catch (error) {
        if (!session.lost) await tx.unsafe('rollback').catch(() => {})
        throw error
      }
    })
  }

  async function streamDump(dumpArgs: string[]): Promise<DumpResult> {
    scope.throwIfCancelled(d.name)
    let fh: fs.FileHandle
    try {
      // Created by the caller: truncate what an earlier attempt wrote.
      fh = await fs.open(d.file, 'w', 0o600)
    } catch (error) {
      throw fsErrorSentence(error, backup ? messages.getMessage('subject.WritingBackup') : messages.getMessage('subject.WritingRehearsal'), d.shown)
    }
    const args = ['--format=custom', ...dumpArgs, '--no-password', '--lock-wait-timeout=60s']
    const child = tools.run('pg_dump', args, database, {buffer: {stderr: true, stdout: false}, maxBuffer: 16 * 1024 * 1024}, {appName: dumpAppName})
    child.catch(() => {})
    let dumpDone = false
    stopDump = async () => {
      if (dumpDone) return
      child.kill('SIGTERM')
      // `docker exec` does not forward signals: the pg_dump in the container lives on until its session ends.
      await terminateSessions(target, dumpAppName)
    }
    const hash = createHash('sha256')
    let bytes = 0
    try {
      let writeError: unknown
      // tools.run leaves stdout a pipe (only buffering is changed above): the dump is read from it.
      const output = child.stdout
      if (!output) {
        child.kill('SIGTERM')
        throw new Error(messages.getMessage('error.NoPipe'))
      }
      for await (const chunk of output as AsyncIterable<Buffer>) {
        hash.update(chunk)
        try {
          // FileHandle.write may write less than asked; loop until the chunk is out.
          let off = 0
          while (off < chunk.length) {
            const {bytesWritten} = await fh.write(chunk, off, chunk.length - off)
            off += bytesWritten
          }
        } catch (error) {
          writeError = error
          break
        }
        bytes += chunk.length
        opts.onProgress?.(bytes)
      }
      if (writeError) {
        // Disk full or an I/O error: stop pg_dump (leaving the loop closed its pipe) and name the file.
        await stopDump()
        throw fsErrorSentence(writeError, opening, d.shown)
      }
      try {
        await child
        dumpDone = true
      } catch (error) {
        if (scope.cancelled) throw new CancelledError(d.name)
        throw new UserError(messages.getMessage('error.PgDumpFailed', [d.shown, redact(firstLine(error), secret)]), {
          cause: error,
          hint: dumpHint(firstLine(error), target),
        })
      }
      try {
        await fh.sync()
      } catch (error) {
        throw fsErrorSentence(error, opening, d.shown)
      }
    } finally {
      await fh.close().catch(() => {})
    }
    if (bytes === 0) throw new UserError(messages.getMessage('error.PgDumpEmpty', [d.shown]))
    return {bytes, sha256: hash.digest('hex')}
  }
}

function dumpHint(message: string, target: Target): string | undefined {
  if (/lock/i.test(message) && /timeout/i.test(message)) {
    return messages.getMessage('hint.LockTimeout')
  }
  if (/version mismatch/i.test(message)) {
    return target.mode === 'local' ? messages.getMessage('hint.VersionMismatch') : undefined
  }
  if (/password|authentication/i.test(message)) return messages.getMessage('hint.Password')
  return undefined
}

// ---------------------------------------------------------------------------------------------------------
// verifyBackup

export interface VerifyOptions {
  tools: PgTools
  file: string
  /** Default true. False: a dump without manifest (an nself backup) is accepted and fully read instead. */
  requireManifest?: boolean
  /** Also read every data block (`pg_restore -f /dev/null`); always done when there is no manifest. */
  deep?: boolean
  /** The database the backup must be of: its manifest and the dump's own header must both name it. */
  database?: string
  /** Tables whose data the dump itself must hold (whatever its manifest says). */
  requireTables?: {schema: string; tables: string[]}
  log?: (line: string) => void
}

/**
 * Check a backup before it is trusted: the file exists, its manifest parses, size and sha256 match, and
 * pg_restore reads its table of contents (with `deep`, every data block). Every failure names the file.
 */
export async function verifyBackup(opts: VerifyOptions): Promise<{manifest: Manifest; entries: number}> {
  const file = path.resolve(opts.file)
  const requireManifest = opts.requireManifest ?? true
  let st: Stats
  try {
    st = await fs.stat(file)
  } catch (error) {
    if ((error as {code?: string}).code === 'ENOENT') throw new UserError(messages.getMessage('error.FileMissing', [file]))
    throw new UserError(messages.getMessage('error.FileUnreadable', [file, (error as Error).message]))
  }
  if (!st.isFile()) throw new UserError(messages.getMessage('error.NotRegular', [file]))

  const manifestFile = (await findManifestFor(file)) ?? manifestPathFor(file)
  const hasManifest = await fs.access(manifestFile).then(
    () => true,
    () => false,
  )
  let manifest: Manifest | undefined
  if (hasManifest || requireManifest) {
    try {
      manifest = await readManifest(manifestFile)
    } catch (error) {
      if (error instanceof UserError) {
        throw new UserError(messages.getMessage('error.CannotCheck', [file, lowerFirst(error.message)]), {cause: error, hint: error.hint})
      }
      throw error
    }
    if (opts.database !== undefined && manifest.database !== opts.database) {
      throw new UserError(messages.getMessage('error.ManifestOtherDatabase', [file, manifest.database, opts.database]), {
        hint: messages.getMessage('hint.PassThisDatabase'),
      })
    }
    if (manifest.file !== path.basename(file)) {
      throw new UserError(messages.getMessage('error.ManifestOtherFile', [file, manifest.file]))
    }
    if (st.size !== manifest.size) {
      throw new UserError(messages.getMessage('error.SizeMismatch', [file, st.size, manifest.size]), {
        hint: messages.getMessage('hint.DoNotUse'),
      })
    }
  }

  const {sha256, size} = await sha256File(file)
  if (manifest && sha256 !== manifest.sha256) {
    throw new UserError(messages.getMessage('error.ChecksumMismatch', [file]), {
      hint: messages.getMessage('hint.DoNotUse'),
    })
  }

  let toc: Toc
  try {
    toc = await readToc(opts.tools, file)
  } catch (error) {
    if (opts.tools.scope.cancelled) throw new CancelledError(messages.getMessage('step.Checking', [file]))
    const older = olderRestoreSentence(file, firstLine(error), await opts.tools.toolMajor('pg_restore').catch(() => 0), manifest?.pg_dump_major)
    if (older) {
      const m = manifest?.pg_dump_major
      throw new UserError(`${older}.`, {
        cause: error,
        hint: m ? messages.getMessage('hint.InstallTools', [m, m]) : messages.getMessage('hint.InstallToolsUnknown'),
      })
    }
    throw new UserError(messages.getMessage('error.NotReadable', [file, firstLine(error)]), {
      cause: error,
      hint: messages.getMessage('error.NotReadable.hint'),
    })
  }

  checkDumpHeader(file, toc, manifest, opts.database)
  if (manifest) {
    const missing = missingTableData(toc, manifest.schema, Object.keys(manifest.row_counts))
    if (missing) throw new UserError(messages.getMessage('error.NoDataListed', [file, manifest.schema, missing]))
  }
  if (opts.requireTables) {
    const {schema, tables} = opts.requireTables
    const missing = missingTableData(toc, schema, tables)
    if (missing) throw new UserError(messages.getMessage('error.NoTable', [file, schema, missing]))
  }

  if (opts.deep || !manifest) {
    try {
      await (opts.tools.container
        ? opts.tools.run('pg_restore', ['-f', '/dev/null'], null, {inputFile: file})
        : opts.tools.run('pg_restore', ['-f', '/dev/null', file], null))
    } catch (error) {
      if (opts.tools.scope.cancelled) throw new CancelledError(messages.getMessage('step.Checking', [file]))
      throw new UserError(messages.getMessage('error.ReadToEnd', [file, firstLine(error)]), {
        cause: error,
        hint: messages.getMessage('error.ReadToEnd.hint'),
      })
    }
  }

  if (!manifest) {
    opts.log?.(messages.getMessage('info.NoManifest', [file]))
    manifest = synthesizeManifest(file, toc, sha256, size)
  }
  return {entries: toc.entries.length, manifest}
}

/**
 * The dump's own header, not only its manifest (which is a plain JSON file anyone can edit): the database
 * pg_dump dumped, the pg_dump and server versions. A manifest moved beside another database's dump is refused.
 */
function checkDumpHeader(file: string, toc: Toc, manifest: Manifest | undefined, database: string | undefined): void {
  const dumped = tocHeader(toc, 'dbname')
  if (dumped === undefined) throw new UserError(messages.getMessage('error.NoDatabaseName', [file]))
  if (database !== undefined && dumped !== database) {
    throw new UserError(
      manifest && !manifest.synthesized && manifest.database !== dumped
        ? messages.getMessage('error.DumpOfOtherManifest', [file, dumped, database, manifest.database])
        : messages.getMessage('error.DumpOfOther', [file, dumped, database]),
      {hint: messages.getMessage('hint.PassThisDatabase')},
    )
  }
  if (!manifest || manifest.synthesized) return
  if (dumped !== manifest.database) {
    throw new UserError(messages.getMessage('error.ManifestNotThisDatabase', [file, dumped, manifest.database]))
  }
  const dumpedBy = Number((tocHeader(toc, 'Dumped by pg_dump version') ?? '').split('.')[0])
  if (dumpedBy && manifest.pg_dump_major && dumpedBy !== manifest.pg_dump_major) {
    throw new UserError(messages.getMessage('error.ManifestNotThisPgDump', [file, dumpedBy, manifest.pg_dump_major]))
  }
  const dumpedFrom = (tocHeader(toc, 'Dumped from database version') ?? '').split(' ')[0]
  if (dumpedFrom && manifest.server_version && dumpedFrom !== manifest.server_version.split(' ')[0]) {
    throw new UserError(messages.getMessage('error.ManifestNotThisServer', [file, dumpedFrom, manifest.server_version]))
  }
}

function lowerFirst(s: string): string {
  return s.startsWith('The ') ? `the ${s.slice(4)}` : s
}
