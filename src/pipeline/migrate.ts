import {APP_NAME, connect} from '../connection/connect.js'
import {CancelledError, UserError} from '../errors.js'
import {migrateUp, type RunnerSettings} from '../migrations/runner.js'
import {describeChanges} from '../migrations/plan.js'
import type {Target} from '../connection/target.js'
import {PgTools} from '../connection/tools.js'
import {dryRun, type DryRunReport} from '../steps/dryrun.js'
import {inspect, type Inspection} from '../migrations/inspect.js'
import {preflight, type PreflightReport} from '../steps/preflight.js'
import {VACUUM_TABLES} from '../nchat/tables.js'
import {vacuumTables} from '../steps/vacuum.js'
import type {VerifyReport} from '../verify/report.js'
import {verifyDatabase} from '../verify/verify-database.js'
import {existingRelations, type HasuraResult, writeHasuraMetadata} from '../hasura/metadata.js'
import type {RunScope} from '../run/scope.js'
import {backupProduction, namingTheStep, rehearsalOptions, Steps, timed} from './shared.js'
import {beginChangingCommand} from './command.js'
import {assertCanConfirm, confirm, fmtMs} from './ui.js'
import {fmtBytes, plural} from '../text.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.pipeline.migrate')

/** What `migrate` is asked to do; the database is the scope's target. */
export interface MigrateOptions {
  yes: boolean
  json: boolean
  to?: number
  migrationsDir?: string
  skipBackup: boolean
  skipDryrun: boolean
  keepDryrunDb: boolean
  jobs: number
  runner: RunnerSettings
}

export interface MigrateSummary {
  ok: boolean
  database: string
  schema: string
  before: number | null
  after: number | null
  applied: string[]
  nothingToDo: boolean
  /** Another run applied the migrations while this one waited for it: this run applied nothing. */
  appliedByOtherRun: boolean
  backup: {file: string; bytes: number; sha256: string} | null
  dryrun: {forecastMs: number; restoreMs: number; clone: string; kept: boolean; leftOut: DryRunReport['leftOut']} | null
  applyMs: number | null
  lockRetries: number
  verify: VerifyReport | null
  vacuumed: string[]
  preflight: PreflightReport['checks']
  timings: Record<string, number>
  /** Wall-clock time of the whole run, from before the command lock to the summary (confirmation included). */
  elapsedMs: number
  warnings: string[]
  /** The Hasura metadata written to the project, and what the operator still has to run. */
  hasura: HasuraResult | null
}

