import {isCancelled} from '../cancel.js'
import {CancelledError, toUserError} from '../errors.js'
import type {MigrationFile} from '../migrations/files.js'
import type {Plan} from '../migrations/plan.js'
import {LEDGER_TABLE, ownLedgerExists} from '../migrations/ledger.js'
import {migrateUp, type RunnerOptions, type RunReport} from '../migrations/runner.js'
import {connect, type Sql} from '../connection/connect.js'
import type {Target} from '../connection/target.js'
import type {PgTools} from '../connection/tools.js'
import {createClone} from '../archive/clone.js'
import type {BackupInfo, ListedBackup} from '../archive/manifest.js'
import {testPause} from '../test-pause.js'
import {TOUCHED_TABLES} from '../nchat/tables.js'
import type {VerifyReport} from '../verify/report.js'
import {verifyDatabase} from '../verify/verify-database.js'

export interface DryRunOptions {
  target: Target
  tools: PgTools
  /** Connected to production (read only here). */
  sql: Sql
  backup: BackupInfo | ListedBackup
  migrations: MigrationFile[]
  /** Where production stands: its schema, its ledger, and tables a hand-run of the guide already made. */
  plan: Plan
  to?: number
  jobs?: number
  keep?: boolean
  runner: Pick<RunnerOptions, 'lockTimeoutMs' | 'maxLockWaitMs' | 'statementTimeoutMs' | 'buildTimeoutMs'>
  log: (line: string) => void
  progress: (line: string) => void
}

export interface DryRunReport {
  clone: string
  kept: boolean
  restoreMs: number
  /** The forecast: how long applying took on the clone. */
  applyMs: number
  leftOut: Array<{table: string; rows: number | null}>
  run?: RunReport
  verify?: VerifyReport
  /** Set when the migration (or its verification) would fail: one sentence naming the statement. */
  failure?: string
}

/**
 * The guide's dry run, made cheap and safe: restore the backup just taken into a throwaway database (only the
 * data the migration reads or alters), apply there, verify there, and always drop it.
 */
export async function dryRun(o: DryRunOptions): Promise<DryRunReport> {
  const schema = o.plan.appSchema
  // The tables the migration alters, tables a hand-run already made (their rows matter to the trial too), and the
  // ledgers, so the clone starts from production's migration state.
  const dataTables = [...new Set([...TOUCHED_TABLES, ...o.plan.migrations.flatMap((m) => m.preexisting)])].map((t) => `${schema}.${t}`)
  if (o.plan.shape.exists) dataTables.push(`${o.plan.shape.schema}.schema_migrations`)
  if (await ownLedgerExists(o.sql)) dataTables.push(LEDGER_TABLE)
  const clone = await createClone({
    admin: o.sql, backup: o.backup, dataTables, jobs: o.jobs, keep: o.keep, log: o.log,
    onProgress: (p) => o.progress(`restoring: ${p.done}/${p.total} archive entries${p.item ? ` (${p.item})` : ''}`),
    target: o.target, tools: o.tools,
  })
  await testPause('dryrun:clone-restored')
  const report: DryRunReport = {applyMs: 0, clone: clone.name, kept: Boolean(o.keep), leftOut: clone.leftOut, restoreMs: clone.restoreMs}
  let cloneSql: Sql | undefined
  try {
    cloneSql = connect(o.target.conn, {database: clone.name})
    const t0 = Date.now()
    try {
      report.run = await migrateUp({
        ...o.runner, beforeWrite: undefined, log: (l) => o.log(`[clone] ${l}`), migrations: o.migrations, observeLocks: true, progress: o.progress,
        revertOnFailure: false, schema, sql: cloneSql, to: o.to,
      })
    } catch (error) {
      // Ctrl+C stops the trial (its cancel handlers end the clone's sessions): that is no forecast of a failure.
      if (isCancelled()) throw new CancelledError('the dry run', `its copy ${clone.name} is dropped and production was not changed`)
      report.failure = toUserError(error).message
      return report
    } finally {
      report.applyMs = Date.now() - t0
    }
    if (isCancelled()) throw new CancelledError('the dry run', `its copy ${clone.name} is dropped and production was not changed`)
    report.verify = await verifyDatabase(cloneSql, {exactCounts: true, manifest: o.backup.manifest, schema, upTo: report.run.after ?? undefined})
    if (!report.verify.ok) report.failure = `Verification on the dry-run database failed: ${report.verify.failures[0]}`
    return report
  } finally {
    await cloneSql?.end({timeout: 2}).catch(() => {})
    if (!o.keep) await clone.drop()
  }
}
