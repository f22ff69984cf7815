import {CancelledError, interrupted, interruption, toUserError, UserError} from '../errors.js'
import {createdTables, existingTables} from '../migrations/plan.js'
import {activeLedgerRows, readLedgerVersion} from '../migrations/ledger.js'
import {migrateDown, type RunReport} from '../migrations/runner.js'
import {connect, connectChecked, quoteIdent} from '../target/connect.js'
import type {CommandLock} from '../migrations/command-lock.js'
import {testPause} from '../test-pause.js'
import type {Target} from '../target/target.js'
import {PgTools} from '../target/tools.js'
import {type BackupInfo, chooseRollbackBackup, type ListedBackup, manifestPathFor, verifyBackup} from '../steps/backup.js'
import {newDatabaseName} from '../steps/clone.js'
import {checkPlainDump, newestPlainDumpSource} from '../steps/nself-dumps.js'
import {inspect, type Inspection} from '../steps/inspect.js'
import {compareWithBackup, describeLoss, rows, type TableLoss} from '../steps/loss.js'
import {TOUCHED_TABLES} from '../steps/preflight.js'
import {checkRestoredMatchesManifest, keptDatabaseName, restoreIntoNewDatabase, SwapCommittedError, swapDatabases} from '../steps/restore.js'
import {validateIdentifier} from '../pg/identifiers.js'
import {progressOf} from './log-renderer.js'
import {backupProduction, runSteps, type Step, timed} from './shared.js'
import {beginChangingCommand} from './command.js'
import {assertCanConfirm, confirm, fmtMs} from './ui.js'
import {existingRelations, type HasuraResult, syncHasuraMetadata} from '../hasura/metadata.js'

export interface RollbackOptions {
  target: Target
  strategy: 'restore' | 'down'
  yes: boolean
  json: boolean
  backupFile?: string
  /** down: the version to go back to (default 12); restore: only accepted when the backup is at that version. */
  to?: number
  jobs: number
  migrationsDir?: string
  lockTimeoutMs: number
  maxLockWaitMs: number
  runLockWaitMs: number
}

/**
 * restore: per table, the rows inserted (added), updated (changed) and deleted (removed) since the backup, all of
 * which the swap undoes; down: the rows in the tables and columns the down files drop (rows).
 */
export interface LossItem extends Partial<TableLoss> {
  table: string
  /** The line shown to the operator. */
  what: string
  rows?: number
}

export interface RollbackSummary {
  ok: boolean
  strategy: 'restore' | 'down'
  database: string
  before: number | null
  after: number | null
  backup: {file: string; created_at: string; ledger_version: number | null} | null
  /** What the rollback destroys (rows written since the backup, or rows in the tables the down files drop). */
  lost: LossItem[]
  reverted: number[]
  kept: {database: string; dropWith: string} | null
  swapWindowMs: number | null
  timings: Record<string, number>
  /** Wall-clock time of the whole run, from before the command lock to the summary (confirmation included). */
  elapsedMs: number
  /** The project's Hasura metadata brought in line with what is left. */
  hasura?: HasuraResult
}

interface Ctx {
  ins?: Inspection
  tools?: PgTools
  backup?: ListedBackup | BackupInfo
  restored?: {name: string; drop(): Promise<void>}
  lost: LossItem[]
  down?: RunReport
  kept?: string
  windowMs?: number
  after?: number | null
  timings: Record<string, number>
  hasura?: HasuraResult
}

export async function runRollback(o: RollbackOptions): Promise<RollbackSummary> {
  assertCanConfirm(o.yes, 'Rolling back the production database')
  // One command at a time on this database (a swap replaces it: the lock lives in the maintenance database).
  const startedAt = Date.now()
  const lock = await beginChangingCommand(o.target, {command: 'rollback', waitMs: o.runLockWaitMs})
  try {
    const s = await (o.strategy === 'restore' ? rollbackRestore(o, lock) : rollbackDown(o, lock))
    return {...s, elapsedMs: Date.now() - startedAt}
  } finally {
    await lock.release()
  }
}

