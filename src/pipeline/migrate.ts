import {isCancelled, onCancel, untilCancelled} from '../cancel.js'
import {APP_NAME, connect, stopPool} from '../target/connect.js'
import {CancelledError, UserError} from '../errors.js'
import type {RunReport} from '../migrations/runner.js'
import {migrateUp} from '../migrations/runner.js'
import {describeChanges} from '../migrations/plan.js'
import type {Target} from '../target/target.js'
import {PgTools} from '../target/tools.js'
import type {BackupInfo} from '../steps/backup.js'
import {dryRun, type DryRunReport} from '../steps/dryrun.js'
import {inspect, type Inspection} from '../steps/inspect.js'
import {preflight, type PreflightReport, TOUCHED_TABLES} from '../steps/preflight.js'
import {VACUUM_TABLES, vacuumTables} from '../steps/vacuum.js'
import {verifyDatabase, type VerifyReport} from '../steps/verify.js'
import {existingRelations, type HasuraResult, writeHasuraMetadata} from '../hasura/metadata.js'
import {progressOf} from './log-renderer.js'
import {backupProduction, namingTheStep, runSteps, type Step, timed} from './shared.js'
import {beginChangingCommand} from './command.js'
import {assertCanConfirm, confirm, fmtMs} from './ui.js'
import {fmtBytes, plural} from '../text.js'

