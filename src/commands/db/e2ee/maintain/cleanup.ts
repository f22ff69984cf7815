import {Flags} from '@oclif/core'

import {BaseCommand} from '../../../../base-command.js'
import {UserError} from '../../../../errors.js'
import {type CleanupProgress, type CleanupReport, runCleanup} from '../../../../maintain/cleanup.js'
import {acquireCommandLock} from '../../../../migrations/command-lock.js'
import {findAppSchema} from '../../../../migrations/ledger.js'
import {assertCanConfirm, confirm, fmtMs} from '../../../../pipeline/ui.js'
import {connectChecked} from '../../../../connection/connect.js'
import {loadMessages} from '../../../../messages.js'

const messages = loadMessages('maintain.cleanup')

/** The count (--dry-run, or nothing to delete), or what was deleted. */
export type CleanupResult = {database: string; ok: boolean} & CleanupReport & {elapsedMs?: number}

export default class MaintainCleanup extends BaseCommand<CleanupResult> {
  static description = messages.getMessage('description')
  static examples = messages.getMessages('examples')
  static flags = {
    'audit-days': Flags.integer({default: 90, description: messages.getMessage('flags.audit-days.description'), min: 1}),
    'batch-size': Flags.integer({default: 2000, description: messages.getMessage('flags.batch-size.description'), max: 100_000, min: 1}),
    'dry-run': Flags.boolean({default: false, description: messages.getMessage('flags.dry-run.description')}),
    'lock-wait': Flags.integer({default: 60, description: messages.getMessage('flags.lock-wait.description'), min: 0}),
    'lock-timeout': Flags.integer({default: 200, description: messages.getMessage('flags.lock-timeout.description'), min: 10}),
    'max-lock-wait': Flags.integer({default: 120, description: messages.getMessage('flags.max-lock-wait.description'), min: 1}),
    'pause-ms': Flags.integer({default: 20, description: messages.getMessage('flags.pause-ms.description'), min: 0}),
    'prekey-days': Flags.integer({default: 30, description: messages.getMessage('flags.prekey-days.description'), min: 1}),
  }

  private startedAt = Date.now()
  /** When each table's first progress came (runCleanup reports every table as it starts): its time in the summary. */
  private tableStarts = new Map<string, number>()

  async run(): Promise<CleanupResult> {
    const flags = await this.parseBase(MaintainCleanup)
    const target = this.targetFrom(flags)
    if (!flags['dry-run']) assertCanConfirm(flags.yes, messages.getMessage('confirm.What'))
    const sql = this.scope.own(await connectChecked(target.conn, {max: 2}))
    const schema = await findAppSchema(sql, target.schema)
    const base = {
      auditDays: flags['audit-days'],
      batchSize: flags['batch-size'],
      lockTimeoutMs: flags['lock-timeout'],
      maxLockWaitMs: flags['max-lock-wait'] * 1000,
      pauseMs: flags['pause-ms'],
      prekeyDays: flags['prekey-days'],
      schema,
    }
    const counted = await runCleanup(sql, {...base, dryRun: true, scope: this.scope})
    const total = counted.tables.reduce((s, t) => s + t.matched, 0)
    for (const t of counted.tables) {
      this.note(messages.getMessage('info.Matched', [schema, t.table, t.matched, t.days, t.cutoff]))
    }
    if (flags['dry-run'] || total === 0) {
      this.say(total === 0 ? messages.getMessage('info.NothingToDelete') : messages.getMessage('info.DryRun', [total]))
      return {database: target.conn.database, ok: true, ...counted}
    }
    if (!(await confirm(this.scope, messages.getMessage('confirm.Delete', [total, target.conn.database, flags['batch-size']]), flags.yes))) {
      throw new UserError(messages.getMessage('error.NotConfirmed'), {exitCode: 1})
    }
    // One command at a time per database: never while a migrate or rollback is changing (or replacing) it.
    const lock = await acquireCommandLock(target, {command: 'maintain', log: (l) => this.note(l), signal: this.scope.signal, waitMs: flags['lock-wait'] * 1000})
    let report: CleanupReport
    try {
      await lock.assertSameDatabase(sql)
      report = await runCleanup(sql, {...base, assertHeld: lock.assertHeld, dryRun: false, onProgress: this.progressPrinter(), scope: this.scope})
    } finally {
      await lock.release()
    }
    return this.finish(target.conn.database, report)
  }

  /** Progress on stderr (stdout stays for the result): at most one line a second, and each table's last. */
  private progressPrinter(): (p: CleanupProgress) => void {
    let last = 0
    return (p) => {
      const now = Date.now()
      if (!this.tableStarts.has(p.table)) this.tableStarts.set(p.table, now)
      if (now - last < 1000 && p.deleted < p.estimated && p.deleted !== 0) return
      last = now
      this.note(messages.getMessage('info.Progress', [p.table, p.deleted, p.estimated, p.batchSize]))
    }
  }

  private note(line: string): void {
    if (!this.jsonMode) process.stderr.write(`${line}\n`)
  }

  private finish(database: string, report: CleanupReport): CleanupResult {
    const end = Date.now()
    const elapsedMs = end - this.startedAt
    const result = {database, ok: !report.interrupted, ...report, elapsedMs}
    const starts = report.tables.map((t) => this.tableStarts.get(t.table))
    for (const [i, t] of report.tables.entries()) {
      const start = starts[i]
      const took = start === undefined ? '' : messages.getMessage('info.Table.took', [fmtMs((starts.slice(i + 1).find((s) => s !== undefined) ?? end) - start)])
      const retried = t.lockTimeouts ? messages.getMessage('info.Table.retried', [t.lockTimeouts]) : ''
      const left = t.remaining ? messages.getMessage('info.Table.left', [t.remaining]) : ''
      this.say(messages.getMessage('info.Table', [report.schema, t.table, t.deleted, t.matched, took, t.batches, fmtMs(t.longestBatchMs), retried, left]))
    }
    if (report.interrupted) {
      const message = messages.getMessage('error.Interrupted', [report.deleted])
      const hint = messages.getMessage('error.Interrupted.hint')
      if (!this.jsonMode) throw new UserError(message, {exitCode: 130, hint})
      // The document says interrupted: true; one JSON document only.
      process.stderr.write(`${message}\n  ${hint}\n`)
      process.exitCode = 130
      return result
    }
    this.say(messages.getMessage('info.Deleted', [report.deleted, fmtMs(report.durationMs), fmtMs(elapsedMs)]))
    return result
  }
}
