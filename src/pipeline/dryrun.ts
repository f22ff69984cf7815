import type {Target} from '../connection/target.js'
import {PgTools} from '../connection/tools.js'
import {type BackupInfo, type ListedBackup, manifestPathFor} from '../archive/manifest.js'
import {type RehearsalDump, takeRehearsalDump, verifyBackup} from '../steps/backup.js'
import {existingTables} from '../migrations/plan.js'
import {decideCopy, dryRun, type DryRunReport} from '../steps/dryrun.js'
import type {CloneContent} from '../clone/content.js'
import {TOUCHED_TABLES} from '../nchat/tables.js'
import {inspect, type Inspection} from '../migrations/inspect.js'
import {preflight, type PreflightReport} from '../steps/preflight.js'
import {progressOf} from './log-renderer.js'
import {backupProduction, runSteps, type Step, timed} from './shared.js'
import {beginChangingCommand} from './command.js'
import {fmtMs} from './ui.js'
import {fmtBytes, plural} from '../text.js'

export interface DryRunCommandOptions {
  target: Target
  json: boolean
  fromBackup?: string
  to?: number
  jobs: number
  keepDryrunDb: boolean
  /** Restore every row (the guide's full restore) instead of only the rows the migration reads. */
  full?: boolean
  migrationsDir?: string
  lockTimeoutMs: number
  maxLockWaitMs: number
  /** How long to wait for another command on the same database (the dry run creates and drops databases). */
  runLockWaitMs: number
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
  statements: Array<{migration: string; line: number; statement: string; inTransaction: boolean; runsAlone: string | null; locks: Array<{table: string; mode: string}>; ms: number; forecastMs: number}>
  verification: {ok: boolean; checks: number; failures: string[]} | null
  failure: string | null
  preflight: PreflightReport['checks']
  /** Each step's time, and the whole run's (from before the command lock to the summary). */
  timings: Record<string, number>
  elapsedMs: number
}

interface Ctx {
  ins?: Inspection
  tools?: PgTools
  pre?: PreflightReport
  backup?: BackupInfo | ListedBackup
  taken: boolean
  rehearsal?: RehearsalDump
  rehearsalRemoved?: boolean
  content?: CloneContent
  dry?: DryRunReport
  existing?: string[]
  startedAt: number
  timings: Record<string, number>
}

