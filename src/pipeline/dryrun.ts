import {PgTools} from '../connection/tools.js'
import {type BackupInfo, type ListedBackup, manifestPathFor} from '../archive/manifest.js'
import {type RehearsalDump, takeRehearsalDump, verifyBackup} from '../steps/backup.js'
import {existingTables} from '../migrations/plan.js'
import type {RunnerSettings} from '../migrations/runner.js'
import {decideCopy, dryRun, type DryRunReport} from '../steps/dryrun.js'
import type {CloneContent} from '../clone/content.js'
import {TOUCHED_TABLES} from '../nchat/tables.js'
import {inspect} from '../migrations/inspect.js'
import {preflight, type PreflightReport} from '../steps/preflight.js'
import type {RunScope} from '../run/scope.js'
import {backupProduction, rehearsalOptions, Steps, timed} from './shared.js'
import {beginChangingCommand} from './command.js'
import {fmtMs} from './ui.js'
import {fmtBytes, plural} from '../text.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.pipeline.dryrun')

/** What `dryrun` is asked to do; the database is the scope's target. */
export interface DryRunCommandOptions {
  json: boolean
  fromBackup?: string
  to?: number
  jobs: number
  keepDryrunDb: boolean
  /** Restore every row (the guide's full restore) instead of only the rows the migration reads. */
  full?: boolean
  migrationsDir?: string
  runner: RunnerSettings
}

export interface DryRunSummary {
  ok: boolean
  database: string
  schema: string
  current: number | null
  wouldApply: string[]
  /** The backup the copy was restored from (--from-backup, or the one --full takes); null with the rehearsal dump. */
  backup: {file: string; taken: boolean} | null
  /**
   * Without --from-backup and --full: the rehearsal dump the copy was restored from (the schema and the rows of the
   * tables the copy restores; not a backup), and whether it is gone: it is removed however the run ends, so false
   * only when deleting it failed (the report then names the file).
   */
  rehearsalDump: {file: string; bytes: number; tablesWithData: string[]; removed: boolean} | null
  clone: string | null
  kept: boolean
  /** The forecast apply time on production (see `forecast` for how it was made and its stated error). */
  forecastMs: number | null
  /** The apply as measured on the clone. */
  applyMs: number | null
  forecast: DryRunReport['forecast'] | null
  restoreMs: number | null
  /** 'slim': the clone held only the rows the migration reads (default); 'full': every row (--full). */
  content: DryRunReport['content'] | null
  /** Tables whose rows were not restored, and why that cannot change the outcome. */
  leftOut: DryRunReport['leftOut']
  /** Tables 014 only alters whose rows were restored after all, and why. */
  keptAltered: DryRunReport['keptAltered']
  /** The tables the statements lock that exist in production now: live traffic can wait on those locks. */
  existingTables: string[]
  /** Every statement of every migration: where it runs, the locks it took on which tables, its time on the clone and its forecast on production. */
  statements: Array<{
    migration: string
    line: number
    statement: string
    inTransaction: boolean
    runsAlone: string | null
    locks: Array<{table: string; mode: string}>
    ms: number
    forecastMs: number
  }>
  verification: {ok: boolean; checks: number; failures: string[]} | null
  failure: string | null
  preflight: PreflightReport['checks']
  /** Each step's time, and the whole run's (from before the command lock to the summary). */
  timings: Record<string, number>
  elapsedMs: number
}

/** The title of the standalone dry run's second step when it takes no backup. */
const REHEARSAL_STEP = messages.getMessage('step.Rehearsal')

