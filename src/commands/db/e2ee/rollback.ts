import {Flags} from '@oclif/core'

import {BaseCommand} from '../../../base-command.js'
import {backupFlags, runnerFlags, runnerSettings} from '../../../flags.js'
import {runRollback, type RollbackSummary} from '../../../pipeline/rollback.js'
import {fmtMs, fmtTimings} from '../../../pipeline/ui.js'

export default class Rollback extends BaseCommand {
  static description = `Go back to before the upgrade, without ever being left with no database.

--strategy restore (default): check the newest pre-migration backup (or --backup FILE), restore it into a new database, check it against its manifest, say what would be lost, then swap names in one short step; the replaced database is kept.
--strategy down: take a safety backup, then run the down files newest first (each with its ledger rows in one transaction) to --to (default 12, the v0.3.0 schema).`
  static examples = [
    '<%= config.bin %> db e2ee rollback',
    '<%= config.bin %> db e2ee rollback --yes --backup backups/nchat_20260130_101500.dump',
    '<%= config.bin %> db e2ee rollback --strategy down --to 14',
  ]
  static flags = {
    ...runnerFlags,
    ...backupFlags,
    backup: Flags.string({description: 'The backup to restore (default: the newest pre-migration backup in the backup dir).'}),
    strategy: Flags.string({default: 'restore', description: 'restore: swap in the backup; down: run the down migrations.', options: ['restore', 'down']}),
    to: Flags.integer({description: 'With --strategy down: the version to go back to (default 12). With restore: only accepted when the backup is at that version.', min: 12}),
  }

  async run(): Promise<void> {
    const flags = await this.parseBase(Rollback)
    const target = this.targetFrom(flags, {backupDir: flags['backup-dir']})
    const s = await runRollback(this.runScope(target), {
      backupFile: flags.backup, jobs: flags.jobs, json: this.jsonMode,
      migrationsDir: flags['migrations-dir'], runner: runnerSettings(flags),
      strategy: flags.strategy as 'restore' | 'down', to: flags.to, yes: flags.yes,
    })
    if (this.jsonMode) return this.printJson(s)
    this.report(s)
  }

  private report(s: RollbackSummary): void {
    this.say('')
    if (s.strategy === 'down' && s.reverted.length === 0) {
      this.say(`Nothing to revert: ${s.database} is at ${s.after ?? 'nothing'}.`)
      this.say(`Steps       ${fmtTimings(s.timings, s.elapsedMs)}`)
      return
    }
    if (s.strategy === 'restore' && !s.kept) {
      this.say(`Nothing to roll back: ${s.database} is at ${s.after ?? 'nothing'} and has none of the upgrade's migrations; no backup was restored.`)
      this.say(`Steps       ${fmtTimings(s.timings, s.elapsedMs)}`)
      return
    }
    this.say(`Rolled back ${s.database} (${s.strategy}): migration ${s.before ?? 'none'} → ${s.after ?? 'none'}.`)
    if (s.backup) this.say(`Backup      ${s.backup.file} (${s.strategy === 'restore' ? 'restored' : 'safety backup, taken before reverting'})`)
    for (const l of s.lost) this.say(`Lost        ${l.what}`)
    if (s.kept) {
      this.say(`Kept        the replaced database as ${s.kept.database} (new connections waited ${fmtMs(s.swapWindowMs ?? 0)} for the swap)`)
      this.say(`            drop it when you no longer need it: ${s.kept.dropWith}`)
    }
    if (s.hasura?.dir) this.say(`Hasura      ${s.hasura.note}`)
    this.say(`Steps       ${fmtTimings(s.timings, s.elapsedMs)}`)
  }
}
