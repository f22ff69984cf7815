import {CancelledError, toUserError} from '../errors.js'
import type {MigrationFile} from '../migrations/files.js'
import type {Plan} from '../migrations/plan.js'
import {LEDGER_TABLE, ownLedgerExists} from '../migrations/ledger.js'
import {migrateUp, type RunnerOptions, type RunnerSettings, type RunReport} from '../migrations/runner.js'
import {connect, type Sql} from '../connection/connect.js'
import type {Target} from '../connection/target.js'
import type {PgTools} from '../connection/tools.js'
import {createClone} from '../clone/clone.js'
import type {BackupInfo, ListedBackup, Manifest} from '../archive/manifest.js'
import {testPause} from '../test-pause.js'
import {type CloneContent, cloneContent, type KeptAltered} from '../clone/content.js'
import {type Forecast, forecastApply} from '../clone/forecast.js'
import {TOUCHED_TABLES} from '../nchat/tables.js'
import type {VerifyReport} from '../verify/report.js'
import {verifyDatabase} from '../verify/verify-database.js'
import type {RunScope} from '../run/scope.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.steps.dryrun')

export interface DryRunOptions {
  /** The run's scope: the step's logger, Ctrl+C (which drops the clone), and the clone's connections. */
  scope: RunScope
  target: Target
  tools: PgTools
  /** Connected to production (read only here). */
  sql: Sql
  /** The dump restored into the copy: a backup, or the rehearsal dump (whose manifest is only in memory). */
  backup: BackupInfo | ListedBackup | {file: string; manifest: Manifest}
  migrations: MigrationFile[]
  /** Where production stands: its schema, its ledger, and tables a hand-run of the guide already made. */
  plan: Plan
  to?: number
  jobs?: number
  keep?: boolean
  /** Restore every row of every table (the guide's full restore) instead of only what the migration reads. */
  full?: boolean
  /** What the copy holds, when decided before the dump (decideCopy); decided here otherwise. */
  content?: CloneContent
  /** Tables ("schema.table") whose rows the dump itself left out (a rehearsal dump). */
  leftOutOfArchive?: string[]
  /** The run's lock settings (the copy's run takes its own run lock, waiting as --lock-wait says). */
  runner: RunnerSettings & Pick<RunnerOptions, 'statementTimeoutMs' | 'buildTimeoutMs'>
}

export interface DryRunReport {
  clone: string
  kept: boolean
  restoreMs: number
  /** How long applying took on the clone. */
  applyMs: number
  /** The forecast of the apply on production (the clone's time, with scans of left-out rows scaled from a sample). */
  forecast?: Forecast
  /** 'slim': only the rows the migration reads (the default); 'full': every row (--full). */
  content: 'slim' | 'full'
  /** Tables whose rows were not restored, and why that cannot change the outcome. */
  leftOut: Array<{table: string; rows: number | null; why: string}>
  /** Tables 014 only alters whose rows were restored after all, and why. */
  keptAltered: KeptAltered[]
  run?: RunReport
  verify?: VerifyReport
  /** Set when the migration (or its verification) would fail: one sentence naming the statement. */
  failure?: string
}

/**
 * What the copy holds, decided from production's catalog (read only): the tables whose rows it restores, the
 * tables 014 only alters whose rows are left out (each with the proof) or kept after all. With `full`, every row.
 */
export async function decideCopy(o: Pick<DryRunOptions, 'full' | 'plan' | 'sql'>): Promise<CloneContent> {
  const schema = o.plan.appSchema
  // The tables the migration alters, tables a hand-run already made (their rows matter to the trial too), and the
  // ledgers, so the clone starts from production's migration state.
  const dataTables = [...new Set([...TOUCHED_TABLES, ...o.plan.migrations.flatMap((m) => m.preexisting)])].map((t) => `${schema}.${t}`)
  if (o.plan.shape.exists) dataTables.push(`${o.plan.shape.schema}.schema_migrations`)
  if (await ownLedgerExists(o.sql)) dataTables.push(LEDGER_TABLE)
  return o.full ? {dataTables, keptAltered: [], slim: []} : cloneContent(o.sql, o.plan, dataTables)
}