/** The guide's dry run as its own command: production is only read, nothing in it changes. */
export async function runDryRun(scope: RunScope, o: DryRunCommandOptions): Promise<DryRunSummary> {
  const startedAt = Date.now()
  const timings: Record<string, number> = {}
  const {target} = scope
  // A backup only with --from-backup (checked) or --full (taken, verified, kept). Otherwise production is only
  // read, so no backup: a dump of what the copy restores, removed when the run ends, however it ends.
  const withBackup = Boolean(o.fromBackup || o.full)
  // Everything this run opens is closed when it ends, newest first: the pools, then the command lock.
  return scope.child(async (run) => {
    const lock = await beginChangingCommand(run, {command: 'dryrun', waitMs: o.runner.runLockWaitMs})
    const steps = new Steps(run, o.json)
    const pre = await steps.run(messages.getMessage('step.Preflight'), (task) =>
      timed(timings, 'preflight', async () => {
        const ins = await inspect(target, {migrationsDir: o.migrationsDir, to: o.to})
        run.ownPool(ins.sql)
        await lock.assertSameDatabase(ins.sql)
        if (ins.plan.toApply.length === 0) {
          task.title = messages.getMessage('step.Preflight.nothingToApply', [target.conn.database, ins.plan.current ?? messages.getMessage('info.nothing')])
          return {ins, todo: false as const}
        }
        const tools = await PgTools.create(target, run)
        // Room for a full backup is checked only when one is taken (--full); the rehearsal dump holds the schema
        // and a few tables' rows, and a full disk while writing it is one sentence, with the file removed.
        const report = await preflight({backupDir: o.full && !o.fromBackup ? target.backupDir : undefined, ins, needCreateDb: true, target, to: o.to, tools})
        task.title = messages.getMessage('step.Preflight.done', [plural(report.checks.length, 'check'), ins.plan.toApply.map((m) => m.name).join(', ')])
        return {ins, report, todo: true as const, tools}
      }),
    )
    const {ins} = pre
    if (!pre.todo) {
      await steps.skip(withBackup ? messages.getMessage('step.Backup') : REHEARSAL_STEP)
      await steps.skip(messages.getMessage('step.DryRun'))
      return summarize({
        current: ins.plan.current,
        database: target.conn.database,
        elapsedMs: Date.now() - startedAt,
        schema: ins.plan.appSchema,
        timings,
        wouldApply: [],
      })
    }
    const {tools} = pre

    const source: DumpSource = withBackup
      ? await steps.run(messages.getMessage('step.Backup'), (task) =>
          timed(timings, 'backup', async () => {
            if (o.fromBackup) {
              const checked = await verifyBackup({database: target.conn.database, file: o.fromBackup, requireManifest: true, tools})
              task.title = messages.getMessage('step.Backup.checked', [o.fromBackup])
              return {
                backup: {file: o.fromBackup, manifest: checked.manifest, manifestFile: manifestPathFor(o.fromBackup)},
                kind: 'backup' as const,
                taken: false,
              }
            }
            const info = await backupProduction({ins, purpose: 'dryrun', scope: task.scope, target, tools})
            task.title = messages.getMessage('step.Backup.done', [info.file, fmtBytes(info.bytes)])
            return {backup: info, kind: 'backup' as const, taken: true}
          }),
        )
      : await steps.run(REHEARSAL_STEP, (task) =>
          timed(timings, 'dump', async () => {
            const content = await decideCopy({plan: ins.plan, sql: ins.sql})
            const {log} = task.scope
            const dump = await takeRehearsalDump({
              dataTables: content.dataTables,
              ledgerVersion: ins.plan.current,
              log: (l) => log.info(l),
              onProgress: (bytes) => log.progress(messages.getMessage('info.BytesWritten', [fmtBytes(bytes)])),
              schema: ins.plan.appSchema,
              sql: ins.sql,
              tables: TOUCHED_TABLES,
              target,
              tools,
            })
            task.title = messages.getMessage('step.Rehearsal.done', [fmtBytes(dump.bytes), plural(dump.tablesWithData.length, 'table')])
            return {content, dump, kind: 'rehearsal' as const}
          }),
        )

    let applied: {dry: DryRunReport; existing: string[]}
    let removed = false
    try {
      applied = await steps.run(messages.getMessage('step.DryRun'), (task) =>
        timed(timings, 'dryrun', async () => {
          await lock.assertSameDatabase(ins.sql)
          const from =
            source.kind === 'backup' ? {backup: source.backup} : {backup: source.dump, content: source.content, leftOutOfArchive: source.dump.leftOut}
          const report = await dryRun({...rehearsalOptions(ins, o, task.scope, tools), ...from, full: o.full})
          const locked = (report.run?.migrations ?? []).flatMap((m) => m.statements.flatMap((st) => (st.locks ?? []).map((l) => l.relation)))
          const tables = await existingTables(ins.sql, ins.plan.appSchema, [...new Set(locked)])
          task.title = report.failure
            ? messages.getMessage('step.DryRun.wouldFail', [report.clone])
            : report.kept
              ? messages.getMessage('step.DryRun.done.kept', [report.clone, fmtMs(report.applyMs)])
              : messages.getMessage('step.DryRun.done.dropped', [report.clone, fmtMs(report.applyMs)])
          return {dry: report, existing: tables}
        }),
      )
    } finally {
      if (source.kind === 'rehearsal') removed = await source.dump.remove()
    }
    const d = source.kind === 'rehearsal' ? source.dump : undefined
    return summarize({
      backup: source.kind === 'backup' ? {file: source.backup.file, taken: source.taken} : undefined,
      current: ins.plan.current,
      database: target.conn.database,
      dry: applied.dry,
      elapsedMs: Date.now() - startedAt,
      existing: applied.existing,
      preflight: pre.report.checks,
      rehearsalDump: d ? {bytes: d.bytes, file: d.file, removed, tablesWithData: d.tablesWithData} : undefined,
      schema: ins.plan.appSchema,
      timings,
      wouldApply: ins.plan.toApply.map((m) => m.name),
    })
  })
}