/** Rollback option 1 of the guide, done safely (D7): restore beside, check, then swap names in one short step. */
async function rollbackRestore(o: RollbackOptions, lock: CommandLock): Promise<Omit<RollbackSummary, 'elapsedMs'>> {
  const ctx: Ctx = {lost: [], timings: {}}
  const db = o.target.conn.database
  const admin = lock.admin
  try {
    ctx.ins = await inspect(o.target, {migrationsDir: o.migrationsDir})
    const ins = ctx.ins
    const applied = ins.plan.migrations.filter((m) => m.state !== 'pending')
    if (applied.length === 0) {
      if (o.backupFile) {
        throw new UserError(`${db} has none of migrations ${versionList(ins)} applied, so there is nothing to roll back; restoring ${o.backupFile} would only replace its data with older data.`, {
          hint: 'To restore a backup over a database anyway, use nself db restore.',
        })
      }
      return nothingToRollBack(o, ins)
    }
    if (o.to !== undefined && (ins.plan.current ?? 0) <= o.to) {
      throw new UserError(`${db} is at migration ${ins.plan.current ?? 'none'}, not above --to ${o.to}: there is nothing to roll back.`, {exitCode: 2})
    }
    // Every name the rollback will create, checked before anything is restored.
    const keptName = keptDatabaseName(db)
    const restoreName = newDatabaseName(db, 'restore')
    validateIdentifier(db, 'database')
    validateIdentifier(keptName, 'kept database')
    validateIdentifier(restoreName, 'restored database')
    if (new Set([db, keptName, restoreName]).size !== 3) {
      throw new UserError(`Cannot roll back ${db}: the names for the restored copy (${restoreName}) and the kept database (${keptName}) would not differ from it.`)
    }
    const [{taken}] = await ins.sql<{taken: boolean}[]>`select exists (select 1 from pg_database where datname = ${keptName}) as taken`
    if (taken) throw new UserError(`Cannot roll back ${db}: a database named ${keptName} already exists.`, {hint: 'Wait a second and run again.'})
    // The restore creates a database and the swap renames the live one: CREATEDB and ownership of it (or superuser).
    const [may] = await ins.sql<{role: string; superuser: boolean; createdb: boolean; owns: boolean}[]>`
      select current_user as role, r.rolsuper as superuser, r.rolcreatedb as createdb,
        pg_has_role(current_user, d.datdba, 'USAGE') as owns
      from pg_roles r, pg_database d where r.rolname = current_user and d.datname = current_database()`
    const lacks = may.superuser ? [] : [...(may.createdb ? [] : ['CREATEDB (to restore the backup into a new database)']), ...(may.owns ? [] : [`ownership of the database ${db} (to rename it in the swap)`])]
    if (lacks.length > 0) {
      throw new UserError(`Cannot roll back ${db}: role ${may.role} lacks ${lacks.join(' and ')}.`, {hint: 'Run as the database owner with CREATEDB (POSTGRES_USER), or use --strategy down.'})
    }

    const before: Step<Ctx>[] = [
      {
        task: async (c, task) => timed(c, 'backup check', async () => {
          await lock.assertSameDatabase(ins.sql)
          c.tools = await PgTools.create(o.target)
          const firstMigration = ins.migrations[0].version
          const file = o.backupFile ?? (await pickBackup(o, ins, c.tools, (l) => { task.output = l }))
          // A dump without our manifest (nself's own backup) is read to the end and judged by what it holds.
          const checked = await verifyBackup({
            database: db, file, requireManifest: false, requireTables: {schema: ins.plan.appSchema, tables: TOUCHED_TABLES}, tools: c.tools,
          })
          const manifest = await checkPlainDump(c.tools, file, checked.manifest, db, firstMigration)
          if (o.to !== undefined && !backupIsAt(manifest.ledger_version, o.to, ins)) {
            throw new UserError(`--to ${o.to} cannot be honoured by a restore rollback: the backup ${file} was taken at migration ${manifest.ledger_version ?? 'none'}, so restoring it goes to ${manifest.ledger_version ?? 'none'}.`, {
              exitCode: 2, hint: `Use --strategy down --to ${o.to}, or leave out --to.`,
            })
          }
          c.backup = {file, manifest, manifestFile: manifestPathFor(file)}
          task.title = `Backup ${file}: sha256, archive and its database verified (taken ${manifest.created_at}, at migration ${manifest.ledger_version ?? 'none'})`
        }),
        title: 'Check the backup',
      },
      {
        task: async (c, task) => timed(c, 'restore', async () => {
          c.restored = await restoreIntoNewDatabase({
            admin, backup: c.backup!, jobs: o.jobs, log: (l) => { task.output = l },
            onProgress: (p) => progressOf(task)(`restoring: ${p.done}/${p.total} archive entries`), target: o.target, tools: c.tools!,
          })
          const rsql = connect(o.target.conn, {database: c.restored.name, max: 1})
          try {
            await checkRestoredMatchesManifest(rsql, c.backup!.manifest, (s) => readLedgerVersion(s, c.backup!.manifest.schema))
          } finally {
            await rsql.end({timeout: 2})
          }
          task.title = `Restored into ${c.restored.name} and checked against the manifest (row counts, ledger ${c.backup!.manifest.ledger_version ?? 'none'})`
        }),
        title: 'Restore into a new database',
      },
      {
        task: async (c, task) => timed(c, 'loss', async () => {
          task.output = 'comparing every table of the live database with the restored backup'
          c.lost = await lossSinceBackup(o, c.ins!, c.restored!.name)
          task.title = c.lost.length ? `Since the backup, written and lost by the rollback: ${c.lost.length} ${c.lost.length === 1 ? 'table' : 'tables'} differ` : 'Nothing was written since the backup'
        }),
        title: 'Count what the rollback loses',
      },
    ]
    await runSteps(before, ctx, o.json)

    if (!o.yes) {
      process.stderr.write(`\nAbout to replace ${db} by ${ctx.restored!.name} (the backup of ${ctx.backup!.manifest.created_at}). Connections to ${db} will be ended for a moment.\n`)
      for (const l of ctx.lost) process.stderr.write(`  will be lost: ${l.what}\n`)
      if (ctx.lost.length > 0) process.stderr.write('  (counted just now; whatever is written before the swap is lost too)\n')
      if (!(await confirm('Swap now?', false))) {
        throw new UserError(`Stopped at the confirmation; ${db} was not changed.`)
      }
    }

    await ctx.ins!.sql.end({timeout: 2})
    await testPause('rollback:before-swap')
    lock.assertHeld()
    const after: Step<Ctx>[] = [
      {
        task: async (c, task) => timed(c, 'swap', async () => {
          const r = await swapDatabases({admin, keptName, live: db, liveOid: lock.oid, log: (l) => { task.output = l }, replacement: c.restored!.name})
          c.kept = r.keptName
          c.windowMs = r.windowMs
          task.title = `Swapped: ${db} is the restored backup; the replaced database is kept as ${r.keptName} (new connections waited ${fmtMs(r.windowMs)})`
          await testPause('rollback:swapped')
        }),
        title: 'Swap the databases',
      },
      {
        task: async (c, task) => {
          await afterSwap(o, c)
          task.title = `Status: ${db} is at migration ${c.after ?? 'none'}`
        },
        title: 'Status',
      },
    ]
    try {
      await runSteps(after, ctx, o.json)
    } catch (error) {
      if (!(ctx.kept && error instanceof CancelledError)) throw error
      // Ctrl+C or SIGTERM came after the swap had committed: the rollback is done; finish its bookkeeping and say so.
      const status = await afterSwap(o, ctx).then(() => `at migration ${ctx.after ?? 'none'}`, () => 'its migration could not be read')
      throw interrupted(`Interrupted by ${interruption().by} after the swap had committed: ${db} now holds the restored backup (${status}) and the replaced database is kept as ${ctx.kept}.`,
        `Drop ${ctx.kept} when it is no longer needed: DROP DATABASE ${quoteIdent(ctx.kept)};`)
    }
    return {
      after: ctx.after ?? null,
      backup: {created_at: ctx.backup!.manifest.created_at, file: ctx.backup!.file, ledger_version: ctx.backup!.manifest.ledger_version},
      before: ctx.ins!.plan.current,
      database: db,
      kept: {database: ctx.kept!, dropWith: `DROP DATABASE ${quoteIdent(ctx.kept!)};`},
      lost: ctx.lost,
      ok: true,
      reverted: [],
      strategy: 'restore',
      swapWindowMs: ctx.windowMs ?? null,
      timings: ctx.timings,
      hasura: ctx.hasura,
    }
  } catch (error) {
    if (ctx.restored && !ctx.kept && !(error instanceof SwapCommittedError)) {
      // Say what is true: the restored copy is gone, or still there (and removed by the next command).
      const dropped = await ctx.restored.drop().then(() => `the restored copy ${ctx.restored!.name} was dropped`, (dropError: unknown) =>
        `the restored copy ${ctx.restored!.name} could not be dropped (${toUserError(dropError).message.replace(/\.$/, '')}); the next nself db e2ee command drops it`)
      if (error instanceof UserError) {
        error.message = `${error.message.replace(/\.$/, '')}; ${dropped}.`
      }
    }
    throw error
  } finally {
    await ctx.ins?.sql.end({timeout: 2}).catch(() => {})
  }
}

