import {createHash} from 'node:crypto'
import {constants as fsConstants, createReadStream} from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'

import {isCancelled, onCancel, throwIfCancelled} from '../cancel.js'
import {CancelledError, firstLine, UserError, toUserError} from '../errors.js'
import {readLedgerVersion} from '../migrations/ledger.js'
import {APP_NAME, connect, openSession, quoteIdent, RUN_ID, type Sql} from '../target/connect.js'
import {testPause} from '../test-pause.js'
import type {Target} from '../target/target.js'
import type {PgTools} from '../target/tools.js'
import {judgeTools, olderRestoreSentence} from '../target/versions.js'
import {fmtBytes} from '../text.js'

/**
 * Backups in nself's own layout (README, "Shared with nself's ledger and backups"): `pg_dump -Fc` through
 * `docker exec -i` (or locally), written to `<backupDir>/<PROJECT>_<YYYYMMDD_HHMMSS>.dump` with mode 0600 in a
 * 0700 folder, so `nself db restore` reads ours and we read theirs. For each dump a manifest
 * (`.nself-e2ee/<file>.manifest.json`, below) records what the dump holds: checksum, size, server version,
 * ledger version and the exact row counts of the app's tables, counted in the very snapshot pg_dump dumps
 * (exported with pg_export_snapshot, passed with --snapshot), so a restore can be checked against it to the row
 * even while the app keeps writing during the backup.
 */

export const MANIFEST_FORMAT = 'nself-e2ee-backup/1'
export const MANIFEST_SUFFIX = '.manifest.json'

// ---------------------------------------------------------------------------------------------------------
// Where our own files go. nself's `backup list` counts every file directly in backups/ and `backup restore
// latest` takes the newest one, but both skip folders (internal/backup/list.go: entry.IsDir() → continue). So
// only finished dumps are written to backups/; manifests and dumps being written live in backups/.nself-e2ee/.

export const SIDECAR_DIR = '.nself-e2ee'

/** The manifest of a dump: `<backups>/.nself-e2ee/<dump name>.manifest.json`. */
export function manifestPathFor(dump: string): string {
  return path.join(path.dirname(dump), SIDECAR_DIR, path.basename(dump) + MANIFEST_SUFFIX)
}

/**
 * Where a dump is written until it is complete and checked (then renamed into backups/). The run id in the name
 * lets the next command prove the writer is gone (leftovers.ts) before removing it.
 */
export function partialPathFor(dump: string): string {
  return path.join(path.dirname(dump), SIDECAR_DIR, `${path.basename(dump)}.${RUN_ID}.partial`)
}

/** Older versions of this plugin wrote the manifest beside the dump; still read there. */
function legacyManifestPathFor(dump: string): string {
  return dump + MANIFEST_SUFFIX
}

/** The manifest file of a dump that exists, in the sidecar folder or (older backups) beside it. */
export async function findManifestFor(dump: string): Promise<string | undefined> {
  for (const candidate of [manifestPathFor(dump), legacyManifestPathFor(dump)]) {
    if (await fs.access(candidate).then(() => true, () => false)) return candidate
  }
  return undefined
}

async function ensureSidecarDir(backupDir: string): Promise<void> {
  await fs.mkdir(path.join(backupDir, SIDECAR_DIR), {mode: 0o700, recursive: true})
}

export type BackupPurpose = 'pre-migration' | 'pre-rollback' | 'dryrun' | 'manual' | 'external'

export interface Manifest {
  format: typeof MANIFEST_FORMAT
  /** Basename of the dump, in the manifest's folder. */
  file: string
  sha256: string
  size: number
  database: string
  schema: string
  server_version: string
  server_version_num: number
  /** The highest version in schema_migrations, read in the dump's own snapshot. */
  ledger_version: number | null
  /** The server's clock when the dump's snapshot was taken (same clock as the ledgers' timestamps). */
  snapshot_at?: string
  /** Exact `count(*)` of each listed table that existed, in the dump's snapshot; keys are table names in `schema`. */
  row_counts: Record<string, number>
  created_at: string
  pg_dump_major: number
  purpose: BackupPurpose | string
  project?: string
  /** pg_dump's compression option, e.g. "-Z 1" or "--compress=zstd:1". */
  compression?: string
  /** Number of entries in the archive's table of contents. */
  toc_entries?: number
  /** Built from the archive itself because the dump has no manifest (e.g. one made by `nself db backup`). */
  synthesized?: boolean
}

export interface BackupInfo {
  file: string
  manifestFile: string
  manifest: Manifest
  bytes: number
  durationMs: number
}

/** A backup found on disk: what createClone and restoreIntoNewDatabase take. */
export interface ListedBackup {
  file: string
  manifestFile: string
  manifest: Manifest
}

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
// Small helpers shared with clone.ts and restore.ts

