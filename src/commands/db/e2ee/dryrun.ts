import {Flags} from '@oclif/core'

import {BaseCommand} from '../../../base-command.js'
import {UserError} from '../../../errors.js'
import {backupFlags, runnerFlags, runnerSettings, verboseListing} from '../../../flags.js'
import {runDryRun, type DryRunSummary} from '../../../pipeline/dryrun.js'
import {fmtMs, fmtTimings} from '../../../pipeline/ui.js'
import {plural} from '../../../text.js'

export default class DryRun extends BaseCommand {
  static description = `Rehearse the upgrade without touching production: preflight, a backup (or --from-backup), restore it into a throwaway database, apply and verify there, drop it.

Reports each statement with the locks it took and whether it ran inside a transaction, and the measured apply time as the forecast. Exits non-zero when the migration would fail, naming the statement.`
  static examples = ['<%= config.bin %> db e2ee dryrun', '<%= config.bin %> db e2ee dryrun --from-backup backups/nchat_20260130_101500.dump --json']
  static flags = {
    ...runnerFlags,
    ...backupFlags,
    full: Flags.boolean({default: false, description: 'Restore every row of every table into the copy, as the guide does, instead of only the rows the migration reads (slower; the forecast is then measured on all rows).'}),
    'from-backup': Flags.string({description: 'Use this backup (checked against its manifest) instead of taking one.'}),
    'keep-dryrun-db': Flags.boolean({default: false, description: 'Keep the dry-run database for inspection instead of dropping it.'}),
    to: Flags.integer({description: 'Rehearse only up to this migration version.', min: 13}),
    ...verboseListing('every statement with its time and locks (by default: one line per migration and the statements that lock existing tables)'),
  }

  async run(): Promise<void> {
    const flags = await this.parseBase(DryRun)
    const target = this.targetFrom(flags, {backupDir: flags['backup-dir']})
    const s = await runDryRun(this.runScope(target), {
      fromBackup: flags['from-backup'], full: flags.full, jobs: flags.jobs, json: this.jsonMode, keepDryrunDb: flags['keep-dryrun-db'],
      migrationsDir: flags['migrations-dir'], runner: runnerSettings(flags), to: flags.to,
    })
    if (this.jsonMode) {
      this.printJson(s)
      if (!s.ok) process.exitCode = 1
      return
    }
    this.report(s)
    if (s.failure) throw new UserError(`The migration would fail: ${s.failure.replace(/\.$/, '')}.`, {hint: 'Production was not changed. Fix the cause and run the dry run again.'})
  }

  private report(s: DryRunSummary): void {
    this.say('')
    if (s.wouldApply.length === 0) {
      this.say(`Nothing would be applied: ${s.database} is at ${s.current ?? 'nothing'}.`)
      return
    }
    this.say(`Would apply to ${s.database} (schema ${s.schema}, now at ${s.current ?? 'nothing'}): ${s.wouldApply.join(', ')}`)
    if (this.verbose) this.listStatements(s.statements)
    else this.outlineStatements(s)
    this.say('')
    if (s.forecastMs !== null) {
      const f = s.forecast
      const basis = f && f.samples.length
        ? `; ${f.samples.map((x) => `${x.table} scans scaled ×${x.factor.toFixed(1)} from a sample of ${plural(x.sampleRows, 'row')} (${x.samplePages} of ${x.productionPages} pages, ~${plural(x.productionRows, 'row')} in production)`).join(', ')}`
        : ''
      this.say(`Forecast    ${fmtMs(s.forecastMs)} to apply on production, ${f?.error ?? ''} (${fmtMs(s.applyMs ?? 0)} on ${s.clone}${basis}; restore took ${fmtMs(s.restoreMs ?? 0)})`)
    }
    this.say(`Copy        ${s.content === 'full' ? 'every row of every table (--full)' : 'the whole schema, and the rows the migration reads (--full restores every row)'}`)
    for (const l of s.leftOut) this.say(`Left out    rows of ${l.table}${l.rows === null ? '' : ` (${plural(l.rows, 'row')})`}: ${l.why}`)
    for (const k of s.keptAltered) this.say(`Kept        rows of ${k.table}: ${k.why}`)
    if (s.verification) this.say(`Verify      ${s.verification.ok ? `${plural(s.verification.checks, 'check')} passed` : `FAILED: ${s.verification.failures.join('; ')}`}`)
    if (s.backup) this.say(`Backup      ${s.backup.file}${s.backup.taken ? ' (taken now)' : ''}`)
    this.say(`Steps       ${fmtTimings(s.timings, s.elapsedMs)}`)
    this.say(`Production was only read; nothing in it changed.`)
  }

  /** One line per migration, then only the statements live traffic can wait for: locks on tables that exist now. */
  private outlineStatements(s: DryRunSummary): void {
    const existing = new Set(s.existingTables)
    this.say('')
    for (const name of s.wouldApply) {
      const mine = s.statements.filter((st) => st.migration === name)
      const inTx = mine.filter((st) => st.inTransaction).length
      const ms = mine.reduce((t, st) => t + st.ms, 0)
      this.say(`  ${name.padEnd(20)} ${plural(mine.length, 'statement')} in ${fmtMs(ms)} (${inTx} in one transaction${inTx < mine.length ? `, ${mine.length - inTx} alone` : ''})`)
    }
    const locking = s.statements.filter((st) => st.locks.some((l) => existing.has(l.table)))
    this.say('')
    this.say(locking.length ? 'Statements that lock existing tables (live reads and writes can wait on these):' : 'No statement locks a table that exists now.')
    for (const st of locking) {
      const locks = st.locks.filter((l) => existing.has(l.table)).map((l) => `${l.mode} on ${l.table}`).join(', ')
      this.say(`  ${st.migration.slice(0, 3)} line ${String(st.line).padEnd(4)} ${st.inTransaction ? 'in tx' : 'alone'} ${fmtMs(st.ms).padStart(7)}  ${st.statement}  [${locks}]`)
    }
    this.say('  (every statement with its locks: --verbose or --json)')
  }

  private listStatements(statements: DryRunSummary['statements']): void {
    let last = ''
    for (const st of statements) {
      if (st.migration !== last) {
        this.say(`\n  ${st.migration}`)
        last = st.migration
      }
      const where = st.inTransaction ? 'in tx ' : 'alone '
      const locks = st.locks.length ? st.locks.map((l) => `${l.mode} on ${l.table}`).join(', ') : 'no table locks'
      const scaled = st.forecastMs === st.ms ? '' : ` (forecast on production ${fmtMs(st.forecastMs)})`
      this.say(`    ${String(st.line).padStart(4)} ${where} ${fmtMs(st.ms).padStart(7)}  ${st.statement}  [${locks}]${scaled}`)
    }
  }
}