/** After the swap: the ledger of the restored database, and the project's Hasura metadata in line with it. */
async function afterSwap(o: RollbackOptions, c: Ctx): Promise<void> {
  const sql = await connectChecked(o.target.conn, {max: 1})
  try {
    c.after = await readLedgerVersion(sql, o.target.schema)
    const schema = c.ins!.plan.appSchema
    c.hasura = syncHasuraMetadata(o.target.projectDir, schema, await existingRelations(sql, schema))
  } finally {
    await sql.end({timeout: 2})
  }
}

/**
 * The newest backup from before the first of the upgrade's migrations (or at --to), or a refusal saying why none fits.
 * Ours are judged by their manifest; nself's own dumps (no manifest) by what they hold.
 */
async function pickBackup(o: RollbackOptions, ins: Inspection, tools: PgTools, log: (line: string) => void): Promise<string> {
  const db = o.target.conn.database
  const first = ins.migrations[0].version
  // When the migration after the wanted state was applied (our ledger knows): a backup must be older than that.
  const ledger = await activeLedgerRows(ins.sql)
  const next = [...ledger.values()].filter((r) => Number(r.version) > (o.to ?? first - 1)).sort((a, b) => Number(a.version) - Number(b.version))[0]
  const appliedAt = next ? new Date(next.applied_at) : undefined
  // --to 12 (before the first) is the default choice: any backup without the upgrade.
  const atVersion = o.to !== undefined && o.to >= first ? o.to : undefined
  const choice = await chooseRollbackBackup(o.target.backupDir, db, {appliedAt, atVersion, first})
  const candidates = choice.chosen ? [{createdAt: new Date(choice.chosen.manifest.created_at), file: choice.chosen.file}] : []
  if (atVersion === undefined) {
    const plain = await newestPlainDumpSource({before: appliedAt, database: db, dir: o.target.backupDir, firstMigration: first, log, tools})
    if (plain) candidates.push(plain)
  }
  const newest = candidates.sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime())[0]
  if (newest) return newest.file
  const wanted = o.to === undefined ? `from before migration ${String(first).padStart(3, '0')}` : `taken at migration ${o.to}`
  const seen = choice.passedOver[0] ? ` (the newest, ${choice.passedOver[0].backup.file}, was ${choice.passedOver[0].why})` : ''
  throw new UserError(`No pre-migration backup of ${db} ${wanted} in ${o.target.backupDir}${seen}; refusing to roll back without a way back.`, {
    exitCode: o.to === undefined ? 1 : 2,
    hint: o.to === undefined ? 'Name one with --backup FILE, or use --strategy down.' : `Use --strategy down --to ${o.to}, or name a backup with --backup FILE.`,
  })
}