const pad = (n: number, w = 2) => String(n).padStart(w, '0')

/** Local time as nself's `date +%Y%m%d_%H%M%S` prints it; `sep` '' gives YYYYMMDDHHMMSS. */
export function timestamp(date = new Date(), sep = '_'): string {
  return `${date.getFullYear()}${pad(date.getMonth() + 1)}${pad(date.getDate())}${sep}${pad(date.getHours())}${pad(date.getMinutes())}${pad(date.getSeconds())}`
}

/** Wait for the next wall-clock second (names carry second resolution). */
export async function nextSecond(): Promise<void> {
  await sleep(1000 - (Date.now() % 1000) + 5)
}

/** Removes a secret from text that may reach the operator. */
export function redact(text: string, secret?: string): string {
  return secret ? text.split(secret).join('***') : text
}

async function removeQuietly(file: string): Promise<void> {
  await fs.rm(file, {force: true}).catch(() => {})
}

async function fsyncDir(dir: string): Promise<void> {
  try {
    const fh = await fs.open(dir, fsConstants.O_RDONLY)
    try {
      await fh.sync()
    } finally {
      await fh.close()
    }
  } catch {
    // Some filesystems refuse fsync on a directory; the data itself was synced.
  }
}

/** End the server sessions that carry `appName` (children `docker exec` left running), over a fresh connection. */
export async function terminateSessions(target: Target, appName: string, database = target.conn.database): Promise<number> {
  const sql = connect(target.conn, {database, max: 1})
  try {
    const rows = await sql`
      select pg_terminate_backend(pid) as ok from pg_stat_activity
      where application_name = ${appName} and pid <> pg_backend_pid() and backend_type = 'client backend'`
    return rows.length
  } catch {
    return 0
  } finally {
    await sql.end({timeout: 2}).catch(() => {})
  }
}

function fsErrorSentence(error: unknown, what: string, file: string): UserError {
  const code = (error as {code?: string}).code ?? ''
  const msg = (error as Error).message ?? String(error)
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new UserError(`${what} ${file} failed: the disk is full (${code}).`, {
      cause: error,
      hint: 'Free disk space or choose another folder with --backup-dir; nothing was changed in the database.',
    })
  }
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS' || code === 'ENOTDIR' || code === 'EEXIST' || code === 'EISDIR') {
    return new UserError(`${what} ${file} failed: the folder is not writable (${code}).`, {
      cause: error,
      hint: 'Choose a writable folder with --backup-dir, or fix the folder\'s owner and permissions.',
    })
  }
  return new UserError(`${what} ${file} failed: ${msg.replace(/\.$/, '')}.`, {cause: error})
}

/** Create the backup folder (0700) or tighten an existing one that others could read. */
export async function ensureBackupDir(dir: string, log?: (line: string) => void): Promise<void> {
  try {
    await fs.mkdir(dir, {mode: 0o700, recursive: true})
  } catch (error) {
    const code = (error as {code?: string}).code
    if (code === 'EEXIST' || code === 'ENOTDIR') {
      const what = code === 'EEXIST' ? 'is a file, not a folder' : 'cannot be created: part of its path is a file, not a folder'
      throw new UserError(`The backup folder ${dir} ${what}.`, {cause: error, hint: 'Choose a folder with --backup-dir.'})
    }
    throw fsErrorSentence(error, 'Creating the backup folder', dir)
  }
  let st
  try {
    st = await fs.stat(dir)
  } catch (error) {
    throw fsErrorSentence(error, 'Reading the backup folder', dir)
  }
  if (!st.isDirectory()) {
    throw new UserError(`The backup folder ${dir} is not a folder.`, {hint: 'Choose a folder with --backup-dir.'})
  }
  if ((st.mode & 0o077) !== 0) {
    const mode = (st.mode & 0o777).toString(8)
    try {
      if (typeof process.getuid === 'function' && st.uid !== process.getuid()) throw new Error('not owner')
      await fs.chmod(dir, 0o700)
      log?.(`The backup folder ${dir} had mode ${mode}; set it to 700 (backups hold all the chat data).`)
    } catch {
      log?.(`Warning: the backup folder ${dir} has mode ${mode} and is not ours to change; the dumps themselves are 600.`)
    }
  }
  try {
    await fs.access(dir, fsConstants.W_OK)
  } catch (error) {
    throw fsErrorSentence(error, 'Writing to the backup folder', dir)
  }
}

// ---------------------------------------------------------------------------------------------------------
// The archive's table of contents

export interface TocEntry {
  line: string
  dumpId: number
  desc: string
  schema: string | null
  /** The tag (object name; for TABLE DATA the table's name). */
  name: string
  owner: string | null
}