/** What the copy is restored from: a backup (--from-backup, --full), or the rehearsal dump and the content it holds. */
type DumpSource = {kind: 'backup'; backup: BackupInfo | ListedBackup; taken: boolean} | {kind: 'rehearsal'; dump: RehearsalDump; content: CloneContent}

/** What the run found, for the summary (a run with nothing to apply has no backup, dry run or checks). */
interface Found {
  database: string
  schema: string
  current: number | null
  wouldApply: string[]
  backup?: {file: string; taken: boolean}
  rehearsalDump?: DryRunSummary['rehearsalDump']
  dry?: DryRunReport
  existing?: string[]
  preflight?: PreflightReport['checks']
  timings: Record<string, number>
  elapsedMs: number
}

function summarize(c: Found): DryRunSummary {
  const d = c.dry
  const statements: DryRunSummary['statements'] = []
  for (const m of d?.run?.migrations ?? []) {
    for (const s of m.statements) {
      statements.push({
        inTransaction: s.mode === 'transaction',
        line: s.line,
        locks: (s.locks ?? []).map((l) => ({mode: l.mode, table: l.relation})),
        forecastMs: d?.forecast?.scaled.find((x) => x.migration === m.name && x.line === s.line)?.forecastMs ?? s.durationMs,
        migration: m.name,
        ms: s.durationMs,
        runsAlone: s.mode === 'concurrent' ? 'outside any transaction (CONCURRENTLY)' : s.mode === 'validate' ? 'in its own short transaction' : null,
        statement: s.summary,
      })
    }
  }
  return {
    backup: c.backup ?? null,
    rehearsalDump: c.rehearsalDump ?? null,
    clone: d?.clone ?? null,
    existingTables: c.existing ?? [],
    current: c.current,
    database: c.database,
    failure: d?.failure ?? null,
    applyMs: d ? d.applyMs : null,
    content: d?.content ?? null,
    forecast: d?.forecast ?? null,
    forecastMs: d ? (d.forecast?.ms ?? d.applyMs) : null,
    kept: d?.kept ?? false,
    keptAltered: d?.keptAltered ?? [],
    leftOut: d?.leftOut ?? [],
    ok: !d?.failure,
    preflight: c.preflight ?? [],
    restoreMs: d?.restoreMs ?? null,
    schema: c.schema,
    statements,
    timings: c.timings,
    elapsedMs: c.elapsedMs,
    verification: d?.verify ? {checks: d.verify.checks.length, failures: d.verify.failures, ok: d.verify.ok} : null,
    wouldApply: c.wouldApply,
  }
}
