import {CancelledError, interrupted, interruption, toUserError, UserError} from '../errors.js'
import {createdTables, existingTables} from '../migrations/plan.js'
import {activeLedgerRows, readLedgerVersion} from '../migrations/ledger.js'
import {migrateDown, type RunnerSettings} from '../migrations/runner.js'
import {connect, connectChecked} from '../connection/connect.js'
import type {CommandLock} from '../migrations/command-lock.js'
import {testPause} from '../test-pause.js'
import {PgTools} from '../connection/tools.js'
import {chooseRollbackBackup} from '../archive/listing.js'
import {manifestPathFor} from '../archive/manifest.js'
import {verifyBackup} from '../steps/backup.js'
import {newDatabaseName} from '../pg/databases.js'
import {checkPlainDump, newestPlainDumpSource} from '../steps/nself-dumps.js'
import {inspect, type Inspection} from '../migrations/inspect.js'
import {compareWithBackup, describeLoss, rows, type TableLoss} from '../steps/loss.js'
import {TOUCHED_TABLES} from '../nchat/tables.js'
import {
  checkRestoredMatchesManifest,
  keptDatabaseName,
  type RestoredDatabase,
  restoreIntoNewDatabase,
  SwapCommittedError,
  swapDatabases,
} from '../steps/restore.js'
import {quoteIdent, validateIdentifier} from '../pg/identifiers.js'
import type {RunScope} from '../run/scope.js'
import {backupProduction, Steps, timed} from './shared.js'
import {beginChangingCommand} from './command.js'
import {assertCanConfirm, confirm, fmtMs} from './ui.js'
import {existingRelations, type HasuraResult, syncHasuraMetadata} from '../hasura/metadata.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.pipeline.rollback')