export interface Toc {
  entries: TocEntry[]
  header: Record<string, string>
  text: string
}

const MULTI_WORD_DESCS = [
  'MATERIALIZED VIEW DATA', 'PUBLICATION TABLES IN SCHEMA', 'TEXT SEARCH CONFIGURATION', 'TEXT SEARCH DICTIONARY',
  'TEXT SEARCH TEMPLATE', 'TEXT SEARCH PARSER', 'FOREIGN DATA WRAPPER', 'SEQUENCE OWNED BY', 'DATABASE PROPERTIES',
  'MATERIALIZED VIEW', 'PUBLICATION TABLE', 'PROCEDURAL LANGUAGE', 'CHECK CONSTRAINT', 'OPERATOR FAMILY', 'OPERATOR CLASS',
  'EVENT TRIGGER', 'FOREIGN TABLE', 'FOREIGN SERVER', 'FK CONSTRAINT', 'ACCESS METHOD', 'LARGE OBJECT', 'SEQUENCE SET',
  'STATISTICS DATA', 'TABLE ATTACH', 'INDEX ATTACH', 'USER MAPPING', 'DEFAULT ACL', 'ROW SECURITY', 'SHELL TYPE',
  'TABLE DATA', 'BLOB DATA', 'BLOB METADATA', 'DEFAULT',
]

export function parseToc(text: string): Toc {
  const entries: TocEntry[] = []
  const header: Record<string, string> = {}
  for (const line of text.split('\n')) {
    if (line.startsWith(';')) {
      const m = /^;\s+([^:]+):\s*(.*)$/.exec(line)
      if (m) header[m[1].trim()] = m[2].trim()
      continue
    }
    const m = /^(\d+);\s+\d+\s+\d+\s+(.*)$/.exec(line)
    if (!m) continue
    const rest = m[2]
    const desc = MULTI_WORD_DESCS.find((d) => rest === d || rest.startsWith(d + ' ')) ?? rest.split(' ')[0]
    const words = rest.slice(desc.length).trim().split(' ').filter((w) => w !== '')
    let schema: string | null = null
    let owner: string | null = null
    let name = ''
    if (words.length >= 3) {
      schema = words[0] === '-' ? null : words[0]
      owner = words.at(-1)!
      name = words.slice(1, -1).join(' ')
    } else if (words.length === 2) {
      schema = words[0] === '-' ? null : words[0]
      name = words[1]
    } else {
      name = words.join(' ')
    }
    entries.push({desc, dumpId: Number(m[1]), line, name, owner, schema})
  }
  return {entries, header, text}
}

/** A header line of `pg_restore --list` by its name, in any case (PostgreSQL 15 prints `dbname`, others `Dbname`). */
export function tocHeader(toc: Toc, name: string): string | undefined {
  const key = Object.keys(toc.header).find((k) => k.toLowerCase() === name.toLowerCase())
  return key === undefined ? undefined : toc.header[key]
}

export function tableDataKey(schema: string | null, table: string): string {
  return `${schema ?? ''}.${table}`
}

/**
 * `pg_restore --list` of an archive. In docker mode the file is fed on stdin (the listing only reads the
 * table of contents at the start, so nothing is copied into the container).
 */
export async function readToc(tools: PgTools, file: string): Promise<Toc> {
  const run = tools.container
    ? tools.run('pg_restore', ['--list'], null, {inputFile: file, maxBuffer: 256 * 1024 * 1024})
    : tools.run('pg_restore', ['--list', file], null, {maxBuffer: 256 * 1024 * 1024})
  const {stdout} = await run
  const toc = parseToc(String(stdout))
  if (toc.header.Format === undefined || toc.entries.length === 0) {
    throw new Error('the archive lists no entries')
  }
  return toc
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

const exists = (f: string) => fs.access(f).then(() => true, () => false)

/**
 * Reserve `<project>_<YYYYMMDD_HHMMSS>.dump` by creating its manifest's place in the sidecar folder exclusively
 * (O_EXCL; the manifest is later written over it): two runs started in the same second cannot both get it, and the
 * loser moves to the next second, so every name keeps nself's pattern. The dump itself is written to a `.partial`
 * named with this run's id, so the next command can prove its writer is gone (leftovers.ts) before removing it.
 * A placeholder left by a killed run is an unreadable manifest without a dump: listings skip it.
 */
async function reserveFileName(dir: string, project: string): Promise<{final: string; partial: string}> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const final = path.join(dir, `${project}_${timestamp()}.dump`)
    const placeholder = manifestPathFor(final)
    try {
      const fh = await fs.open(placeholder, 'wx', 0o600)
      await fh.close()
    } catch (error) {
      if ((error as {code?: string}).code !== 'EEXIST') throw fsErrorSentence(error, 'Writing the backup', final)
      await nextSecond()
      continue
    }
    const taken = await Promise.all([final, legacyManifestPathFor(final)].map(exists))
    if (!taken.includes(true)) return {final, partial: partialPathFor(final)}
    await removeQuietly(placeholder)
    await nextSecond()
  }
  throw new UserError(`Cannot find a free backup file name in ${dir}: every name tried for the last 10 seconds is taken.`)
}

