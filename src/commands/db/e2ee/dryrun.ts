import {Flags} from '@oclif/core'

import {BaseCommand} from '../../../base-command.js'
import {UserError} from '../../../errors.js'
import {backupFlags, runnerFlags, runnerSettings, verboseListing} from '../../../flags.js'
import {runDryRun, type DryRunSummary} from '../../../pipeline/dryrun.js'
import {fmtMs, fmtTimings} from '../../../pipeline/ui.js'
import {fmtBytes, plural} from '../../../text.js'
import {loadMessages} from '../../../messages.js'

const messages = loadMessages('dryrun')

export type DryRunResult = DryRunSummary

export default class DryRun extends BaseCommand<DryRunResult> {
  static description = messages.getMessage('description')
  static examples = messages.getMessages('examples')
  static flags = {
    ...runnerFlags,
    ...backupFlags,
    full: Flags.boolean({default: false, description: messages.getMessage('flags.full.description')}),
    'from-backup': Flags.string({description: messages.getMessage('flags.from-backup.description')}),
    'keep-dryrun-db': Flags.boolean({default: false, description: messages.getMessage('flags.keep-dryrun-db.description')}),
    to: Flags.integer({description: messages.getMessage('flags.to.description'), min: 13}),
    ...verboseListing(messages.getMessage('flags.verbose.lists')),
  }

  async run(): Promise<DryRunResult> {
    const flags = await this.parseBase(DryRun)
    const target = this.targetFrom(flags, {backupDir: flags['backup-dir']})
    const s = await runDryRun(this.runScope(target), {
      fromBackup: flags['from-backup'],
      full: flags.full,
      jobs: flags.jobs,
      json: this.jsonMode,
      keepDryrunDb: flags['keep-dryrun-db'],
      migrationsDir: flags['migrations-dir'],
      runner: runnerSettings(flags),
      to: flags.to,
    })
    if (this.jsonMode) {
      // The document says ok: false and why; the exit code says it too.
      if (!s.ok) process.exitCode = 1
      return s
    }
    this.report(s)
    if (s.failure)
      throw new UserError(messages.getMessage('error.WouldFail', [s.failure.replace(/\.$/, '')]), {hint: messages.getMessage('error.WouldFail.hint')})
    return s
  }

  private report(s: DryRunSummary): void {
    this.say('')
    if (s.wouldApply.length === 0) {
      this.say(messages.getMessage('info.NothingToApply', [s.database, s.current ?? messages.getMessage('info.nothing')]))
      return
    }
    this.say(messages.getMessage('info.WouldApply', [s.database, s.schema, s.current ?? messages.getMessage('info.nothing'), s.wouldApply.join(', ')]))
    if (this.verbose) this.listStatements(s.statements)
    else this.outlineStatements(s)
    this.say('')
    if (s.forecastMs !== null) {
      const f = s.forecast
      const basis = f?.samples.length
        ? `; ${f.samples.map((x) => messages.getMessage('info.Forecast.sample', [x.table, x.factor.toFixed(1), plural(x.sampleRows, 'row'), x.samplePages, x.productionPages, plural(x.productionRows, 'row')])).join(', ')}`
        : ''
      this.say(
        messages.getMessage('info.Forecast', [fmtMs(s.forecastMs), f?.error ?? '', fmtMs(s.applyMs ?? 0), String(s.clone), basis, fmtMs(s.restoreMs ?? 0)]),
      )
    }
    this.say(s.content === 'full' ? messages.getMessage('info.Copy.full') : messages.getMessage('info.Copy.slim'))
    for (const l of s.leftOut)
      this.say(
        l.rows === null
          ? messages.getMessage('info.LeftOut', [l.table, l.why])
          : messages.getMessage('info.LeftOut.rows', [l.table, plural(l.rows, 'row'), l.why]),
      )
    for (const k of s.keptAltered) this.say(messages.getMessage('info.Kept', [k.table, k.why]))
    if (s.verification) {
      this.say(
        s.verification.ok
          ? messages.getMessage('info.Verify.passed', [plural(s.verification.checks, 'check')])
          : messages.getMessage('info.Verify.failed', [s.verification.failures.join('; ')]),
      )
    }
    if (s.backup) this.say(s.backup.taken ? messages.getMessage('info.Backup.taken', [s.backup.file]) : messages.getMessage('info.Backup', [s.backup.file]))
    if (s.rehearsalDump) {
      const d = s.rehearsalDump
      const what = [fmtBytes(d.bytes), plural(d.tablesWithData.length, 'table')]
      this.say(d.removed ? messages.getMessage('info.Dump.removed', what) : messages.getMessage('info.Dump.kept', [...what, d.file]))
    }
    this.say(messages.getMessage('info.Steps', [fmtTimings(s.timings, s.elapsedMs)]))
    this.say(messages.getMessage('info.ProductionRead'))
  }

  /** One line per migration, then only the statements live traffic can wait for: locks on tables that exist now. */
  private outlineStatements(s: DryRunSummary): void {
    const existing = new Set(s.existingTables)
    this.say('')
    for (const name of s.wouldApply) {
      const mine = s.statements.filter((st) => st.migration === name)
      const inTx = mine.filter((st) => st.inTransaction).length
      const ms = mine.reduce((t, st) => t + st.ms, 0)
      const split =
        inTx < mine.length ? messages.getMessage('info.Migration.alone', [inTx, mine.length - inTx]) : messages.getMessage('info.Migration.inTx', [inTx])
      this.say(`  ${name.padEnd(20)} ${plural(mine.length, 'statement')} in ${fmtMs(ms)} (${split})`)
    }
    const locking = s.statements.filter((st) => st.locks.some((l) => existing.has(l.table)))
    this.say('')
    this.say(locking.length ? messages.getMessage('info.Locking') : messages.getMessage('info.NoLocking'))
    for (const st of locking) {
      const locks = st.locks
        .filter((l) => existing.has(l.table))
        .map((l) => `${l.mode} on ${l.table}`)
        .join(', ')
      this.say(
        `  ${st.migration.slice(0, 3)} line ${String(st.line).padEnd(4)} ${st.inTransaction ? 'in tx' : 'alone'} ${fmtMs(st.ms).padStart(7)}  ${st.statement}  [${locks}]`,
      )
    }
    this.say(messages.getMessage('info.MoreStatements'))
  }

  private listStatements(statements: DryRunSummary['statements']): void {
    let last = ''
    for (const st of statements) {
      if (st.migration !== last) {
        this.say(`\n  ${st.migration}`)
        last = st.migration
      }
      const where = st.inTransaction ? 'in tx ' : 'alone '
      const locks = st.locks.length ? st.locks.map((l) => `${l.mode} on ${l.table}`).join(', ') : messages.getMessage('info.Statement.noLocks')
      const scaled = st.forecastMs === st.ms ? '' : messages.getMessage('info.Statement.forecast', [fmtMs(st.forecastMs)])
      this.say(`    ${String(st.line).padStart(4)} ${where} ${fmtMs(st.ms).padStart(7)}  ${st.statement}  [${locks}]${scaled}`)
    }
  }
}