/**
 * The guide's dry run, made cheap and safe: restore a dump (the backup just taken, or the standalone dry run's
 * rehearsal dump) into a throwaway database (only the data the migration reads or alters), apply there, verify
 * there, and always drop it.
 */
export async function dryRun(o: DryRunOptions): Promise<DryRunReport> {
  const {scope} = o
  const log = (line: string) => scope.log.info(line)
  const schema = o.plan.appSchema
  const content = o.content ?? (await decideCopy(o))
  for (const s of content.slim) log(messages.getMessage('info.LeavingOut', [s.table, s.why]))
  for (const k of content.keptAltered) log(messages.getMessage('info.RestoringRows', [k.table, k.why]))
  const clone = await createClone({
    admin: o.sql,
    allData: o.full,
    backup: o.backup,
    dataTables: content.dataTables,
    jobs: o.jobs,
    keep: o.keep,
    leftOutOfArchive: o.leftOutOfArchive,
    log,
    onProgress: (p) =>
      scope.log.progress(
        p.item ? messages.getMessage('info.RestoreProgressItem', [p.done, p.total, p.item]) : messages.getMessage('info.RestoreProgress', [p.done, p.total]),
      ),
    target: o.target,
    tools: o.tools,
  })
  await testPause('dryrun:clone-restored', scope.signal)
  // A table of ALTERED_ONLY restored after all (a kept table references it) is no longer slim.
  const slim = content.slim.filter((s) => clone.leftOut.some((l) => l.table === s.table || l.table === `${s.schema}.${s.table}`))
  const leftOut = clone.leftOut.map((l) => ({
    ...l,
    why: slim.find((s) => l.table === s.table || l.table === `${s.schema}.${s.table}`)?.why ?? messages.getMessage('info.NotReadWhy'),
  }))
  const report: DryRunReport = {
    applyMs: 0,
    clone: clone.name,
    content: o.full ? 'full' : 'slim',
    keptAltered: content.keptAltered,
    kept: Boolean(o.keep),
    leftOut,
    restoreMs: clone.restoreMs,
  }
  try {
    // The clone's connections are closed before it is dropped (the child scope closes what it owns on the way out).
    return await scope.child(async (run) => {
      const cloneSql = run.own(connect(o.target.conn, {database: clone.name}))
      const t0 = Date.now()
      try {
        report.run = await migrateUp({
          ...o.runner,
          beforeWrite: undefined,
          log: (l) => log(`[clone] ${l}`),
          migrations: o.migrations,
          observeLocks: true,
          progress: (l) => scope.log.progress(l),
          revertOnFailure: false,
          schema,
          scope: run,
          sql: cloneSql,
          to: o.to,
        })
      } catch (error) {
        // Ctrl+C stops the trial (its cancel handlers end the clone's sessions): that is no forecast of a failure.
        if (run.cancelled) throw new CancelledError(messages.getMessage('info.Step'), messages.getMessage('info.CancelledOutcome', [clone.name]))
        report.failure = toUserError(error).message
        return report
      } finally {
        report.applyMs = Date.now() - t0
      }
      if (run.cancelled) throw new CancelledError(messages.getMessage('info.Step'), messages.getMessage('info.CancelledOutcome', [clone.name]))
      // Row counts are compared only for tables whose rows the clone holds.
      const counts = Object.fromEntries(Object.entries(o.backup.manifest.row_counts ?? {}).filter(([t]) => !slim.some((s) => s.table === t)))
      report.verify = await verifyDatabase(cloneSql, {
        exactCounts: true,
        manifest: {...o.backup.manifest, row_counts: counts},
        schema,
        upTo: report.run.after ?? undefined,
      })
      if (!report.verify.ok) {
        report.failure = messages.getMessage('error.VerifyFailed', [report.verify.failures[0]])
        return report
      }
      const applied = report.run
      report.forecast = await run.child(async (measuring) =>
        forecastApply({
          applyMs: report.applyMs,
          clone: measuring.own(connect(o.target.conn, {database: clone.name, max: 1})),
          log,
          migrations: o.migrations,
          openProd: () => connect(o.target.conn, {max: 1}),
          prod: o.sql,
          run: applied,
          schema,
          slim,
        }),
      )
      return report
    })
  } finally {
    if (!o.keep) await clone.drop()
  }
}
