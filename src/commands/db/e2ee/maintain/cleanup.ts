import {Flags} from '@oclif/core'

import {BaseCommand} from '../../../../base-command.js'
import {UserError} from '../../../../errors.js'
import {type CleanupProgress, type CleanupReport, runCleanup} from '../../../../maintain/cleanup.js'
import {acquireCommandLock} from '../../../../migrations/command-lock.js'
import {findAppSchema} from '../../../../migrations/ledger.js'
import {assertCanConfirm, confirm, fmtMs} from '../../../../pipeline/ui.js'
import {connectChecked} from '../../../../connection/connect.js'

export default class MaintainCleanup extends BaseCommand {
  static description = `The guide's automated cleanup: delete audit log rows older than --audit-days (90) and consumed one-time prekeys consumed more than --prekey-days (30) ago, in small batches that each lock few rows for a short time and commit.

Never deletes an unconsumed prekey, a prekey without a consumption time, or an audit row younger than the limit. Safe to interrupt (Ctrl+C: the batch in flight commits or rolls back, exit 130) and to run again: a rerun carries on where the last one stopped. --dry-run only counts.`
  static examples = [
    '<%= config.bin %> db e2ee maintain cleanup --dry-run',
    '<%= config.bin %> db e2ee maintain cleanup --yes --json >> logs/e2ee-cleanup.log',
    '<%= config.bin %> db e2ee maintain cleanup --audit-days 180 --batch-size 500 --pause-ms 100',
  ]
  static flags = {
    'audit-days': Flags.integer({default: 90, description: 'Delete nchat_e2ee_audit_log rows created more than this many days ago.', min: 1}),
    'batch-size': Flags.integer({default: 2000, description: 'Rows per batch (each batch is one short transaction); halved while batches take over a quarter of the lock timeout.', max: 100_000, min: 1}),
    'dry-run': Flags.boolean({default: false, description: 'Only count what would be deleted.'}),
    'lock-wait': Flags.integer({default: 60, description: 'Seconds to wait for another nself db e2ee command changing the same database.', min: 0}),
    'lock-timeout': Flags.integer({default: 200, description: 'lock_timeout in ms for each batch, and the longest a writer waits on the rows a batch holds: a batch runs at most half of it (statement_timeout), and one that times out is retried smaller after a pause.', min: 10}),
    'max-lock-wait': Flags.integer({default: 120, description: 'Seconds to keep retrying a batch that meets lock timeouts before giving up.', min: 1}),
    'pause-ms': Flags.integer({default: 20, description: 'Pause between batches in ms (room for other writers and for replicas to catch up).', min: 0}),
    'prekey-days': Flags.integer({default: 30, description: 'Delete consumed nchat_one_time_prekeys consumed more than this many days ago.', min: 1}),
  }

  private startedAt = Date.now()
  /** When each table's first progress came (runCleanup reports every table as it starts): its time in the summary. */
  private tableStarts = new Map<string, number>()

  async run(): Promise<void> {
    const flags = await this.parseBase(MaintainCleanup)
    const target = this.targetFrom(flags)
    if (!flags['dry-run']) assertCanConfirm(flags.yes, 'Deleting old audit rows and consumed prekeys')
    const sql = this.scope.own(await connectChecked(target.conn, {max: 2}))
    const schema = await findAppSchema(sql, target.schema)
    const base = {
      auditDays: flags['audit-days'], batchSize: flags['batch-size'], lockTimeoutMs: flags['lock-timeout'],
      maxLockWaitMs: flags['max-lock-wait'] * 1000, pauseMs: flags['pause-ms'], prekeyDays: flags['prekey-days'], schema,
    }
    const counted = await runCleanup(sql, {...base, dryRun: true, scope: this.scope})
    const total = counted.tables.reduce((s, t) => s + t.matched, 0)
    for (const t of counted.tables) {
      this.note(`${schema}.${t.table}: ${t.matched} row(s) older than ${t.days} days (before ${t.cutoff})`)
    }
    if (flags['dry-run'] || total === 0) {
      if (this.jsonMode) this.printJson({database: target.conn.database, ok: true, ...counted})
      else this.say(total === 0 ? 'Nothing to delete.' : `Dry run: ${total} row(s) would be deleted; nothing was changed.`)
      return
    }
    if (!(await confirm(this.scope, `Delete ${total} row(s) from ${target.conn.database} in batches of up to ${flags['batch-size']}?`, flags.yes))) {
      throw new UserError('Cleanup was not confirmed; nothing was deleted.', {exitCode: 1})
    }
    // One command at a time per database: never while a migrate or rollback is changing (or replacing) it.
    const lock = await acquireCommandLock(target, {command: 'maintain', log: (l) => this.note(l), signal: this.scope.signal, waitMs: flags['lock-wait'] * 1000})
    let report
    try {
      await lock.assertSameDatabase(sql)
      report = await runCleanup(sql, {...base, assertHeld: lock.assertHeld, dryRun: false, onProgress: this.progressPrinter(), scope: this.scope})
    } finally {
      await lock.release()
    }
    this.finish(target.conn.database, report)
  }

  /** Progress on stderr (stdout stays for the result): at most one line a second, and each table's last. */
  private progressPrinter(): (p: CleanupProgress) => void {
    let last = 0
    return (p) => {
      const now = Date.now()
      if (!this.tableStarts.has(p.table)) this.tableStarts.set(p.table, now)
      if (now - last < 1000 && p.deleted < p.estimated && p.deleted !== 0) return
      last = now
      this.note(`  ${p.table}: ${p.deleted} / ~${p.estimated} deleted (batch ${p.batchSize})`)
    }
  }

  private note(line: string): void {
    if (!this.jsonMode) process.stderr.write(line + '\n')
  }

  private finish(database: string, report: CleanupReport): void {
    const end = Date.now()
    const elapsedMs = end - this.startedAt
    if (this.jsonMode) this.printJson({database, ok: !report.interrupted, ...report, elapsedMs})
    const starts = report.tables.map((t) => this.tableStarts.get(t.table))
    for (const [i, t] of report.tables.entries()) {
      const start = starts[i]
      const took = start === undefined ? '' : ` in ${fmtMs((starts.slice(i + 1).find((s) => s !== undefined) ?? end) - start)}`
      this.say(`${report.schema}.${t.table}: deleted ${t.deleted} of ${t.matched}${took}, ${t.batches} batch(es), longest ${fmtMs(t.longestBatchMs)}${t.lockTimeouts ? `, ${t.lockTimeouts} lock timeout(s) retried` : ''}${t.remaining ? `; ${t.remaining} left (a writer held them, or the run stopped)` : ''}`)
    }
    if (report.interrupted) {
      const message = `Interrupted: cleanup stopped by Ctrl+C after deleting ${report.deleted} row(s); every committed batch stays deleted and nothing is half-done.`
      const hint = 'Run the same command again to carry on.'
      if (!this.jsonMode) throw new UserError(message, {exitCode: 130, hint})
      // The document above already says interrupted: true; one JSON document only.
      process.stderr.write(`${message}\n  ${hint}\n`)
      process.exitCode = 130
      return
    }
    this.say(`Deleted ${report.deleted} row(s) in ${fmtMs(report.durationMs)} (total ${fmtMs(elapsedMs)}, counting and confirmation included).`)
  }
}