/** The guide's whole procedure, in order, stopping at the first failure with production as it was. */
export async function runMigrate(scope: RunScope, o: MigrateOptions): Promise<MigrateSummary> {
  if (o.skipBackup && !o.yes) {
    throw new UserError(messages.getMessage('error.SkipBackupNeedsYes'), {exitCode: 2})
  }
  assertCanConfirm(o.yes, messages.getMessage('info.ConfirmWhat'))
  const startedAt = Date.now()
  const timings: Record<string, number> = {}
  const warnings: string[] = []
  const {target} = scope
  // Everything this run opens is closed when it ends, newest first: the pools, then the command lock.
  return scope.child(async (run) => {
    // One command at a time on this database, whatever the command; held until the end, also on failure.
    const lock = await beginChangingCommand(run, {command: 'migrate', waitMs: o.runner.runLockWaitMs})
    const guard = (q: Parameters<typeof lock.assertSameDatabase>[0]) => lock.assertSameDatabase(q)
    const steps = new Steps(run, o.json)
    const done = (r: Partial<MigrateSummary> & Pick<MigrateSummary, 'after' | 'before' | 'schema' | 'nothingToDo'>): MigrateSummary => ({
      after: r.after,
      applied: r.applied ?? [],
      appliedByOtherRun: r.appliedByOtherRun ?? false,
      applyMs: timings.apply ?? null,
      backup: r.backup ?? null,
      before: r.before,
      database: target.conn.database,
      elapsedMs: Date.now() - startedAt,
      dryrun: r.dryrun ?? null,
      lockRetries: r.lockRetries ?? 0,
      nothingToDo: r.nothingToDo,
      ok: true,
      preflight: r.preflight ?? [],
      schema: r.schema,
      timings,
      vacuumed: r.vacuumed ?? [],
      verify: r.verify ?? null,
      warnings,
      hasura: r.hasura ?? null,
    })

    const pre = await steps.run(messages.getMessage('step.Preflight'), (task) =>
      timed(timings, 'preflight', () =>
        readOnlyStep(run, messages.getMessage('step.Preflight.name'), messages.getMessage('step.Preflight.what'), PREFLIGHT_STATE, async () => {
          const ins = await inspect(target, {migrationsDir: o.migrationsDir, to: o.to})
          run.ownPool(ins.sql)
          // Ctrl+C came while the preflight waited: the step has already been reported as stopped (the scope stops the pool).
          if (run.cancelled) throw new CancelledError(messages.getMessage('step.Preflight.what'), PREFLIGHT_STATE)
          await guard(ins.sql)
          if (ins.plan.toApply.length === 0) {
            task.title = messages.getMessage('step.Preflight.nothingToApply', [target.conn.database, ins.plan.current ?? messages.getMessage('info.nothing')])
            return {ins, todo: false as const}
          }
          const needTools = !o.skipBackup || !o.skipDryrun
          const tools = needTools ? await PgTools.create(target, run) : undefined
          const report = await preflight({backupDir: o.skipBackup ? undefined : target.backupDir, ins, needCreateDb: !o.skipDryrun, target, to: o.to, tools})
          for (const ch of report.checks.filter((x) => x.status === 'warn')) warnings.push(`${ch.name}: ${ch.detail}`)
          task.title = messages.getMessage('step.Preflight.done', [plural(report.checks.length, 'check'), ins.plan.toApply.map((m) => m.name).join(', ')])
          return {ins, report, todo: true as const, tools}
        }),
      ),
    )
    const {ins} = pre
    if (!pre.todo) {
      await steps.skip(messages.getMessage('step.Backup'))
      await steps.skip(messages.getMessage('step.DryRun'))
      return done({after: ins.plan.current, before: ins.plan.current, nothingToDo: true, schema: ins.plan.appSchema})
    }
    const {tools} = pre

    const backup =
      o.skipBackup || !tools
        ? await steps.skip(messages.getMessage('step.Backup'), messages.getMessage('step.Backup.skipped'))
        : await steps.run(messages.getMessage('step.Backup'), (task) =>
            timed(timings, 'backup', () =>
              namingTheStep(messages.getMessage('step.Backup.name'), messages.getMessage('state.ProductionUnchanged'), async () => {
                await guard(ins.sql)
                const taken = await backupProduction({ins, purpose: 'pre-migration', scope: task.scope, target, tools})
                task.title = messages.getMessage('step.Backup.done', [taken.file, fmtBytes(taken.bytes)])
                return taken
              }),
            ),
          )

    const dry = o.skipDryrun
      ? await steps.skip(messages.getMessage('step.DryRun'), messages.getMessage('step.DryRun.skipped'))
      : !backup || !tools
        ? await steps.skip(messages.getMessage('step.DryRun'), messages.getMessage('step.DryRun.noBackup'))
        : await steps.run(messages.getMessage('step.DryRun'), (task) =>
            timed(timings, 'dryrun', async () => {
              await guard(ins.sql)
              const report = await dryRun({...rehearsalOptions(ins, o, task.scope, tools), backup})
              if (report.failure)
                throw new UserError(messages.getMessage('error.DryRunFailed', [report.failure.replace(/\.$/, '')]), {
                  hint: messages.getMessage('error.DryRunFailed.hint'),
                })
              task.title = report.kept
                ? messages.getMessage('step.DryRun.done.kept', [report.clone, fmtMs(report.applyMs), fmtMs(report.restoreMs)])
                : messages.getMessage('step.DryRun.done.dropped', [report.clone, fmtMs(report.applyMs), fmtMs(report.restoreMs)])
              return report
            }),
          )

    if (!o.yes) {
      const forecast = dry ? messages.getMessage('info.Forecast', [fmtMs(dry.applyMs)]) : messages.getMessage('info.NoDryRun')
      const taken = backup ? messages.getMessage('info.BackupTaken', [backup.file]) : messages.getMessage('info.NoBackup')
      process.stderr.write(`\n${messages.getMessage('info.AboutToChange', [target.conn.database, ins.plan.appSchema, target.conn.host, target.conn.port])}\n`)
      for (const m of ins.plan.toApply) process.stderr.write(`  ${describeChanges(m)}\n`)
      process.stderr.write(`${forecast} ${taken}\n`)
      if (!(await confirm(run, messages.getMessage('info.ApplyNow'), false, messages.getMessage('state.ProductionUnchanged'))))
        throw new UserError(messages.getMessage('error.StoppedAtConfirmation'), {exitCode: 1})
    }

    const applied = await steps.run(messages.getMessage('step.Apply'), (task) =>
      timed(timings, 'apply', async () => {
        const t0 = Date.now()
        const report = await migrateUp({
          ...o.runner,
          beforeWrite: guard,
          log: (l) => task.scope.log.info(l),
          migrations: ins.migrations,
          progress: (l) => task.scope.log.progress(l),
          schema: ins.plan.appSchema,
          scope: task.scope,
          sql: ins.sql,
          to: o.to,
        })
        if (report.migrations.length === 0) {
          task.title = messages.getMessage('step.Apply.otherRun', [target.conn.database, report.after ?? messages.getMessage('info.nothing')])
          return report
        }
        const retries = report.migrations.reduce((n, m) => n + m.lockRetries, 0)
        const names = report.migrations.map((m) => m.name).join(', ') || messages.getMessage('step.Apply.nothingLeft')
        task.title = retries
          ? messages.getMessage('step.Apply.done.withRetries', [names, fmtMs(Date.now() - t0), retries])
          : messages.getMessage('step.Apply.done', [names, fmtMs(Date.now() - t0)])
        return report
      }),
    )
    const summary = (rest: Partial<MigrateSummary>): MigrateSummary =>
      done({
        after: applied.after ?? ins.plan.current,
        applied: applied.migrations.map((m) => m.name),
        appliedByOtherRun: applied.migrations.length === 0,
        backup: backup ? {bytes: backup.bytes, file: backup.file, sha256: backup.manifest.sha256} : null,
        before: ins.plan.current,
        dryrun: dry ? {clone: dry.clone, forecastMs: dry.forecast?.ms ?? dry.applyMs, kept: dry.kept, leftOut: dry.leftOut, restoreMs: dry.restoreMs} : null,
        lockRetries: applied.migrations.reduce((n, m) => n + m.lockRetries, 0),
        nothingToDo: applied.migrations.length === 0,
        preflight: pre.report.checks,
        schema: ins.plan.appSchema,
        ...rest,
      })
    if (applied.migrations.length === 0) {
      await steps.skip(messages.getMessage('step.Verify'), messages.getMessage('step.AppliedNothing'))
      await steps.skip(messages.getMessage('step.Vacuum'), messages.getMessage('step.AppliedNothing'))
      const hasura = await hasuraStep(steps, timings, target, ins.sql, ins.plan.appSchema)
      return summary({hasura})
    }

    const stays = messages.getMessage('state.VerifyStays', [String(applied.after)])
    const verify = await steps.run(messages.getMessage('step.Verify'), (task) =>
      timed(timings, 'verify', () =>
        namingTheStep(messages.getMessage('step.Verify.name'), stays, async () => {
          const report = await run.untilCancelled(
            verifyDatabase(ins.sql, {exactCounts: false, manifest: backup?.manifest, schema: ins.plan.appSchema, upTo: applied.after ?? undefined}),
            () => new CancelledError(messages.getMessage('step.Verify.what'), stays),
          )
          for (const w of report.checks.filter((x) => x.status === 'warn')) warnings.push(`${w.name}: ${w.detail}`)
          if (!report.ok)
            throw new UserError(
              report.failures.length > 1
                ? messages.getMessage('error.VerifyFailed.more', [report.failures[0].replace(/\.$/, ''), report.failures.length - 1])
                : messages.getMessage('error.VerifyFailed', [report.failures[0].replace(/\.$/, '')]),
              {hint: backup ? messages.getMessage('error.VerifyFailed.hint', [backup.file]) : messages.getMessage('error.VerifyFailed.hint.noBackup')},
            )
          task.title = messages.getMessage('step.Verify.done', [plural(report.checks.length, 'check')])
          return report
        }),
      ),
    )

    const vacuumed = await steps.run(messages.getMessage('step.Vacuum'), (task) =>
      timed(timings, 'vacuum', () =>
        namingTheStep(messages.getMessage('step.Vacuum.name'), messages.getMessage('state.VacuumStays', [String(applied.after)]), async () => {
          await guard(ins.sql)
          const tables = (await vacuumTables(ins.sql, ins.plan.appSchema, VACUUM_TABLES, task.scope)).map((d) => d.table)
          task.title = messages.getMessage('step.Vacuum.done', [plural(tables.length, 'table')])
          return tables
        }),
      ),
    )

    const hasura = await hasuraStep(steps, timings, target, ins.sql, ins.plan.appSchema)
    return summary({hasura, vacuumed, verify})
  })
}