/** What `rollback` is asked to do; the database is the scope's target. */
export interface RollbackOptions {
  strategy: 'restore' | 'down'
  yes: boolean
  json: boolean
  backupFile?: string
  /** down: the version to go back to (default 12); restore: only accepted when the backup is at that version. */
  to?: number
  jobs: number
  migrationsDir?: string
  runner: RunnerSettings
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

export async function runRollback(scope: RunScope, o: RollbackOptions): Promise<RollbackSummary> {
  assertCanConfirm(o.yes, messages.getMessage('info.ConfirmWhat'))
  const startedAt = Date.now()
  // Everything this run opens is closed when it ends, newest first: the pools, then the command lock.
  return scope.child(async (run) => {
    // One command at a time on this database (a swap replaces it: the lock lives in the maintenance database).
    const lock = await beginChangingCommand(run, {command: 'rollback', waitMs: o.runner.runLockWaitMs})
    const s = await (o.strategy === 'restore' ? rollbackRestore(run, o, lock) : rollbackDown(run, o, lock))
    return {...s, elapsedMs: Date.now() - startedAt}
  })
}

/** Rollback option 1 of the guide, done safely (D7): restore beside, check, then swap names in one short step. */
async function rollbackRestore(run: RunScope, o: RollbackOptions, lock: CommandLock): Promise<Omit<RollbackSummary, 'elapsedMs'>> {
  const timings: Record<string, number> = {}
  const {target} = run
  const db = target.conn.database
  const admin = lock.admin
  const steps = new Steps(run, o.json)
  // The restored copy until the swap has committed: a failure before that drops it and says so.
  let restored: RestoredDatabase | undefined
  let swapped: {keptName: string; windowMs: number} | undefined
  try {
    // The connections to the live database are closed before the swap (the child scope closes them on the way out).
    const ready = await run.child(async (reading) => {
      const ins = await inspect(target, {migrationsDir: o.migrationsDir})
      reading.ownPool(ins.sql)
      const applied = ins.plan.migrations.filter((m) => m.state !== 'pending')
      if (applied.length === 0) {
        if (o.backupFile) {
          throw new UserError(messages.getMessage('error.NothingApplied', [db, versionList(ins), o.backupFile]), {
            hint: messages.getMessage('error.NothingApplied.hint'),
          })
        }
        return {nothing: nothingToRollBack(o, ins, db), ready: false as const}
      }
      if (o.to !== undefined && (ins.plan.current ?? 0) <= o.to) {
        throw new UserError(messages.getMessage('error.NotAboveTo', [db, ins.plan.current ?? messages.getMessage('info.none'), o.to]), {exitCode: 2})
      }
      // Every name the rollback will create, checked before anything is restored.
      const keptName = keptDatabaseName(db)
      const restoreName = newDatabaseName(db, 'restore')
      validateIdentifier(db, 'database')
      validateIdentifier(keptName, 'kept database')
      validateIdentifier(restoreName, 'restored database')
      if (new Set([db, keptName, restoreName]).size !== 3) {
        throw new UserError(messages.getMessage('error.NamesCollide', [db, restoreName, keptName]))
      }
      const [{taken}] = await ins.sql<{taken: boolean}[]>`select exists (select 1 from pg_database where datname = ${keptName}) as taken`
      if (taken) throw new UserError(messages.getMessage('error.KeptNameTaken', [db, keptName]), {hint: messages.getMessage('error.KeptNameTaken.hint')})
      // The restore creates a database and the swap renames the live one: CREATEDB and ownership of it (or superuser).
      const [may] = await ins.sql<{role: string; superuser: boolean; createdb: boolean; owns: boolean}[]>`
        select current_user as role, r.rolsuper as superuser, r.rolcreatedb as createdb,
          pg_has_role(current_user, d.datdba, 'USAGE') as owns
        from pg_roles r, pg_database d where r.rolname = current_user and d.datname = current_database()`
      const lacks = may.superuser
        ? []
        : [...(may.createdb ? [] : [messages.getMessage('lacks.createdb')]), ...(may.owns ? [] : [messages.getMessage('lacks.ownership', [db])])]
      if (lacks.length > 0) {
        throw new UserError(
          lacks.length === 2
            ? messages.getMessage('error.RoleLacks.both', [db, may.role, lacks[0], lacks[1]])
            : messages.getMessage('error.RoleLacks', [db, may.role, lacks[0]]),
          {
            hint: messages.getMessage('error.RoleLacks.hint'),
          },
        )
      }

      const {backup, tools} = await steps.run(messages.getMessage('step.CheckBackup'), (task) =>
        timed(timings, 'backup check', async () => {
          await lock.assertSameDatabase(ins.sql)
          // The tools belong to the run (not to this phase): Ctrl+C during the swap still drops the restored copy.
          const tools = await PgTools.create(target, run)
          const firstMigration = ins.migrations[0].version
          const file = o.backupFile ?? (await pickBackup(o, run, ins, tools, (l) => task.scope.log.info(l)))
          // A dump without our manifest (nself's own backup) is read to the end and judged by what it holds.
          const checked = await verifyBackup({
            database: db,
            file,
            requireManifest: false,
            requireTables: {schema: ins.plan.appSchema, tables: TOUCHED_TABLES},
            tools,
          })
          const manifest = await checkPlainDump(tools, file, checked.manifest, db, firstMigration)
          if (o.to !== undefined && !backupIsAt(manifest.ledger_version, o.to, ins)) {
            throw new UserError(
              messages.getMessage('error.ToNotHonoured', [
                o.to,
                file,
                manifest.ledger_version ?? messages.getMessage('info.none'),
                manifest.ledger_version ?? messages.getMessage('info.none'),
              ]),
              {
                exitCode: 2,
                hint: messages.getMessage('error.ToNotHonoured.hint', [o.to]),
              },
            )
          }
          task.title = messages.getMessage('step.CheckBackup.done', [file, manifest.created_at, manifest.ledger_version ?? messages.getMessage('info.none')])
          return {backup: {file, manifest, manifestFile: manifestPathFor(file)}, tools}
        }),
      )
      const copy = await steps.run(messages.getMessage('step.Restore'), (task) =>
        timed(timings, 'restore', async () => {
          restored = await restoreIntoNewDatabase({
            admin,
            backup,
            jobs: o.jobs,
            log: (l) => task.scope.log.info(l),
            onProgress: (p) => task.scope.log.progress(messages.getMessage('info.Restoring', [p.done, p.total])),
            target,
            tools,
          })
          const {name} = restored
          await task.scope.child(async (checking) => {
            const rsql = checking.own(connect(target.conn, {database: name, max: 1}))
            await checkRestoredMatchesManifest(rsql, backup.manifest, (q) => readLedgerVersion(q, backup.manifest.schema))
          })
          task.title = messages.getMessage('step.Restore.done', [name, backup.manifest.ledger_version ?? messages.getMessage('info.none')])
          return restored
        }),
      )
      const lost = await steps.run(messages.getMessage('step.Loss'), (task) =>
        timed(timings, 'loss', async () => {
          task.scope.log.info(messages.getMessage('info.Comparing'))
          const found = await lossSinceBackup(task.scope, ins, copy.name)
          task.title = found.length
            ? found.length === 1
              ? messages.getMessage('step.Loss.one', [found.length])
              : messages.getMessage('step.Loss.many', [found.length])
            : messages.getMessage('step.Loss.none')
          return found
        }),
      )

      if (!o.yes) {
        process.stderr.write(`\n${messages.getMessage('info.AboutToReplace', [db, copy.name, backup.manifest.created_at, db])}\n`)
        for (const l of lost) process.stderr.write(`  ${messages.getMessage('info.WillBeLost', [l.what])}\n`)
        if (lost.length > 0) process.stderr.write(`  ${messages.getMessage('info.CountedJustNow')}\n`)
        if (!(await confirm(run, messages.getMessage('info.SwapNow'), false))) {
          throw new UserError(messages.getMessage('error.StoppedAtConfirmation', [db]))
        }
      }
      return {backup, copy, ins, keptName, lost, ready: true as const}
    })
    if (!ready.ready) return ready.nothing
    const {backup, copy, ins, keptName, lost} = ready

    await testPause('rollback:before-swap', run.signal)
    lock.assertHeld()
    let status: {after: number | null; hasura: HasuraResult} | undefined
    try {
      const swap = await steps.run(messages.getMessage('step.Swap'), (task) =>
        timed(timings, 'swap', async () => {
          const r = await swapDatabases({admin, keptName, live: db, liveOid: lock.oid, replacement: copy.name, scope: task.scope})
          swapped = r
          task.title = messages.getMessage('step.Swap.done', [db, r.keptName, fmtMs(r.windowMs)])
          await testPause('rollback:swapped', run.signal)
          return r
        }),
      )
      status = await steps.run(messages.getMessage('step.Status'), async (task) => {
        const now = await afterSwap(run, ins)
        task.title = messages.getMessage('step.Status.done', [db, now.after ?? messages.getMessage('info.none')])
        return now
      })
      return {
        after: status.after,
        backup: {created_at: backup.manifest.created_at, file: backup.file, ledger_version: backup.manifest.ledger_version},
        before: ins.plan.current,
        database: db,
        kept: {database: swap.keptName, dropWith: `DROP DATABASE ${quoteIdent(swap.keptName)};`},
        lost,
        ok: true,
        reverted: [],
        strategy: 'restore',
        swapWindowMs: swap.windowMs,
        timings,
        hasura: status.hasura,
      }
    } catch (error) {
      if (!(swapped && error instanceof CancelledError)) throw error
      // Ctrl+C or SIGTERM came after the swap had committed: the rollback is done; finish its bookkeeping and say so.
      const kept = swapped.keptName
      const now = await afterSwap(run, ins).then(
        (r) => messages.getMessage('info.AtMigration', [r.after ?? messages.getMessage('info.none')]),
        () => messages.getMessage('info.MigrationUnreadable'),
      )
      throw interrupted(
        messages.getMessage('error.InterruptedAfterSwap', [interruption().by, db, now, kept]),
        messages.getMessage('error.InterruptedAfterSwap.hint', [kept, quoteIdent(kept)]),
      )
    }
  } catch (error) {
    if (restored && !swapped && !(error instanceof SwapCommittedError)) {
      // Say what is true: the restored copy is gone, or still there (and removed by the next command).
      const {name} = restored
      const dropped = await restored.drop().then(
        () => messages.getMessage('info.CopyDropped', [name]),
        (dropError: unknown) => messages.getMessage('info.CopyNotDropped', [name, toUserError(dropError).message.replace(/\.$/, '')]),
      )
      if (error instanceof UserError) {
        error.message = `${error.message.replace(/\.$/, '')}; ${dropped}.`
      }
    }
    throw error
  }
}

/** After the swap: the ledger of the restored database, and the project's Hasura metadata in line with it. */
async function afterSwap(scope: RunScope, ins: Inspection): Promise<{after: number | null; hasura: HasuraResult}> {
  const {target} = scope
  return scope.child(async (reading) => {
    const sql = reading.own(await connectChecked(target.conn, {max: 1}))
    const after = await readLedgerVersion(sql, target.schema)
    const schema = ins.plan.appSchema
    return {after, hasura: syncHasuraMetadata(target.projectDir, schema, await existingRelations(sql, schema))}
  })
}

/**
 * The newest backup from before the first of the upgrade's migrations (or at --to), or a refusal saying why none fits.
 * Ours are judged by their manifest; nself's own dumps (no manifest) by what they hold.
 */
async function pickBackup(o: RollbackOptions, scope: RunScope, ins: Inspection, tools: PgTools, log: (line: string) => void): Promise<string> {
  const {target} = scope
  const db = target.conn.database
  const first = ins.migrations[0].version
  // When the migration after the wanted state was applied (our ledger knows): a backup must be older than that.
  const ledger = await activeLedgerRows(ins.sql)
  const next = [...ledger.values()].filter((r) => Number(r.version) > (o.to ?? first - 1)).sort((a, b) => Number(a.version) - Number(b.version))[0]
  const appliedAt = next ? new Date(next.applied_at) : undefined
  // --to 12 (before the first) is the default choice: any backup without the upgrade.
  const atVersion = o.to !== undefined && o.to >= first ? o.to : undefined
  const choice = await chooseRollbackBackup(target.backupDir, db, {appliedAt, atVersion, first})
  const candidates = choice.chosen ? [{createdAt: new Date(choice.chosen.manifest.created_at), file: choice.chosen.file}] : []
  if (atVersion === undefined) {
    const plain = await newestPlainDumpSource({before: appliedAt, database: db, dir: target.backupDir, firstMigration: first, log, tools})
    if (plain) candidates.push(plain)
  }
  const newest = candidates.sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime())[0]
  if (newest) return newest.file
  const wanted =
    o.to === undefined ? messages.getMessage('backup.wantedBefore', [String(first).padStart(3, '0')]) : messages.getMessage('backup.wantedAt', [o.to])
  const newestSeen = choice.passedOver[0]
  const message = newestSeen
    ? messages.getMessage('error.NoBackup.passedOver', [db, wanted, target.backupDir, newestSeen.backup.file, newestSeen.why])
    : messages.getMessage('error.NoBackup', [db, wanted, target.backupDir])
  throw new UserError(message, {
    exitCode: o.to === undefined ? 1 : 2,
    hint: o.to === undefined ? messages.getMessage('error.NoBackup.hint') : messages.getMessage('error.NoBackup.hint.to', [o.to]),
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

function nothingToRollBack(o: RollbackOptions, ins: Inspection, database: string): Omit<RollbackSummary, 'elapsedMs'> {
  return {
    after: ins.plan.current,
    backup: null,
    before: ins.plan.current,
    database,
    kept: null,
    lost: [],
    ok: true,
    reverted: [],
    strategy: o.strategy,
    swapWindowMs: null,
    timings: {},
  }
}

/** Everything the swap would undo: every table's inserts, updates and deletes since the backup, and the data in columns added since. */
async function lossSinceBackup(scope: RunScope, ins: Inspection, restoredName: string): Promise<LossItem[]> {
  return scope.child(async (comparing) => {
    const rsql = comparing.own(connect(scope.target.conn, {database: restoredName, max: 2}))
    const tables = await compareWithBackup({backup: rsql, live: ins.sql})
    const lost: LossItem[] = tables.map((t) => ({...t, what: describeLoss(t)}))
    const columnsNow = ins.plan.migrations.filter((m) => m.state !== 'pending').map((m) => m.version)
    lost.push(...(await rowsInNewColumns(ins, columnsNow)))
    return lost
  })
}

/** Rows in the tables the down files of `versions` drop (013 and 014 create the same seven tables: each is counted once). */
async function rowsInNewTables(ins: Inspection, versions: number[]): Promise<LossItem[]> {
  const {sql, plan} = ins
  const out: LossItem[] = []
  const created = [...new Set(ins.migrations.filter((m) => versions.includes(m.version)).flatMap(createdTables))]
  for (const t of await existingTables(sql, plan.appSchema, created)) {
    const [{n}] = await sql.unsafe<{n: string}[]>(`select count(*)::bigint as n from ${quoteIdent(plan.appSchema)}.${quoteIdent(t)}`)
    if (Number(n) > 0)
      out.push({rows: Number(n), table: `${plan.appSchema}.${t}`, what: messages.getMessage('loss.TableDropped', [rows(Number(n)), `${plan.appSchema}.${t}`])})
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
    const [{n}] = await sql.unsafe<{n: string}[]>(
      `select count(*)::bigint as n from ${s}.nchat_messages where is_encrypted or encrypted_payload is not null or sender_device_id is not null`,
    )
    if (Number(n) > 0)
      out.push({
        rows: Number(n),
        table: `${plan.appSchema}.nchat_messages`,
        what: messages.getMessage('loss.Encrypted', [`${plan.appSchema}.nchat_messages`, rows(Number(n))]),
      })
  }
  if (cols.some((c) => c.column_name === 'enforce_encryption')) {
    const [{n}] = await sql.unsafe<{n: string}[]>(`select count(*)::bigint as n from ${s}.nchat_channels where enforce_encryption`)
    if (Number(n) > 0)
      out.push({
        rows: Number(n),
        table: `${plan.appSchema}.nchat_channels`,
        what: messages.getMessage('loss.Enforcing', [`${plan.appSchema}.nchat_channels`, rows(Number(n))]),
      })
  }
  return out
}

/** Rollback option 2 of the guide, done completely (D6): safety backup, then every down file newest first. */
async function rollbackDown(run: RunScope, o: RollbackOptions, lock: CommandLock): Promise<Omit<RollbackSummary, 'elapsedMs'>> {
  const timings: Record<string, number> = {}
  const {target} = run
  const db = target.conn.database
  const to = o.to ?? 12
  const ins = await inspect(target, {migrationsDir: o.migrationsDir})
  run.ownPool(ins.sql)
  await lock.assertSameDatabase(ins.sql)
  if (!ins.migrations.some((m) => m.version === to) && to !== ins.migrations[0].version - 1) {
    throw new UserError(messages.getMessage('error.ToUnreachable', [to, ins.migrations[0].version - 1, ins.migrations.map((m) => m.version).join(', ')]), {
      exitCode: 2,
    })
  }
  const revert = ins.plan.migrations.filter((m) => m.version > to && m.state !== 'pending').map((m) => m.version)
  if (revert.length === 0) {
    return {
      after: ins.plan.current,
      backup: null,
      before: ins.plan.current,
      database: db,
      kept: null,
      lost: [],
      ok: true,
      reverted: [],
      strategy: 'down',
      swapWindowMs: null,
      timings: {},
    }
  }
  const lost = [...(await rowsInNewTables(ins, revert)), ...(await rowsInNewColumns(ins, revert))]
  if (!o.yes) {
    process.stderr.write(
      `\n${messages.getMessage('info.AboutToRevert', [revert.flatMap((v) => ins.migrations.filter((m) => m.version === v).map((m) => m.name)).join(', '), db])}\n`,
    )
    for (const l of lost) process.stderr.write(`  ${messages.getMessage('info.WillBeDestroyed', [l.what])}\n`)
    if (lost.length === 0) process.stderr.write(`  ${messages.getMessage('info.NoRows')}\n`)
    if (!(await confirm(run, messages.getMessage('info.RevertNow'), false))) throw new UserError(messages.getMessage('error.StoppedAtConfirmation', [db]))
  }
  const steps = new Steps(run, o.json)
  const backup = await steps.run(messages.getMessage('step.SafetyBackup'), (task) =>
    timed(timings, 'backup', async () => {
      await lock.assertSameDatabase(ins.sql)
      const tools = await PgTools.create(target, run)
      const taken = await backupProduction({ins, purpose: 'pre-rollback', scope: task.scope, target, tools})
      task.title = messages.getMessage('step.SafetyBackup.done', [taken.file])
      return taken
    }),
  )
  const down = await steps.run(messages.getMessage('step.Down'), (task) =>
    timed(timings, 'down', async () => {
      const report = await migrateDown({
        ...o.runner,
        beforeWrite: (q) => lock.assertSameDatabase(q),
        log: (l) => task.scope.log.info(l),
        migrations: ins.migrations,
        schema: ins.plan.appSchema,
        scope: task.scope,
        sql: ins.sql,
        to,
      })
      task.title = messages.getMessage('step.Down.done', [report.migrations.map((m) => m.name).join(', ')])
      return report
    }),
  )
  const status = await steps.run(messages.getMessage('step.Status'), async (task) => {
    const after = await readLedgerVersion(ins.sql, ins.plan.appSchema)
    const hasura = syncHasuraMetadata(target.projectDir, ins.plan.appSchema, await existingRelations(ins.sql, ins.plan.appSchema))
    task.title = messages.getMessage('step.Status.done', [db, after ?? messages.getMessage('info.none')])
    return {after, hasura}
  })
  return {
    after: status.after,
    backup: {created_at: backup.manifest.created_at, file: backup.file, ledger_version: backup.manifest.ledger_version},
    before: ins.plan.current,
    database: db,
    kept: null,
    lost,
    ok: true,
    reverted: down.reverted,
    strategy: 'down',
    swapWindowMs: null,
    timings,
    hasura: status.hasura,
  }
}
