import {Flags} from '@oclif/core'

import {BaseCommand} from '../../../base-command.js'
import {backupFlags, runnerFlags, runnerSettings} from '../../../flags.js'
import {runRollback, type RollbackSummary} from '../../../pipeline/rollback.js'
import {fmtMs, fmtTimings} from '../../../pipeline/ui.js'
import {loadMessages} from '../../../messages.js'

const messages = loadMessages('rollback')

export type RollbackResult = RollbackSummary

export default class Rollback extends BaseCommand<RollbackResult> {
  static description = messages.getMessage('description')
  static examples = messages.getMessages('examples')
  static flags = {
    ...runnerFlags,
    ...backupFlags,
    backup: Flags.string({description: messages.getMessage('flags.backup.description')}),
    strategy: Flags.string({default: 'restore', description: messages.getMessage('flags.strategy.description'), options: ['restore', 'down']}),
    to: Flags.integer({description: messages.getMessage('flags.to.description'), min: 12}),
  }

  async run(): Promise<RollbackResult> {
    const flags = await this.parseBase(Rollback)
    const target = this.targetFrom(flags, {backupDir: flags['backup-dir']})
    const s = await runRollback(this.runScope(target), {
      backupFile: flags.backup,
      jobs: flags.jobs,
      json: this.jsonMode,
      migrationsDir: flags['migrations-dir'],
      runner: runnerSettings(flags),
      strategy: flags.strategy as 'restore' | 'down',
      to: flags.to,
      yes: flags.yes,
    })
    if (!this.jsonMode) this.report(s)
    return s
  }

  private report(s: RollbackSummary): void {
    this.say('')
    if (s.strategy === 'down' && s.reverted.length === 0) {
      this.say(messages.getMessage('info.NothingToRevert', [s.database, s.after ?? messages.getMessage('info.nothing')]))
      this.say(messages.getMessage('info.Steps', [fmtTimings(s.timings, s.elapsedMs)]))
      return
    }
    if (s.strategy === 'restore' && !s.kept) {
      this.say(messages.getMessage('info.NothingToRollBack', [s.database, s.after ?? messages.getMessage('info.nothing')]))
      this.say(messages.getMessage('info.Steps', [fmtTimings(s.timings, s.elapsedMs)]))
      return
    }
    this.say(
      messages.getMessage('info.RolledBack', [
        s.database,
        s.strategy,
        s.before ?? messages.getMessage('info.none'),
        s.after ?? messages.getMessage('info.none'),
      ]),
    )
    if (s.backup)
      this.say(
        s.strategy === 'restore' ? messages.getMessage('info.Backup.restored', [s.backup.file]) : messages.getMessage('info.Backup.safety', [s.backup.file]),
      )
    for (const l of s.lost) this.say(messages.getMessage('info.Lost', [l.what]))
    if (s.kept) {
      this.say(messages.getMessage('info.Kept', [s.kept.database, fmtMs(s.swapWindowMs ?? 0)]))
      this.say(messages.getMessage('info.Kept.drop', [s.kept.dropWith]))
    }
    if (s.hasura?.dir) this.say(messages.getMessage('info.Hasura', [s.hasura.note]))
    this.say(messages.getMessage('info.Steps', [fmtTimings(s.timings, s.elapsedMs)]))
  }
}