/** A backup at `ledger` restores the database to `to` (any backup without the upgrade is at the version before it). */
function backupIsAt(ledger: number | null, to: number, ins: Inspection): boolean {
  const first = ins.migrations[0].version
  return to < first ? ledger === null || ledger < first : ledger === to
}

function versionList(ins: Inspection): string {
  return ins.migrations.map((m) => String(m.version).padStart(3, '0')).join(', ')
}

function nothingToRollBack(o: RollbackOptions, ins: Inspection): Omit<RollbackSummary, 'elapsedMs'> {
  return {
    after: ins.plan.current, backup: null, before: ins.plan.current, database: o.target.conn.database, kept: null, lost: [], ok: true,
    reverted: [], strategy: o.strategy, swapWindowMs: null, timings: {},
  }
}

/** Everything the swap would undo: every table's inserts, updates and deletes since the backup, and the data in columns added since. */
async function lossSinceBackup(o: RollbackOptions, ins: Inspection, restoredName: string): Promise<LossItem[]> {
  const rsql = connect(o.target.conn, {database: restoredName, max: 2})
  try {
    const tables = await compareWithBackup({backup: rsql, live: ins.sql})
    const lost: LossItem[] = tables.map((t) => ({...t, what: describeLoss(t)}))
    const columnsNow = ins.plan.migrations.filter((m) => m.state !== 'pending').map((m) => m.version)
    lost.push(...(await rowsInNewColumns(ins, columnsNow)))
    return lost
  } finally {
    await rsql.end({timeout: 2})
  }
}