/** Give the finished dump its name without ever replacing a file of that name (e.g. an `nself db backup`). */
async function publish(partial: string, final: string): Promise<void> {
  try {
    await fs.link(partial, final)
  } catch (error) {
    const code = (error as {code?: string}).code
    if (code === 'EEXIST') throw new UserError(`Another program wrote ${final} while this backup was taken; it was not overwritten and this backup was discarded.`)
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EXDEV') throw error
    // No hard links on this filesystem: the name was reserved, a rename is the next best thing.
    await fs.rename(partial, final)
    return
  }
  await fs.rm(partial, {force: true})
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

/** The data a TOC must hold for these tables, or the first one it lacks. */
function missingTableData(toc: Toc, schema: string, tables: string[]): string | undefined {
  const have = new Set(toc.entries.filter((e) => e.desc === 'TABLE DATA').map((e) => tableDataKey(e.schema, e.name)))
  return tables.find((t) => !have.has(tableDataKey(schema, t)))
}

export async function takeBackup(opts: TakeBackupOptions): Promise<BackupInfo> {
  const {log, sql, target, tools} = opts
  const started = Date.now()
  const database = target.conn.database
  const dir = path.resolve(opts.dir ?? target.backupDir)
  const purpose = opts.purpose ?? 'pre-migration'
  throwIfCancelled('the backup')

  const [{db}] = await sql<{db: string}[]>`select current_database() as db`
  if (db !== database) {
    throw new UserError(`The backup must be taken over a connection to "${database}", not "${db}".`)
  }

  await ensureBackupDir(dir, log)
  const project = (target.projectName || database).replaceAll(/[^A-Za-z0-9_.-]/g, '_')

  const [server] = await sql<{version: string; num: number; size: string}[]>`
    select current_setting('server_version') as version, current_setting('server_version_num')::int as num,
           pg_database_size(current_database())::text as size`
  const pgDumpMajor = await tools.toolMajor('pg_dump')
  // Before anything is written: pg_dump must dump this server and pg_restore must read back what it writes.
  const toolCheck = judgeTools(Math.floor(server.num / 10_000), {pg_dump: pgDumpMajor, pg_restore: await tools.toolMajor('pg_restore')},
    tools.container ? `in container ${tools.container}` : 'local client tools', {dumps: true, local: !tools.container})
  if (toolCheck.status === 'fail') throw new UserError(`No backup was taken: ${toolCheck.detail}.`, {hint: toolCheck.fix})

  try {
    const stat = await fs.statfs(dir)
    const free = Number(stat.bavail) * Number(stat.bsize)
    if (free < Number(server.size)) {
      log?.(`Warning: ${dir} has ${fmtBytes(free)} free and the database takes ${fmtBytes(Number(server.size))}; a compressed dump is usually much smaller, but watch the disk.`)
    }
  } catch {
    // statfs is advisory.
  }

  const relations = opts.tables.length === 0 ? [] : await sql<{name: string; kind: string}[]>`
    select c.relname as name, c.relkind as kind from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = ${opts.schema} and c.relname = any(${opts.tables}) and c.relkind in ('r', 'p')`
  const existing = opts.tables.filter((t) => relations.some((r) => r.name === t))
  // Partitioned parents hold no data of their own: their partitions have the TABLE DATA entries.
  const plainTables = existing.filter((t) => relations.some((r) => r.name === t && r.kind === 'r'))

  await ensureSidecarDir(dir)
  const {final, partial} = await reserveFileName(dir, project)
  const manifestFile = manifestPathFor(final)
  const dumpAppName = `${APP_NAME}-dump`
  const secret = target.conn.password

  let compression = compressionFor(pgDumpMajor)
  let rowCounts: Record<string, number> = {}
  let ledgerVersion = opts.ledgerVersion
  let snapshotAt: string | undefined
  let result: DumpResult | undefined
  let stopDump: (() => Promise<void>) | undefined
  const unregister = onCancel(async () => {
    await stopDump?.()
  })

  try {
    for (;;) {
      try {
        const out = await dumpInSnapshot(compression.args)
        result = out.result
        rowCounts = out.rowCounts
        ledgerVersion = out.ledger
        snapshotAt = out.snapshotAt
        break
      } catch (error) {
        if (compression.fallback && !isCancelled() && /zstd|not built with|not supported/i.test(firstLine(error))) {
          log?.(`pg_dump ${pgDumpMajor} has no zstd support (${firstLine(error)}); using gzip level 1.`)
          compression = {args: compression.fallback.args, label: compression.fallback.label}
          continue
        }
        throw error
      }
    }

    // Check what was written before it gets the final name: pg_restore must read its table of contents and
    // find the data of every table counted into the manifest.
    let toc: Toc
    try {
      toc = await readToc(tools, partial)
    } catch (error) {
      if (isCancelled()) throw error
      throw new UserError(`The new backup ${final} cannot be read back by pg_restore: ${redact(firstLine(error), secret)}.`, {cause: error})
    }
    const missing = missingTableData(toc, opts.schema, plainTables)
    if (missing) {
      throw new UserError(`The new backup ${final} holds no data for table ${opts.schema}.${missing}.`, {
        hint: 'Check that the database user may read every table (pg_dump skips nothing it can read).',
      })
    }
    throwIfCancelled(`the backup to ${final}`)
    await testPause('backup:partial-written')

    const manifest: Manifest = {
      compression: compression.label,
      created_at: new Date(started).toISOString(),
      database,
      file: path.basename(final),
      format: MANIFEST_FORMAT,
      ledger_version: ledgerVersion,
      pg_dump_major: pgDumpMajor,
      project: target.projectName,
      purpose,
      row_counts: rowCounts,
      schema: opts.schema,
      server_version: server.version,
      server_version_num: server.num,
      sha256: result!.sha256,
      size: result!.bytes,
      snapshot_at: snapshotAt,
      toc_entries: toc.entries.length,
    }
    try {
      await publish(partial, final)
    } catch (error) {
      if (error instanceof UserError) throw error
      throw fsErrorSentence(error, 'Writing the backup', final)
    }
    try {
      await writeManifest(manifestFile, manifest)
      await fsyncDir(dir)
    } catch (error) {
      await removeQuietly(final)
      await removeQuietly(manifestFile)
      throw fsErrorSentence(error, 'Writing the backup', final)
    }
    log?.(`Backup written: ${final} (${fmtBytes(result!.bytes)}, ${toc.entries.length} entries, sha256 ${result!.sha256.slice(0, 12)}…).`)
    return {bytes: result!.bytes, durationMs: Date.now() - started, file: final, manifest, manifestFile}
  } catch (error) {
    await stopDump?.()
    await removeQuietly(partial)
    await removeQuietly(manifestFile)
    if (isCancelled() || error instanceof CancelledError) throw new CancelledError(`the backup to ${final}`)
    if (error instanceof UserError) throw error
    const e = toUserError(error, `The backup to ${final} failed`)
    throw new UserError(redact(e.message, secret), {cause: error, hint: e.hint})
  } finally {
    unregister()
  }

  /**
   * pg_dump in a snapshot exported by our own REPEATABLE READ transaction; the same transaction counts the
   * rows, so the manifest's counts are exactly what the dump holds, whatever the app writes meanwhile.
   */
  async function dumpInSnapshot(compressionArgs: string[]): Promise<InSnapshot> {
    // A session of its own, not sql.begin: postgres.js crashes the process when a transaction's connection dies
    // and the transaction goes on (porsager/postgres 1208). A lost session is never written to again.
    const session = await openSession(sql)
    const tx = session.sql
    const alive = () => {
      if (session.lost) throw Object.assign(new Error('the connection to PostgreSQL was lost'), {code: 'CONNECTION_CLOSED'})
    }
    try {
      await tx.unsafe('begin isolation level repeatable read read only')
      try {
        alive()
        const [{snapshot, pid, at}] = await tx<{snapshot: string; pid: number; at: number}[]>`
          select pg_export_snapshot() as snapshot, pg_backend_pid() as pid, extract(epoch from now())::float8 as at`
        const dump = streamDump([...compressionArgs, `--snapshot=${snapshot}`])
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
          for (const table of existing) {
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
    } finally {
      await session.close()
    }
  }

  async function streamDump(compressionArgs: string[]): Promise<DumpResult> {
    throwIfCancelled(`the backup to ${final}`)
    let fh: fs.FileHandle
    try {
      // Reserved (and created) by reserveFileName: truncate what an earlier attempt wrote.
      fh = await fs.open(partial, 'w', 0o600)
    } catch (error) {
      throw fsErrorSentence(error, 'Writing the backup', final)
    }
    const args = ['--format=custom', ...compressionArgs, '--no-password', '--lock-wait-timeout=60s']
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
      for await (const chunk of child.stdout! as AsyncIterable<Buffer>) {
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
        throw fsErrorSentence(writeError, 'The backup to', final)
      }
      try {
        await child
        dumpDone = true
      } catch (error) {
        if (isCancelled()) throw new CancelledError(`the backup to ${final}`)
        throw new UserError(`pg_dump failed writing ${final}: ${redact(firstLine(error), secret)}.`, {
          cause: error,
          hint: dumpHint(firstLine(error), target),
        })
      }
      try {
        await fh.sync()
      } catch (error) {
        throw fsErrorSentence(error, 'The backup to', final)
      }
    } finally {
      await fh.close().catch(() => {})
    }
    if (bytes === 0) throw new UserError(`pg_dump wrote nothing to ${final}.`)
    return {bytes, sha256: hash.digest('hex')}
  }
}

function dumpHint(message: string, target: Target): string | undefined {
  if (/lock/i.test(message) && /timeout/i.test(message)) {
    return 'A session holds an exclusive lock on a table for over 60 s; find it in pg_stat_activity and retry.'
  }
  if (/version mismatch/i.test(message)) {
    return target.mode === 'local' ? 'Install client tools at least as new as the server, or drop --local.' : undefined
  }
  if (/password|authentication/i.test(message)) return 'Set POSTGRES_PASSWORD in the nself env file or PGPASSWORD.'
  return undefined
}

async function writeManifest(file: string, manifest: Manifest): Promise<void> {
  const tmp = `${file}.partial`
  const fh = await fs.open(tmp, 'w', 0o600)
  try {
    await fh.writeFile(JSON.stringify(manifest, null, 2) + '\n')
    await fh.sync()
  } finally {
    await fh.close()
  }
  await fs.rename(tmp, file)
}

// ---------------------------------------------------------------------------------------------------------
// verifyBackup

export async function sha256File(file: string): Promise<{sha256: string; size: number}> {
  const hash = createHash('sha256')
  let size = 0
  for await (const chunk of createReadStream(file) as AsyncIterable<Buffer>) {
    hash.update(chunk)
    size += chunk.length
  }
  return {sha256: hash.digest('hex'), size}
}

function isManifest(m: unknown): m is Manifest {
  const x = m as Record<string, unknown>
  return typeof x === 'object' && x !== null && x.format === MANIFEST_FORMAT && typeof x.file === 'string' &&
    typeof x.sha256 === 'string' && /^[0-9a-f]{64}$/.test(x.sha256) && typeof x.size === 'number' &&
    typeof x.database === 'string' && typeof x.schema === 'string' && typeof x.row_counts === 'object' && x.row_counts !== null &&
    Object.values(x.row_counts as object).every((n) => typeof n === 'number') &&
    (x.ledger_version === null || typeof x.ledger_version === 'number') && typeof x.created_at === 'string'
}

export async function readManifest(manifestFile: string): Promise<Manifest> {
  let text: string
  try {
    text = await fs.readFile(manifestFile, 'utf8')
  } catch (error) {
    if ((error as {code?: string}).code === 'ENOENT') {
      throw new UserError(`The backup manifest ${manifestFile} does not exist.`, {
        hint: 'Without its manifest a backup cannot be checked; take a new backup, or pass the dump of an nself backup explicitly.',
      })
    }
    throw new UserError(`Cannot read the backup manifest ${manifestFile}: ${(error as Error).message}.`)
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    throw new UserError(`The backup manifest ${manifestFile} is not valid JSON.`, {hint: 'It was damaged or edited; take a new backup.'})
  }
  if (!isManifest(parsed)) {
    throw new UserError(`The backup manifest ${manifestFile} is not an ${MANIFEST_FORMAT} manifest or misses fields.`)
  }
  return parsed
}

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
  let st
  try {
    st = await fs.stat(file)
  } catch (error) {
    if ((error as {code?: string}).code === 'ENOENT') throw new UserError(`The backup file ${file} does not exist.`)
    throw new UserError(`Cannot read the backup file ${file}: ${(error as Error).message}.`)
  }
  if (!st.isFile()) throw new UserError(`The backup file ${file} is not a regular file.`)

  const manifestFile = (await findManifestFor(file)) ?? manifestPathFor(file)
  const hasManifest = await fs.access(manifestFile).then(() => true, () => false)
  let manifest: Manifest | undefined
  if (hasManifest || requireManifest) {
    try {
      manifest = await readManifest(manifestFile)
    } catch (error) {
      if (error instanceof UserError) {
        throw new UserError(`The backup ${file} cannot be checked: ${lowerFirst(error.message)}`, {cause: error, hint: error.hint})
      }
      throw error
    }
    if (opts.database !== undefined && manifest.database !== opts.database) {
      throw new UserError(`The backup ${file} is of database ${manifest.database}, not ${opts.database}.`, {hint: 'Pass a backup of this database.'})
    }
    if (manifest.file !== path.basename(file)) {
      throw new UserError(`The backup ${file} does not match its manifest, which describes ${manifest.file}.`)
    }
    if (st.size !== manifest.size) {
      throw new UserError(`The backup ${file} is ${st.size} bytes but its manifest says ${manifest.size}: the file is truncated or was replaced.`, {
        hint: 'Do not use this backup; take a new one.',
      })
    }
  }

  const {sha256, size} = await sha256File(file)
  if (manifest && sha256 !== manifest.sha256) {
    throw new UserError(`The backup ${file} does not match the sha256 checksum in its manifest: the file is corrupt or was changed.`, {
      hint: 'Do not use this backup; take a new one.',
    })
  }

  let toc: Toc
  try {
    toc = await readToc(opts.tools, file)
  } catch (error) {
    if (isCancelled()) throw new CancelledError(`checking the backup ${file}`)
    const older = olderRestoreSentence(file, firstLine(error), await opts.tools.toolMajor('pg_restore').catch(() => 0), manifest?.pg_dump_major)
    if (older) {
      const m = manifest?.pg_dump_major
      throw new UserError(`${older}.`, {
        cause: error,
        hint: m ? `Install the PostgreSQL ${m} client tools (postgresql-client-${m}) or newer where pg_restore runs.` : 'Install the client tools of the PostgreSQL version that wrote it, or newer, where pg_restore runs.',
      })
    }
    throw new UserError(`The backup ${file} is not readable by pg_restore: ${firstLine(error)}.`, {
      cause: error, hint: 'The file is truncated, corrupt, or not a custom-format (-Fc) dump.',
    })
  }

  checkDumpHeader(file, toc, manifest, opts.database)
  if (manifest) {
    const missing = missingTableData(toc, manifest.schema, Object.keys(manifest.row_counts))
    if (missing) throw new UserError(`The backup ${file} holds no data for table ${manifest.schema}.${missing}, which its manifest lists.`)
  }
  if (opts.requireTables) {
    const {schema, tables} = opts.requireTables
    const missing = missingTableData(toc, schema, tables)
    if (missing) throw new UserError(`The backup ${file} holds no table ${schema}.${missing}: it is not a backup of this nChat database.`)
  }

  if (opts.deep || !manifest) {
    try {
      await (opts.tools.container
        ? opts.tools.run('pg_restore', ['-f', '/dev/null'], null, {inputFile: file})
        : opts.tools.run('pg_restore', ['-f', '/dev/null', file], null))
    } catch (error) {
      if (isCancelled()) throw new CancelledError(`checking the backup ${file}`)
      throw new UserError(`The backup ${file} cannot be read to the end by pg_restore: ${firstLine(error)}.`, {
        cause: error, hint: 'The file is truncated or corrupt; do not use it.',
      })
    }
  }

  if (!manifest) {
    opts.log?.(`The backup ${file} has no manifest; it was read to the end and its table of contents is used instead.`)
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
  if (dumped === undefined) throw new UserError(`The backup ${file} does not name the database it was dumped from, so it cannot be checked.`)
  if (database !== undefined && dumped !== database) {
    throw new UserError(`The backup ${file} is a dump of the database "${dumped}", not of "${database}"${manifest && !manifest.synthesized && manifest.database !== dumped ? ` (its manifest says "${manifest.database}")` : ''}.`, {
      hint: 'Pass a backup of this database.',
    })
  }
  if (!manifest || manifest.synthesized) return
  if (dumped !== manifest.database) {
    throw new UserError(`The backup ${file} is a dump of the database "${dumped}", but its manifest says "${manifest.database}": the manifest does not belong to this dump.`)
  }
  const dumpedBy = Number((tocHeader(toc, 'Dumped by pg_dump version') ?? '').split('.')[0])
  if (dumpedBy && manifest.pg_dump_major && dumpedBy !== manifest.pg_dump_major) {
    throw new UserError(`The backup ${file} was written by pg_dump ${dumpedBy}, but its manifest says pg_dump ${manifest.pg_dump_major}: the manifest does not belong to this dump.`)
  }
  const dumpedFrom = (tocHeader(toc, 'Dumped from database version') ?? '').split(' ')[0]
  if (dumpedFrom && manifest.server_version && dumpedFrom !== manifest.server_version.split(' ')[0]) {
    throw new UserError(`The backup ${file} was dumped from PostgreSQL ${dumpedFrom}, but its manifest says ${manifest.server_version}: the manifest does not belong to this dump.`)
  }
}

function lowerFirst(s: string): string {
  return s.startsWith('The ') ? 'the ' + s.slice(4) : s
}

function synthesizeManifest(file: string, toc: Toc, sha256: string, size: number): Manifest {
  const created = Date.parse((toc.header['Archive created at'] ?? '').replace(' UTC', 'Z').replace(' ', 'T'))
  const serverVersion = (toc.header['Dumped from database version'] ?? '').split(' ')[0]
  const [maj, min] = serverVersion.split('.').map(Number)
  const dumpMajor = Number((toc.header['Dumped by pg_dump version'] ?? '').split('.')[0]) || 0
  return {
    created_at: Number.isNaN(created) ? new Date(0).toISOString() : new Date(created).toISOString(),
    database: tocHeader(toc, 'dbname') ?? '',
    file: path.basename(file),
    format: MANIFEST_FORMAT,
    ledger_version: null,
    pg_dump_major: dumpMajor,
    purpose: 'external',
    row_counts: {},
    schema: '',
    server_version: serverVersion,
    server_version_num: maj >= 10 ? maj * 10_000 + (min || 0) : 0,
    sha256,
    size,
    synthesized: true,
    toc_entries: toc.entries.length,
  }
}

// ---------------------------------------------------------------------------------------------------------
// Listing

/** Backups with a readable manifest in `dir` (optionally of one database), newest first. */
export async function listBackups(dir: string, database?: string): Promise<ListedBackup[]> {
  const out: ListedBackup[] = []
  for (const manifestFile of await manifestFilesIn(dir)) {
    let manifest: Manifest
    try {
      manifest = await readManifest(manifestFile)
    } catch {
      continue
    }
    if (database !== undefined && manifest.database !== database) continue
    const file = path.join(dir, manifest.file)
    if (path.basename(manifestFile) !== manifest.file + MANIFEST_SUFFIX) continue
    if (!(await fs.access(file).then(() => true, () => false))) continue
    out.push({file, manifest, manifestFile})
  }
  return out.sort((a, b) => b.manifest.created_at.localeCompare(a.manifest.created_at) || b.file.localeCompare(a.file))
}

/** Manifest files of `dir`: in its sidecar folder, then any an older version left beside the dumps. */
async function manifestFilesIn(dir: string): Promise<string[]> {
  const files: string[] = []
  for (const folder of [path.join(dir, SIDECAR_DIR), dir]) {
    let names: string[]
    try {
      names = await fs.readdir(folder)
    } catch (error) {
      if ((error as {code?: string}).code === 'ENOENT') continue
      throw new UserError(`Cannot list the backup folder ${folder}: ${(error as Error).message}.`)
    }
    files.push(...names.filter((n) => n.endsWith(MANIFEST_SUFFIX)).map((n) => path.join(folder, n)))
  }
  return files
}

export async function newestBackup(dir: string, database: string, purpose?: BackupPurpose | string): Promise<ListedBackup | undefined> {
  const all = await listBackups(dir, database)
  return all.find((b) => purpose === undefined || b.manifest.purpose === purpose)
}

export interface BackupChoice {
  chosen?: ListedBackup
  /** Pre-migration backups of this database that were passed over, newest first, each with the reason. */
  passedOver: Array<{backup: ListedBackup; why: string}>
}

/**
 * The backup a restore rollback goes back to. By default: the newest pre-migration backup taken while the
 * database had none of the upgrade (its ledger below `first`) and, when our ledger says when the first of
 * them was applied, taken before that. A backup a rerun took after an interrupted run had applied 013 is at 013
 * and is never chosen. With `atVersion`: the newest pre-migration backup taken at exactly that version (and
 * before `nextAppliedAt`, when known, the time the migration after it was applied).
 */
export async function chooseRollbackBackup(dir: string, database: string, o: {first: number; atVersion?: number; appliedAt?: Date}): Promise<BackupChoice> {
  const all = (await listBackups(dir, database)).filter((b) => b.manifest.purpose === 'pre-migration')
  const passedOver: BackupChoice['passedOver'] = []
  for (const backup of all) {
    const v = backup.manifest.ledger_version
    const fits = o.atVersion === undefined ? v === null || v < o.first : v === o.atVersion
    if (!fits) {
      passedOver.push({backup, why: `taken at migration ${v ?? 'none'}`})
      continue
    }
    // Compared on the server's clock only (a manifest without snapshot_at is not compared: client clocks drift).
    const snapshotAt = backup.manifest.snapshot_at
    if (o.appliedAt && snapshotAt && Date.parse(snapshotAt) > o.appliedAt.getTime()) {
      passedOver.push({backup, why: `taken at ${snapshotAt}, after the migration it should precede was applied (${o.appliedAt.toISOString()})`})
      continue
    }
    return {chosen: backup, passedOver}
  }
  return {passedOver}
}