export interface MigrateOptions {
  target: Target
  yes: boolean
  json: boolean
  to?: number
  migrationsDir?: string
  skipBackup: boolean
  skipDryrun: boolean
  keepDryrunDb: boolean
  jobs: number
  lockTimeoutMs: number
  maxLockWaitMs: number
  runLockWaitMs: number
  log?: (line: string) => void
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

interface Ctx {
  hasura?: HasuraResult
  ins?: Inspection
  tools?: PgTools
  pre?: PreflightReport
  backup?: BackupInfo
  dry?: DryRunReport
  run?: RunReport
  verify?: VerifyReport
  vacuumed: string[]
  startedAt: number
  timings: Record<string, number>
  warnings: string[]
}

/** The guide's whole procedure, in order, stopping at the first failure with production as it was. */
export async function runMigrate(o: MigrateOptions): Promise<MigrateSummary> {
  if (o.skipBackup && !o.yes) {
    throw new UserError('--skip-backup needs --yes: migrating without a fresh backup leaves no way back but the down files.', {exitCode: 2})
  }
  assertCanConfirm(o.yes, 'Migrating the production database')
  const ctx: Ctx = {startedAt: Date.now(), timings: {}, vacuumed: [], warnings: []}
  // One command at a time on this database, whatever the command; held until the end, also on failure.
  const lock = await beginChangingCommand(o.target, {command: 'migrate', waitMs: o.runLockWaitMs})
  const guard = (q: Parameters<typeof lock.assertSameDatabase>[0]) => lock.assertSameDatabase(q)
  const runner = {beforeWrite: guard, lockTimeoutMs: o.lockTimeoutMs, maxLockWaitMs: o.maxLockWaitMs, runLockWaitMs: o.runLockWaitMs}

  try {
    const before: Step<Ctx>[] = [
      {
        task: async (c, task) => timed(c, 'preflight', () => readOnlyStep('the preflight', PREFLIGHT_STATE, o.target, async () => {
          const ins = await inspect(o.target, {migrationsDir: o.migrationsDir, to: o.to})
          if (isCancelled()) {
            // Ctrl+C came while the preflight waited: the step has already been reported as stopped.
            await stopPool(ins.sql)
            throw new CancelledError('the preflight', PREFLIGHT_STATE)
          }
          c.ins = ins
          await guard(c.ins.sql)
          if (c.ins.plan.toApply.length === 0) {
            task.title = `Preflight: nothing to apply, ${o.target.conn.database} is at ${c.ins.plan.current ?? 'nothing'}`
            return
          }
          const needTools = !o.skipBackup || !o.skipDryrun
          c.tools = needTools ? await PgTools.create(o.target) : undefined
          c.pre = await preflight({backupDir: o.skipBackup ? undefined : o.target.backupDir, ins: c.ins, needCreateDb: !o.skipDryrun, target: o.target, to: o.to, tools: c.tools})
          for (const ch of c.pre.checks.filter((x) => x.status === 'warn')) c.warnings.push(`${ch.name}: ${ch.detail}`)
          task.title = `Preflight: ${plural(c.pre.checks.length, 'check')} passed; to apply: ${c.ins.plan.toApply.map((m) => m.name).join(', ')}`
        })),
        title: 'Preflight',
      },
      {
        skip: (c) => nothing(c) || (o.skipBackup ? 'skipped (--skip-backup): NO BACKUP WAS TAKEN' : false),
        task: async (c, task) => timed(c, 'backup', () => namingTheStep('The backup', 'production was not changed', async () => {
          await guard(c.ins!.sql)
          c.backup = await backupProduction({ins: c.ins!, output: (l) => { task.output = l }, progress: progressOf(task), purpose: 'pre-migration', target: o.target, tools: c.tools!})
          task.title = `Backup: ${c.backup.file} (${fmtBytes(c.backup.bytes)}, verified)`
        })),
        title: 'Backup',
      },
      {
        skip: (c) => nothing(c) || (o.skipDryrun ? 'skipped (--skip-dryrun)' : false) || (o.skipBackup ? 'skipped: the dry run restores the backup, and there is none' : false),
        task: async (c, task) => timed(c, 'dryrun', async () => {
          const ins = c.ins!
          await guard(ins.sql)
          c.dry = await dryRun({
            backup: c.backup!, jobs: o.jobs, keep: o.keepDryrunDb, log: (l) => { task.output = l }, migrations: ins.migrations,
            plan: ins.plan, progress: progressOf(task), runner: {lockTimeoutMs: o.lockTimeoutMs, maxLockWaitMs: o.maxLockWaitMs}, sql: ins.sql, target: o.target, to: o.to, tools: c.tools!,
          })
          if (c.dry.failure) throw new UserError(`The dry run on a copy failed, so production was not touched: ${c.dry.failure.replace(/\.$/, '')}.`, {hint: 'Fix the cause shown, then run again.'})
          task.title = `Dry run: applied and verified on ${c.dry.clone} in ${fmtMs(c.dry.applyMs)} (restore ${fmtMs(c.dry.restoreMs)})${c.dry.kept ? ', kept' : ', dropped'}`
        }),
        title: 'Dry run on a restored copy',
      },
    ]
    await runSteps(before, ctx, o.json)
    const ins = ctx.ins!
    if (nothing(ctx)) return summary(o, ctx, true)

    if (!o.yes) {
      const forecast = ctx.dry ? `Forecast from the dry run: ${fmtMs(ctx.dry.applyMs)}.` : 'No dry run was made.'
      const backup = ctx.backup ? `Backup: ${ctx.backup.file}.` : 'NO BACKUP WAS TAKEN.'
      process.stderr.write(`\nAbout to change ${o.target.conn.database} (schema ${ins.plan.appSchema}) on ${o.target.conn.host}:${o.target.conn.port}:\n`)
      for (const m of ins.plan.toApply) process.stderr.write(`  ${describeChanges(m)}\n`)
      process.stderr.write(`${forecast} ${backup}\n`)
      if (!(await confirm('Apply to production now?', false, 'production was not changed'))) throw new UserError('Stopped at the confirmation; production was not changed.', {exitCode: 1})
    }

    const after: Step<Ctx>[] = [
      {
        task: async (c, task) => timed(c, 'apply', async () => {
          const t0 = Date.now()
          c.run = await migrateUp({
            ...runner, log: (l) => { task.output = l }, migrations: ins.migrations, progress: progressOf(task),
            schema: ins.plan.appSchema, sql: ins.sql, to: o.to,
          })
          if (c.run.migrations.length === 0) {
            task.title = `Apply: nothing left; another run brought ${o.target.conn.database} to ${c.run.after ?? 'nothing'} while this one waited`
            return
          }
          const retries = c.run.migrations.reduce((n, m) => n + m.lockRetries, 0)
          task.title = `Apply: ${c.run.migrations.map((m) => m.name).join(', ') || 'nothing left'} in ${fmtMs(Date.now() - t0)}${retries ? ` (${retries} lock retries)` : ''}`
        }),
        title: 'Apply to production',
      },
      {
        skip: (c) => (appliedNothing(c) ? 'skipped: this run applied nothing' : false),
        task: async (c, task) => timed(c, 'verify', () => namingTheStep('Verify', `the migrations stay applied (at ${c.run!.after}; verify only reads): check them later with \`nself db e2ee verify\``, async () => {
          c.verify = await untilCancelled(
            verifyDatabase(ins.sql, {exactCounts: false, manifest: c.backup?.manifest, schema: ins.plan.appSchema, upTo: c.run!.after ?? undefined}),
            () => new CancelledError('verify', `the migrations stay applied (at ${c.run!.after}; verify only reads): check them later with \`nself db e2ee verify\``),
          )
          for (const w of c.verify.checks.filter((x) => x.status === 'warn')) c.warnings.push(`${w.name}: ${w.detail}`)
          if (!c.verify.ok) throw new UserError(`Verification failed after the migration: ${c.verify.failures[0].replace(/\.$/, '')}${c.verify.failures.length > 1 ? ` (and ${c.verify.failures.length - 1} more)` : ''}.`, {hint: 'Run nself db e2ee verify for the full list; the backup is ' + (c.backup?.file ?? 'missing') + '.'})
          task.title = `Verify: ${plural(c.verify.checks.length, 'check')} passed`
        })),
        title: 'Verify',
      },
      {
        skip: (c) => (appliedNothing(c) ? 'skipped: this run applied nothing' : false),
        task: async (c, task) => timed(c, 'vacuum', () => namingTheStep('VACUUM (ANALYZE)', `the migrations stay applied (at ${c.run!.after}; the vacuum only refreshes statistics, run it again later)`, async () => {
          await guard(ins.sql)
          const done = await vacuumTables(ins.sql, ins.plan.appSchema, VACUUM_TABLES, progressOf(task))
          c.vacuumed = done.map((d) => d.table)
          task.title = `Vacuum: VACUUM ANALYZE of ${plural(c.vacuumed.length, 'table')}`
        })),
        title: 'Vacuum and analyze',
      },
      {
        task: async (c, task) => timed(c, 'hasura', async () => {
          c.hasura = writeHasuraMetadata(o.target.projectDir, ins.plan.appSchema, await existingRelations(ins.sql, ins.plan.appSchema))
          task.title = c.hasura.dir ? `Hasura metadata: ${c.hasura.written.length} files written in ${c.hasura.dir}` : 'Hasura metadata: none in this project'
        }),
        title: 'Hasura metadata',
      },
    ]
    await runSteps(after, ctx, o.json)
    return summary(o, ctx, appliedNothing(ctx))
  } finally {
    if (ctx.ins) await (isCancelled() ? stopPool(ctx.ins.sql) : ctx.ins.sql.end({timeout: 2}).catch(() => {}))
    await lock.release()
  }
}

const PREFLIGHT_STATE = 'production was not changed (the preflight only reads)'

/**
 * A step that only reads: Ctrl+C or SIGTERM stops it at once (its queries waiting on the server are cancelled),
 * and a lost connection is reported as this step's.
 */
async function readOnlyStep<T>(what: string, state: string, target: Target, fn: () => Promise<T>): Promise<T> {
  const dispose = onCancel(() => cancelOwnQueries(target))
  try {
    return await untilCancelled(namingTheStep(`${what[0].toUpperCase()}${what.slice(1)}`, state, fn), () => new CancelledError(what, state))
  } finally {
    dispose()
  }
}

/** Cancel this process's queries running on the target database (from a session of its own). */
async function cancelOwnQueries(target: Target): Promise<void> {
  const sql = connect(target.conn, {max: 1})
  try {
    await sql`select pg_cancel_backend(pid) from pg_stat_activity
      where application_name = ${APP_NAME} and datname = current_database() and pid <> pg_backend_pid() and state = 'active'`
  } finally {
    await sql.end({timeout: 1}).catch(() => {})
  }
}

function appliedNothing(c: Ctx): boolean {
  return Boolean(c.run && c.run.migrations.length === 0)
}

function nothing(c: Ctx): boolean {
  return Boolean(c.ins && c.ins.plan.toApply.length === 0)
}

function summary(o: MigrateOptions, c: Ctx, nothingToDo: boolean): MigrateSummary {
  const ins = c.ins!
  return {
    after: c.run?.after ?? ins.plan.current,
    applied: c.run?.migrations.map((m) => m.name) ?? [],
    appliedByOtherRun: appliedNothing(c),
    applyMs: c.timings.apply ?? null,
    backup: c.backup ? {bytes: c.backup.bytes, file: c.backup.file, sha256: c.backup.manifest.sha256} : null,
    before: ins.plan.current,
    database: o.target.conn.database,
    elapsedMs: Date.now() - c.startedAt,
    dryrun: c.dry ? {clone: c.dry.clone, forecastMs: c.dry.forecast?.ms ?? c.dry.applyMs, kept: c.dry.kept, leftOut: c.dry.leftOut, restoreMs: c.dry.restoreMs} : null,
    lockRetries: c.run?.migrations.reduce((n, m) => n + m.lockRetries, 0) ?? 0,
    nothingToDo,
    ok: true,
    preflight: c.pre?.checks ?? [],
    schema: ins.plan.appSchema,
    timings: c.timings,
    vacuumed: c.vacuumed,
    verify: c.verify ?? null,
    warnings: c.warnings,
    hasura: c.hasura ?? null,
  }
}
