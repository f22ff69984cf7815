import {Flags} from '@oclif/core'

import {BaseCommand} from '../../../base-command.js'
import {backupFlags, runnerFlags, runnerSettings} from '../../../flags.js'
import {runMigrate, type MigrateSummary} from '../../../pipeline/migrate.js'
import {fmtMs, fmtTimings} from '../../../pipeline/ui.js'
import {plural} from '../../../text.js'
import {loadMessages} from '../../../messages.js'

const messages = loadMessages('migrate')

export type MigrateResult = MigrateSummary

export default class Migrate extends BaseCommand<MigrateResult> {
  static description = messages.getMessage('description')
  static examples = messages.getMessages('examples')
  static flags = {
    ...runnerFlags,
    ...backupFlags,
    'keep-dryrun-db': Flags.boolean({default: false, description: messages.getMessage('flags.keep-dryrun-db.description')}),
    'skip-backup': Flags.boolean({default: false, description: messages.getMessage('flags.skip-backup.description')}),
    'skip-dryrun': Flags.boolean({default: false, description: messages.getMessage('flags.skip-dryrun.description')}),
    to: Flags.integer({description: messages.getMessage('flags.to.description'), min: 13}),
  }

  async run(): Promise<MigrateResult> {
    const flags = await this.parseBase(Migrate)
    const target = this.targetFrom(flags, {backupDir: flags['backup-dir']})
    if (flags['skip-backup']) process.stderr.write(`${messages.getMessage('warning.SkipBackup')}\n`)
    const s = await runMigrate(this.runScope(target), {
      jobs: flags.jobs,
      json: this.jsonMode,
      keepDryrunDb: flags['keep-dryrun-db'],
      migrationsDir: flags['migrations-dir'],
      runner: runnerSettings(flags),
      skipBackup: flags['skip-backup'],
      skipDryrun: flags['skip-dryrun'],
      to: flags.to,
      yes: flags.yes,
    })
    if (!this.jsonMode) this.printSummary(s)
    return s
  }

  private printSummary(s: MigrateSummary): void {
    this.say('')
    if (s.appliedByOtherRun) {
      this.say(
        messages.getMessage('info.AppliedByOtherRun', [
          s.database,
          s.schema,
          s.before ?? messages.getMessage('info.nothing'),
          s.after ?? messages.getMessage('info.nothing'),
        ]),
      )
      if (s.backup) this.say(messages.getMessage('info.Backup.beforeWaiting', [s.backup.file]))
      this.say(messages.getMessage('info.Steps', [fmtTimings(s.timings, s.elapsedMs)]))
      return
    }
    if (s.nothingToDo) {
      this.say(messages.getMessage('info.NothingToDo', [s.database, s.after ?? messages.getMessage('info.nothing'), s.schema]))
      this.say(messages.getMessage('info.Steps', [fmtTimings(s.timings, s.elapsedMs)]))
      return
    }
    this.say(
      messages.getMessage('info.Migrated', [s.database, s.schema, s.before ?? messages.getMessage('info.nothing'), String(s.after), s.applied.join(', ')]),
    )
    if (s.backup) this.say(messages.getMessage('info.Backup', [s.backup.file, s.backup.sha256.slice(0, 16)]))
    if (s.dryrun) {
      const forecast = [fmtMs(s.dryrun.forecastMs), fmtMs(s.applyMs ?? 0)]
      this.say(s.lockRetries ? messages.getMessage('info.Forecast.retries', [...forecast, s.lockRetries]) : messages.getMessage('info.Forecast', forecast))
    }
    this.say(messages.getMessage('info.Steps', [fmtTimings(s.timings, s.elapsedMs)]))
    if (s.verify) this.say(messages.getMessage('info.Verified', [plural(s.verify.checks.length, 'check')]))
    if (s.hasura) this.say(messages.getMessage('info.Hasura', [s.hasura.note]))
    for (const w of s.warnings) this.say(messages.getMessage('info.Warning', [w]))
  }
}