/** Rows in the tables the down files of `versions` drop (013 and 014 create the same seven tables: each is counted once). */
async function rowsInNewTables(ins: Inspection, versions: number[]): Promise<LossItem[]> {
  const {sql, plan} = ins
  const out: LossItem[] = []
  const created = [...new Set(ins.migrations.filter((m) => versions.includes(m.version)).flatMap(createdTables))]
  for (const t of await existingTables(sql, plan.appSchema, created)) {
    const [{n}] = await sql.unsafe<{n: string}[]>(`select count(*)::bigint as n from ${quoteIdent(plan.appSchema)}.${quoteIdent(t)}`)
    if (Number(n) > 0) out.push({rows: Number(n), table: `${plan.appSchema}.${t}`, what: `${rows(Number(n))} in ${plan.appSchema}.${t} (the table is dropped)`})
  }
  return out
}

/** Data in the columns 014 adds to existing tables, which going back before 014 drops. */
async function rowsInNewColumns(ins: Inspection, versions: number[]): Promise<LossItem[]> {
  const {sql, plan} = ins
  const out: LossItem[] = []
  if (!versions.includes(14)) return out
  const s = quoteIdent(plan.appSchema)
  const cols = await sql<{table_name: string; column_name: string}[]>`
    select table_name, column_name from information_schema.columns
    where table_schema = ${plan.appSchema} and ((table_name = 'nchat_messages' and column_name = 'is_encrypted') or (table_name = 'nchat_channels' and column_name = 'enforce_encryption'))`
  if (cols.some((c) => c.column_name === 'is_encrypted')) {
    const [{n}] = await sql.unsafe<{n: string}[]>(`select count(*)::bigint as n from ${s}.nchat_messages where is_encrypted or encrypted_payload is not null or sender_device_id is not null`)
    if (Number(n) > 0) out.push({rows: Number(n), table: `${plan.appSchema}.nchat_messages`, what: `${plan.appSchema}.nchat_messages: ${rows(Number(n))} encrypted (their payload columns are dropped)`})
  }
  if (cols.some((c) => c.column_name === 'enforce_encryption')) {
    const [{n}] = await sql.unsafe<{n: string}[]>(`select count(*)::bigint as n from ${s}.nchat_channels where enforce_encryption`)
    if (Number(n) > 0) out.push({rows: Number(n), table: `${plan.appSchema}.nchat_channels`, what: `${plan.appSchema}.nchat_channels: ${rows(Number(n))} enforcing encryption (the setting is dropped)`})
  }
  return out
}