/** The guide's dry run as its own command: production is only read, nothing in it changes. */
export async function runDryRun(o: DryRunCommandOptions): Promise<DryRunSummary> {
  const ctx: Ctx = {startedAt: Date.now(), taken: false, timings: {}}
  const lock = await beginChangingCommand(o.target, {command: 'dryrun', waitMs: o.runLockWaitMs})
  const tasks: Step<Ctx>[] = [
    {
      task: async (c, task) => timed(c, 'preflight', async () => {
        c.ins = await inspect(o.target, {migrationsDir: o.migrationsDir, to: o.to})
        await lock.assertSameDatabase(c.ins.sql)
        if (c.ins.plan.toApply.length === 0) {
          task.title = `Preflight: nothing to apply, ${o.target.conn.database} is at ${c.ins.plan.current ?? 'nothing'}`
          return
        }
        c.tools = await PgTools.create(o.target)
        // Room for a full backup is checked only when one is taken (--full); the rehearsal dump holds the schema
        // and a few tables' rows, and a full disk while writing it is one sentence, with the file removed.
        c.pre = await preflight({backupDir: o.full && !o.fromBackup ? o.target.backupDir : undefined, ins: c.ins, needCreateDb: true, target: o.target, to: o.to, tools: c.tools})
        task.title = `Preflight: ${plural(c.pre.checks.length, 'check')} passed; would apply ${c.ins.plan.toApply.map((m) => m.name).join(', ')}`
      }),
      title: 'Preflight (read-only)',
    },
    o.fromBackup || o.full ? {
      skip: (c) => nothing(c),
      task: async (c, task) => timed(c, 'backup', async () => {
        const ins = c.ins!
        if (o.fromBackup) {
          const checked = await verifyBackup({database: o.target.conn.database, file: o.fromBackup, requireManifest: true, tools: c.tools!})
          c.backup = {file: o.fromBackup, manifest: checked.manifest, manifestFile: manifestPathFor(o.fromBackup)}
          task.title = `Backup ${o.fromBackup}: checked against its manifest`
          return
        }
        c.backup = await backupProduction({ins, output: (l) => { task.output = l }, progress: progressOf(task), purpose: 'dryrun', target: o.target, tools: c.tools!})
        c.taken = true
        task.title = `Backup: ${c.backup.file} (${fmtBytes((c.backup as BackupInfo).bytes)}, verified)`
      }),
      title: 'Backup',
    } : {
      // Production is only read, so no backup: a dump of what the copy restores, removed when the run ends.
      skip: (c) => nothing(c),
      task: async (c, task) => timed(c, 'dump', async () => {
        const ins = c.ins!
        c.content = await decideCopy({plan: ins.plan, sql: ins.sql})
        c.rehearsal = await takeRehearsalDump({
          dataTables: c.content.dataTables, ledgerVersion: ins.plan.current, log: (l) => { task.output = l },
          onProgress: (bytes) => progressOf(task)(`${fmtBytes(bytes)} written`), schema: ins.plan.appSchema, sql: ins.sql,
          tables: TOUCHED_TABLES, target: o.target, tools: c.tools!,
        })
        task.title = `Rehearsal dump: ${fmtBytes(c.rehearsal.bytes)}, the schema and the rows of ${plural(c.rehearsal.tablesWithData.length, 'table')} (not a backup; removed at the end)`
      }),
      title: 'Rehearsal dump (the schema and the rows the copy restores)',
    },
    {
      skip: (c) => nothing(c),
      task: async (c, task) => timed(c, 'dryrun', async () => {
        const ins = c.ins!
        await lock.assertSameDatabase(ins.sql)
        c.dry = await dryRun({
          backup: c.rehearsal ?? c.backup!, content: c.content, full: o.full, leftOutOfArchive: c.rehearsal?.leftOut, jobs: o.jobs, keep: o.keepDryrunDb, log: (l) => { task.output = l }, migrations: ins.migrations,
          plan: ins.plan, progress: progressOf(task), runner: {lockTimeoutMs: o.lockTimeoutMs, maxLockWaitMs: o.maxLockWaitMs},
          sql: ins.sql, target: o.target, to: o.to, tools: c.tools!,
        })
        const locked = (c.dry.run?.migrations ?? []).flatMap((m) => m.statements.flatMap((st) => (st.locks ?? []).map((l) => l.relation)))
        c.existing = await existingTables(ins.sql, ins.plan.appSchema, [...new Set(locked)])
        task.title = c.dry.failure
          ? `Dry run on ${c.dry.clone}: WOULD FAIL`
          : `Dry run on ${c.dry.clone}: applied in ${fmtMs(c.dry.applyMs)}, verified${c.dry.kept ? ' (kept)' : ', dropped'}`
      }),
      title: 'Apply and verify on a restored copy',
    },
  ]
  try {
    try {
      await runSteps(tasks, ctx, o.json)
    } finally {
      if (ctx.rehearsal) ctx.rehearsalRemoved = await ctx.rehearsal.remove()
    }
    return summarize(o, ctx)
  } finally {
    await ctx.ins?.sql.end({timeout: 2}).catch(() => {})
    await lock.release()
  }
}

function nothing(c: Ctx): boolean {
  return Boolean(c.ins && c.ins.plan.toApply.length === 0)
}

function summarize(o: DryRunCommandOptions, c: Ctx): DryRunSummary {
  const ins = c.ins!
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
    backup: c.backup ? {file: c.backup.file, taken: c.taken} : null,
    rehearsalDump: c.rehearsal ? {bytes: c.rehearsal.bytes, file: c.rehearsal.file, removed: Boolean(c.rehearsalRemoved), tablesWithData: c.rehearsal.tablesWithData} : null,
    clone: d?.clone ?? null,
    existingTables: c.existing ?? [],
    current: ins.plan.current,
    database: o.target.conn.database,
    failure: d?.failure ?? null,
    applyMs: d ? d.applyMs : null,
    content: d?.content ?? null,
    forecast: d?.forecast ?? null,
    forecastMs: d ? (d.forecast?.ms ?? d.applyMs) : null,
    kept: d?.kept ?? false,
    keptAltered: d?.keptAltered ?? [],
    leftOut: d?.leftOut ?? [],
    ok: !d?.failure,
    preflight: c.pre?.checks ?? [],
    restoreMs: d?.restoreMs ?? null,
    schema: ins.plan.appSchema,
    statements,
    timings: c.timings,
    elapsedMs: Date.now() - c.startedAt,
    verification: d?.verify ? {checks: d.verify.checks.length, failures: d.verify.failures, ok: d.verify.ok} : null,
    wouldApply: ins.plan.toApply.map((m) => m.name),
  }
}