/** The Hasura metadata written to the project for the tables the database now has. */
function hasuraStep(steps: Steps, timings: Record<string, number>, target: Target, sql: Inspection['sql'], schema: string): Promise<HasuraResult> {
  return steps.run(messages.getMessage('step.Hasura'), (task) =>
    timed(timings, 'hasura', async () => {
      const hasura = writeHasuraMetadata(target.projectDir, schema, await existingRelations(sql, schema))
      task.title = hasura.dir ? messages.getMessage('step.Hasura.written', [hasura.written.length, hasura.dir]) : messages.getMessage('step.Hasura.none')
      return hasura
    }),
  )
}

const PREFLIGHT_STATE = messages.getMessage('state.PreflightOnlyReads')

/**
 * A step that only reads: Ctrl+C or SIGTERM stops it at once (its queries waiting on the server are cancelled),
 * and a lost connection is reported as this step's.
 */
async function readOnlyStep<T>(scope: RunScope, name: string, what: string, state: string, fn: () => Promise<T>): Promise<T> {
  const dispose = scope.onCancel(() => cancelOwnQueries(scope))
  try {
    return await scope.untilCancelled(namingTheStep(name, state, fn), () => new CancelledError(what, state))
  } finally {
    dispose()
  }
}

/** Cancel this process's queries running on the target database (from a session of its own, closed on the way out). */
async function cancelOwnQueries(scope: RunScope): Promise<void> {
  await scope.child(async (cancelling) => {
    const sql = connect(scope.target.conn, {max: 1})
    cancelling.defer(() => sql.end({timeout: 1}).catch(() => {}))
    await sql`select pg_cancel_backend(pid) from pg_stat_activity
      where application_name = ${APP_NAME} and datname = current_database() and pid <> pg_backend_pid() and state = 'active'`
  })
}