/** Rollback option 2 of the guide, done completely (D6): safety backup, then every down file newest first. */
async function rollbackDown(o: RollbackOptions, lock: CommandLock): Promise<Omit<RollbackSummary, 'elapsedMs'>> {
  const ctx: Ctx = {lost: [], timings: {}}
  const db = o.target.conn.database
  const runner = {beforeWrite: (q: Parameters<CommandLock['assertSameDatabase']>[0]) => lock.assertSameDatabase(q), lockTimeoutMs: o.lockTimeoutMs, maxLockWaitMs: o.maxLockWaitMs, runLockWaitMs: o.runLockWaitMs}
  const to = o.to ?? 12
  try {
    ctx.ins = await inspect(o.target, {migrationsDir: o.migrationsDir})
    await lock.assertSameDatabase(ctx.ins.sql)
    const ins = ctx.ins
    if (!ins.migrations.some((m) => m.version === to) && to !== ins.migrations[0].version - 1) {
      throw new UserError(`--to ${to} is not a version this rollback can reach (${ins.migrations[0].version - 1} or one of ${ins.migrations.map((m) => m.version).join(', ')}).`, {exitCode: 2})
    }
    const revert = ins.plan.migrations.filter((m) => m.version > to && m.state !== 'pending').map((m) => m.version)
    if (revert.length === 0) {
      return {after: ins.plan.current, backup: null, before: ins.plan.current, database: db, kept: null, lost: [], ok: true, reverted: [], strategy: 'down', swapWindowMs: null, timings: {}}
    }
    ctx.lost = [...(await rowsInNewTables(ins, revert)), ...(await rowsInNewColumns(ins, revert))]
    if (!o.yes) {
      process.stderr.write(`\nAbout to revert ${revert.map((v) => ins.migrations.find((m) => m.version === v)!.name).join(', ')} on ${db}.\n`)
      for (const l of ctx.lost) process.stderr.write(`  will be destroyed: ${l.what}\n`)
      if (ctx.lost.length === 0) process.stderr.write('  the tables to drop hold no rows\n')
      if (!(await confirm('Revert now? A safety backup is taken first.', false))) throw new UserError(`Stopped at the confirmation; ${db} was not changed.`)
    }
    const tasks: Step<Ctx>[] = [
      {
        task: async (c, task) => timed(c, 'backup', async () => {
          await lock.assertSameDatabase(ins.sql)
          c.tools = await PgTools.create(o.target)
          c.backup = await backupProduction({ins, output: (l) => { task.output = l }, progress: progressOf(task), purpose: 'pre-rollback', target: o.target, tools: c.tools})
          task.title = `Safety backup: ${c.backup.file}`
        }),
        title: 'Safety backup',
      },
      {
        task: async (c, task) => timed(c, 'down', async () => {
          c.down = await migrateDown({...runner, log: (l) => { task.output = l }, migrations: ins.migrations, schema: ins.plan.appSchema, sql: ins.sql, to})
          task.title = `Reverted ${c.down.migrations.map((m) => m.name).join(', ')}`
        }),
        title: 'Run the down migrations, newest first',
      },
      {
        task: async (c, task) => {
          c.after = await readLedgerVersion(ins.sql, ins.plan.appSchema)
          c.hasura = syncHasuraMetadata(o.target.projectDir, ins.plan.appSchema, await existingRelations(ins.sql, ins.plan.appSchema))
          task.title = `Status: ${db} is at migration ${c.after ?? 'none'}`
        },
        title: 'Status',
      },
    ]
    await runSteps(tasks, ctx, o.json)
    return {
      after: ctx.after ?? null,
      backup: ctx.backup ? {created_at: ctx.backup.manifest.created_at, file: ctx.backup.file, ledger_version: ctx.backup.manifest.ledger_version} : null,
      before: ins.plan.current,
      database: db,
      kept: null,
      lost: ctx.lost,
      ok: true,
      reverted: ctx.down?.reverted ?? [],
      strategy: 'down',
      swapWindowMs: null,
      timings: ctx.timings,
      hasura: ctx.hasura,
    }
  } finally {
    await ctx.ins?.sql.end({timeout: 2}).catch(() => {})
  }
}
