import {Flags} from '@oclif/core'

import {BaseCommand} from '../../../base-command.js'
import {backupFlags, runnerFlags, runnerSettings} from '../../../flags.js'
import {runMigrate, type MigrateSummary} from '../../../pipeline/migrate.js'
import {fmtMs, fmtTimings} from '../../../pipeline/ui.js'
import {plural} from '../../../text.js'

export default class Migrate extends BaseCommand {
  static description = `Upgrade nChat's database to v0.4.0: preflight, verified backup, dry run on a restored copy, apply (online: short lock timeouts, concurrent index builds), verify, vacuum.

Every step is shown as it runs; the first failure stops the run with production as it was. A second run is a no-op.`
  static examples = [
    '<%= config.bin %> db e2ee migrate',
    '<%= config.bin %> db e2ee migrate --yes --json',
    '<%= config.bin %> db e2ee migrate --yes --local --host 127.0.0.1 --user postgres --database nchat --backup-dir /var/backups/nchat',
  ]
  static flags = {
    ...runnerFlags,
    ...backupFlags,
    'keep-dryrun-db': Flags.boolean({default: false, description: 'Keep the dry-run database for inspection instead of dropping it.'}),
    'skip-backup': Flags.boolean({default: false, description: 'Do not take a backup (needs --yes; the dry run is skipped too). Dangerous.'}),
    'skip-dryrun': Flags.boolean({default: false, description: 'Do not rehearse the migration on a restored copy first.'}),
    to: Flags.integer({description: 'Stop after this migration version (e.g. 14).', min: 13}),
  }

  async run(): Promise<void> {
    const flags = await this.parseBase(Migrate)
    const target = this.targetFrom(flags, {backupDir: flags['backup-dir']})
    if (flags['skip-backup']) process.stderr.write('WARNING: --skip-backup: no backup will be taken; the only way back will be the down migrations.\n')
    const s = await runMigrate(this.runScope(target), {
      jobs: flags.jobs, json: this.jsonMode, keepDryrunDb: flags['keep-dryrun-db'],
      migrationsDir: flags['migrations-dir'], runner: runnerSettings(flags),
      skipBackup: flags['skip-backup'], skipDryrun: flags['skip-dryrun'], to: flags.to, yes: flags.yes,
    })
    if (this.jsonMode) return this.printJson(s)
    this.printSummary(s)
  }

  private printSummary(s: MigrateSummary): void {
    this.say('')
    if (s.appliedByOtherRun) {
      this.say(`Nothing to do: another run migrated ${s.database} (schema ${s.schema}) from ${s.before ?? 'nothing'} to ${s.after ?? 'nothing'} while this one waited for it; this run applied nothing.`)
      if (s.backup) this.say(`Backup      ${s.backup.file} (taken by this run before it waited)`)
      this.say(`Steps       ${fmtTimings(s.timings, s.elapsedMs)}`)
      return
    }
    if (s.nothingToDo) {
      this.say(`Nothing to do: ${s.database} is at ${s.after ?? 'nothing'} (schema ${s.schema}).`)
      this.say(`Steps       ${fmtTimings(s.timings, s.elapsedMs)}`)
      return
    }
    this.say(`Migrated ${s.database} (schema ${s.schema}) from ${s.before ?? 'nothing'} to ${s.after}: ${s.applied.join(', ')}.`)
    if (s.backup) this.say(`Backup      ${s.backup.file} (sha256 ${s.backup.sha256.slice(0, 16)}…)`)
    if (s.dryrun) this.say(`Forecast    ${fmtMs(s.dryrun.forecastMs)} on the dry-run copy; actual ${fmtMs(s.applyMs ?? 0)}${s.lockRetries ? ` (${s.lockRetries} lock retries)` : ''}`)
    this.say(`Steps       ${fmtTimings(s.timings, s.elapsedMs)}`)
    if (s.verify) this.say(`Verified    ${plural(s.verify.checks.length, 'check')}`)
    if (s.hasura) this.say(`Hasura      ${s.hasura.note}`)
    for (const w of s.warnings) this.say(`Warning     ${w}`)
  }
}
